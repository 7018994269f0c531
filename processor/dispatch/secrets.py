"""Secrets from `FLOWHOOK_SECRET_<NAME>`, resolved only at send time (pure, no I/O but env).

Secret headers arrive as templates of literal text and `{{ secrets.NAME }}` tags; signing
secrets arrive as names. Values never leave this process except inside a request: they are
not logged, not written to a topic, and a missing secret is reported by name only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from processor import constants as c
from processor.basics import MASK, SECRET_TAG, mask_values
from processor.errors import FlowhookError

_TAG = SECRET_TAG

__all__ = ["MASK", "SecretError", "SecretMissing", "mask", "resolve_template", "secret_names", "secret_value"]


class SecretError(FlowhookError):
    """A secret is missing or a secret template is malformed; the message names no value."""


class SecretMissing(SecretError):
    """A secret the request needs is not set: the operator's configuration error, so the
    delivery waits (see SPEC §3) instead of failing. `name` is the secret's name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name} is not set: export {c.SECRET_ENV_PREFIX}{name.upper()}")
        self.name = name


def secret_value(name: str, env: Mapping[str, str] | None = None) -> str:
    """The value of secret `name` from `FLOWHOOK_SECRET_<NAME>` (exact, then upper-case)."""
    env = os.environ if env is None else env
    for var in (c.SECRET_ENV_PREFIX + name, c.SECRET_ENV_PREFIX + name.upper()):
        value = env.get(var)
        if value:
            return value
    raise SecretMissing(name)


def secret_names(template: str) -> list[str]:
    """The secret names a template mentions, in order."""
    return _TAG.findall(template)


def resolve_template(template: str, env: Mapping[str, str] | None = None) -> str:
    """Replace every `{{ secrets.NAME }}` tag; any other tag is an error."""
    rest = _TAG.sub("", template)
    if "{{" in rest or "{%" in rest:
        raise SecretError("a secret header may hold only literal text and {{ secrets.NAME }} tags")
    return _TAG.sub(lambda m: secret_value(m.group(1), env), template)


mask = mask_values  # the name the dispatcher and its tests use
