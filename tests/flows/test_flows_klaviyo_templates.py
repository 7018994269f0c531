"""Klaviyo's template surface: the variable spellings, the further Django filters of its
glossary, and how values print where a tag stands in a text body."""

from __future__ import annotations

from typing import Any

import pytest

from processor.flows import klaviyo
from processor.flows import templates as t
from tests.flows.test_flows_templates import render as render_leaf

EVENT = {"id": "evt_1", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
         "properties": {"$value": 19.5, "$extra": {"n": 2}, "Items": [{"sku": "A"}, {"sku": "B"}],
                        "Text": "  Hello <b>World</b>  ", "Zero": 0}}
PROFILE = {"id": "p_1", "email": "a@example.com", "first_name": "ann",
           "location": {"city": "Lyon"}, "properties": {"$phone_number": "+331", "vip": True}}


def render(source: str) -> Any:
    """One leaf rendered with this module's event and profile (a lone tag keeps its type)."""
    return render_leaf(source, EVENT, PROFILE)


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ person.KlaviyoID }}", "p_1"),
    ("{{ profile.email }}", "a@example.com"),
    ("{{ profile|lookup:'$email' }}", "a@example.com"),
    ("{{ first_name }}", "ann"),
    ("Hi {{ first_name|title }} <{{ email }}>", "Hi Ann <a@example.com>"),
    ("{{ person.city }}", "Lyon"),
    ("{{ person.phone_number }}", "+331"),
    ("{{ event.extra.n }}", 2),
    ("{{ event.value }}", 19.5),
    ("{{ event.Items.1.sku }}", "B"),
    ("{% for first_name in event.Items %}{{ first_name.sku }}{% endfor %}", "AB"),
])
def test_klaviyo_variable_spellings(source: str, expected: Any) -> None:
    """person/profile, shorthands, KlaviyoID, location fields, $ twins and list indexes."""
    assert render(source) == expected


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ event|lookup:'$value'|multiply:2 }}", 39.0),
    ("{{ event|lookup:'$value'|divide:0 }}", ""),
    ("{{ event|lookup:'$value'|floatadd:0.5 }}", 20.0),
    ("{{ event|lookup:'$value'|add:1 }}", 20),
    ("{{ event|lookup:'$value'|round }}", 20),
    ("{{ event|lookup:'$value'|ceil }}", 20),
    ("{{ event|lookup:'$value'|floor }}", 19),
    ("{{ event.Zero|at_least:3 }}", 3),
    ("{{ event.Text|trim }}", "Hello <b>World</b>"),
    ("{{ event.Text|striptags|trim }}", "Hello World"),
    ("{{ person.first_name|capfirst|append:'!' }}", "Ann!"),
    ("{{ person.email|cut:'@example.com' }}", "a"),
    ("{{ person.email|replace('a', 'b') }}", "b@exbmple.com"),
    ("{{ event.Items|first|lookup:'sku' }}", "A"),
    ("{{ event.Items|last|lookup:'sku' }}", "B"),
    ("{{ event.Items|length|pluralize }}", "s"),
    ("{{ person.vip|yesno:'y,n' }}", "y"),
    ("{{ person.email|base64_encode }}", "YUBleGFtcGxlLmNvbQ=="),
    ("{{ 'YUBleGFtcGxlLmNvbQ=='|base64_decode }}", "a@example.com"),
    ("{{ 'a b/c'|urlencode }}", "a%20b/c"),
    ("{{ 'one two three'|truncatewords:2 }}", "one two …"),
    ("{{ 'a,b'|split:','|join:'+' }}", "a+b"),
    ("{{ event.missing|default_if_none:'x' }}", "x"),
    ("{{ 'abc'|slice:':2' }}", "ab"),
    ("{{ person.email|count }}", 13),
])
def test_further_django_filters(source: str, expected: Any) -> None:
    """The filters of Klaviyo's glossary beyond SPEC.md's core set."""
    assert render(source) == expected


@pytest.mark.parametrize(("value", "in_string", "bare"), [
    (None, "", "null"),
    (True, "true", "true"),
    (12, "12", "12"),
    ("12.50", "12.50", "12.50"),
    ('say "hi"\n', 'say \\"hi\\"\\n', '"say \\"hi\\"\\n"'),
    (["a", 1], '[\\"a\\",1]', '["a",1]'),
    ('{"a": 1}', '{\\"a\\": 1}', '{"a":1}'),
    ('"tojson text"', '\\"tojson text\\"', '"tojson text"'),
])
def test_values_print_for_where_the_tag_stands(value: Any, in_string: str, bare: str) -> None:
    """Inside a JSON string: escaped text; where a value goes: one JSON value."""
    assert klaviyo.json_in_string(value) == in_string
    assert klaviyo.json_value(value) == bare


def test_tags_are_wrapped_by_their_place_in_the_json() -> None:
    """A tag between quotes is a string part; a bare tag is a value; block tags are left alone."""
    source = '{"a": "x {{ v }}", "b": {{ w }}{% if c %}, "q": "\\"{{ z }}"{% endif %}}'
    rewritten = klaviyo.json_text_template(source)
    assert rewritten == ('{"a": "x {{ (v)|_flowhook_json_in_string }}", "b": {{ (w)|_flowhook_json_value }}'
                         '{% if c %}, "q": "\\"{{ (z)|_flowhook_json_in_string }}"{% endif %}}')


def test_context_filters_cannot_be_written_by_hand() -> None:
    """The internal print filters are not part of the template language users write."""
    assert any("unknown filter" in p for p in t.check("{{ x|_flowhook_json_value }}"))


def test_internal_fields_warn_with_their_line() -> None:
    """Klaviyo-internal fields and message-only variables are warnings, located by line."""
    source = ('{\n"a": "{{ person.created }}",\n"b": "{{ event|lookup:\'$attribution\' }}",\n'
              '"c": "{{ unsubscribe_link }}"}')
    assert t.check(source) == []
    assert [line for _m, line in t.warnings_located(source)] == [2, 3, 4]
