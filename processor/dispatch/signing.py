"""Standard Webhooks v1 signatures (pure: HMAC-SHA256 over `id.timestamp.body`).

Every configured secret signs, and the signatures are sent space-separated in one
`webhook-signature` header, so a receiver can rotate secrets without a gap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from processor.errors import FlowhookError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix of signing secrets, not a secret

__all__ = ["SigningError", "sign", "signature_header", "signing_key"]


class SigningError(FlowhookError):
    """A signing secret is not of the form `whsec_<base64>`."""


def signing_key(secret: str) -> bytes:
    """The HMAC key in a `whsec_<base64>` secret (the prefix is optional)."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError("a signing secret must be 'whsec_' followed by base64") from None
    if not key:
        raise SigningError("a signing secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 signature>` entry for `msg_id.timestamp.body`."""
    payload = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(signing_key(secret), payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one space-separated entry per secret."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)
