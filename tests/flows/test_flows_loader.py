"""Flow definitions: parsing, the model they become, and every validation rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from processor.errors import InputError
from processor.flows.loader import check_definition, check_flow_file, flow_from_dict, load_flow_file
from processor.flows.model import DelayStep, SplitStep, WebhookStep

FIXTURES = Path(__file__).parent.parent / "fixtures" / "flows"


def minimal(**changes: Any) -> dict[str, Any]:
    """A valid definition with one webhook step; keyword arguments replace top-level fields."""
    flow: dict[str, Any] = {
        "id": "f1",
        "name": "Flow one",
        "status": "live",
        "trigger": {"metric": "Placed Order"},
        "steps": [{"webhook": {"id": "w", "url": "https://example.com/hook",
                               "body": {"a": "{{ person.email }}"}}}],
    }
    flow.update(changes)
    return flow


def webhook(**fields: Any) -> dict[str, Any]:
    """A definition whose only step is a webhook with these fields (id and url defaulted)."""
    return minimal(steps=[{"webhook": {"id": "w", "url": "https://example.com/hook", **fields}}])


def problems_of(data: dict[str, Any], **kwargs: Any) -> list[str]:
    """Every problem of a definition as 'field: message'."""
    checked = check_definition(data, source="t.yaml", **kwargs)
    return [f"{p.field}: {p.message}" for p in checked.problems]


def test_full_file_becomes_the_model() -> None:
    """Every feature of the language lands in the model the engine reads."""
    flow = load_flow_file(FIXTURES / "good-full.yaml")
    assert (flow.id, flow.status, flow.trigger.metric, flow.reentry.period_ms) == (
        "full-featured", "live", "Placed Order", 30 * 86_400_000)
    assert [c.on for c in flow.trigger.filters] == ["event", "event"]
    assert [c.is_history for c in flow.profile_filters] == [False, True, True]
    assert flow.profile_filters[1].since == "flow_start"
    assert flow.profile_filters[2].within_ms == 30 * 86_400_000
    delay, morning, split, trigger_split, catalog = flow.steps
    assert isinstance(delay, DelayStep) and delay.duration_ms == 172_800_000 and delay.id == "steps[0]"
    assert isinstance(morning, DelayStep) and (morning.id, morning.until, morning.timezone) == (
        "morning", "09:00", "Europe/Berlin")
    assert isinstance(split, SplitStep) and split.on == "profile" and split.then[0].id == "vip-catalog"
    assert isinstance(trigger_split, SplitStep) and trigger_split.on == "event"
    assert trigger_split.conditions[0].on == "event"
    assert trigger_split.then[0].id == "steps[3].then[0]"
    assert isinstance(trigger_split.then[1], WebhookStep) and trigger_split.then[1].method == "PUT"
    assert isinstance(catalog, WebhookStep)
    assert catalog.signing_secrets == ("SIGNING_NEW", "SIGNING_OLD")
    assert (catalog.timeout_ms, catalog.retry_ms, catalog.max_age_ms, catalog.rate_limit) == (
        5_000, (1_000, 5_000), 3_600_000, 5.0)
    assert flow.definition["id"] == "full-featured" and flow.source.endswith("good-full.yaml")


def test_defaults_of_a_minimal_webhook() -> None:
    """Options left out take SPEC.md's defaults."""
    step = flow_from_dict(minimal(), source="mem").steps[0]
    assert isinstance(step, WebhookStep)
    assert (step.method, step.timeout_ms, step.retry_ms, step.max_age_ms, step.rate_limit) == (
        "POST", 10_000, None, 86_400_000, None)


def test_flow_from_dict_carries_version_and_source() -> None:
    """The engine passes the topic record's version and source through."""
    flow = flow_from_dict(minimal(), source="examples/x.yaml", version=7)
    assert (flow.version, flow.source) == (7, "examples/x.yaml")


