"""The engine's door to the flow language (templates and flow definitions).

Temporary shim: until `processor.flows.render` and `processor.flows.loader` are in the
tree, a minimal stand-in renders object bodies without templates, so the engine can be
built and tested alongside. Remove the fallback once both modules have landed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from processor.flows.model import Flow, WebhookStep

try:
    from processor.flows.render import render_webhook
except ImportError:  # pragma: no cover - the flow-language module is being written

    @dataclass(frozen=True)
    class RenderedRequest:
        method: str
        url: str
        headers: dict[str, str] = field(default_factory=dict)
        secret_headers: dict[str, str] = field(default_factory=dict)
        body: str | None = None
        signing_secrets: list[str] = field(default_factory=list)
        error: str | None = None

    def render_webhook(  # type: ignore[misc]
        step: WebhookStep, *, flow: Flow, event: dict[str, Any], profile: dict[str, Any]
    ) -> RenderedRequest:
        """Stand-in: the body as JSON, headers as they are."""
        body = (
            step.body if isinstance(step.body, str) or step.body is None else orjson.dumps(step.body).decode()
        )
        return RenderedRequest(
            step.method, step.url, dict(step.headers), {}, body, list(step.signing_secrets)
        )


__all__ = ["render_webhook"]
