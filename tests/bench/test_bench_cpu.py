"""The bench's CPU accounting and scale plan: pure code, checked on this process and plain data."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click
import pytest

from processor.bench.cpu import (
    DRIVER,
    CpuWindow,
    cpu_seconds,
    per_record_us,
    pipeline_total_us,
    records_after,
)
from processor.bench.scale import parse_counts, scale_plan, settled


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_window_counts_the_cpu_this_process_spends_inside_it() -> None:
    window = CpuWindow({DRIVER: [os.getpid()]})
    window.open()
    _burn(0.1)
    spent = window.close()[DRIVER]
    # /proc counts in clock ticks (10 ms): the burn is there, within a few ticks.
    assert 0.07 <= spent <= 1.0, spent


def test_a_gone_process_reads_as_none_and_counts_zero() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert cpu_seconds(child.pid) is None
    window = CpuWindow({"receiver": [child.pid]})
    window.open()
    assert window.close() == {"receiver": 0.0}


def test_per_record_figures_and_the_total_leave_the_driver_out() -> None:
    per = per_record_us({"processor": 1.5, "broker": 0.5, DRIVER: 0.25}, 1_000)
    assert per == {"processor": 1500.0, "broker": 500.0, DRIVER: 250.0}
    assert pipeline_total_us(per) == 2000.0
    assert per_record_us({"processor": 1.0}, 0) == {}
    assert pipeline_total_us({DRIVER: 3.0}) is None


def test_only_records_stamped_after_the_window_opened_count() -> None:
    assert records_after([100, 200, 300, 301], opened_ms=200) == 2


def test_the_scale_plan_leaves_out_more_workers_than_partitions() -> None:
    assert scale_plan((1, 2, 4), (8, 16)) == [(8, 1), (8, 2), (8, 4), (16, 1), (16, 2), (16, 4)]
    assert scale_plan((1, 4), (2,)) == [(2, 1)]


def test_groups_are_settled_when_every_partition_has_one_ready_owner() -> None:
    proc = lambda parts: {"ready": True, "role": "processor", "partitions": parts}  # noqa: E731
    disp = lambda first: {"ready": True, "role": "dispatcher", "partitions": {"first": first, "retry": 2}}  # noqa: E731
    assert settled([proc([0, 1]), proc([2, 3]), disp(2), disp(2)], 4)
    assert not settled([proc([0, 1]), proc([2, 3]), disp(2), None], 4)  # one not answering yet
    assert not settled([proc([0, 1]), disp(4)], 4)  # a processor still joining
    assert not settled([proc([0, 1, 2, 3]), {**disp(4), "ready": False}], 4)


def test_scale_counts_are_checked_with_a_clear_error() -> None:
    assert parse_counts("--scale-workers", "1, 2,4") == (1, 2, 4)
    for bad in ("", "1,x", "0", "-1"):
        with pytest.raises(click.UsageError, match="--scale-workers"):
            parse_counts("--scale-workers", bad)
