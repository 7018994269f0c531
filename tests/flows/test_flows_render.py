"""Rendering webhook steps: object bodies, string bodies, headers, secrets, URLs and limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.flows.loader import flow_from_dict
from processor.flows.model import Flow, WebhookStep
from processor.flows.render import render_webhook

EVENT = {"id": "evt_01", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
         "profile": {"id": "p_42"},
         "properties": {"OrderId": "1001", "$value": 129.5, "Items": [{"sku": "A1", "qty": 2}],
                        "extra": {"line_items": [{"title": "Shoe", "price": 50}]}, "$source": "web"}}
PROFILE = {"id": "p_42", "email": "shah@example.com", "first_name": "shah", "last_name": "khan",
           "phone_number": "+15551234567",
           "properties": {"address": "1 Main St", "Favorite Color": "Red", "vip": True}}


def flow_with(**fields: Any) -> tuple[Flow, WebhookStep]:
    """A flow with one webhook step having these fields."""
    hook = {"id": "w", "url": "https://example.com/hook", **fields}
    definition = {"id": "f", "name": "Flow F", "status": "live", "trigger": {"metric": "Placed Order"},
                  "steps": [{"webhook": hook}]}
    flow = flow_from_dict(definition, source="test")
    step = flow.steps[0]
    assert isinstance(step, WebhookStep)
    return flow, step


def render_body(body: Any, event: dict[str, Any] = EVENT, profile: dict[str, Any] = PROFILE) -> Any:
    """The rendered body, parsed."""
    flow, step = flow_with(body=body)
    request = render_webhook(step, flow=flow, event=event, profile=profile)
    assert request.error is None, request.error
    assert request.body is not None
    return json.loads(request.body)


def test_spec_example_body() -> None:
    """SPEC.md's example body renders with types kept for lone tags."""
    body = {
        "name": "{{ person.first_name }} {{ person.last_name }}",
        "address": "{{ person.address|default:'' }}",
        "order_id": "{{ event.OrderId }}",
        "items": "{{ event.Items }}",
        "total": "{{ event|lookup:'$value' }}",
    }
    assert render_body(body) == {"name": "shah khan", "address": "1 Main St", "order_id": "1001",
                                 "items": [{"sku": "A1", "qty": 2}], "total": 129.5}


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ person|lookup:'$phone_number'|default:'' }}", "+15551234567"),
    ("{{ person|lookup:'$email' }}", "shah@example.com"),
    ("{{ person|lookup:'Favorite Color' }}", "Red"),
    ("{{ person.vip }}", True),
    ("{{ event.extra.line_items }}", [{"title": "Shoe", "price": 50}]),
    ("{{ event.extra.line_items.0.title }}", "Shoe"),
    ("{{ event|lookup:'extra'|lookup:'line_items'|lookup:0|lookup:'price' }}", 50),
    ("{{ event|lookup:'$source'|default:'website' }}", "web"),
    ("{{ event|lookup:'$event_id' }}", "evt_01"),
    ("{{ event|lookup:'$time'|date:'Y-m-d' }}", "2026-11-27"),
    ("{{ event.metric }}", "Placed Order"),
    ("{{ person.first_name|title }} {{ person.last_name|upper }}", "Shah KHAN"),
    ("{{ person.email|lower }}", "shah@example.com"),
    ("{{ event|lookup:'$value'|floatformat:2 }}", "129.50"),
    ("{{ event|lookup:'$value'|floatformat }}", "129.5"),
    ("{{ event.Items|length }}", 1),
    ("{{ event.Items|tojson }}", '[{"sku":"A1","qty":2}]'),
    ("{{ flow.id }}/{{ flow.name }}", "f/Flow F"),
    ("{{ person.nickname }}", ""),
    ("{{ person.nickname|default:'friend' }}", "friend"),
    ("{{ person.a.b.c }}", ""),
    ("{% for item in event.Items %}{{ item.sku }}x{{ item.qty }}{% endfor %}", "A1x2"),
    ("{% if person.vip %}VIP{% else %}regular{% endif %}", "VIP"),
    ("{{ person.__class__ }}{{ person.items }}{{ event.keys }}", ""),
])
def test_klaviyo_style_templates(template: str, expected: Any) -> None:
    """Klaviyo-style tags from its documentation render to the value a Klaviyo user expects."""
    assert render_body({"v": template})["v"] == expected


