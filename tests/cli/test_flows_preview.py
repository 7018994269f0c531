"""`flowhook preview` and `flowhook flows validate`: what users see, and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from processor.cli.flows import flows, preview
from processor.engine.preview import merged_profile
from processor.engine.preview import preview as walk
from processor.flows.loader import load_flow_file

FIXTURES = Path(__file__).parent.parent / "fixtures" / "flows"
EXAMPLES = Path(__file__).parent.parent.parent / "examples" / "flows"
EVENT = {"id": "evt_01", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
         "profile": {"id": "p_42", "email": "shah@example.com", "first_name": "Shah", "last_name": "Khan",
                     "properties": {"address": "1 Main St"}},
         "properties": {"OrderId": "1001", "$value": 129.5, "Channel": "web", "Items": [{"sku": "A1"}]}}
PROFILE = {"id": "p_42", "phone_number": "+15551234567",
           "properties": {"country": "US", "vip": False, "Favorite Color": "Red"}}


def write(tmp_path: Path, name: str, data: Any) -> Path:
    """A JSON file in tmp_path."""
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def run_preview(tmp_path: Path, flow: Path, event: Any = EVENT, profile: Any = PROFILE) -> Any:
    """Invoke `flowhook preview` and return click's result."""
    args = [str(flow), "--event", str(write(tmp_path, "event.json", event))]
    if profile is not None:
        args += ["--profile", str(write(tmp_path, "profile.json", profile))]
    return CliRunner().invoke(preview, args)


def test_preview_shows_the_exact_request(tmp_path: Path) -> None:
    """Method, URL, every header with secrets masked, and the pretty body of the reached webhook."""
    result = run_preview(tmp_path, FIXTURES / "good-full.yaml")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "then wait 2d" in out and "then wait until 09:00 Europe/Berlin" in out
    assert "split steps[2] on profile: vip eq True failed: got False → else branch" in out
    assert "split steps[3] on event: event Gift exists failed: property missing → else branch" in out
    assert "POST https://mail.example.com/v1/catalog-requests" in out
    assert "Authorization: Bearer ••••" in out and "DIRECT_MAIL_TOKEN" not in out
    assert "webhook-signature: v1,•••• (signed with SIGNING_NEW, SIGNING_OLD)" in out
    assert "X-Flow: full-featured" in out and "webhook-id: dlv_" in out
    body = out[out.index("{", out.index("X-Flow")):out.index("end of flow")]
    assert json.loads(body)["phone"] == "+15551234567"
    assert json.loads(body)["items"] == [{"sku": "A1"}]
    assert "end of flow: 1 webhook request" in out


def test_preview_follows_the_then_branch(tmp_path: Path) -> None:
    """With a VIP profile the split takes the then branch and both webhooks are shown."""
    vip = {**PROFILE, "properties": {**PROFILE["properties"], "vip": True}}
    result = run_preview(tmp_path, FIXTURES / "good-full.yaml", profile=vip)
    assert "→ then branch" in result.output
    assert "POST https://mail.example.com/vip/p_42" in result.output
    assert "end of flow: 2 webhook requests" in result.output


@pytest.mark.parametrize(("event_change", "profile", "expected"), [
    ({"metric": "Viewed Product"}, PROFILE, "does not trigger this flow"),
    ({"properties": {"$value": 10, "Channel": "web"}}, PROFILE,
     "trigger filter event $value gte 50 failed: got 10"),
    ({}, {**PROFILE, "properties": {"country": "DE"}}, "profile filter country eq 'US' failed: got 'DE'"),
])
def test_preview_says_why_the_event_does_not_enter(tmp_path: Path, event_change: dict[str, Any],
                                                    profile: Any, expected: str) -> None:
    """The failing trigger, trigger filter or profile filter is named; nothing is rendered."""
    event = {**EVENT, **event_change}
    result = run_preview(tmp_path, FIXTURES / "good-full.yaml", event=event, profile=profile)
    assert result.exit_code == 0
    assert expected in result.output and "POST" not in result.output


def test_preview_shows_invalid_string_body(tmp_path: Path) -> None:
    """A text body that is not JSON after rendering is shown as invalid, with the text."""
    body = '{"order": "{{ event.OrderId }}"{% if event.Gift %},{% endif %}}'
    flow = write(tmp_path, "flow.json", {"id": "f", "status": "live", "trigger": {"metric": "Placed Order"},
                                         "steps": [{"webhook": {"id": "w", "method": "PUT", "body": body,
                                                                "url": "https://gifts.example.com/notes"}}]})
    event = {**EVENT, "properties": {"Gift": True, "OrderId": 'a"b'}}
    result = run_preview(tmp_path, flow, event=event)
    assert "PUT https://gifts.example.com/notes" in result.output
    assert "✗ invalid: body is not valid JSON after rendering" in result.output


