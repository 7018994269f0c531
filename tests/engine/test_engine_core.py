"""The pure engine core, driven with an injected clock: triggers, steps, re-entry, statuses."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from processor import records
from processor.basics import profile_key
from processor.clock import iso, parse_iso_ms
from processor.engine.core import (
    date_occurrence,
    drop_committed,
    next_time_of_day,
    unscheduled_dates,
)
from processor.engine.flowset import FlowSet
from processor.engine.state import dumps, loads
from processor.flows.model import DateProperty
from tests.engine_helpers import T0, Harness, event, flow, kinds, webhook

HOUR = 3_600_000
DAY = 24 * HOUR


def test_metric_trigger_runs_a_webhook_step_at_once() -> None:
    """A matching event enters the flow, emits the webhook-due record and completes the run."""
    h = Harness(flow())
    out = h.event(event("e1", OrderId="1001"))
    assert kinds(out) == ["entered", "webhook:hook:send", "completed"]
    due = out.outputs[1].value
    run = records.run_id("f", "p1", "e1")
    assert due["run_id"] == run and out.outputs[1].key == due["delivery_id"]
    assert due["delivery_id"] == records.delivery_id("f", run, "hook")
    assert records.validation_error("webhook", due) is None
    assert all(records.validation_error("result", o.value) is None for o in out.outputs if o.kind == "result")
    assert '"order":"1001"' in due["request"]["body"].replace(" ", "")
    assert due["request"]["body"].count("p1@example.com") == 1
    assert h.state.runs == {}


def test_other_metrics_start_nothing() -> None:
    """An event of another metric is recorded but starts no run."""
    h = Harness(flow())
    assert h.event(event("e1", "Viewed Product")).outputs == []
    assert h.state.history == {"Viewed Product": [T0]}


def test_replayed_event_starts_no_second_run() -> None:
    """The same event id seen again (a replay) produces nothing, whatever the re-entry mode."""
    h = Harness(flow(reentry={"mode": "always"}))
    assert kinds(h.event(event("e1"))) == ["entered", "webhook:hook:send", "completed"]
    again = h.event(event("e1"), src="events:0:99")
    assert again.outputs == [] and not again.changed


def test_record_read_again_at_same_position_produces_its_outputs_again() -> None:
    """After a crash a record re-read at its old offset re-emits its outputs instead of losing them."""
    h = Harness(flow())
    first = h.event(event("e1"), src="events:0:7")
    again = h.event(event("e1"), src="events:0:7")
    assert [o.value for o in again.outputs] == [o.value for o in first.outputs]
    assert not again.changed


def test_trigger_filter_is_checked_on_the_event() -> None:
    """Trigger filters read the triggering event; an event that fails them starts nothing."""
    h = Harness(
        flow(
            trigger={"metric": "Placed Order", "filters": [{"property": "$value", "op": "gte", "value": 50}]}
        )
    )
    assert h.event(event("small", **{"$value": 10})).outputs == []
    assert kinds(h.event(event("big", **{"$value": 60})))[0] == "entered"


def test_profile_filter_at_entry_exits_with_reason() -> None:
    """A profile filter failing at entry gives an `exited` record naming the condition."""
    h = Harness(flow(profile_filters=[{"property": "country", "op": "eq", "value": "US"}]))
    out = h.event(event("e1"))
    assert kinds(out) == ["exited"]
    assert "country" in out.outputs[0].value["reason"]
    h.profile(properties={"country": "US"})
    assert kinds(h.event(event("e2"))) == ["entered", "webhook:hook:send", "completed"]


def test_delay_waits_from_when_the_run_reaches_it() -> None:
    """A delay counts from when the run reaches it, even for an event with an old time."""
    h = Harness(flow(steps=[{"delay": "2h"}, webhook("later")]))
    h.now = T0 + 5 * DAY  # the event arrives five days after its own time
    assert kinds(h.event(event("e1"))) == ["entered"]
    assert h.state.next_due_ms() == h.now + 2 * HOUR
    assert h.wake(h.now + HOUR).outputs == []
    assert kinds(h.wake(T0 + 5 * DAY + 2 * HOUR)) == ["webhook:later:send", "completed"]
    assert h.state.next_due_ms() is None


def test_duplicate_wakeups_are_harmless() -> None:
    """A second wake-up for the same due time does nothing."""
    h = Harness(flow(steps=[{"delay": "1s"}, webhook("later")]))
    h.event(event("e1"))
    assert kinds(h.wake(T0 + 1000)) == ["webhook:later:send", "completed"]
    again = h.wake(T0 + 1000)
    assert again.outputs == [] and not again.changed


def test_delay_until_time_of_day_in_a_time_zone() -> None:
    """`until: 09:00` in Europe/Berlin waits for the next 09:00 there (08:00 UTC in November)."""
    h = Harness(flow(steps=[{"delay": {"until": "09:00", "timezone": "Europe/Berlin"}}, webhook("morning")]))
    h.event(event("e1"))  # 10:00 UTC = 11:00 Berlin: the next 09:00 is tomorrow
    assert h.state.next_due_ms() == parse_iso_ms("2026-11-28T08:00:00Z")


def test_next_time_of_day_is_today_when_still_ahead() -> None:
    """A time of day still ahead today is today; one already passed is tomorrow."""
    now = parse_iso_ms("2026-11-27T06:00:00Z")
    assert next_time_of_day(now, "09:00", "UTC") == parse_iso_ms("2026-11-27T09:00:00Z")
    assert next_time_of_day(now, "05:00", "UTC") == parse_iso_ms("2026-11-28T05:00:00Z")
    assert next_time_of_day(now, "09:00", "America/New_York") == parse_iso_ms("2026-11-27T14:00:00Z")


def test_profile_filter_is_checked_again_before_later_steps() -> None:
    """A profile that stops matching during a delay exits before the next step, with the reason."""
    h = Harness(
        flow(
            profile_filters=[{"metric": "Placed Order", "op": "count_eq", "value": 0, "since": "flow_start"}],
            trigger={"metric": "Started Checkout"},
            steps=[{"delay": "1h"}, webhook("reminder")],
        )
    )
    assert kinds(h.event(event("c1", "Started Checkout"))) == ["entered"]
    h.now = T0 + 10 * 60_000
    h.event(event("o1", "Placed Order", at_ms=h.now))
    out = h.wake(T0 + HOUR)
    assert kinds(out) == ["exited"]
    assert "Placed Order count_eq 0" in out.outputs[0].value["reason"]


def test_conditional_split_on_the_profile() -> None:
    """A profile split takes `then` when its conditions hold, else `else`."""
    split = {
        "split": {
            "if": [{"property": "vip", "op": "eq", "value": True}],
            "then": [webhook("vip")],
            "else": [webhook("regular")],
        }
    }
    h = Harness(flow(steps=[split, webhook("after")], reentry={"mode": "always"}))
    assert kinds(h.event(event("e1")))[1:3] == ["webhook:regular:send", "webhook:after:send"]
    h.profile(properties={"vip": True})
    assert kinds(h.event(event("e2")))[1:3] == ["webhook:vip:send", "webhook:after:send"]


def test_trigger_split_reads_the_triggering_event() -> None:
    """An `on: event` split looks at the triggering event, not the profile."""
    split = {
        "split": {"on": "event", "if": [{"property": "Gift", "op": "exists"}], "then": [webhook("gift")]}
    }
    h = Harness(flow(steps=[split], reentry={"mode": "always"}))
    assert kinds(h.event(event("e1", Gift="card"))) == ["entered", "webhook:gift:send", "completed"]
    assert kinds(h.event(event("e2"))) == ["entered", "completed"]


def test_list_and_segment_triggers_match_their_id() -> None:
    """List and segment triggers start only for their own list or segment id."""
    h = Harness(flow("l", trigger={"list": "L1"}), flow("s", trigger={"segment": "S1"}))
    assert h.event(event("a", "Subscribed to List", list_id="L2")).outputs == []
    assert kinds(h.event(event("b", "Subscribed to List", list_id="L1")))[0] == "entered"
    assert h.event(event("c", "Added to Segment", segment_id="S2")).outputs == []
    out = h.event(event("d", "Added to Segment", segment_id="S1"))
    assert out.outputs[0].value["flow_id"] == "s"


def test_reentry_once() -> None:
    """`once`: a profile enters a flow one time only."""
    h = Harness(flow(reentry={"mode": "once"}))
    assert kinds(h.event(event("e1")))[0] == "entered"
    assert h.event(event("e2")).outputs == []


def test_reentry_always() -> None:
    """`always`: every new triggering event starts a run."""
    h = Harness(flow(reentry={"mode": "always"}))
    assert kinds(h.event(event("e1")))[0] == "entered"
    assert kinds(h.event(event("e2")))[0] == "entered"


def test_reentry_once_per_period() -> None:
    """`once_per`: again only after the period has passed since the last entry (by event time)."""
    h = Harness(flow(reentry={"mode": "once_per", "period": "1d"}))
    assert kinds(h.event(event("e1")))[0] == "entered"
    assert h.event(event("e2", at_ms=T0 + 23 * HOUR)).outputs == []
    assert kinds(h.event(event("e3", at_ms=T0 + DAY)))[0] == "entered"


def test_draft_flow_does_nothing() -> None:
    """A draft flow starts no run."""
    h = Harness(flow(status="draft"))
    assert h.event(event("e1")).outputs == []
    assert h.state.runs == {} and h.state.entries == {}


def test_manual_flow_holds_its_webhooks() -> None:
    """A manual flow runs, but its webhook-due records have mode `held`."""
    h = Harness(flow(status="manual"))
    assert kinds(h.event(event("e1"))) == ["entered", "webhook:hook:held", "completed"]


def test_render_error_makes_an_invalid_delivery() -> None:
    """A string body that is not JSON after rendering gives mode `invalid` with the error."""
    h = Harness(
        flow(steps=[{"webhook": {"id": "bad", "url": "http://127.0.0.1:9/x", "body": '{"v": {{ event.X }}'}}])
    )
    out = h.event(event("e1", X="1"))
    due = out.outputs[1].value
    assert due["mode"] == "invalid" and due["error"]


def test_runs_keep_their_version_after_an_edit() -> None:
    """A run started on version 1 finishes with version 1's steps after version 2 is published."""
    h = Harness(flow(version=1, steps=[{"delay": "1h"}, webhook("old")]))
    h.event(event("e1"))
    h.flows.put(flow(version=2, steps=[webhook("new")]))
    out = h.wake(T0 + HOUR)
    assert kinds(out) == ["webhook:old:send", "completed"]
    assert out.outputs[0].value["flow_version"] == 1
    assert kinds(h.event(event("e2", at_ms=T0 + HOUR)))[:1] == []  # once: no re-entry


