"""`flowhook preview` and the engine agree: the same webhook-due records for the same flow,
event and profile.

The engine side is driven the way the processor drives it: a profile update record, then
the event, then a wake-up at every time the state says something falls due, until nothing
is left. Preview runs the core its own way (a merged profile, one run followed); the test
fails when preview's setup, clock or wake-ups differ from the engine's, or when it tells a
webhook the core did not produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.clock import iso, parse_iso_ms
from processor.engine.core import handle
from processor.engine.flowset import FlowSet
from processor.engine.preview import preview
from processor.engine.state import ProfileState
from processor.flows.klaviyo_import import convert
from processor.flows.loader import flow_from_dict, load_flow_file
from processor.flows.model import Flow

ROOT = Path(__file__).parent.parent.parent
KLAVIYO = Path(__file__).parent.parent / "fixtures" / "klaviyo"
T0 = parse_iso_ms("2026-11-27T10:00:00Z")
HOOK = "https://hooks.example.com/in"
MAX_WAKEUPS = 100


def _split_flow() -> Flow:
    """Nested splits on profile and event, delays inside branches, a delay at the end, a held status."""
    vip = [{"property": "vip", "op": "eq", "value": True}]
    big = [{"property": "$value", "op": "gte", "value": 100}]
    return flow_from_dict({
        "id": "splits", "status": "manual",
        "trigger": {"metric": "Placed Order",
                    "filters": [{"property": "Channel", "op": "in", "value": ["web", "app"]}]},
        "profile_filters": [{"property": "country", "op": "ne", "value": "DE"}],
        "steps": [
            {"split": {"on": "event", "if": big, "then": [
                {"delay": "1h"},
                {"split": {"if": vip, "then": [{"webhook": {"id": "big-vip", "url": HOOK,
                                                            "body": {"v": "{{ event|lookup:'$value' }}"}}}],
                           "else": [{"delay": {"until": "09:00", "timezone": "Europe/Berlin"}}]}},
            ], "else": [{"webhook": {"id": "small", "url": HOOK, "body": {"who": "{{ person.email }}"}}}]}},
            {"delay": "2d"},
            {"webhook": {"id": "after", "url": HOOK, "body": {"order": "{{ event.OrderId }}"}}},
            {"delay": "1d"},
        ]}, source="test", allow_http=False)


def _klaviyo_body_flow(path: Path) -> Flow:
    """A flow whose webhook carries one of the Klaviyo-style template bodies, after a delay."""
    case = yaml.safe_load(path.read_text())
    return flow_from_dict({
        "id": f"klaviyo-{path.stem}", "status": "live", "trigger": {"metric": case["event"]["metric"]},
        "steps": [{"delay": "30m"}, {"webhook": {"id": "w", "url": HOOK, "body": case["body"]}}]},
        source=str(path), allow_http=False)


def _imported(name: str, metrics: dict[str, str]) -> Flow:
    imported = convert(yaml.safe_load((KLAVIYO / "flows" / name).read_text()), metric_names=metrics)
    return flow_from_dict({**imported.definition, "status": "live"}, source=name, allow_http=False)


def _flows() -> list[Flow]:
    files = [*sorted((ROOT / "examples" / "flows").glob("*.yaml")),
             *(Path(__file__).parent.parent / "fixtures" / "flows" / n
               for n in ("good-full.yaml", "string-body.json"))]
    found = [load_flow_file(p, allow_http=True) for p in files]
    found += [_klaviyo_body_flow(p) for p in sorted((KLAVIYO / "bodies").glob("*.yaml"))]
    found += [_imported("abandoned-cart.json", {"RXm9Uc": "Started Checkout", "Tq8Lmb": "Placed Order"}),
              _imported("trigger-split.json", {"PlcOrd": "Placed Order"}), _split_flow()]
    # A date-property flow starts from the profile's date, not from an event; preview starts
    # it from the pasted event instead, so the engine cannot be driven the same way.
    return [f for f in found if f.trigger.kind != "date_property"]


FLOWS = _flows()


def engine_dues(flow: Flow, event: dict[str, Any], profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The webhook-due records the processor's core produces, fed as the processor feeds it."""
    flows = FlowSet([flow])
    state = ProfileState(profile["id"])
    now = parse_iso_ms(event["time"])
    outcomes = [handle(state, "profile", profile, flows, now), handle(state, "event", event, flows, now)]
    for _ in range(MAX_WAKEUPS):
        due = state.next_due_ms()
        if due is None:
            break
        wakeup = {"profile_id": state.profile_id, "due_at": iso(due), "reason": "delay"}
        outcomes.append(handle(state, "wakeup", wakeup, flows, due))
    assert not state.runs, "a run is still active after every wake-up"
    return [o.value for outcome in outcomes for o in outcome.outputs if o.kind == "webhook"]