def test_broken_file_lists_every_problem_with_line_and_field() -> None:
    """Each line marked '<-' in the broken fixture is reported, with its own line number."""
    path = FIXTURES / "broken.yaml"
    marked = [n for n, line in enumerate(path.read_text().splitlines(), 1) if "# <-" in line]
    checked = check_flow_file(path, allow_http=False)
    assert not checked.ok
    assert all(p.file == str(path) and p.field for p in checked.problems)
    assert sorted({p.line for p in checked.problems}) == marked


def test_load_raises_input_error_with_all_problems() -> None:
    """load_flow_file raises one InputError carrying every Problem, printable as file:line."""
    with pytest.raises(InputError) as info:
        load_flow_file(FIXTURES / "broken.yaml", allow_http=False)
    assert len(info.value.problems) >= 20
    assert re.search(r"broken\.yaml:\d+: steps\[2\]\.webhook\.url: must start with https://", str(info.value))


@pytest.mark.parametrize("metric", ["Received Email", "Opened Email", "opened email"])
def test_email_engagement_triggers_are_refused(metric: str) -> None:
    """Triggers on email engagement are refused with a message naming the metric."""
    assert any("email engagement" in p for p in problems_of(minimal(trigger={"metric": metric})))


@pytest.mark.parametrize("trigger", [
    {"profile_property": "tier"},
    {"property_changed": {"property": "tier"}},
    {"metric": "Updated Profile Property"},
])
def test_property_change_triggers_are_refused(trigger: dict[str, Any]) -> None:
    """Triggers on a profile property change are refused, pointing at date_property or the event."""
    assert any("profile property change" in p for p in problems_of(minimal(trigger=trigger)))


def test_unknown_trigger_kind_and_two_kinds() -> None:
    """A trigger needs exactly one known kind."""
    assert any("unknown field 'price_drop'" in p for p in problems_of(minimal(trigger={"price_drop": "x"})))
    assert any("more than one kind" in p
               for p in problems_of(minimal(trigger={"metric": "A", "list": "L"})))


def test_list_segment_and_date_property_triggers() -> None:
    """list and segment are sugar for the membership metrics; date_property keeps its settings."""
    flow = flow_from_dict(minimal(trigger={"list": "newsletter"}), source="m")
    assert (flow.trigger.kind, flow.trigger.metric, flow.trigger.list_id) == (
        "list", "Subscribed to List", "newsletter")
    flow = flow_from_dict(minimal(trigger={"segment": 42}), source="m")
    assert (flow.trigger.metric, flow.trigger.segment_id) == ("Added to Segment", "42")
    date = {"property": "birthday", "offset": "-3d", "at": "10:30", "timezone": "Europe/Berlin"}
    dp = flow_from_dict(minimal(trigger={"date_property": date}), source="m").trigger.date_property
    assert dp is not None and (dp.offset_ms, dp.at, dp.timezone, dp.yearly) == (
        -259_200_000, "10:30", "Europe/Berlin", True)


def test_date_property_checks_time_and_zone() -> None:
    """A bad time of day or time zone is named with the fix."""
    date = {"property": "birthday", "at": "9am", "timezone": "Mars/Olympus"}
    found = problems_of(minimal(trigger={"date_property": date}))
    assert any("trigger.date_property.at" in p and "HH:MM" in p for p in found)
    assert any("trigger.date_property.timezone" in p and "IANA" in p for p in found)


