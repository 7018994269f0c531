"""Secrets: resolved from FLOWHOOK_SECRET_<NAME>, named but never shown when missing."""

from __future__ import annotations

import pytest

from processor.dispatch.secrets import SecretError, mask, resolve_template, secret_names, secret_value

ENV = {"FLOWHOOK_SECRET_DIRECT_MAIL_TOKEN": "tok-123", "FLOWHOOK_SECRET_OTHER": "x9"}


def test_template_tags_are_replaced() -> None:
    """Literal text stays, every secrets tag is replaced by its value."""
    assert resolve_template("Bearer {{ secrets.DIRECT_MAIL_TOKEN }}", ENV) == "Bearer tok-123"
    assert resolve_template("{{secrets.OTHER}}-{{ secrets.OTHER }}", ENV) == "x9-x9"
    assert secret_names("a {{ secrets.A }} b {{ secrets.B_2 }}") == ["A", "B_2"]


def test_lower_case_names_find_upper_case_variables() -> None:
    """A secret named in lower case is looked up under its upper-case variable too."""
    assert secret_value("other", ENV) == "x9"


def test_missing_secret_names_the_secret() -> None:
    """A missing secret is an error naming the variable to set."""
    with pytest.raises(SecretError, match="FLOWHOOK_SECRET_MISSING"):
        resolve_template("Bearer {{ secrets.MISSING }}", ENV)


def test_other_tags_are_refused() -> None:
    """Secret headers may not carry other template tags."""
    with pytest.raises(SecretError, match="only literal text"):
        resolve_template("{{ person.email }} {{ secrets.OTHER }}", ENV)


def test_mask_hides_values() -> None:
    """Masking replaces every secret value in a text."""
    assert "tok-123" not in mask("failed with Bearer tok-123", ["tok-123"])
