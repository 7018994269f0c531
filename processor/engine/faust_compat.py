"""Every reach into private internals of faust-streaming, mode-streaming and aiokafka.

Nothing else in the package touches a private attribute of these libraries (ruff's SLF001
is on, and tests/engine/test_engine_faust_compat.py scans for string-named reaches). Each reach is
one small function below, with why we need it and the version it was checked against;
the contract tests in tests/engine/test_engine_faust_compat.py pin the behaviour each one relies
on, so an upgrade fails a named test instead of losing outputs in production.

`check_versions` runs when a processor worker starts: it refuses versions not in KNOWN
(the exact versions pinned in pyproject.toml and read for these reaches), unless
FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES=1, which only logs a warning.

Checked against: faust-streaming 0.15.3, mode-streaming 0.7.1, aiokafka 0.14.0.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.streams import _current_event  # private: see set_current_event
from faust.types import TP

from processor.errors import ConfigError
from processor.logs import get_logger

log = get_logger(__name__)

# The versions whose internals the functions below were read against (pyproject.toml pins
# these exactly). Adding one means reading those internals again and running the contract
# tests on it.
KNOWN: Final[dict[str, tuple[str, ...]]] = {
    "faust-streaming": ("0.15.3",),
    "mode-streaming": ("0.7.1",),
    "aiokafka": ("0.14.0",),
}
ALLOW_ENV: Final = "FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES"


class UnknownLibraryVersion(ConfigError):
    """An installed faust-streaming, mode-streaming or aiokafka this code was not checked with."""


# --- start-up version check -----------------------------------------------------------


def check_versions(
    version_of: Callable[[str], str] = metadata.version, env: Mapping[str, str] = os.environ
) -> list[str]:
    """Refuse unknown versions of the three libraries (one line naming package, version
    found and versions known); with FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES=1 warn instead.
    Returns the problems found (empty when every version is known)."""
    problems = [problem for name in KNOWN if (problem := _version_problem(name, version_of))]
    if not problems:
        return []
    if env.get(ALLOW_ENV, "").strip() in ("1", "true", "yes"):
        for problem in problems:
            log.warning("unknown_library_version", problem=problem, override=ALLOW_ENV)
        return problems
    raise UnknownLibraryVersion(f"{problems[0]} (set {ALLOW_ENV}=1 to run anyway, at your own risk)")


def _version_problem(name: str, version_of: Callable[[str], str]) -> str | None:
    known = KNOWN[name]
    try:
        found = version_of(name)
    except metadata.PackageNotFoundError:
        found = "not installed"
    if found in known:
        return None
    return f"{name} {found} is not a version the processor was checked with (known: {', '.join(known)})"


# --- Faust: the current event -----------------------------------------------------------


def set_current_event(event: Any) -> None:
    """Make `event` Faust's current event for this task.

    Why: the RocksDB store picks a key's partition database through
    `faust.streams.current_event().message.partition`; we read and write the table
    outside Faust's own stream iteration (a whole batch at once, and lookups from the
    worker endpoint), so we set what Faust would have set. Faust offers only the reader
    (`current_event`); the setter is the module's private ContextVar.
    Checked: faust-streaming 0.15.3, faust/streams.py `_current_event`.
    """
    _current_event.set(weakref.ref(event))


# --- Faust: the producer and the commit path ---------------------------------------------


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer inside Faust's producer service.

    Why: the engine hands whole record batches to it (`engine.outbound`), and it must be
    this producer, because Faust flushes it before it commits offsets (see
    `flushes_before_commit`): that keeps every output of a committed record on Kafka.
    Checked: faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py
    `Producer._ensure_producer` (raises NotReady before the service started).
    """
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]  # noqa: SLF001  # private
    return producer


def committed_offsets(app: faust.App) -> Mapping[TP, int | None]:
    """The offsets Faust committed last, per topic partition (the next offset to read).

    Why: the outbox in each profile's state keeps outputs until their input record is
    committed; this tells which entries may go. Faust keeps the mapping only privately.
    Without it (another version) outbox entries live until their size and age bounds.
    Checked: faust-streaming 0.15.3, faust/transport/consumer.py
    `Consumer._committed_offset`, updated in `_commit_offsets` after each commit.
    """
    offsets: Mapping[TP, int | None] = getattr(app.consumer, "_committed_offset", None) or {}
    return offsets


def make_idempotent(app: faust.App) -> None:
    """Idempotent produce for Faust's producer (outputs and changelog).

    Why: every other producer is idempotent on brokers that support it
    (`kafka.idempotent`); Faust has no setting for it. Its producer takes extra aiokafka
    options from `_settings_extra` when it creates the aiokafka producer (that is how its
    transactions switch idempotence on), so this adds the option there.
    Checked: faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py
    `Producer._settings_extra` and `_new_producer`.
    """
    producer = app.producer
    extra = producer._settings_extra  # type: ignore[attr-defined]  # noqa: SLF001  # private
    producer._settings_extra = lambda: {**extra(), "enable_idempotence": True}  # type: ignore[attr-defined]  # noqa: SLF001  # private


def producer_options(app: faust.App) -> Mapping[str, Any]:
    """The extra aiokafka options Faust's producer will be created with (see `make_idempotent`)."""
    options: Mapping[str, Any] = app.producer._settings_extra()  # type: ignore[attr-defined]  # noqa: SLF001  # private
    return options


# --- Faust / aiokafka: the consumer ------------------------------------------------------


def aiokafka_consumer(app: faust.App) -> AIOKafkaConsumer | None:
    """The aiokafka consumer inside Faust's consumer thread; None until it exists.

    Why: the lag watch asks it for positions and end offsets, and the fetch wait is set
    on it (`shorten_fetch_wait`). Faust exposes neither.
    Checked: faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py
    `Consumer._thread` (an AIOKafkaConsumerThread) and its `_consumer`.
    """
    thread = getattr(app.consumer, "_thread", None)
    consumer: AIOKafkaConsumer | None = getattr(thread, "_consumer", None)
    return consumer


def shorten_fetch_wait(app: faust.App, wait_ms: int) -> bool:
    """Set how long a fetch of Faust's consumer may wait at the broker; False while the
    consumer is not there yet.

    Why: Faust creates its consumer with fetch_max_wait_ms=1500 and no setting for it; the
    embedded broker holds a fetch about that long unless it fills, so records waited up to
    1.5 s before the agent saw them. aiokafka's fetcher reads the value for every fetch
    request it builds, so setting it on a running consumer takes effect at the next fetch.
    Checked: aiokafka 0.14.0, aiokafka/consumer/fetcher.py `Fetcher._fetch_max_wait_ms`
    (read in `_get_actions_per_node`); faust-streaming 0.15.3 `_create_worker_consumer`.
    """
    fetcher = getattr(aiokafka_consumer(app), "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = wait_ms  # noqa: SLF001
    return True


def fetch_wait_ms(app: faust.App) -> int | None:
    """The fetch wait Faust's consumer uses now (None while it does not exist)."""
    fetcher = getattr(aiokafka_consumer(app), "_fetcher", None)
    wait: int | None = getattr(fetcher, "_fetch_max_wait_ms", None)
    return wait
