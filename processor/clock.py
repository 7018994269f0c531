"""Time in one place: epoch milliseconds inside, ISO-8601 UTC on the wire."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    """Epoch ms -> '2026-11-27T10:00:00.123Z'.

    Called for every output record: the text up to the second is formatted once per second
    (recent seconds are asked for again and again); the milliseconds are appended."""
    if type(ms) is not int or not 0 <= ms < _FAST_ISO_BELOW:
        return _iso_slow(ms)
    second, millis = divmod(ms, 1000)
    prefix = _second_prefix.get(second)
    if prefix is None:
        if len(_second_prefix) > 64:
            _second_prefix.clear()
        prefix = _second_prefix[second] = _iso_slow(second * 1000)[:-5]  # drop ".000Z"
    return f"{prefix}.{millis:03d}Z"


def _iso_slow(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


_second_prefix: dict[int, str] = {}
# Below 2100-01-01 the float division in `_iso_slow` still rounds to the exact millisecond
# (tests/dispatch/test_dispatch_fastpaths.py checks both paths agree); later times take the slow path.
_FAST_ISO_BELOW = 4_102_444_800_000


def parse_iso_ms(text: str) -> int:
    """ISO-8601 (with Z or an offset; naive means UTC) -> epoch ms. ValueError if it is not."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Integer arithmetic: `int(timestamp() * 1000)` turns .011 s into 10 ms (binary floats).
    return (value - _EPOCH) // _ONE_MS
