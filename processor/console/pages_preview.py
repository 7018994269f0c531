"""Preview of a flow's webhook steps for a real profile, as the processor holds it, and a pasted event.

The profile comes from the processor worker that owns it (`profiles.lookup`); the run is
the engine core's and the telling `flowhook preview`'s own (`engine.preview.preview`), so the
console shows exactly what the command line would, secrets masked. Nothing is sent.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from processor.console import queries
from processor.console.context import CONSOLE, Console
from processor.console.pages_auth import form_of
from processor.console.profiles import lookup
from processor.engine.preview import preview, record_from_data
from processor.errors import InputError
from processor.flows.loader import ParseError, flow_from_dict, parse_text

routes = web.RouteTableDef()


def sample_event(definition: dict[str, Any]) -> str:
    """A starting point for the pasted event: the flow's trigger metric and no properties."""
    trigger = definition.get("trigger") or {}
    metric = trigger.get("metric") or "Placed Order"
    return orjson.dumps({"metric": metric, "properties": {}}, option=orjson.OPT_INDENT_2).decode()


@routes.get("/flows/{flow_id}/preview")
async def preview_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    record = await console.found("flow", queries.flow_record, request.match_info["flow_id"])
    return console.render(request, "preview.html", flow_id=record["id"], profile_id="",
                          event_text=sample_event(record.get("definition") or {}), result=None, notes=[],
                          problems=[], profile=None)


@routes.post("/flows/{flow_id}/preview")
async def run_preview(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    record = await console.found("flow", queries.flow_record, request.match_info["flow_id"])
    form = await form_of(request)
    profile_id = str(form.get("profile_id", "")).strip()
    event_text = str(form.get("event", ""))
    values: dict[str, Any] = {"flow_id": record["id"], "profile_id": profile_id, "event_text": event_text,
                              "result": None, "notes": [], "problems": [], "profile": None}
    found = await lookup(console.config.endpoints, console.config.endpoint_token, profile_id)
    values["notes"] = found.notes
    if found.answer is None:
        values["notes"].insert(0, f"no processor holds profile {profile_id!r}")
        return console.render(request, "preview.html", status=404, **values)
    profile = found.answer["profile"]
    values["profile"] = orjson.dumps(profile, option=orjson.OPT_INDENT_2).decode()
    try:
        flow = flow_from_dict(record["definition"], source=f"flow {record['id']}",
                              version=int(record["version"]))
        data, lines = parse_text(event_text, json_file=True)
        event = record_from_data(data, lines, source="pasted event", kind="event", profile=profile)
    except ParseError as exc:
        values["problems"] = [f"pasted event:{exc.line or ''}: {exc.message}"]
        return console.render(request, "preview.html", status=400, **values)
    except InputError as exc:
        values["problems"] = [str(p) for p in exc.problems]
        return console.render(request, "preview.html", status=400, **values)
    values["result"] = "\n".join(preview(flow, event, profile).lines)
    values["notes"].insert(0, f"profile from the processor at {found.endpoint} "
                              f"(partition {found.answer.get('partition')})")
    return console.render(request, "preview.html", **values)
