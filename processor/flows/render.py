"""Rendering a webhook step into the request the dispatcher will send.

Object bodies are rendered leaf by leaf into JSON data and serialised once, so rendering
can never produce invalid JSON or add keys: keys are literal, string leaves are templates,
and a leaf that is exactly one tag keeps its value's JSON type. String bodies (pasted from
Klaviyo) render as text and must parse as JSON afterwards; if not, `error` says why and the
engine records the delivery as `invalid`.

Secrets are never rendered here: headers that mention `secrets.` travel as templates in
`secret_headers`, and `signing_secrets` holds secret names; the dispatcher resolves both.
Templates are compiled once per (flow id, version, step) and cached.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import orjson

from processor import records
from processor.basics import SECRET_TAG
from processor.flows import templates as t
from processor.flows import values
from processor.flows.model import Flow, WebhookStep

CACHE_SIZE: Final = 4096
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class RenderedRequest:
    """A webhook step rendered for one run; `error` set when the request cannot be built."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    secret_headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    signing_secrets: list[str] = field(default_factory=list)
    error: str | None = None

    def request(self) -> records.Request:
        """The `request` of a webhook-due record."""
        return records.Request(
            method=self.method,  # type: ignore[arg-type]
            url=self.url,
            headers=dict(self.headers),
            secret_headers=dict(self.secret_headers),
            body=self.body,
            signing_secrets=list(self.signing_secrets),
        )

    def as_record(self) -> dict[str, Any]:
        """The `request` object of a webhook-due record, as its JSON value."""
        return records.as_dict(self.request())


@dataclass(frozen=True)
class CompiledStep:
    """Everything of one webhook step that is a template, compiled."""

    url: tuple[str | t.Compiled, ...]
    headers: dict[str, t.Compiled]
    secret_headers: dict[str, str]
    body: Any  # a tree of dict/list/Compiled/JSON scalars, a Compiled (string body), or None
    text_body: bool


def is_secret_header(value: str) -> bool:
    """True when a header value mentions secrets (it then travels unrendered)."""
    return "secrets" in value and t.has_tags(value)


def canonical_secret_header(value: str) -> str:
    """The header template with every secret tag spelled `{{ secrets.NAME }}`."""
    return SECRET_TAG.sub(lambda m: "{{ secrets." + m.group(1) + " }}", value)


def compile_step(step: WebhookStep) -> CompiledStep:
    """Compile every template of a step; TemplateProblem if one does not parse."""
    headers = {k: t.compile_leaf(v, typed=False) for k, v in step.headers.items() if not is_secret_header(v)}
    secret = {k: canonical_secret_header(v) for k, v in step.headers.items() if is_secret_header(v)}
    text_body = isinstance(step.body, str)
    body = t.compile_leaf(step.body, typed=False, json_text=True) if text_body else _compile_tree(step.body)
    return CompiledStep(compile_url(step.url), headers, secret, body, text_body)


def _compile_tree(node: Any) -> Any:
    if isinstance(node, str):
        return t.compile_leaf(node)
    if isinstance(node, dict):
        return {str(k): _compile_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_compile_tree(v) for v in node]
    return node


class _Cache:
    """Compiled steps by (flow id, version, step id), least recently used dropped first.

    Each entry remembers the step object it was compiled from, so two different
    definitions that share an id and version (tests, previews) never see each other's.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[str, int, str], tuple[WebhookStep, CompiledStep]] = OrderedDict()

    def get(self, flow: Flow, step: WebhookStep) -> CompiledStep:
        """The compiled step, compiling it on first use."""
        key = (flow.id, flow.version, step.id)
        entry = self.entries.get(key)
        if entry is not None and entry[0] is step:
            self.entries.move_to_end(key)
            return entry[1]
        compiled = compile_step(step)
        self.entries[key] = (step, compiled)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return compiled


_cache = _Cache(CACHE_SIZE)


def render_webhook(
    step: WebhookStep, *, flow: Flow, event: Mapping[str, Any], profile: Mapping[str, Any]
) -> RenderedRequest:
    """Render one webhook step for the triggering `event` record and the stored `profile`.

    Never raises for data reasons: a body that cannot be built yields `error` (mode invalid).
    """
    base = RenderedRequest(method=step.method, url=step.url, signing_secrets=list(step.signing_secrets))
    try:
        compiled = _cache.get(flow, step)
    except t.TemplateProblem as exc:
        return _with(base, error=f"step {step.id}: {exc}")
    variables = t.variables_for(event=event, profile=profile, flow_id=flow.id, flow_name=flow.name)
    token = values.new_budget()
    try:
        return _render(base, compiled, variables)
    except Exception as exc:  # data must never take a worker down (limits, odd values)
        return _with(base, secret_headers=compiled.secret_headers, error=f"could not render: {exc}")
    finally:
        values.end_budget(token)


def _render(base: RenderedRequest, compiled: CompiledStep, variables: dict[str, Any]) -> RenderedRequest:
    url = _render_url(compiled.url, variables)
    headers = {name: _header_value(c.render_text(variables)) for name, c in compiled.headers.items()}
    body, error = _render_body(compiled, variables)
    return _with(base, url=url, headers=headers, secret_headers=dict(compiled.secret_headers),
                 body=body, error=error)


def _with(base: RenderedRequest, **changes: Any) -> RenderedRequest:
    values = {**base.__dict__, **changes}
    return RenderedRequest(**values)


_TAG_SPLIT: Final = re.compile(r"(\{\{.*?\}\})", re.DOTALL)


def compile_url(url: str) -> tuple[str | t.Compiled, ...]:
    """A URL as literal pieces and tags; each tag's value is percent-encoded when rendered."""
    pieces: list[str | t.Compiled] = []
    for piece in _TAG_SPLIT.split(url):
        if piece.startswith("{{") and piece.endswith("}}"):
            pieces.append(t.compile_leaf(piece, typed=False))
        elif piece:
            pieces.append(piece)
    return tuple(pieces)


def _render_url(pieces: tuple[str | t.Compiled, ...], variables: dict[str, Any]) -> str:
    """Values put into a URL are percent-encoded, so data cannot change its structure."""
    return "".join(
        p if isinstance(p, str) else quote(p.render_text(variables), safe="") for p in pieces
    )


def _header_value(value: str) -> str:
    """Control characters (CR, LF, ...) from data become spaces: no header injection."""
    return _CONTROL.sub(" ", value).strip()


def _render_body(compiled: CompiledStep, variables: dict[str, Any]) -> tuple[str | None, str | None]:
    if compiled.body is None:
        return None, None
    if compiled.text_body:
        rendered = compiled.body.render_text(variables)
        try:
            orjson.loads(rendered)
        except orjson.JSONDecodeError as exc:
            return rendered, f"body is not valid JSON after rendering: {exc}"
        return rendered, None
    body = values.dumps(_render_tree(compiled.body, variables))
    if len(body) > values.MAX_OUTPUT_CHARS:
        return None, f"rendered body is larger than {values.MAX_OUTPUT_CHARS} characters"
    return body, None


def _render_tree(node: Any, variables: dict[str, Any]) -> Any:
    if isinstance(node, t.Compiled):
        return node.render_value(variables)
    if isinstance(node, dict):
        return {k: _render_tree(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_tree(v, variables) for v in node]
    return node
