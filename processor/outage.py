"""Broker outages as the workers see them: logged once when they start and once when they end.

The Kafka clients retry on their own through an outage (the workers' producers keep their
batches for `OUTAGE_RIDE_MS`, consumers reconnect, offsets are committed again), and
their own logs repeat a failure for every request. So each worker runs one watch: a
metadata request every second with a short deadline; the first failure after success logs
`broker_unreachable`, the first success after that logs `broker_back` with how long it
lasted. Outage logging elsewhere (commit failures) asks `outage.during()` to stay quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient

from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["OUTAGE_RIDE_MS", "BrokerWatch", "during"]

# How long a worker's producer keeps a batch it cannot deliver (aiokafka's batch lifetime
# is its request timeout): longer than any outage the workers are meant to ride out.
OUTAGE_RIDE_MS: Final = 10 * 60_000
PROBE_EVERY_S: Final = 1.0
PROBE_TIMEOUT_S: Final = 2.0

_state = {"down_since": 0.0}


def during() -> bool:
    """True while this process's watch sees the brokers unreachable."""
    return _state["down_since"] > 0


class BrokerWatch:
    """Probes the brokers every second; logs each outage once (start and end)."""

    def __init__(self, settings: Settings, role: str) -> None:
        self.settings = settings
        self.role = role
        self.outages = 0

    async def run(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.brokers,
                                    client_id=f"flowhook-watch-{self.role}",
                                    request_timeout_ms=int(PROBE_TIMEOUT_S * 1000))
        started = False
        try:
            while True:
                ok = await self._probe(admin, started)
                started = started or ok
                self._note(ok)
                await asyncio.sleep(PROBE_EVERY_S)
        finally:
            if started:
                with contextlib.suppress(Exception):
                    await admin.close()

    async def _probe(self, admin: AIOKafkaAdminClient, started: bool) -> bool:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that comes
            # as the probe finishes, and this loop would then never end (a dispatcher's
            # shutdown hung on it until its caller's own timeout).
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if not started:
                    await admin.start()
                await admin.list_topics()
        except Exception:  # any failure within the deadline means "unreachable now" (a cancel goes on up)
            return False
        return True

    def _note(self, ok: bool) -> None:
        down_since = _state["down_since"]
        if not ok and not down_since:
            _state["down_since"] = time.monotonic()
            self.outages += 1
            log.warning("broker_unreachable", role=self.role, brokers=self.settings.brokers,
                        hint="riding it out: work resumes when the brokers answer")
        elif ok and down_since:
            _state["down_since"] = 0.0
            log.warning("broker_back", role=self.role, brokers=self.settings.brokers,
                        outage_s=round(time.monotonic() - down_since, 1))
