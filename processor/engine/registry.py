"""The flow registry: every worker reads the compacted flows topic into a `FlowSet`.

A plain consumer (no group, from the beginning) rather than a Faust GlobalTable, which is
known to loop in recovery with several workers. Edits take effect without restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from processor import strict_json
from processor.engine.flowset import FlowSet
from processor.errors import FlowhookError
from processor.flows.loader import flow_from_dict
from processor.flows.model import Flow
from processor.kafka import make_reader
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

IDLE_LOADED_MS = 400  # no new flow records for this long after start: the initial load is done


def flow_from_record(value: bytes, *, allow_http: bool) -> Any:
    """A flow record's value -> Flow (raises FlowhookError or ValueError if unusable)."""
    record = strict_json.loads(value, max_string_bytes=None)
    return flow_from_dict(
        record["definition"],
        source=str(record.get("source") or "<flows topic>"),
        version=int(record["version"]),
        allow_http=allow_http,
    )


class FlowRegistry:
    """Keeps `flows` in step with the flows topic in a background task."""

    def __init__(
        self,
        settings: Settings,
        flows: FlowSet,
        on_change: Callable[[Flow | None], None] | None = None,
        on_refused: Callable[[Any, str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.flows = flows
        self._on_change = on_change
        self._on_refused = on_refused  # (consumed record, reason): copies it aside
        self.loaded = asyncio.Event()
        # flow id -> why this worker refused its current definition (shown in metrics and logs)
        self.refused: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader = make_reader(self.settings, self.settings.topics.flows)
        await reader.start()
        self._task = asyncio.create_task(self._follow(reader), name="flowhook-flow-registry")

    async def wait_loaded(self) -> None:
        """Until the flows topic has been read to its (idle) end once."""
        await self.loaded.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, reader: Any) -> None:
        try:
            while True:
                batch = await reader.getmany(timeout_ms=IDLE_LOADED_MS)
                for recs in batch.values():
                    for record in recs:
                        reason = self.apply(record.key, record.value)
                        if reason is not None and self._on_refused is not None:
                            await self._on_refused(record, reason)
                if not batch:
                    self.loaded.set()
        finally:
            await reader.stop()

    def _refuse(self, flow_id: str | None, reason: str) -> str:
        """The operator must see this: the flow was published, but this worker will not run it
        (an error line, `flowhook_flows_refused`, /readyz and `flows list`)."""
        if flow_id:
            self.refused[flow_id] = reason
        log.error("flow_record_refused", flow_id=flow_id, error=reason)
        return f"flow record refused: {reason}"

    def apply(self, key: bytes | None, value: bytes | None) -> str | None:
        """Apply one flow record: a definition (new version) or a tombstone (removal).
        Returns why the record was refused (the flows in force stay as they were), or None."""
        flow_id = key.decode(errors="replace") if key else None
        if value is None:
            if not flow_id:
                return "a tombstone without a key (no flow id)"
            self.flows.remove(flow_id)
            self.refused.pop(flow_id, None)
            log.info("flow_removed", flow_id=flow_id)
            return None
        try:
            flow = flow_from_record(value, allow_http=self.settings.allow_http)
        except (FlowhookError, ValueError, KeyError, TypeError) as exc:
            return self._refuse(flow_id, str(exc)[:500])
        except Exception as exc:  # a definition must never take the worker down (deep, odd)
            return self._refuse(flow_id, type(exc).__name__)
        self.refused.pop(flow.id, None)
        self.flows.put(flow)
        log.info("flow_loaded", flow_id=flow.id, version=flow.version, status=flow.status)
        if self._on_change is not None:
            self._on_change(flow)
        return None