def an_event(flow: Flow, *, at_ms: int = T0, metric: str | None = None, **props: Any) -> dict[str, Any]:
    trigger = flow.trigger
    return {"id": "evt_1", "metric": metric or trigger.metric or "Anything", "time": iso(at_ms),
            "profile": {"id": "p_1", "email": "Pat@Example.com", "first_name": "Pat"},
            "properties": {"list_id": trigger.list_id, "segment_id": trigger.segment_id, "OrderId": "1001",
                           "$value": 129.5, "Channel": "web", "Items": [{"sku": "A1", "price": 3}], **props}}


A_PROFILE = {"id": "p_1", "phone_number": "+15551234567",
             "properties": {"country": "US", "Country": "US", "vip": True, "address": "1 Main St"}}
# Event properties that lead a flow's run to its webhooks where the defaults do not.
REACHING = {"order-by-channel": {"Channel": "app"}, "klaviyo-vjds2h": {"$value": 80}}


@pytest.mark.parametrize("flow", FLOWS, ids=[f.id for f in FLOWS])
def test_preview_shows_the_engines_webhooks_for_every_flow(flow: Flow) -> None:
    """For an event of each flow's own trigger the run reaches webhooks, the same ones."""
    event = an_event(flow, **REACHING.get(flow.id, {}))
    shown = preview(flow, event, A_PROFILE)
    expected = engine_dues(flow, event, A_PROFILE)
    assert expected, f"{flow.id}: the engine sent nothing, so this case proves nothing"
    assert shown.dues == expected
    assert [step for step, _ in shown.requests] == [d["step_id"] for d in expected]
    text = "\n".join(shown.lines)
    for due in expected:
        assert f"webhook-id: {due['delivery_id']}" in text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=st.sampled_from(FLOWS),
       offset_min=st.integers(min_value=0, max_value=7 * 24 * 60),
       value=st.one_of(st.integers(min_value=0, max_value=300), st.floats(0, 300, allow_nan=False)),
       channel=st.sampled_from(["web", "app", "pos"]),
       gift=st.one_of(st.none(), st.booleans()),
       other_list=st.booleans(),
       other_metric=st.booleans(),
       country=st.sampled_from(["US", "DE", None]),
       vip=st.one_of(st.none(), st.booleans()),
       address=st.booleans())
def test_preview_and_engine_produce_the_same_due_records(
    flow: Flow, offset_min: int, value: float, channel: str, gift: bool | None, other_list: bool,
    other_metric: bool, country: str | None, vip: bool | None, address: bool,
) -> None:
    """Any event time, properties and profile: preview's due records are the engine's, in order."""
    props: dict[str, Any] = {"$value": value, "Channel": channel}
    if gift is not None:
        props["Gift"] = gift
    if other_list:
        props.update(list_id="another", segment_id="another")
    event = an_event(flow, at_ms=T0 + offset_min * 60_000, metric="Viewed Page" if other_metric else None,
                     **props)
    custom: dict[str, Any] = {}
    for name, given_value in (("country", country), ("Country", country), ("vip", vip)):
        if given_value is not None:
            custom[name] = given_value
    if address:
        custom["address"] = "1 Main St"
    profile = {"id": "p_1", "properties": custom}
    shown = preview(flow, event, profile)
    assert shown.dues == engine_dues(flow, event, profile)
    assert shown.entered or not shown.dues
