"""`flows apply` / `flows list`: flow records on the compacted topic, versions bumped only on change."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from processor.cli.flows import flows
from processor.flows.loader import check_flow_file, flow_from_dict
from processor.kafka import read_records
from processor.ops import publish
from processor.settings import Settings

FIXTURES = Path(__file__).parent.parent / "fixtures" / "flows"


def test_plan_bumps_versions_only_on_change() -> None:
    """Unchanged definitions keep their version; changed ones get the next; new ones start at 1."""
    checked = check_flow_file(FIXTURES / "good-full.yaml")
    first = publish.plan([checked], {}, at_ms=0)[0]
    assert (first.kind, first.version) == ("created", 1)
    assert first.record["definition"]["id"] == "full-featured"
    assert set(first.record) == {"id", "version", "definition", "applied_at", "source"}
    same = publish.plan([checked], {"full-featured": first.record})[0]
    assert (same.kind, same.version) == ("unchanged", 1)
    older = {**first.record, "version": 4, "definition": {**first.record["definition"], "name": "old"}}
    changed = publish.plan([checked], {"full-featured": older})[0]
    assert (changed.kind, changed.version) == ("updated", 5)


def test_describe_for_the_list_table() -> None:
    """The list table's trigger and steps columns are short and readable."""
    flow = check_flow_file(FIXTURES / "good-full.yaml").flow
    assert flow is not None
    row = publish.flow_row({"id": flow.id, "version": 1}, flow)
    assert row["trigger"] == "metric Placed Order (2 filters)"
    assert row["steps"] == ("wait 2d → wait until 09:00 Europe/Berlin → split on profile (then 1 | else 0) → "
                            "split on event (then 2 | else 0) → webhook catalog")
    date = flow_from_dict({"id": "b", "status": "live", "trigger": {"date_property": {
        "property": "birthday", "offset": "-3d"}}, "steps": [{"webhook": {"id": "w", "url": "https://e.com"}}]},
        source="m")
    assert publish.describe_trigger(date.trigger) == "date birthday -3d at 09:00 UTC yearly"


async def test_apply_publishes_changes_only(settings: Settings, tmp_path: Path) -> None:
    """Applying twice publishes once; editing the file publishes version 2; records parse back to flows."""
    path = tmp_path / "flow.yaml"
    shutil.copy(FIXTURES / "good-full.yaml", path)
    changes = await publish.apply(settings, [check_flow_file(path)])
    assert [(c.kind, c.version) for c in changes] == [("created", 1)]
    again = await publish.apply(settings, [check_flow_file(path)])
    assert [(c.kind, c.version) for c in again] == [("unchanged", 1)]
    path.write_text(path.read_text().replace("Placed Order → everything", "Renamed"))
    edited = await publish.apply(settings, [check_flow_file(path)])
    assert [(c.kind, c.version) for c in edited] == [("updated", 2)]
    values = [orjson.loads(r.value) async for r in read_records(settings, settings.topics.flows, idle_s=1.0)]
    assert [v["version"] for v in values] == [1, 2]
    last = values[-1]
    flow = flow_from_dict(last["definition"], source=last["source"], version=last["version"])
    assert (flow.name, flow.version) == ("Renamed", 2)


async def test_delete_publishes_a_tombstone(settings: Settings) -> None:
    """delete removes a flow from the current records; an unknown id is reported."""
    await publish.apply(settings, [check_flow_file(FIXTURES / "good-full.yaml")])
    assert await publish.delete(settings, "full-featured")
    assert await publish.current_records(settings) == {}
    assert not await publish.delete(settings, "full-featured")


@pytest.mark.timeout(60)
def test_cli_apply_and_list(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`flows apply` refuses broken files (exit 2, nothing published) and `flows list` shows the table."""
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    refused = runner.invoke(flows, ["apply", str(FIXTURES / "good-full.yaml"), str(FIXTURES / "broken.yaml")])
    assert refused.exit_code == 2 and "nothing was published" in refused.output
    applied = runner.invoke(flows, ["apply", str(FIXTURES / "good-full.yaml")])
    assert applied.exit_code == 0, applied.output
    assert "created   full-featured version 1" in applied.output
    listed = runner.invoke(flows, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "full-featured" in listed.output and "metric Placed Order" in listed.output
    assert "live" in listed.output and "webhook catalog" in listed.output and "1 flow" in listed.output


def test_cli_without_a_broker_fails_with_one_line() -> None:
    """An unreachable broker ends `flows list` with exit 1 and a message naming the address."""
    result = CliRunner().invoke(flows, ["list", "--brokers", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in result.output
