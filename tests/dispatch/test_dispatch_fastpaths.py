"""The dispatcher's hot-path shortcuts give exactly what the plain code gives."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2

from processor import records
from processor.clock import iso
from processor.dispatch.delivery import _timeout
from processor.partitioner import KeyPartitioner, murmur2
from tests.dispatch_helpers import result_dict, typed_due


def test_murmur2_matches_kafkas_on_every_length() -> None:
    rng = random.Random(7)
    for length in range(0, 70):
        for _ in range(50):
            data = rng.randbytes(length)
            assert murmur2(data) == reference_murmur2(data), data


def test_partitioner_picks_the_default_partition() -> None:
    rng = random.Random(8)
    mine, default = KeyPartitioner(), DefaultPartitioner()
    for partitions in (1, 3, 8, 12):
        all_partitions = list(range(partitions))
        for _ in range(200):
            key = f"dlv_{rng.randbytes(12).hex()}".encode()
            assert mine(key, all_partitions, all_partitions) == default(key, all_partitions, all_partitions)


def test_partitioner_spreads_unkeyed_records_over_available() -> None:
    chosen = {KeyPartitioner()(None, [0, 1, 2, 3], [2]) for _ in range(20)}
    assert chosen == {2}


def test_fast_iso_is_clock_iso() -> None:
    rng = random.Random(9)
    edges = [0, 1, 999, 1000, 1001, 1_764_300_000_000, 1_764_300_000_999, 4_102_444_799_999]
    for ms in edges + [rng.randrange(0, 4_102_444_800_000) for _ in range(20_000)]:
        assert records._iso_ms(ms) == iso(ms), ms


def test_fast_iso_falls_back_outside_its_range() -> None:
    for ms in (-1, -1500, 4_102_444_800_000, 253_402_300_799_999, 1_764_300_000_000.5):
        assert records._iso_ms(ms) == iso(ms)  # type: ignore[arg-type]


def test_delivery_result_times_and_destination() -> None:
    due = typed_due("https://user:pw@hooks.example.com:8443/p/a?token=1#f")
    result = result_dict(
        due, outcome="delivered", sent_at_ms=1_764_300_000_005, finished_at_ms=1_764_300_001_250,
        next_attempt_at_ms=1_764_300_005_000,
    )
    assert result["destination"] == records.destination(due.request.url)
    assert "token" not in result["destination"] and "pw" not in result["destination"]
    assert result["sent_at"] == "2025-11-28T03:20:00.005Z"
    assert result["finished_at"] == "2025-11-28T03:20:01.250Z"
    assert result["next_attempt_at"] == iso(1_764_300_005_000)
    assert records.validation_error("result", result) is None


def test_timeout_is_built_once_per_value() -> None:
    assert _timeout(5000) is _timeout(5000)
    assert _timeout(5000).total == 5.0 and _timeout(5000).sock_connect == 5.0
    assert _timeout(2000).sock_connect == 2.0  # the connect limit never exceeds the total
    assert _timeout(60_000).sock_connect == 5.0
