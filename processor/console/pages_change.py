"""Changing pages: a flow's status, publishing an edited or uploaded flow file, replaying deliveries.

Each handler checks the rule (`auth.decide`) before doing anything, does the change through
the code the command line uses (`ops.publish.apply`, `dispatch.replay.requeue`), and
writes an audit record; a change that cannot be audited is reported as failed.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

import yaml
from aiohttp import web

from processor.clock import now_ms
from processor.console import auth, index, queries
from processor.console.audit import audit_record
from processor.console.context import CONSOLE, Console
from processor.console.pages_auth import form_of
from processor.console.pages_view import log_filter
from processor.dispatch.replay import requeue
from processor.errors import Problem, warning_line
from processor.flows.loader import CheckedFile, ParseError, check_definition, parse_text
from processor.ops import publish

routes = web.RouteTableDef()
STATUSES = ("draft", "manual", "live")
REPLAY_OUTCOMES = ("failed", "dead")
MAX_UPLOAD_BYTES = 512 * 1024


def problem_lines(checked: CheckedFile, *, warnings: bool = False) -> list[str]:
    """The lines `flows validate` prints for this file: file:line: field: message."""
    if warnings:
        return [warning_line(w) for w in checked.warnings]
    return [str(p) for p in checked.problems]


def require(request: web.Request, action: auth.Action, *, touches_webhook: bool = False) -> None:
    """403 with the rule's reason unless the signed-in user may do `action`."""
    console: Console = request.app[CONSOLE]
    decision = auth.decide(request["user"].principal, action, touches_webhook=touches_webhook)
    if not decision.allowed:
        page = console.render(request, "forbidden.html", status=403, reason=decision.reason)
        raise web.HTTPForbidden(text=page.text, content_type="text/html")


async def _flow_or_404(console: Console, flow_id: str) -> dict[str, Any]:
    return await console.found("flow", queries.flow_record, flow_id)


def _who(request: web.Request) -> tuple[str, str]:
    return request["user"].name, request["user"].role


# --- status ----------------------------------------------------------------------------


@routes.post("/flows/{flow_id}/status")
async def change_status(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    record = await _flow_or_404(console, request.match_info["flow_id"])
    definition = record.get("definition") or {}
    require(request, auth.Action.CHANGE_STATUS, touches_webhook=auth.has_webhook(definition))
    form = await form_of(request)
    status = str(form.get("status", ""))
    if status not in STATUSES:
        raise web.HTTPBadRequest(text=f"status must be one of {', '.join(STATUSES)}")
    changed = copy.deepcopy(definition)
    before, changed["status"] = changed.get("status"), status
    checked = check_definition(changed, source=str(record.get("source") or f"console:{record['id']}"))
    if not checked.ok:
        return console.render(request, "edit.html", status=400, flow_id=record["id"], text=_yaml(changed),
                              problems=problem_lines(checked), warnings=[], done=None)
    version = await _publish(request, console, checked, "flow.status", {"from": before, "to": status})
    raise web.HTTPSeeOther(f"/flows/{record['id']}?changed=status&version={version}")


async def _publish(request: web.Request, console: Console, checked: CheckedFile, action: str,
                   detail: dict[str, Any]) -> int:
    assert checked.flow is not None
    changes = await publish.apply(console.settings, [checked])
    change = changes[0]
    who, role = _who(request)
    await console.audit.write(audit_record(who=who, role=role, action=action, flow_id=change.flow_id,
                                           flow_version=change.version,
                                           detail={**detail, "change": change.kind}))
    return change.version


def _yaml(definition: dict[str, Any]) -> str:
    return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True)


# --- publishing ------------------------------------------------------------------------


@routes.get("/flows/{flow_id}/edit")
async def edit_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    record = await _flow_or_404(console, request.match_info["flow_id"])
    return console.render(request, "edit.html", flow_id=record["id"],
                          text=_yaml(record.get("definition") or {}),
                          problems=[], warnings=[], done=None)


@routes.get("/publish")
async def new_flow_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    return console.render(request, "edit.html", flow_id=None, text="", problems=[], warnings=[], done=None)


@routes.post("/publish")
async def publish_flow(request: web.Request) -> web.StreamResponse:
    """Validate the pasted or uploaded file like `flows validate`, then publish it."""
    console: Console = request.app[CONSOLE]
    require(request, auth.Action.PUBLISH)  # analysts stop here, before anything is read
    form = await form_of(request)
    text, source = _submitted_text(form)
    flow_id = str(form.get("flow_id") or "") or None
    checked = _check_text(text, source)
    if not checked.ok or checked.flow is None:
        return console.render(request, "edit.html", status=400, flow_id=flow_id, text=text,
                              problems=problem_lines(checked), warnings=problem_lines(checked, warnings=True),
                              done=None)
    old = await console.index.read(queries.flow_record, checked.flow.id)
    old_definition = (old or {}).get("definition")
    require(request, auth.Action.PUBLISH,
            touches_webhook=auth.change_touches_webhook(old_definition, checked.definition))
    version = await _publish(request, console, checked, "flow.publish",
                             {"source": source, "previous_version": (old or {}).get("version")})
    raise web.HTTPSeeOther(f"/flows/{checked.flow.id}?changed=publish&version={version}")


