"""The Needs-Review queue (`processor.dispatch.held`): deliveries of manual flows waiting to be sent
or cancelled.

The list comes from the index (deliveries whose latest outcome is `held`, with the request
the engine built); sending and cancelling go through `processor.dispatch.held.send` / `cancel`, which
read the held topic again, so what is acted on is what the topics hold, never a stale page.
"""

from __future__ import annotations

from aiohttp import web

from processor.console import auth, queries
from processor.console.audit import audit_record
from processor.console.context import CONSOLE, Console
from processor.console.pages_auth import form_of
from processor.console.pages_change import require
from processor.dispatch import held

routes = web.RouteTableDef()


@routes.get("/held")
async def held_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    flow_id = request.query.get("flow") or None
    f = queries.LogFilter(flow_id=flow_id, outcomes=("held",))
    page = await console.index.read(queries.activity, f, 500)
    return console.render(request, "held.html", rows=page.rows, flow_id=flow_id,
                          done=request.query.get("done"))


@routes.post("/held")
async def act_on_held(request: web.Request) -> web.StreamResponse:
    """`action=send` or `cancel`, for the ticked deliveries or (with `flow`) all of a flow's."""
    console: Console = request.app[CONSOLE]
    require(request, auth.Action.REPLAY)
    form = await form_of(request)
    action = str(form.get("action", ""))
    if action not in ("send", "cancel"):
        raise web.HTTPBadRequest(text="action must be send or cancel")
    ids = tuple(str(v) for v in form.getall("delivery_id", []))
    flow_id = str(form.get("flow") or "") or None
    if not ids and flow_id is None:
        raise web.HTTPBadRequest(text="tick at least one delivery, or act on a whole flow")
    selection = held.Selection(delivery_ids=ids, flow_id=flow_id)
    done = await (held.send if action == "send" else held.cancel)(console.settings, selection)
    user = request["user"]
    done_ids = [h.delivery_id for h in done]
    await console.audit.write(audit_record(
        who=user.name, role=user.role, action=f"held.{action}", flow_id=flow_id or _one_flow(done),
        detail={"deliveries": len(done_ids), "webhook_ids": done_ids[:100]}))
    raise web.HTTPSeeOther(f"/held?done={action}+{len(done_ids)}")


def _one_flow(done: list[held.HeldDelivery]) -> str | None:
    flows = {h.flow_id for h in done}
    return flows.pop() if len(flows) == 1 else None