def test_klaviyo_pasted_body_with_lists_and_nesting() -> None:
    """A typical Klaviyo webhook body, written as an object, renders to the expected JSON."""
    body = {
        "profile": {"email": "{{ person.email }}",
                    "phone": "{{ person|lookup:'$phone_number'|default:'' }}"},
        "order": {"id": "{{ event.OrderId }}", "lines": "{{ event.extra.line_items }}",
                  "skus": "{{ event.Items.0.sku }}"},
        "tags": ["klaviyo", "{{ event.metric }}"],
    }
    assert render_body(body) == {
        "profile": {"email": "shah@example.com", "phone": "+15551234567"},
        "order": {"id": "1001", "lines": [{"title": "Shoe", "price": 50}], "skus": "A1"},
        "tags": ["klaviyo", "Placed Order"],
    }


def test_values_cannot_inject_keys_or_break_json() -> None:
    """Quotes and braces in data stay inside their string: no new keys, always valid JSON."""
    profile = {**PROFILE, "first_name": '", "admin": true, "x": "'}
    rendered = render_body({"name": "Hi {{ person.first_name }}", "raw": "{{ person.first_name }}"},
                           profile=profile)
    assert set(rendered) == {"name", "raw"}
    assert rendered["raw"] == profile["first_name"]


def test_string_body_renders_as_text_and_must_parse() -> None:
    """A pasted text body renders as text with values escaped where their tag stands; if the
    result is still not JSON (a block left a comma), error says so (mode invalid)."""
    body = "{\"email\": \"{{ person.email }}\", \"value\": {{ event|lookup:'$value' }}}"
    flow, step = flow_with(body=body)
    good = render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    assert good.error is None and json.loads(good.body or "") == {"email": "shah@example.com", "value": 129.5}
    quoted = render_webhook(step, flow=flow, event=EVENT, profile={**PROFILE, "email": 'a"b'})
    assert quoted.error is None and json.loads(quoted.body or "")["email"] == 'a"b'
    flow, step = flow_with(body='{"email": "{{ person.email }}"{% if person.vip %},{% endif %}}')
    bad = render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    assert bad.error is not None and "not valid JSON" in bad.error


def test_headers_rendered_and_secrets_left_as_templates() -> None:
    """Plain headers are rendered; secret headers and signing secrets travel unrendered, by name."""
    headers = {"Authorization": "Bearer {{secrets.TOKEN}}", "X-Who": "{{ person.email }}"}
    flow, step = flow_with(headers=headers,
                           signing_secret=["{{ secrets.NEW }}", "{{ secrets.OLD }}"], body={"a": 1})
    request = render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    assert request.headers == {"X-Who": "shah@example.com"}
    assert request.secret_headers == {"Authorization": "Bearer {{ secrets.TOKEN }}"}
    assert request.signing_secrets == ["NEW", "OLD"]
    assert "secrets" not in json.dumps(request.headers)


def test_header_values_from_data_cannot_inject_headers() -> None:
    """CR/LF in profile data become spaces in a header value."""
    flow, step = flow_with(headers={"X-Name": "{{ person.first_name }}"})
    profile = {**PROFILE, "first_name": "a\r\nX-Evil: 1"}
    assert render_webhook(step, flow=flow, event=EVENT, profile=profile).headers == {"X-Name": "a  X-Evil: 1"}


def test_url_values_are_percent_encoded() -> None:
    """Data put into a URL cannot change its path or add query parameters."""
    flow, step = flow_with(url="https://example.com/u/{{ person.id }}?o={{ event.OrderId }}")
    event = {**EVENT, "properties": {"OrderId": "1&admin=1/../x"}}
    request = render_webhook(step, flow=flow, event=event, profile={**PROFILE, "id": "p 42"})
    assert request.url == "https://example.com/u/p%2042?o=1%26admin%3D1%2F..%2Fx"


def test_no_body_and_method() -> None:
    """A step without body sends none; the method is carried through."""
    flow, step = flow_with(method="patch")
    request = render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    assert (request.method, request.body, request.error) == ("PATCH", None, None)


