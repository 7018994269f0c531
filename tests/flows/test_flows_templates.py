"""The template engine: Django-style syntax, the filters SPEC.md lists, the sandbox and its limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from processor.flows import templates as t
from processor.flows import values
from processor.flows.loader import flow_from_dict
from processor.flows.model import WebhookStep
from processor.flows.render import RenderedRequest, render_webhook
from processor.records import schema

EVENT = {"id": "evt_9", "metric": "Placed Order", "time": "2026-11-27T10:05:09Z",
         "properties": {"$value": 1234.5, "n": 3, "when": 1_764_237_909, "names": ["a", "b"], "none": None}}
PROFILE = {"id": "p", "first_name": "mary o'neil", "properties": {"tier": "gold", "nothing": None}}


def render(source: str, event: dict[str, Any] = EVENT, profile: dict[str, Any] = PROFILE) -> Any:
    """Render one leaf under a fresh budget; lone tags keep their type."""
    token = values.new_budget()
    try:
        variables = t.variables_for(event=event, profile=profile, flow_id="f", flow_name="F")
        return t.compile_leaf(source).render_value(variables)
    finally:
        values.end_budget(token)


@pytest.mark.parametrize(("source", "translated"), [
    ("{{ x|lookup:'$value'|default:'' }}", "{{ x|lookup('$value')|default('') }}"),
    ("{{ x|floatformat:2 }}", "{{ x|floatformat(2) }}"),
    ('{{ x|join:", " }}', '{{ x|join(", ") }}'),
    ("a|b:c {{ x }}", "a|b:c {{ x }}"),
    ("{{ 'a|b:c' }}", "{{ 'a|b:c' }}"),
    ("{% if x|length:0 %}", "{% if x|length(0) %}"),
])
def test_django_filter_arguments_become_jinja_calls(source: str, translated: str) -> None:
    """`|name:arg` inside tags is rewritten; text and string literals are left alone."""
    assert t.translate(source) == translated


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ event|lookup:'$value'|floatformat }}", "1234.5"),
    ("{{ event.n|floatformat }}", "3"),
    ("{{ event.n|floatformat:2 }}", "3.00"),
    ("{{ event.n|floatformat:-2 }}", "3"),
    ("{{ event|lookup:'$value'|floatformat:-2 }}", "1234.50"),
    ("{{ event|lookup:'$value'|floatformat:'2g' }}", "1,234.50"),
    ("{{ person.first_name|floatformat }}", ""),
    ("{{ person.first_name|title }}", "Mary O'Neil"),
    ("{{ 'don\\'t stop at 3rd'|title }}", "Don't Stop At 3rd"),
    ("{{ event.names|join:' & ' }}", "a & b"),
    ("{{ event.names|length }}", 2),
    ("{{ person.missing|length }}", 0),
    ("{{ event|lookup:'$time'|date:'Y-m-d H:i:s' }}", "2026-11-27 10:05:09"),
    ("{{ event|lookup:'$time'|date:'D, j N Y' }}", "Fri, 27 Nov. 2026"),
    ("{{ event|lookup:'$time'|date:'jS F, g:i A' }}", "27th November, 10:05 AM"),
    ("{{ event.when|date:'Y-m-d' }}", "2025-11-27"),
    ("{{ event.when|date:'\\\\Y Y' }}", "Y 2025"),
    ("{{ person.first_name|date:'Y' }}", ""),
    ("{{ event.none|default:'x' }}", "x"),
    ("{{ event.none }}", None),
    ("{{ person.nothing }}", None),
    ("{{ person|lookup:'tier'|upper }}", "GOLD"),
    ("{{ person|tojson }}", '{"id":"p","first_name":"mary o\'neil","tier":"gold","nothing":null}'),
    ("{{ event.missing|tojson }}", "null"),
    ("n={{ event.n }} v={{ event|lookup:'$value' }} l={{ event.names }} z={{ event.none }}",
     'n=3 v=1234.5 l=["a","b"] z='),
    ("{{ event.n > 2 }}", True),
])
def test_filters_behave_like_klaviyos(source: str, expected: Any) -> None:
    """default, lookup, upper, title, floatformat, join, length, date and tojson as Klaviyo users expect."""
    assert render(source) == expected


def test_huge_numbers_stay_exact() -> None:
    """Integers beyond 64 bits render exactly in object bodies."""
    big = 10**30 + 7
    hook = {"id": "w", "url": "https://e.com", "body": {"v": "{{ event.big }}", "t": "{{ event.big }}!"}}
    definition = {"id": "f", "status": "live", "trigger": {"metric": "M"}, "steps": [{"webhook": hook}]}
    flow = flow_from_dict(definition, source="m")
    step = flow.steps[0]
    assert isinstance(step, WebhookStep)
    request = render_webhook(step, flow=flow, event={**EVENT, "properties": {"big": big}}, profile=PROFILE)
    assert request.body == f'{{"v":{big},"t":"{big}!"}}'


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ event.__class__.__init__.__globals__ }}",
    "{{ person._profile }}",
    "{{ event._event }}",
    "{{ person._record }}",
    "{{ event._record }}",
    "{{ person._find }}",
    "{{ event.names.append }}",
    "{% for x in event.names %}{{ loop.__class__ }}{% endfor %}",
])
def test_templates_cannot_reach_python(source: str) -> None:
    """Attribute access sees JSON data only: Python attributes and methods are missing values."""
    assert render(source) in ("", None)


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ nobody }}", "unknown variable 'nobody'"),
    ("{{ forloop.counter }}", "loop.index"),
    ("{{ range(10) }}", "unknown variable 'range'"),
    ("{{ x|attr('y') }}", "unknown filter 'attr'"),
    ("{% macro m() %}{% endmacro %}", "{% macro %} is not supported"),
    ("{% include 'x' %}", "{% include %} is not supported"),
    ("{% catalog item.id %}{% endcatalog %}", "product feeds"),
    ("{{ organization.name }}", "organization variables"),
    ("{{ person.x }}" * 2000, "longer than"),
    ("{% for i in event.Items %}{{ i }}", "does not parse"),
    ("{{ event.$value }}", "lookup:'$value'"),
])
def test_check_explains_what_to_write(source: str, expected: str) -> None:
    """Template checks name the problem and the fix."""
    problems = t.check(source)
    assert any(expected in p for p in problems), problems


def test_check_allows_loop_variables_and_secrets_where_allowed() -> None:
    """Names a template defines itself are fine; secrets only where allowed."""
    assert t.check("{% for item in event.Items %}{{ item.sku }}{{ loop.index }}{% endfor %}") == []
    assert t.check("{{ secrets.TOKEN }}", allow_secrets=True) == []
    assert t.check("{{ secrets.TOKEN }}") != []


def test_rendered_request_matches_the_webhook_record_schema() -> None:
    """as_record() is exactly the `request` object of schemas/webhook.schema.json."""
    request_schema = {**schema("webhook")["properties"]["request"], "additionalProperties": False}
    request = RenderedRequest("POST", "https://e.com", {"X": "1"}, {"A": "{{ secrets.T }}"}, "{}", ["S"])
    record = request.as_record()
    assert list(Draft202012Validator(request_schema).iter_errors(record)) == []


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(value=json_like)
def test_string_bodies_never_raise(value: Any) -> None:
    """A text body yields valid JSON or an error for the `invalid` outcome, whatever the data."""
    body = '{"a": "{{ event.v }}", "b": {{ event.v }}, "c": {{ event.v|tojson }}}'
    hook = {"id": "w", "url": "https://e.com", "body": body}
    definition = {"id": "s", "status": "live", "trigger": {"metric": "M"}, "steps": [{"webhook": hook}]}
    flow = flow_from_dict(definition, source="m")
    step = flow.steps[0]
    assert isinstance(step, WebhookStep)
    request = render_webhook(step, flow=flow, event={**EVENT, "properties": {"v": value}}, profile=PROFILE)
    if request.error is None:
        assert request.body is not None
        json.loads(request.body)
    else:
        assert "JSON" in request.error