@pytest.mark.parametrize(("condition", "expected"), [
    ({"property": "a", "op": "eq"}, "value: missing"),
    ({"property": "a", "op": "eq", "value": [1]}, "for several use in"),
    ({"property": "a", "op": "eq", "value": None}, "use op: exists"),
    ({"property": "a", "op": "in", "value": []}, "non-empty list"),
    ({"property": "a", "op": "gt", "value": "abc"}, "numbers or dates"),
    ({"property": "a", "op": "not_exists", "value": 1}, "takes no value"),
    ({"property": "a", "op": "count_eq", "value": 1}, "belongs to the other kind"),
    ({"metric": "M", "op": "eq", "value": 1}, "belongs to the other kind"),
    ({"metric": "M", "op": "count_eq", "value": 1.5}, "whole number"),
    ({"metric": "M", "op": "count_eq", "value": 1, "since": "yesterday"}, "must be flow_start"),
    ({"metric": "M", "op": "count_eq", "value": 1, "since": "flow_start", "within": "2d"}, "keep one"),
    ({"metric": "M", "op": "count_eq", "value": 1, "within": "forever"}, "not a duration"),
    ({"property": "a", "op": "eq", "value": 1, "within": "2d"}, "belongs to history"),
    ({"property": "a", "metric": "M", "op": "eq", "value": 1}, "both property and metric"),
    ({"op": "eq", "value": 1}, "needs property"),
])
def test_filter_ops_must_fit_their_values(condition: dict[str, Any], expected: str) -> None:
    """Each op gets the kind of value it can compare, and the message says what to write."""
    found = problems_of(minimal(profile_filters=[condition]))
    assert any(expected in p for p in found), found


def test_history_conditions_are_refused_on_the_event() -> None:
    """Trigger filters and event splits look at the event, so history conditions are refused there."""
    history = {"metric": "Placed Order", "op": "count_eq", "value": 0}
    assert any("not the triggering event" in p
               for p in problems_of(minimal(trigger={"metric": "A", "filters": [history]})))


@pytest.mark.parametrize(("url", "allow_http", "ok"), [
    ("https://example.com/x", False, True),
    ("http://example.com/x", False, False),
    ("http://127.0.0.1:8787/x", True, True),
    ("ftp://example.com/x", True, False),
    ("https://{{ person.host }}/x", False, False),
    ("https://user:pw@example.com/x", False, False),
    ("https://example.com/u/{{ person.id }}?o={{ event.OrderId }}", False, True),
    ("https://example.com/{{ secrets.KEY }}", False, False),
])
def test_url_rules(url: str, allow_http: bool, ok: bool) -> None:
    """https only unless allowed; literal host; no credentials; no secrets in URLs."""
    assert (problems_of(webhook(url=url), allow_http=allow_http) == []) is ok


def test_allow_http_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOWHOOK_ALLOW_HTTP=1 allows http:// when no argument says otherwise."""
    data = webhook(url="http://127.0.0.1/x")
    monkeypatch.delenv("FLOWHOOK_ALLOW_HTTP", raising=False)
    assert problems_of(data)
    monkeypatch.setenv("FLOWHOOK_ALLOW_HTTP", "1")
    assert problems_of(data) == []
    assert problems_of(data, allow_http=False)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"User-Agent": "x"}, "set by Flowhook"),
    ({"webhook-id": "x"}, "set by Flowhook"),
    ({"X-A": "a\r\nX-B: b"}, "line breaks"),
    ({"X A": "a"}, "cannot have"),
    ({"X-A": 5}, "quote it"),
    ({"X-A": "a", "x-a": "b"}, "given twice"),
    ({"Authorization": "Bearer {{ secrets.T }}{{ person.id }}"}, "only literal text"),
    ({"Authorization": "Bearer {{ secrets['T'] }}"}, "only literal text"),
    ({"X-A": "{{ nobody }}"}, "unknown variable"),
])
def test_header_rules(headers: dict[str, Any], expected: str) -> None:
    """Header names and values are checked; reserved names and mixed secret headers refused."""
    found = problems_of(webhook(headers=headers))
    assert any(expected in p for p in found), found


def test_secret_headers_are_allowed_literally() -> None:
    """Literal text around {{ secrets.NAME }} tags is a valid header."""
    assert problems_of(webhook(headers={"Authorization": "Bearer {{secrets.TOKEN_1}}", "X-K": "k"})) == []


