"""The console's access rules, pure: roles, what each may do, two-factor codes, sign-in limits.

Klaviyo's rule (SPEC §6): `owner`, `admin` and `manager` may change flows, change status and
replay; `analyst` reads only; adding or editing a webhook step, or changing a flow that has
one, also needs two-factor sign-in enabled. Nothing here does I/O; the store (`users.py`)
and the pages call these functions with what they loaded.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pyotp

ROLES = ("analyst", "manager", "admin", "owner")  # ascending
TOTP_STEP_S = 30
TOTP_SKEW_STEPS = 1  # a code from the step before or after is accepted (phone clocks drift)
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW_MS = 5 * 60_000


class Action(Enum):
    VIEW = "view"
    REPLAY = "replay"
    CHANGE_STATUS = "change status"
    PUBLISH = "publish"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a signed-in user's role and whether two-factor is enabled for them."""

    name: str
    role: str
    two_factor: bool


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def check_role(role: str) -> str:
    """The role if known, else ValueError naming the roles."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(reversed(ROLES))}")
    return role


def at_least(role: str, minimum: str) -> bool:
    return ROLES.index(role) >= ROLES.index(minimum)


def decide(who: Principal, action: Action, *, touches_webhook: bool = False) -> Decision:
    """May `who` do `action`? `touches_webhook`: the change adds, edits or concerns a webhook step."""
    if action is Action.VIEW:
        return Decision(True)
    if not at_least(who.role, "manager"):
        return Decision(False, f"role {who.role} reads only; {action.value} needs manager, admin or owner")
    if touches_webhook and action in (Action.PUBLISH, Action.CHANGE_STATUS) and not who.two_factor:
        return Decision(False, f"{action.value} of a flow with a webhook step needs two-factor sign-in: "
                               "enable it on your account page first")
    return Decision(True)


def has_webhook(definition: Mapping[str, Any] | None) -> bool:
    """True when a flow definition holds a webhook step anywhere (split branches included)."""
    if not definition:
        return False
    return _steps_have_webhook(definition.get("steps") or [])


def _steps_have_webhook(steps: Sequence[Any]) -> bool:
    for step in steps:
        if not isinstance(step, Mapping):
            continue
        if "webhook" in step:
            return True
        split = step.get("split")
        if isinstance(split, Mapping) and (_steps_have_webhook(split.get("then") or [])
                                           or _steps_have_webhook(split.get("else") or [])):
            return True
    return False


def change_touches_webhook(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """A change touches a webhook step when the flow has one before or after it."""
    return has_webhook(old) or has_webhook(new)


# --- two-factor codes ------------------------------------------------------------------


def totp_step(now_s: float) -> int:
    return int(now_s // TOTP_STEP_S)


def verify_totp(secret: str, code: str, *, now_s: float, last_used_step: int | None) -> int | None:
    """The time step `code` belongs to, when it is valid and newer than the last code used; else None.

    A code matches its own 30-second step or one step either side. Refusing any step at or
    before the last one used makes every code single-use, even within its window.
    """
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = totp_step(now_s)
    for step in range(current - TOTP_SKEW_STEPS, current + TOTP_SKEW_STEPS + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
            if last_used_step is not None and step <= last_used_step:
                return None
            return step
    return None


def provisioning_uri(secret: str, user: str, issuer: str = "Flowhook console") -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name=issuer)


def new_totp_secret() -> str:
    return pyotp.random_base32()


# --- sign-in rate limit ----------------------------------------------------------------


def login_allowed(failures_ms: Iterable[int], now_ms: int, *, limit: int = LOGIN_FAILURES_ALLOWED,
                  window_ms: int = LOGIN_WINDOW_MS) -> bool:
    """At most `limit` failed sign-ins per user name and per client address in the window."""
    return sum(1 for at in failures_ms if now_ms - at < window_ms) < limit
