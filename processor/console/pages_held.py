"""The Needs-Review queue in the console: held deliveries of manual flows, to send or cancel.

The same queue as `flowhook held` (processor.held): the page lists it, and sending or
cancelling one, or all of a flow's, goes through `held.send` / `held.cancel`. Sending
needs the role that may replay (a delivery goes out as it was rendered; no webhook step is
edited, so two-factor is not needed); every change is written to the audit topic.
"""

from __future__ import annotations

from aiohttp import web

from processor import held
from processor.console import auth
from processor.console.audit import audit_record
from processor.console.context import CONSOLE, Console
from processor.console.pages_auth import form_of
from processor.console.pages_change import require

routes = web.RouteTableDef()
ACTIONS = {"send": held.send, "cancel": held.cancel}


@routes.get("/held")
async def held_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    flow_id = request.query.get("flow") or None
    queue = await held.read_queue(console.settings)
    rows = [h.row() for h in queue if flow_id is None or h.flow_id == flow_id]
    flows = sorted({h.flow_id for h in queue})
    return console.render(request, "held.html", rows=rows, flows=flows, flow_id=flow_id,
                          done=request.query.get("done"), count=request.query.get("count"))


@routes.post("/held/{action}")
async def held_change(request: web.Request) -> web.StreamResponse:
    """Send or cancel the posted delivery ids, or every queued delivery of the posted flow."""
    console: Console = request.app[CONSOLE]
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound(text="held deliveries can be sent or cancelled")
    require(request, auth.Action.REPLAY)
    form = await form_of(request)
    ids = tuple(str(d) for d in form.getall("delivery_id", []) if d)
    flow_id = str(form.get("flow") or "") or None
    if not ids and flow_id is None:
        raise web.HTTPBadRequest(text="name the deliveries (delivery_id) or a flow (flow)")
    done = await ACTIONS[action](console.settings, held.Selection(delivery_ids=ids, flow_id=flow_id))
    who, role = request["user"].name, request["user"].role
    await console.audit.write(audit_record(
        who=who, role=role, action=f"held.{action}", flow_id=flow_id or (done[0].flow_id if done else None),
        detail={"deliveries": len(done), "webhook_ids": [h.delivery_id for h in done][:100]}))
    suffix = f"&flow={flow_id}" if flow_id else ""
    raise web.HTTPSeeOther(f"/held?done={action}&count={len(done)}{suffix}")