@pytest.mark.parametrize(("signing", "ok"), [
    ("{{ secrets.SIGN }}", True),
    (["{{ secrets.NEW }}", "{{ secrets.OLD }}"], True),
    ("whsec_abc", False),
    ("Bearer {{ secrets.SIGN }}", False),
    ([], False),
])
def test_signing_secret_names_secrets_only(signing: Any, ok: bool) -> None:
    """signing_secret is one or more {{ secrets.NAME }} references, never the secret itself."""
    assert (problems_of(webhook(signing_secret=signing)) == []) is ok


@pytest.mark.parametrize(("fields", "expected"), [
    ({"method": "GET"}, "POST, PUT, PATCH"),
    ({"timeout": "10"}, "not a duration"),
    ({"timeout": "1h"}, "at most 5m"),
    ({"retry": "5s"}, "must be a list"),
    ({"retry": ["1s", "x"]}, "not a duration"),
    ({"max_age": "0s"}, "longer than zero"),
    ({"rate_limit": 0}, "above 0"),
    ({"body": 5}, "mapping, a list or text"),
    ({"bogus": 1}, "unknown field 'bogus'"),
    ({"id": "has space"}, "not a valid id"),
    ({"urll": "https://x"}, "did you mean 'url'"),
])
def test_webhook_option_rules(fields: dict[str, Any], expected: str) -> None:
    """Webhook options are checked with messages that say what to write."""
    found = problems_of(webhook(**fields))
    assert any(expected in p for p in found), found


def test_step_ids_must_be_unique_across_branches() -> None:
    """Webhook ids and explicit step ids are unique within the flow, branches included."""
    hook = {"webhook": {"id": "same", "url": "https://e.com/x"}}
    data = minimal(steps=[{"split": {"if": [{"property": "a", "op": "exists"}], "then": [hook]}}, hook])
    assert any("used twice" in p for p in problems_of(data))
    data = minimal(steps=[{"delay": "1s", "id": "w"}, {"webhook": {"id": "w", "url": "https://e.com/x"}}])
    assert any("used twice" in p for p in problems_of(data))


@pytest.mark.parametrize(("steps", "expected"), [
    ([], "is empty"),
    ([{"delay": "1s", "webhook": {"id": "w", "url": "https://e.com"}}], "exactly one of"),
    ([{"wait": "1s"}], "exactly one of"),
    ([{"delay": {"until": "25:00"}}], "HH:MM"),
    ([{"delay": "-1s"}], "longer than zero"),
    ([{"split": {"then": []}}], "split needs conditions"),
    ([{"split": {"if": [{"property": "a", "op": "exists"}], "on": "order"}}], "profile or event"),
    ([{"id": "x", "webhook": {"id": "w", "url": "https://e.com"}}], "inside webhook"),
])
def test_step_shape_rules(steps: list[Any], expected: str) -> None:
    """Steps are delay, split or webhook, each with its own shape."""
    found = problems_of(minimal(steps=steps))
    assert any(expected in p for p in found), found


def test_reentry_rules() -> None:
    """once_per needs a period; other modes refuse one; a bare mode string is accepted."""
    assert any("needs a period" in p for p in problems_of(minimal(reentry={"mode": "once_per"})))
    assert any("only for mode once_per" in p
               for p in problems_of(minimal(reentry={"mode": "once", "period": "1d"})))
    assert flow_from_dict(minimal(reentry="always"), source="m").reentry.mode == "always"


def test_top_level_rules() -> None:
    """id, trigger and steps are required; unknown top-level fields are named."""
    found = problems_of({"name": "x", "colour": "red"})
    for expected in ("id: missing", "trigger: missing", "steps: missing", "colour: unknown field"):
        assert any(p.startswith(expected) for p in found), found
    assert problems_of([1, 2]) == [": a flow definition must be a mapping (key: value lines), got a list"]


def test_missing_status_is_a_draft_with_a_warning() -> None:
    """A flow without status does nothing, and validation says so."""
    data = minimal()
    del data["status"]
    checked = check_definition(data, source="t.yaml")
    assert checked.ok and checked.flow is not None and checked.flow.status == "draft"
    assert any("draft" in w.message for w in checked.warnings)


