"""`flowhook flows import` on Klaviyo flow definitions written from Klaviyo's published API schema
(tests/fixtures/klaviyo/flows): what maps, what the report names, and the exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from processor.cli.flows import flows
from processor.flows.klaviyo_import import convert
from processor.flows.loader import check_flow_file, flow_from_dict
from processor.flows.model import DelayStep, SplitStep, WebhookStep
from tests.engine_helpers import Harness, event, kinds

FLOWS = Path(__file__).parent.parent / "fixtures" / "klaviyo" / "flows"
METRICS = ["--metric", "RXm9Uc=Started Checkout", "--metric", "Tq8Lmb=Placed Order"]


def run(*args: str) -> Any:
    """`flowhook flows import ...` with click's runner (stderr kept apart)."""
    return CliRunner().invoke(flows, ["import", *args])


def test_abandoned_cart_maps_trigger_filters_delays_splits_and_webhooks(tmp_path: Path) -> None:
    """The written flow validates and has Klaviyo's trigger, filters, re-entry, delays, split and webhooks."""
    out = tmp_path / "flow.yaml"
    result = run(str(FLOWS / "abandoned-cart.json"), "-o", str(out), *METRICS)
    assert result.exit_code == 0, result.stderr
    checked = check_flow_file(out, allow_http=False)
    assert checked.ok and checked.flow is not None, [str(p) for p in checked.problems]
    flow = checked.flow
    assert (flow.id, flow.status, flow.trigger.metric) == ("klaviyo-vjds2h", "manual", "Started Checkout")
    assert [(c.property, c.op, c.value) for c in flow.trigger.filters] == [("$value", "gte", 50)]
    assert [(c.metric or c.property, c.op, c.value) for c in flow.profile_filters] == [
        ("Placed Order", "count_eq", 0), ("Country", "eq", "US")]
    assert (flow.reentry.mode, flow.reentry.period_ms) == ("once_per", 7 * 86_400_000)
    delay, split = flow.steps
    assert isinstance(delay, DelayStep) and delay.duration_ms == 4 * 3_600_000
    assert isinstance(split, SplitStep) and split.on == "profile"
    vip, = split.then
    wait, crm = split.else_
    assert isinstance(vip, WebhookStep) and vip.headers["X-Api-Key"] == "{{ secrets.X_API_KEY }}"
    assert isinstance(wait, DelayStep) and (wait.days, wait.until, wait.timezone, wait.weekdays) == (
        1, "09:00", "profile", (0, 1, 2, 3, 4))
    assert isinstance(crm, WebhookStep)
    assert crm.headers["Authorization"] == "Bearer {{ secrets.AUTHORIZATION }}"
    assert "sk_live_123" not in out.read_text() and "live_8f2b1c" not in out.read_text()
    report = result.stderr
    for expected in ("skipped: action 102 (send-email)", "skipped: action 107 (send-sms)",
                     "not imported: condition profile-property email ends-with",
                     "FLOWHOOK_SECRET_X_API_KEY", "whole flow is manual"):
        assert expected in report


def test_imported_flow_runs_in_the_engine() -> None:
    """The imported definition runs: a VIP profile's run reaches the (held) concierge webhook."""
    imported = convert(yaml.safe_load((FLOWS / "abandoned-cart.json").read_text()),
                       metric_names={"RXm9Uc": "Started Checkout", "Tq8Lmb": "Placed Order"})
    h = Harness(flow_from_dict(imported.definition, source="import", allow_http=False))
    h.profile(properties={"Country": "US", "vip": True})
    assert kinds(h.event(event("c1", "Started Checkout", **{"$value": 80}))) == ["entered"]
    assert kinds(h.wake(h.now + 4 * 3_600_000)) == ["webhook:klaviyo-104:held", "completed"]


def test_trigger_split_or_groups_and_unknown_actions_are_reported(tmp_path: Path) -> None:
    """A trigger split maps; an OR group and an unsupported action are named in the report."""
    result = run(str(FLOWS / "trigger-split.json"))
    assert result.exit_code == 0, result.stderr
    definition = yaml.safe_load(result.stdout)
    assert definition["status"] == "draft" and definition["reentry"] == {"mode": "always"}
    split = definition["steps"][0]["trigger_split"]
    assert split["if"] == [{"property": "Channel", "op": "in", "value": ["app", "pos"]}]
    assert [s["webhook"]["url"] for s in split["then"]] == ["https://pos.example.com/hook"]
    assert split["else"] == []
    assert "an OR group of 2 conditions" in result.stderr
    assert "not imported: action c (multi-branch-split) and everything after it" in result.stderr
    assert "metric id 'PlcOrd' used as the metric name" in result.stderr


def test_nothing_usable_exits_2() -> None:
    """Email-only flows and unsupported triggers leave nothing to run: exit 2, no flow printed."""
    email_only = run(str(FLOWS / "email-only.json"))
    assert email_only.exit_code == 2 and email_only.stdout == ""
    assert "skipped: action 1 (send-email)" in email_only.stderr and "no webhook step" in email_only.stderr
    price_drop = run(str(FLOWS / "price-drop.json"))
    assert price_drop.exit_code == 2 and "trigger of type 'price-drop'" in price_drop.stderr


def test_bad_input_and_results_needing_a_fix_exit_2(tmp_path: Path) -> None:
    """Not JSON, or a result that does not validate (http URL), exit 2 with the reason."""
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert run(str(broken)).exit_code == 2
    http = tmp_path / "http.json"
    http.write_text('{"triggers": [{"type": "segment", "id": "S1"}], "entry_action_id": "1", "actions": '
                    '[{"id": "1", "type": "send-webhook", "data": {"message": {"url": "http://e.example.com"}}}]}')
    result = run(str(http), "--https-only")
    assert result.exit_code == 2 and "fix before apply" in result.stderr and "https://" in result.stderr
    assert run(str(http), "--metric", "nonsense").exit_code == 2
