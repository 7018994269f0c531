"""JSON logs: every line a worker writes is one JSON object, libraries' records included;
exceptions are structured fields without local variables; secrets never appear."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.devtools.stack import WorkerProcess
from processor.settings import Settings
from tests.engine_helpers import definition, event, event_bytes, produce, publish_flows, wait_for

SECRET_VALUE = "tok-never-in-a-log-5a1f"

SCRIPT = textwrap.dedent("""
    import logging, sys, warnings
    from processor.logs import configure, get_logger
    configure(sys.argv[1], "info")
    def handle(record):
        card_number = "4111-LOCAL-VALUE"
        raise ValueError("cannot use it")
    try:
        handle({"email": "data@example.com"})
    except ValueError:
        get_logger("t").exception("ours_failed", api_token="SECRET-IN-FIELD")
        logging.getLogger("aiokafka").exception("theirs failed")
    logging.getLogger("faust").warning("faust says %s", "hello")
    warnings.warn("deprecated thing")
    raise RuntimeError("uncaught")
""")


def _parse_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line[:300]}") from None
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def _run_script(log_format: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT, log_format], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FLOWHOOK_LOG_FORMAT": log_format})
    assert done.returncode == 1
    return done.stderr


def test_json_mode_renders_every_record_and_crash_as_one_json_object() -> None:
    """Our events, stdlib records (aiokafka, faust), warnings and an uncaught crash: all JSON,
    exceptions as structured frames, no locals, no record data, no secrets."""
    stderr = _run_script("json")
    lines = _parse_lines(stderr)
    assert [line["event"] for line in lines][:3] == ["ours_failed", "theirs failed", "faust says hello"]
    assert {line.get("logger") for line in lines} >= {"aiokafka", "faust", "py.warnings"}
    crash = lines[-1]
    assert (crash["event"], crash["level"]) == ("uncaught_exception", "critical")
    for line in (lines[0], lines[1], crash):
        [exc] = line["exception"]
        assert exc["frames"] and "locals" not in exc["frames"][-1]
    assert lines[0]["exception"][0]["exc_value"] == "cannot use it"
    assert lines[0]["api_token"] == "••••"
    for leaked in ("4111-LOCAL-VALUE", "data@example.com", "SECRET-IN-FIELD", "<traceback object"):
        assert leaked not in stderr


def test_console_mode_tracebacks_show_no_local_variables() -> None:
    """The terminal renderer prints a plain traceback, without the frames' local variables."""
    stderr = _run_script("console")
    assert "ValueError: cannot use it" in stderr
    assert "4111-LOCAL-VALUE" not in stderr and "data@example.com" not in stderr


@pytest.mark.slow
async def test_workers_write_only_json_lines(settings: Settings, tmp_path: Path) -> None:
    """Processor and dispatcher at debug level with JSON logs, through traffic, a refused
    record, a secret header and a stop: every line of their output parses as JSON, records of
    aiokafka, faust and mode among them, and the secret's value is nowhere."""
    url = "http://127.0.0.1:9/hook"  # nothing listens: connection refused, then retries
    hook = {"webhook": {"id": "h", "url": url, "retry": ["1s"],
                        "headers": {"Authorization": "Bearer {{ secrets.LOG_TOKEN }}"}, "body": {"a": "b"}}}
    await publish_flows(settings, definition("logs", steps=[hook]))
    env = {"FLOWHOOK_LOG_FORMAT": "json", "FLOWHOOK_LOG_LEVEL": "debug",
           "FLOWHOOK_SECRET_LOG_TOKEN": SECRET_VALUE}
    workers = [WorkerProcess(role, settings, tmp_path / f"{role}.log", env=env).start()
               for role in ("processor", "dispatcher")]
    try:
        await produce(settings, settings.topics.events,
                      [event_bytes(event("e1", pid="p1")), (b"x", b"{nope")])
        dead = await wait_for(settings, settings.topics.results,
                              lambda rs: any(r.get("outcome") == "dead" for r in rs), timeout_s=60)
        assert any(r.get("outcome") == "dead" for r in dead), [w.tail() for w in workers]
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0]
    lines = {role: _parse_lines((tmp_path / f"{role}.log").read_text())
             for role in ("processor", "dispatcher")}
    loggers = {line.get("logger", "").split(".")[0] for role in lines for line in lines[role]}
    assert {"aiokafka", "faust", "mode"} <= loggers
    assert any(line["event"] == "input_refused" for line in lines["processor"])
    for role in lines:
        assert SECRET_VALUE not in (tmp_path / f"{role}.log").read_text()


def test_a_taken_metrics_port_is_one_json_line_in_json_mode(settings: Settings) -> None:
    """A worker that cannot listen says so in one line (JSON in JSON mode) and exits 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, **settings.as_env(), "FLOWHOOK_LOG_FORMAT": "json",
               "FLOWHOOK_METRICS_PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "processor", "dispatcher"], capture_output=True,
                              text=True, timeout=90, env=env)
    assert done.returncode == 1
    [line] = _parse_lines(done.stderr)[-1:]
    assert line["event"] == "command_failed"
    assert line["error"] == f"FLOWHOOK_METRICS_PORT: 127.0.0.1:{port} is already in use"


THREADS_SCRIPT = textwrap.dedent("""
    import logging, sys, threading
    from processor.logs import configure, get_logger
    configure("json", "info")
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    def theirs():
        for n in range(3000):
            logging.getLogger("aiokafka").warning("fetch %d", n)
    thread = threading.Thread(target=theirs)
    thread.start()
    for n in range(3000):
        get_logger("t").warning("ours", n=n)
    thread.join()
""")


def test_lines_from_two_threads_never_run_together() -> None:
    """A library logging on its own thread (Faust's consumer) while we log: still one JSON
    object per line, 6,000 of them."""
    done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    assert len(_parse_lines(done.stderr)) == 6000