def test_flow_set_to_draft_ends_waiting_runs() -> None:
    """Runs waiting in a flow that is switched to draft exit at their next step."""
    h = Harness(flow(steps=[{"delay": "1h"}, webhook("later")]))
    h.event(event("e1"))
    h.flows.put(flow(version=2, status="draft", steps=[{"delay": "1h"}, webhook("later")]))
    out = h.wake(T0 + HOUR)
    assert kinds(out) == ["exited"] and out.outputs[0].value["reason"] == "flow set to draft"


def test_flow_switched_to_manual_holds_waiting_runs() -> None:
    """The current status applies to runs in progress: manual holds their later webhooks."""
    h = Harness(flow(steps=[{"delay": "1h"}, webhook("later")]))
    h.event(event("e1"))
    h.flows.put(flow(version=2, status="manual", steps=[{"delay": "1h"}, webhook("later")]))
    assert kinds(h.wake(T0 + HOUR)) == ["webhook:later:held", "completed"]


def test_date_property_trigger_fires_on_the_stored_date() -> None:
    """A birthday flow fires at offset + time of day from the stored property, then yearly."""
    trigger = {"date_property": {"property": "birthday", "offset": "-3d", "at": "09:00", "timezone": "UTC"}}
    h = Harness(flow("bday", trigger=trigger))
    assert h.profile(properties={"birthday": "1990-12-10"}).outputs == []
    target = parse_iso_ms("2026-12-07T09:00:00Z")
    assert h.state.next_due_ms() == target
    out = h.wake(target)
    assert kinds(out) == ["entered", "webhook:hook:send", "completed"]
    assert out.outputs[0].value["event_id"] == f"date:bday:birthday:{iso(target)}"
    assert h.state.next_due_ms() == parse_iso_ms("2027-12-07T09:00:00Z")


