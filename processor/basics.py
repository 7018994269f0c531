"""Rules several parts of Flowhook share, each defined once (pure).

- the profile key: which profile a record belongs to (its id, else its lower-cased email),
  used by the engine, by `flowhook send` for the partition key, and by the tools;
- the secret tag `{{ secrets.NAME }}`: checked in flow files, kept unrendered in webhook-due
  records, resolved by the dispatcher, masked in previews and the console;
- masking: secret values in texts (errors, excerpts), secret tags in templates shown to
  people, and values under secret-looking keys in log lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["MASK", "SECRET_KEY_WORDS", "SECRET_TAG", "is_secret_key", "mask_tags", "mask_values",
           "profile_key", "record_profile_key"]

SECRET_TAG: Final = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MASK: Final = "••••"
SECRET_KEY_WORDS: Final = ("secret", "token", "password", "authorization")


def profile_key(profile: Mapping[str, Any]) -> str | None:
    """The profile id a profile (an event's `profile`, or a profile update) belongs to: its
    `id`, else its lower-cased email; None when it has neither."""
    pid = profile.get("id")
    if isinstance(pid, str) and pid:
        return pid
    email = profile.get("email")
    if isinstance(email, str) and email:
        return email.strip().lower()
    return None


def record_profile_key(record: Mapping[str, Any]) -> str | None:
    """`profile_key` of an event (its `profile`) or of a profile update (the record itself)."""
    person = record.get("profile", record)
    return profile_key(person) if isinstance(person, Mapping) else None


def mask_values(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of the given secret values replaced by the mask (the
    longest first, so a value containing another is masked whole)."""
    for value in sorted(values, key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return text


def mask_tags(template: str) -> str:
    """A header template with each `{{ secrets.NAME }}` tag shown as the mask."""
    return SECRET_TAG.sub(MASK, template)


def is_secret_key(name: str) -> bool:
    """True for a field name whose value must never reach a log line."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)
