"""Standard Webhooks signatures, checked with the reference `standardwebhooks` package."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from processor.dispatch.signing import SigningError, sign, signature_header

SECRET_A = "whsec_" + base64.b64encode(b"first-secret-key-0123456789abcd").decode()
SECRET_B = "whsec_" + base64.b64encode(b"second-secret-key-0123456789abc").decode()


def _headers(msg_id: str, ts: int, signature: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_reference_library_verifies_our_signature() -> None:
    """A signature we make passes the reference verifier."""
    import time

    ts = int(time.time())
    body = b'{"order_id": "1001"}'
    header = signature_header([SECRET_A], "dlv_" + "a" * 24, ts, body)
    assert Webhook(SECRET_A).verify(body, _headers("dlv_" + "a" * 24, ts, header)) == {"order_id": "1001"}


def test_every_secret_signs_so_rotation_has_no_gap() -> None:
    """With two secrets, a receiver holding either one verifies the request."""
    import time

    ts = int(time.time())
    body = b"{}"
    header = signature_header([SECRET_A, SECRET_B], "dlv_x", ts, body)
    assert len(header.split(" ")) == 2
    for secret in (SECRET_A, SECRET_B):
        Webhook(secret).verify(body, _headers("dlv_x", ts, header))


def test_tampered_body_fails_verification() -> None:
    """The signature covers the body."""
    import time

    ts = int(time.time())
    header = sign(SECRET_A, "dlv_x", ts, b'{"a": 1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(b'{"a": 2}', _headers("dlv_x", ts, header))


def test_known_vector() -> None:
    """The signature matches the Standard Webhooks specification's example."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_malformed_secret_is_refused() -> None:
    """A secret that is not base64 raises a SigningError that does not echo it."""
    with pytest.raises(SigningError) as info:
        sign("whsec_not base64!!", "id", 1, b"")
    assert "not base64!!" not in str(info.value)
