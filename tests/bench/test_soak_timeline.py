"""The soak's per-minute figures: which minute a first try and a CPU sample belong to."""

from __future__ import annotations

from processor.bench.soak import MINUTE_MS, CpuTimeline, p99_per_minute

START = 1_700_000_000_000


def test_p99_per_minute_groups_first_tries_by_their_send_time() -> None:
    sent = [START + 1_000, START + 59_999, START + 60_000, START + 125_000, START - 5, START + 180_000]
    latencies = [10.0, 30.0, 500.0, 70.0, 9_999.0, 9_999.0]  # the last two: outside the 3 minutes
    assert p99_per_minute(sent, latencies, START, 3) == [30.0, 500.0, 70.0]


def test_p99_per_minute_is_zero_for_a_minute_without_first_tries() -> None:
    assert p99_per_minute([START + 10], [5.0], START, 2) == [5.0, 0.0]


def test_cpu_per_minute_averages_the_samples_taken_in_each_minute() -> None:
    timeline = CpuTimeline({})
    # A sample stamped at the very end of a minute covers that minute, not the next.
    timeline.rows = [(START + 20_000, {"broker": 0.4}), (START + MINUTE_MS, {"broker": 0.6}),
                     (START + MINUTE_MS + 30_000, {"broker": 1.0}), (START + 3 * MINUTE_MS, {"broker": 9.0})]
    assert timeline.per_minute("broker", START, 2) == [0.5, 1.0]
    assert timeline.per_minute("processor", START, 2) == [0.0, 0.0]