def test_date_property_is_rescheduled_when_it_changes() -> None:
    """A changed date property moves the schedule; a removed one clears it."""
    trigger = {"date_property": {"property": "birthday", "at": "00:00", "timezone": "UTC"}}
    h = Harness(flow("bday", trigger=trigger))
    h.profile(properties={"birthday": "2000-12-01"})
    assert h.state.next_due_ms() == parse_iso_ms("2026-12-01T00:00:00Z")
    h.profile(properties={"birthday": "2000-11-30"})
    assert h.state.next_due_ms() == parse_iso_ms("2026-11-30T00:00:00Z")
    h.profile(properties={"birthday": None})
    assert h.state.next_due_ms() is None


def test_date_occurrence_once_and_leap_days() -> None:
    """A one-off date fires once if still ahead; 29 February falls on 28 February in other years."""
    once = DateProperty(property="renewal", at="12:00", timezone="UTC", yearly=False)
    assert date_occurrence(once, "2026-12-24", T0) == parse_iso_ms("2026-12-24T12:00:00Z")
    assert date_occurrence(once, "2026-01-01", T0) is None
    yearly = DateProperty(property="birthday", at="00:00", timezone="UTC")
    assert date_occurrence(yearly, "2000-02-29", T0) == parse_iso_ms("2027-02-28T00:00:00Z")
    assert date_occurrence(yearly, "not a date", T0) is None


