"""Time in one place: epoch milliseconds inside, ISO-8601 UTC on the wire."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    """Epoch ms -> '2026-11-27T10:00:00.123Z'."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def parse_iso_ms(text: str) -> int:
    """ISO-8601 (with Z or an offset; naive means UTC) -> epoch ms. ValueError if it is not."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Integer arithmetic: `int(timestamp() * 1000)` turns .011 s into 10 ms (binary floats).
    return (value - _EPOCH) // _ONE_MS
