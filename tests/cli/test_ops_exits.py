"""Exit codes and messages of the tools (SPEC §5): bad input is 2 with a message naming the
file; progress is shown in plain lines when the output is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from processor.settings import Settings

# A text body whose loop forgets the commas: valid JSON for one item, not for two.
FLOW = """id: strbody
status: live
trigger: {metric: Placed Order}
steps:
  - webhook:
      id: hook
      url: https://example.com/x
      body: '{"items": [{% for i in event.Items %}{{ i }}{% endfor %}]}'
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True,
                          timeout=90, env={**os.environ, **(env or {})})


def test_preview_exits_2_when_a_request_would_be_invalid(tmp_path: Path) -> None:
    """A text body that is not JSON after rendering: preview shows it and exits 2; the same
    flow with an event it renders well for exits 0."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    events = {}
    for name, items in (("two", ["a", "b"]), ("one", ["a"])):
        events[name] = tmp_path / f"{name}.json"
        events[name].write_bytes(orjson.dumps({"metric": "Placed Order", "profile": {"id": "p1"},
                                               "properties": {"Items": items}}))
    bad = _cli("preview", str(flow), "--event", str(events["two"]))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "would be recorded as `invalid`: hook" in bad.stderr
    good = _cli("preview", str(flow), "--event", str(events["one"]))
    assert good.returncode == 0, good.stdout + good.stderr
    assert '"items": [' in good.stdout


def test_send_of_an_empty_file_says_so_and_exits_2(tmp_path: Path) -> None:
    """An empty events file is bad input, named, not a silent success."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    done = _cli("send", str(empty))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {empty}: no records: the file is empty (one JSON object per line)"


def test_send_shows_plain_progress_lines_when_not_a_terminal(settings: Settings, tmp_path: Path) -> None:
    """With stderr a pipe, `send` prints progress as plain lines while it sends, then the total."""
    events = tmp_path / "e.jsonl"
    line = {"metric": "Placed Order", "time": "2026-11-27T10:00:00Z", "profile": {"id": "p1"}}
    events.write_bytes(b"".join(orjson.dumps({**line, "id": f"e{n}"}) + b"\n" for n in range(1200)))
    done = _cli("send", str(events), "--rate", "400", env=settings.as_env())
    assert done.returncode == 0, done.stderr
    progress = [x for x in done.stderr.splitlines() if x.startswith(f"sending to {settings.topics.events}: ")]
    assert progress and all("/1200 (" in x for x in progress)
    assert done.stderr.splitlines()[-1] == f"sent 1200 records from {events} to {settings.topics.events}"
