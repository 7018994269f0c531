"""`flowhook demo` as a user runs it: a real subprocess, exit code and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_demo_delivers_every_example_and_exits_0() -> None:
    """The demo applies the examples, delivers webhooks for each flow with a delay-free path, and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOK_")}
    done = subprocess.run([sys.executable, "-m", "processor", "demo"], capture_output=True, text=True,
                          timeout=170, env={**env, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "applied 5 example flows" in out
    for step in ("catalog", "crm-lead", "nps-invite", "reminder", "birthday-points"):
        assert step in out
    assert "delivered" in out and "webhook-id" in out
