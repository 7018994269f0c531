"""The console's access rules: roles, Klaviyo's two-factor rule for webhooks, TOTP codes, sign-in limits."""

from __future__ import annotations

import pyotp
import pytest

from processor.console import auth
from processor.console.auth import Action, Principal

WEBHOOK_FLOW = {"id": "f", "steps": [{"delay": "1d"}, {"webhook": {"id": "w", "url": "https://x.example/h"}}]}
SPLIT_FLOW = {"id": "f", "steps": [{"split": {"if": [], "then": [], "else": [{"webhook": {"id": "w"}}]}}]}
PLAIN_FLOW = {"id": "f", "steps": [{"delay": "1d"}]}
CHANGES = (Action.REPLAY, Action.CHANGE_STATUS, Action.PUBLISH)


@pytest.mark.parametrize("role", ["owner", "admin", "manager", "analyst"])
def test_everyone_may_read(role: str) -> None:
    """Every role may view every page."""
    assert auth.decide(Principal("u", role, False), Action.VIEW).allowed


@pytest.mark.parametrize("action", CHANGES)
@pytest.mark.parametrize("two_factor", [True, False])
def test_analysts_may_change_nothing(action: Action, two_factor: bool) -> None:
    """An analyst is refused every change, with or without two-factor, naming the roles that may."""
    decision = auth.decide(Principal("a", "analyst", two_factor), action, touches_webhook=False)
    assert not decision.allowed and "manager" in decision.reason


@pytest.mark.parametrize("role", ["owner", "admin", "manager"])
@pytest.mark.parametrize("action", [Action.CHANGE_STATUS, Action.PUBLISH])
def test_webhook_changes_need_two_factor(role: str, action: Action) -> None:
    """Manager or higher without two-factor cannot change a flow with a webhook step; with it they can."""
    without = auth.decide(Principal("m", role, False), action, touches_webhook=True)
    assert not without.allowed and "two-factor" in without.reason
    assert auth.decide(Principal("m", role, True), action, touches_webhook=True).allowed
    assert auth.decide(Principal("m", role, False), action, touches_webhook=False).allowed


def test_replay_needs_a_manager_but_not_two_factor() -> None:
    """Replaying sends a delivery again; it edits no webhook step, so the role is enough."""
    assert auth.decide(Principal("m", "manager", False), Action.REPLAY, touches_webhook=True).allowed


def test_webhook_steps_are_found_in_split_branches() -> None:
    """A webhook step inside a split branch counts; a flow of delays only has none."""
    assert auth.has_webhook(WEBHOOK_FLOW) and auth.has_webhook(SPLIT_FLOW)
    assert not auth.has_webhook(PLAIN_FLOW) and not auth.has_webhook(None)
    assert auth.change_touches_webhook(PLAIN_FLOW, WEBHOOK_FLOW)  # adding one
    assert auth.change_touches_webhook(WEBHOOK_FLOW, PLAIN_FLOW)  # removing one
    assert not auth.change_touches_webhook(None, PLAIN_FLOW)


def test_unknown_roles_are_refused() -> None:
    """A role outside the four is an error naming them."""
    with pytest.raises(ValueError, match="owner, admin, manager, analyst"):
        auth.check_role("superuser")


SECRET = pyotp.random_base32()
NOW = 1_800_000_015.0  # 15 s into a 30 s step


def _code(offset_steps: int = 0) -> str:
    return pyotp.TOTP(SECRET).at(NOW + offset_steps * 30)


def test_a_current_code_gives_its_step() -> None:
    """The code of the current step is accepted and tells which step it was."""
    assert auth.verify_totp(SECRET, _code(), now_s=NOW, last_used_step=None) == auth.totp_step(NOW)


@pytest.mark.parametrize("offset", [-1, 1])
def test_one_step_of_clock_skew_is_allowed(offset: int) -> None:
    """A code from the step before or after (a phone clock off by up to 30 s) is accepted."""
    step = auth.verify_totp(SECRET, _code(offset), now_s=NOW, last_used_step=None)
    assert step == auth.totp_step(NOW) + offset


@pytest.mark.parametrize("offset", [-3, -2, 2, 3])
def test_codes_outside_the_window_are_refused(offset: int) -> None:
    """Codes two or more steps away are refused."""
    assert auth.verify_totp(SECRET, _code(offset), now_s=NOW, last_used_step=None) is None


def test_a_code_cannot_be_used_twice() -> None:
    """Once a step is used, its code (and any older one) is refused, even inside the window."""
    step = auth.verify_totp(SECRET, _code(), now_s=NOW, last_used_step=None)
    assert step is not None
    assert auth.verify_totp(SECRET, _code(), now_s=NOW, last_used_step=step) is None
    assert auth.verify_totp(SECRET, _code(-1), now_s=NOW, last_used_step=step) is None
    assert auth.verify_totp(SECRET, _code(1), now_s=NOW, last_used_step=step) == step + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "000000"])
def test_malformed_or_wrong_codes_are_refused(code: str) -> None:
    """Wrong length, letters, or a wrong number are all refused."""
    if code == "000000" and _code() == code:
        pytest.skip("the random secret's code happens to be 000000")
    assert auth.verify_totp(SECRET, code, now_s=NOW, last_used_step=None) is None


def test_provisioning_uri_names_the_user_and_issuer() -> None:
    """The enrolment URI is a standard otpauth URI with the secret, the user and the issuer."""
    uri = auth.provisioning_uri(SECRET, "alice")
    assert uri.startswith("otpauth://totp/") and f"secret={SECRET}" in uri and "alice" in uri
    assert "issuer=Flowhook" in uri


def test_sign_in_limit_counts_recent_failures_only() -> None:
    """Five failures within five minutes block; older failures do not count."""
    now = 10_000_000
    recent = [now - i * 1000 for i in range(5)]
    assert not auth.login_allowed(recent, now)
    assert auth.login_allowed(recent[:4], now)
    old = [now - auth.LOGIN_WINDOW_MS - 1] * 10
    assert auth.login_allowed(old + recent[:4], now)