@pytest.mark.parametrize(("event", "field"), [
    ("not json at all {", ""),
    ([1, 2], ""),
    ({"metric": "Placed Order", "profile": {"first_name": "x"}}, "profile"),
])
def test_preview_bad_event_file_exits_2(tmp_path: Path, event: Any, field: str) -> None:
    """An event file that cannot be used exits 2 naming the file."""
    path = tmp_path / "bad.json"
    path.write_text(event if isinstance(event, str) else json.dumps(event))
    result = CliRunner().invoke(preview, [str(FIXTURES / "good-full.yaml"), "--event", str(path)])
    assert result.exit_code == 2
    assert "bad.json" in result.output and field in result.output


def test_preview_event_file_may_be_minimal(tmp_path: Path) -> None:
    """With a profile file, the event file needs only metric and properties."""
    event = {"metric": "Placed Order", "properties": EVENT["properties"]}
    result = run_preview(tmp_path, FIXTURES / "good-full.yaml", event=event)
    assert result.exit_code == 0, result.output
    assert "POST https://mail.example.com/v1/catalog-requests" in result.output


def test_preview_bad_flow_file_exits_2(tmp_path: Path) -> None:
    """A flow with problems is not previewed; its problems are listed and the exit code is 2."""
    result = run_preview(tmp_path, FIXTURES / "broken.yaml")
    assert result.exit_code == 2 and "broken.yaml:5: trigger.metric" in result.output


def test_merged_profile_takes_the_event_fields_over_the_stored_ones() -> None:
    """The event's profile fields update the stored profile, properties merged key by key."""
    merged = merged_profile({"id": "p", "email": "old@x", "properties": {"a": 1, "b": 1}},
                            {"profile": {"email": "new@x", "properties": {"b": 2}}})
    assert merged == {"id": "p", "email": "new@x", "properties": {"a": 1, "b": 2}}
    assert merged_profile(None, {"profile": {"email": "A@X.com"}})["id"] == "a@x.com"


def test_validate_exit_codes_and_output(tmp_path: Path) -> None:
    """validate exits 0 for good files and 2 when any file fails, listing file:line for each problem."""
    runner = CliRunner()
    good = runner.invoke(flows, ["validate", str(FIXTURES / "good-full.yaml")])
    assert good.exit_code == 0 and "ok " in good.output
    bad = runner.invoke(flows, ["validate", "--https-only", str(FIXTURES / "good-full.yaml"),
                                str(FIXTURES / "broken.yaml")])
    assert bad.exit_code == 2
    assert "broken.yaml:19: steps[2].webhook.url" in bad.output
    assert bad.output.count("broken.yaml:") >= 20


def test_validate_refuses_the_same_flow_id_twice(tmp_path: Path) -> None:
    """Two files defining one flow id are a problem."""
    text = (FIXTURES / "good-full.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    result = CliRunner().invoke(flows, ["validate", str(tmp_path)])
    assert result.exit_code == 2 and "also used by" in result.output


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    """A path that does not exist is reported and exits 2."""
    result = CliRunner().invoke(flows, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_every_example_previews(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example flow previews for an event of its own trigger and renders valid requests."""
    monkeypatch.setenv("FLOWHOOK_ALLOW_HTTP", "1")
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples
    for path in examples:
        flow = load_flow_file(path)
        trigger = flow.trigger
        metric = trigger.metric or "Anything"
        props = {"list_id": trigger.list_id, "segment_id": trigger.segment_id, **EVENT["properties"]}
        event = {**EVENT, "metric": metric, "properties": props}
        result = walk(flow, event, {"id": "p_42", "properties": {"address": "1 Main St", "vip": True}})
        assert result.entered, (path, result.lines)
        assert result.requests, (path, result.lines)
        for _step_id, request in result.requests:
            assert request.error is None
            if request.body is not None:
                json.loads(request.body)


def test_preview_shows_the_engine_exiting_a_run_after_a_delay(tmp_path: Path) -> None:
    """A history filter that holds at entry but not two days later: the engine's run exits
    before the webhook, and preview says so, with the time the run moved on."""
    recent = {"metric": "Placed Order", "op": "count_gte", "value": 1, "within": "1d"}
    flow = write(tmp_path, "flow.json", {"id": "f", "status": "live", "trigger": {"metric": "Placed Order"},
                                         "profile_filters": [recent],
                                         "steps": [{"delay": "2d"}, {"webhook": {"id": "w", "url": "https://e.com/w"}}]})
    result = run_preview(tmp_path, flow)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "✓ enters the flow" in out and "(the run moves on at 2026-11-29T10:00:00.000Z)" in out
    assert "✗ the run exits before webhook w: profile filter" in out
    assert "POST" not in out and "end of flow: 0 webhook requests" in out