def test_profile_fields_merge_from_events_and_updates() -> None:
    """Profile fields merge field by field; custom properties key by key."""
    h = Harness()
    h.profile(first_name="Shah", properties={"a": 1})
    h.event({**event("e1"), "profile": {"id": "p1", "properties": {"b": 2}}})
    assert h.state.profile["first_name"] == "Shah"
    assert h.state.profile["properties"] == {"a": 1, "b": 2}


def test_profile_key_falls_back_to_lower_cased_email() -> None:
    """A profile without id is keyed by its lower-cased email."""
    assert profile_key({"email": " Shah@Example.COM"}) == "shah@example.com"
    assert profile_key({"id": "p_1", "email": "x@y.z"}) == "p_1"
    assert profile_key({}) is None


def test_history_filters_count_the_profiles_events() -> None:
    """History conditions count the profile's recorded events of a metric."""
    cond = [{"metric": "Viewed Product", "op": "count_gte", "value": 2, "within": "1d"}]
    h = Harness(flow(profile_filters=cond, reentry={"mode": "always"}))
    h.event(event("v1", "Viewed Product"))
    assert kinds(h.event(event("e1"))) == ["exited"]
    h.event(event("v2", "Viewed Product"))
    assert kinds(h.event(event("e2")))[0] == "entered"


def test_state_round_trips_through_bytes() -> None:
    """Serialised state loads back equal, including a waiting run and a date schedule."""
    trigger = {"date_property": {"property": "birthday", "at": "00:00", "timezone": "UTC"}}
    h = Harness(flow(steps=[{"delay": "1h"}, webhook("x")]), flow("bday", trigger=trigger))
    h.profile(properties={"birthday": "2000-12-01"})
    h.event(event("e1"), src="events:1:5")
    assert loads(dumps(h.state)) == h.state


def test_seen_ids_and_history_are_bounded() -> None:
    """De-duplication ids and per-metric history keep a bounded number of entries."""
    h = Harness()
    for i in range(500):
        h.event(event(f"e{i}", "Viewed Product", at_ms=T0 + i))
    assert len(h.state.seen) <= 200 and len(h.state.history["Viewed Product"]) <= 100
    assert h.state.history["Viewed Product"][-1] == T0 + 499


def test_time_zone_of_date_trigger_is_honoured() -> None:
    """`at` is read in the trigger's time zone."""
    dp = DateProperty(property="birthday", at="09:00", timezone="Asia/Tokyo")
    expected = datetime(2026, 12, 10, 0, 0, tzinfo=UTC)
    assert date_occurrence(dp, "1990-12-10", T0) == int(expected.timestamp() * 1000)


def test_profiles_seen_before_a_date_flow_need_a_wakeup() -> None:
    """A profile holding the date property but no schedule for a live date flow needs a wake-up."""
    trigger = {"date_property": {"property": "birthday", "at": "00:00", "timezone": "UTC"}}
    flows = Harness(flow("bday", trigger=trigger)).flows
    with_date = {"id": "p1", "properties": {"birthday": "2000-12-01"}}
    assert unscheduled_dates(with_date, frozenset(), flows)
    assert not unscheduled_dates(with_date, frozenset({"bday"}), flows)
    assert not unscheduled_dates({"id": "p1"}, frozenset(), flows)


