"""`flowhook send`: read a JSON-lines file, check every line, produce it keyed by profile.

The whole file is checked before anything is sent, so a bad line never leaves half a file
on the topic; every problem is reported with file, line and field.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor import constants as c
from processor import strict_json
from processor.basics import record_profile_key as profile_key
from processor.errors import InputError, Problem
from processor.kafka import ensure_topics, make_producer
from processor.records import SchemaName, validation_error
from processor.settings import Settings

MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class Line:
    number: int
    key: bytes | None
    value: bytes


def read_lines(path: Path, schema: SchemaName | None) -> list[Line]:
    """Parse and check every line; raise InputError listing the problems (file:line: field)."""
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InputError([Problem(str(path), None, "", f"cannot read the file: {exc.strerror}")]) from None
    lines: list[Line] = []
    problems: list[Problem] = []
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        line, problem = _check_line(path, number, raw, schema)
        if problem:
            problems.append(problem)
        elif line:
            lines.append(line)
    if problems:
        raise InputError(problems[:MAX_REPORTED_PROBLEMS])
    if not lines:
        reason = "no records: the file is empty (one JSON object per line)"
        raise InputError([Problem(str(path), None, "", reason)])
    return lines


def _check_line(
    path: Path, number: int, raw: bytes, schema: SchemaName | None
) -> tuple[Line | None, Problem | None]:
    try:
        # The checks the workers make on their input: size, strict JSON, string lengths.
        record = strict_json.loads(raw, max_string_bytes=c.MAX_INPUT_STRING_BYTES if schema else None)
    except strict_json.NotUsable as exc:
        reason = f"{exc}; each line must be one JSON object"
        return None, Problem(str(path), number, "", reason)
    if schema is not None:
        error = validation_error(schema, record)
        if error:
            field = error.split(" ", 1)[0]
            return None, Problem(str(path), number, field, error)
    key = profile_key(record) if isinstance(record, dict) else None
    return Line(number, key.encode() if key else None, raw), None


async def produce_lines(
    settings: Settings,
    topic: str,
    lines: list[Line],
    *,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce the lines to `topic` (at most `rate` per second); returns how many were acked."""
    await ensure_topics(settings, [topic])
    producer = make_producer(settings)
    await producer.start()
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    try:
        for index, line in enumerate(lines, start=1):
            pending.append(await producer.send(topic, line.value, key=line.key))
            if rate:
                await _keep_rate(started, index, rate)
            if progress and index % 200 == 0:
                progress(200)
        await asyncio.gather(*pending)
        if progress:
            progress(len(lines) % 200)
    finally:
        await producer.stop()
    return len(pending)


async def _keep_rate(started: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        await asyncio.sleep(ahead)


def schema_for_topic(settings: Settings, topic: str) -> SchemaName | None:
    """Events and profile updates are checked against their schema; other topics are not."""
    schemas: dict[str, SchemaName] = {settings.topics.events: "event", settings.topics.profiles: "profile"}
    return schemas.get(topic)