def test_yaml_keeps_on_and_times_as_text(tmp_path: Path) -> None:
    """YAML 1.1 surprises are avoided: `on:` is a key, 10:30 a time, yes a word."""
    path = tmp_path / "f.yaml"
    path.write_text(
        "id: f\nstatus: live\ntrigger: {metric: M}\nsteps:\n"
        "  - delay: {until: 10:30}\n"
        "  - split:\n      on: event\n      if: [{property: answer, op: eq, value: yes}]\n"
        "      then: [{webhook: {id: w, url: 'https://e.com'}}]\n"
    )
    flow = load_flow_file(path)
    delay, split = flow.steps
    assert isinstance(delay, DelayStep) and delay.until == "10:30"
    assert isinstance(split, SplitStep) and split.on == "event" and split.conditions[0].value == "yes"


def test_yaml_errors_and_duplicate_keys_have_lines(tmp_path: Path) -> None:
    """A YAML syntax error and a key given twice are reported with their line."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: f\ntrigger: {metric: M\nsteps: []\n")
    problems = check_flow_file(bad).problems
    assert len(problems) == 1 and problems[0].line and "not valid YAML" in problems[0].message
    dup = tmp_path / "dup.yaml"
    dup.write_text("id: f\nstatus: live\nstatus: draft\ntrigger: {metric: M}\n"
                   "steps: [{webhook: {id: w, url: 'https://e.com'}}]\n")
    problems = check_flow_file(dup).problems
    assert [(p.line, p.field) for p in problems] == [(3, "status")]


def test_json_files_are_read_with_lines() -> None:
    """JSON flow files work too, and their problems carry line numbers."""
    checked = check_flow_file(FIXTURES / "string-body.json")
    assert checked.ok and checked.warnings[0].line == 9


def test_string_body_warning_suggests_the_object_form() -> None:
    """A text body validates with a warning that spells out the equivalent object body."""
    checked = check_flow_file(FIXTURES / "string-body.json")
    message = checked.warnings[0].message
    assert "write it as a mapping" in message
    assert '"value":"{{ event|lookup:\'$value\' }}"' in message


def test_every_example_flow_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample flows in examples/ are valid (they post to the local receiver over http)."""
    monkeypatch.setenv("FLOWHOOK_ALLOW_HTTP", "1")
    examples = sorted((Path(__file__).parent.parent.parent / "examples" / "flows").glob("*.yaml"))
    assert examples
    for path in examples:
        checked = check_flow_file(path)
        assert checked.ok, [str(p) for p in checked.problems]


def test_template_in_a_body_key_is_a_warning() -> None:
    """Keys are literal; a key that looks like a template gets a warning saying so."""
    checked = check_definition(webhook(body={"{{ person.id }}": 1}), source="t.yaml")
    assert checked.ok and any("keys are sent as written" in w.message for w in checked.warnings)


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    """Anchors and aliases are refused, so a small file cannot expand into a huge definition."""
    path = tmp_path / "alias.yaml"
    path.write_text("id: f\nstatus: live\ntrigger: {metric: M}\nx: &a [1, 2]\ny: [*a, *a]\n"
                    "steps: [{webhook: {id: w, url: 'https://e.com'}}]\n")
    problems = check_flow_file(path).problems
    assert len(problems) == 1 and "aliases" in problems[0].message and problems[0].line == 5


def test_text_body_that_can_never_be_json_is_an_error() -> None:
    """A text body without tags that is not JSON is refused; one with tags only warned about."""
    assert any("must be JSON" in p for p in problems_of(webhook(body="name=value")))
    checked = check_definition(webhook(body="name={{ person.first_name }}"), source="t.yaml")
    assert checked.ok and "does not look like JSON" in checked.warnings[0].message
    assert problems_of(webhook(body='{"static": true}')) == []