@pytest.mark.parametrize("template", [
    "{{ 'x' * 10000000 }}",
    "{% for a in event.Big %}{% for b in event.Big %}{% for c in event.Big %}."
    "{% endfor %}{% endfor %}{% endfor %}",
    "{{ 9 ** 999999 }}",
])
def test_runaway_templates_stop_with_an_error(template: str) -> None:
    """Templates that would run long or grow huge end with an error, not a hung worker."""
    flow, step = flow_with(body={"v": template})
    event = {**EVENT, "properties": {"Big": list(range(1000))}}
    request = render_webhook(step, flow=flow, event=event, profile=PROFILE)
    assert request.error is not None and request.body is None


def test_output_is_bounded_across_leaves() -> None:
    """Many lone tags copying a large value cannot build a body past the size limit."""
    flow, step = flow_with(body={f"k{i}": "{{ event.Big }}" for i in range(50)})
    event = {**EVENT, "properties": {"Big": "x" * 100_000}}
    request = render_webhook(step, flow=flow, event=event, profile=PROFILE)
    assert request.body is None and request.error is not None and "larger than" in request.error


def test_url_templates_with_spaces_inside_tags_are_valid() -> None:
    """Whitespace inside a tag of the URL is fine; only the literal URL must have none."""
    flow, step = flow_with(url="https://example.com/c/{{ person|lookup:'Favorite Color' }}")
    assert render_webhook(step, flow=flow, event=EVENT, profile=PROFILE).url == "https://example.com/c/Red"


def test_templates_compile_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering the same flow version again reuses the compiled templates."""
    from processor.flows import render

    calls: list[str] = []
    original = render.compile_step

    def counting(step: WebhookStep) -> render.CompiledStep:
        calls.append(step.id)
        return original(step)

    monkeypatch.setattr(render, "compile_step", counting)
    flow, step = flow_with(body={"v": "{{ person.email }}"})
    for _ in range(3):
        render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    assert calls == ["w"]


def test_klaviyo_text_body_pasted_as_is() -> None:
    """A body pasted from Klaviyo as text, with bare tags for numbers and lists, renders to JSON."""
    body = (
        '{\n  "email": "{{ person.email }}",\n'
        '  "phone": "{{ person|lookup:\'$phone_number\'|default:\'\' }}",\n'
        '  "order_total": {{ event|lookup:\'$value\' }},\n'
        '  "vip": {{ person.vip }},\n'
        '  "line_items": {{ event.extra.line_items }}\n}'
    )
    flow, step = flow_with(body=body)
    request = render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    assert request.error is None
    assert json.loads(request.body or "") == {
        "email": "shah@example.com", "phone": "+15551234567", "order_total": 129.5, "vip": True,
        "line_items": [{"title": "Shoe", "price": 50}],
    }


def test_compiled_once_per_flow_version() -> None:
    """The same step object renders from the cache; another definition with the same ids does not."""
    flow, step = flow_with(body={"v": "{{ person.email }}"})
    first = render_webhook(step, flow=flow, event=EVENT, profile=PROFILE)
    other_flow, other_step = flow_with(body={"v": "{{ person.first_name }}"})
    second = render_webhook(other_step, flow=other_flow, event=EVENT, profile=PROFILE)
    assert json.loads(first.body or "") == {"v": "shah@example.com"}
    assert json.loads(second.body or "") == {"v": "shah"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=json_values, name=st.text())
def test_any_data_yields_valid_json(value: Any, name: str) -> None:
    """Whatever profile and event values hold (quotes, unicode, control characters, big numbers): JSON."""
    flow, step = _hyp_flow
    event = {**EVENT, "properties": {"v": value, "$value": value}}
    profile = {**PROFILE, "first_name": name, "properties": {"x": value}}
    request = render_webhook(step, flow=flow, event=event, profile=profile)
    assert request.error is None and request.body is not None
    parsed = json.loads(request.body)
    assert set(parsed) == {"lone", "text", "person", "nested", "list"}
    assert parsed["person"] == name


_hyp_flow = flow_with(body={
    "lone": "{{ event.v }}", "text": "value: {{ event|lookup:'$value' }} {{ person.x|tojson }}",
    "person": "{{ person.first_name }}", "nested": {"a": ["{{ person.x }}", "{{ event.v|join:', ' }}"]},
    "list": ["{{ event.v|length }}", "{{ person.first_name|upper }}"],
})