def _submitted_text(form: Any) -> tuple[str, str]:
    upload = form.get("file")
    filename = getattr(upload, "filename", "")
    if upload is not None and hasattr(upload, "file") and filename:
        data = upload.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_UPLOAD_BYTES, actual_size=len(data))
        try:
            return data.decode("utf-8"), str(upload.filename)
        except UnicodeDecodeError:
            raise web.HTTPBadRequest(text=f"{upload.filename}: not UTF-8 text") from None
    return str(form.get("text", "")), str(form.get("source") or "console-edit.yaml")


def _check_text(text: str, source: str) -> CheckedFile:
    try:
        data, lines = parse_text(text, json_file=source.lower().endswith(".json"))
    except ParseError as exc:
        return CheckedFile(source, problems=[Problem(source, exc.line, "", exc.message)])
    return check_definition(data, source=source, lines=lines)


# --- replay ----------------------------------------------------------------------------


@routes.get("/deliveries/{delivery_id}/replay")
async def replay_one_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    due = await console.found("delivery request", queries.due_record, request.match_info["delivery_id"])
    return console.render(request, "replay_confirm.html", dues=[due], flow_id=due["flow_id"],
                          action=f"/deliveries/{due['delivery_id']}/replay", hidden={})


@routes.post("/deliveries/{delivery_id}/replay")
async def replay_one(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    require(request, auth.Action.REPLAY)
    due = await console.found("delivery request", queries.due_record, request.match_info["delivery_id"])
    replay_id = await _replay(request, console, [due], "delivery.replay", due["flow_id"], {})
    raise web.HTTPSeeOther(f"/replays/{replay_id}")


@routes.get("/flows/{flow_id}/replay")
async def replay_range_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    record = await _flow_or_404(console, request.match_info["flow_id"])
    return console.render(request, "replay_range.html", flow_id=record["id"], errors=[], query=request.query)


@routes.post("/flows/{flow_id}/replay")
async def replay_range(request: web.Request) -> web.StreamResponse:
    """First POST: show what would be replayed; the POST with confirm=yes replays it."""
    console: Console = request.app[CONSOLE]
    require(request, auth.Action.REPLAY)
    record = await _flow_or_404(console, request.match_info["flow_id"])
    form = await form_of(request)
    outcomes = tuple(o for o in form.getall("outcome", []) if o in REPLAY_OUTCOMES) or REPLAY_OUTCOMES
    f, errors = log_filter(form, flow_id=record["id"], outcomes=outcomes)
    if errors:
        return console.render(request, "replay_range.html", status=400, flow_id=record["id"], errors=errors,
                              query=form)
    dues = await console.index.read(queries.replayable, record["id"], f.outcomes, f.since_ms, f.until_ms)
    if form.get("confirm") != "yes":
        hidden = {"since": form.get("since", ""), "until": form.get("until", "")}
        return console.render(request, "replay_confirm.html", dues=dues, flow_id=record["id"],
                              action=f"/flows/{record['id']}/replay", hidden=hidden, outcomes=f.outcomes)
    detail = {"outcomes": list(f.outcomes), "since": form.get("since") or None,
              "until": form.get("until") or None}
    replay_id = await _replay(request, console, dues, "flow.replay", record["id"], detail)
    raise web.HTTPSeeOther(f"/replays/{replay_id}")


async def _replay(request: web.Request, console: Console, dues: list[dict[str, Any]], action: str,
                  flow_id: str, detail: dict[str, Any]) -> str:
    who, role = _who(request)
    replay_id = f"rpl_{secrets.token_hex(8)}"
    at = now_ms()
    ids = [d["delivery_id"] for d in dues]
    await console.index.write(index.record_replay, replay_id, at, who, ids)
    await requeue(console.settings, dues)
    versions = sorted({v for d in dues if isinstance(v := d.get("flow_version"), int)})
    await console.audit.write(audit_record(
        who=who, role=role, action=action, flow_id=flow_id, flow_version=versions[-1] if versions else None,
        detail={**detail, "deliveries": len(ids), "webhook_ids": ids[:100], "replay_id": replay_id},
        at_ms=at))
    return replay_id
