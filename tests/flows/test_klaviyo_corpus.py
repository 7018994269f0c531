"""The corpus of Klaviyo webhook bodies (tests/fixtures/klaviyo/bodies): each is pasted as it is
into a flow file, validates, renders to valid JSON with the right values, and warns where
Klaviyo-internal fields are read, at the line inside the body."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor.flows.loader import check_flow_file
from processor.flows.model import WebhookStep
from processor.flows.render import render_webhook

CORPUS = sorted((Path(__file__).parent.parent / "fixtures" / "klaviyo" / "bodies").glob("*.yaml"))
BODY_FIRST_LINE = 9  # the line of the flow file below where the pasted body starts


def flow_file(tmp_path: Path, body: str) -> Path:
    """A flow file with the body pasted as a YAML block, as a user would paste it."""
    head = ("id: corpus\nstatus: live\ntrigger: {metric: Placed Order}\nsteps:\n  - webhook:\n"
            "      id: w\n      url: https://example.com/hook\n      body: |\n")
    path = tmp_path / "flow.yaml"
    path.write_text(head + textwrap.indent(body, " " * 8))
    return path


def event_record(data: dict[str, Any]) -> dict[str, Any]:
    """The fixture's event as an event record (id and time defaulted)."""
    return {"id": "evt_corpus", "time": "2026-11-27T10:00:00Z", "properties": {}, **data}


def test_the_corpus_has_at_least_fifteen_bodies_each_naming_its_published_form() -> None:
    """At least 15 bodies, and each says which published form it follows."""
    assert len(CORPUS) >= 15
    for path in CORPUS:
        case = yaml.safe_load(path.read_text())
        assert len(case["follows"]) > 20, path.name


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_pasted_body_renders_as_klaviyo_would(tmp_path: Path, path: Path) -> None:
    """The body validates as pasted, renders to valid JSON, and every value is the expected one."""
    case = yaml.safe_load(path.read_text())
    checked = check_flow_file(flow_file(tmp_path, case["body"]), allow_http=False)
    assert checked.ok and checked.flow is not None, [str(p) for p in checked.problems]
    step = checked.flow.steps[0]
    assert isinstance(step, WebhookStep)
    event = event_record(case["event"])
    request = render_webhook(step, flow=checked.flow, event=event, profile=case["profile"])
    assert request.error is None, request.error
    assert json.loads(request.body or "") == case["expect"]
    internal = [w.line for w in checked.warnings if "Klaviyo-internal" in w.message]
    expected_lines = [BODY_FIRST_LINE + n - 1 for n in case.get("warnings_at_lines", [])]
    assert internal == expected_lines


def test_errors_inside_a_block_body_point_at_their_line(tmp_path: Path) -> None:
    """An unknown variable on the third line of a block body is reported at that file line."""
    body = '{\n  "a": "{{ person.email }}",\n  "b": "{{ nobody }}"\n}\n'
    checked = check_flow_file(flow_file(tmp_path, body), allow_http=False)
    assert [(p.line, p.field) for p in checked.problems] == [(BODY_FIRST_LINE + 2, "steps[0].webhook.body")]
    assert "unknown variable 'nobody'" in checked.problems[0].message