def test_outbox_entries_are_dropped_once_their_offsets_are_committed() -> None:
    """Outputs kept for a re-read are forgotten once the record's offset is committed."""
    h = Harness(flow(reentry={"mode": "always"}))
    h.event(event("e1"), src="t.events:0:7")
    h.event(event("e2"), src="t.events:1:3")
    drop_committed(h.state, lambda topic, partition: {("t.events", 0): 8}.get((topic, partition)))
    assert [entry[0] for entry in h.state.outbox] == ["t.events:1:3"]
    drop_committed(h.state, lambda topic, partition: 3)
    assert len(h.state.outbox) == 1


def test_unknown_pinned_version_is_replaced_only_by_one_of_the_same_shape() -> None:
    """A run whose version is gone (a restart after compaction) continues on a current version
    with the same steps, and exits with a reason when the steps differ."""
    steps = [{"delay": "1h"}, webhook("later")]
    same = Harness(flow(version=1, steps=steps))
    same.event(event("e1"))
    same.flows = FlowSet([flow(version=2, steps=[{"delay": "1h"}, webhook("later", method="PUT")])])
    assert kinds(same.wake(T0 + HOUR)) == ["webhook:later:send", "completed"]
    other = Harness(flow(version=1, steps=steps))
    other.event(event("e1"))
    other.flows = FlowSet([flow(version=2, steps=[webhook("new"), {"delay": "1h"}, webhook("later")])])
    out = other.wake(T0 + HOUR)
    assert kinds(out) == ["exited"] and "no longer known" in out.outputs[0].value["reason"]


def test_never_due_reads_serialised_state_without_decoding_it() -> None:
    """The restart path skips profiles with nothing due by the first bytes of their state,
    and reads only the due time of the others while no flow has a date trigger."""
    from processor.engine.state import DateSchedule, ProfileState, Run, due_of, due_time_of, never_due

    idle = ProfileState("p1", profile={"email": "a@example.com"}, seen=["e1"])
    waiting = ProfileState("p2", runs={"r": Run("r", "f", 1, 0, {"id": "e"}, T0, wake_ms=T0 + HOUR)})
    dated = ProfileState("p3", dates={"f": DateSchedule(T0 + DAY, "2026-12-01", "sig")})
    for state in (idle, waiting, dated):
        raw = dumps(state)
        assert never_due(raw) == (due_of(raw).due_ms is None)
        assert loads(raw) == state
        summary = due_of(raw)  # the rebuild's short read agrees with the full summary
        assert due_time_of(raw) == (summary.profile_id, summary.partition, summary.due_ms, summary.reason)
    assert never_due(dumps(idle))
    assert due_time_of(orjson.dumps({"d": [T0, "delay"], "i": "p4", "p": 2, "f": {}, "t": {}})) == (
        "p4", 2, T0, "delay")  # state written as JSON by earlier versions


def test_state_written_as_json_by_earlier_versions_is_still_read() -> None:
    """A changelog written before the typed state (one JSON object, short keys) still loads."""
    from processor.engine.state import DateSchedule, ProfileState, Run, due_of, never_due

    run = ["r", "f", 1, 2, {"id": "e"}, T0, T0 + HOUR, "shape"]
    legacy = {"d": [T0 + HOUR, "delay"], "i": "p2", "p": 3, "f": {"email": "a@example.com"}, "r": [run],
              "e": {"f": [1, T0]}, "s": ["e"], "h": {"Placed Order": [T0]},
              "t": {"g": [T0 + DAY, "2026-12-01", "sig"]}, "o": []}
    raw = orjson.dumps(legacy)
    state = loads(raw)
    assert state == ProfileState("p2", partition=3, profile={"email": "a@example.com"},
                                 runs={"r": Run(*run)}, entries={"f": [1, T0]}, seen=["e"],  # type: ignore[arg-type]
                                 history={"Placed Order": [T0]},
                                 dates={"g": DateSchedule(T0 + DAY, "2026-12-01", "sig")})
    assert not never_due(raw) and due_of(raw).due_ms == T0 + HOUR and due_of(raw).dated_flows == {"g"}
    assert never_due(orjson.dumps({**legacy, "d": None}))
    assert loads(dumps(state)) == state and len(dumps(state)) < len(raw)
