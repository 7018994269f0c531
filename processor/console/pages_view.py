"""Read-only pages: flows, a flow's activity log, failures, one delivery, audit trails, replay progress."""

from __future__ import annotations

from typing import Any

import yaml
from aiohttp import web
from multidict import MultiMapping

from processor.basics import mask_tags
from processor.clock import now_ms
from processor.console import auth, queries
from processor.console.context import CONSOLE, Console
from processor.console.index import FAILED_OUTCOMES
from processor.dispatch.replay import parse_time
from processor.engine.preview import pretty_body
from processor.errors import FlowhookError
from processor.flows.loader import flow_from_dict
from processor.ops.publish import describe_trigger

routes = web.RouteTableDef()
OUTCOMES = queries.OUTCOMES


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    caught_up = console.feed.caught_up.is_set()
    return web.json_response({"ok": True, "index_caught_up": caught_up, "ingested": console.feed.ingested})


@routes.get("/")
async def flows_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    rows = await console.index.read(queries.flows, now_ms())
    return console.render(request, "flows.html", flows=[_flow_summary(r) for r in rows])


def _flow_summary(row: dict[str, Any]) -> dict[str, Any]:
    record = row["record"]
    definition = record.get("definition") or {}
    what = _trigger_text(record)
    return {"id": record.get("id"), "name": definition.get("name", ""),
            "status": definition.get("status", ""),
            "version": record.get("version"), "trigger": what, "counts": row["counts"],
            "success_rate": row["success_rate"], "has_webhook": auth.has_webhook(definition)}


def _trigger_text(record: dict[str, Any]) -> str:
    """`flows list`'s description of the trigger; the raw trigger when the definition no longer loads."""
    try:
        flow = flow_from_dict(record.get("definition"), source=str(record.get("source")),
                              version=int(record.get("version") or 1), allow_http=True)
    except (FlowhookError, ValueError, TypeError):
        return str((record.get("definition") or {}).get("trigger", ""))
    return describe_trigger(flow.trigger)


def log_filter(query: MultiMapping[str], *, flow_id: str | None, outcomes: tuple[str, ...] = ()) -> tuple[
        queries.LogFilter, list[str]]:
    """The activity log's filters from the query string, and what was wrong with them."""
    errors: list[str] = []
    chosen = tuple(o for o in query.getall("outcome", []) if o in OUTCOMES) or outcomes
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        try:
            times[name] = parse_time(query.get(name) or None)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            times[name] = None
    after = None
    cursor = query.get("after", "")
    if ":" in cursor:
        ms, _, delivery = cursor.partition(":")
        if ms.isdigit():
            after = (int(ms), delivery)
    f = queries.LogFilter(flow_id=flow_id, outcomes=chosen, step_id=query.get("step") or None,
                          since_ms=times["since"], until_ms=times["until"], search=query.get("q") or None,
                          after=after)
    return f, errors


@routes.get("/flows/{flow_id}")
async def flow_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    flow_id = request.match_info["flow_id"]
    record = await console.found("flow", queries.flow_record, flow_id)
    trail = await console.index.read(queries.audit_trail, flow_id, 50)
    definition = record.get("definition") or {}
    return console.render(request, "flow.html", record=record, definition=definition, trail=trail,
                          definition_yaml=yaml.safe_dump(definition, sort_keys=False, allow_unicode=True),
                          has_webhook=auth.has_webhook(definition))


@routes.get("/flows/{flow_id}/activity")
async def activity_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    flow_id = request.match_info["flow_id"]
    record = await console.index.read(queries.flow_record, flow_id)
    f, errors = log_filter(request.query, flow_id=flow_id)
    page = await console.index.read(queries.activity, f)
    steps = await console.index.read(queries.steps_of, flow_id)
    return console.render(request, "activity.html", title=f"Activity of {flow_id}", flow_id=flow_id,
                          record=record, page=page, filters=f, errors=errors, steps=steps,
                          outcomes=OUTCOMES, query=request.query, base=request.path)


@routes.get("/failures")
async def failures_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    f, errors = log_filter(request.query, flow_id=request.query.get("flow") or None, outcomes=FAILED_OUTCOMES)
    page = await console.index.read(queries.activity, f)
    return console.render(request, "activity.html", title="Failures across flows", flow_id=None, record=None,
                          page=page, filters=f, errors=errors, steps=[], outcomes=OUTCOMES,
                          query=request.query, base=request.path)


@routes.get("/deliveries/{delivery_id}")
async def delivery_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    found = await console.found("delivery", queries.delivery, request.match_info["delivery_id"])
    return console.render(request, "delivery.html", d=found, request_view=request_view(found["due"]))


def request_view(due: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request as the engine built it, with every secret reference masked and no secret resolved."""
    if due is None:
        return None
    req = due.get("request") or {}
    headers = [(str(k), str(v)) for k, v in (req.get("headers") or {}).items()]
    secret = [(str(k), mask_tags(str(v))) for k, v in (req.get("secret_headers") or {}).items()]
    body = req.get("body")
    return {"method": req.get("method"), "url": req.get("url"), "headers": headers, "secret_headers": secret,
            "signing_secrets": list(req.get("signing_secrets") or []),
            "body": pretty_body(body) if isinstance(body, str) else None,
            "mode": due.get("mode"), "error": due.get("error"), "webhook_id": due.get("delivery_id")}


@routes.get("/audit")
async def audit_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    flow_id = request.query.get("flow") or None
    trail = await console.index.read(queries.audit_trail, flow_id, 500)
    return console.render(request, "audit.html", trail=trail, flow_id=flow_id)


@routes.get("/replays/{replay_id}")
async def replay_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    progress = await console.found("replay", queries.replay_progress, request.match_info["replay_id"])
    return console.render(request, "replay_progress.html", p=progress)
