"""`flowhook results --delivery ID`: every attempt of one delivery, and how it ended."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["describe_delivery", "print_delivery"]


def describe_delivery(delivery_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The delivery's attempts in order, its final outcome, and its last real HTTP answer."""
    attempts = [r for r in records if r.get("type") == "delivery" and r.get("delivery_id") == delivery_id]
    final = next((r for r in reversed(attempts) if r["outcome"] != "retry_scheduled"), None)
    answered = next((r for r in reversed(attempts) if r.get("http_status") is not None), None)
    first = attempts[0] if attempts else {}
    return {
        "delivery_id": delivery_id,
        "flow_id": first.get("flow_id"), "step_id": first.get("step_id"),
        "profile_id": first.get("profile_id"), "destination": first.get("destination"),
        "attempts": attempts,
        "final_outcome": final["outcome"] if final else ("pending" if attempts else None),
        "last_http_status": answered["http_status"] if answered else None,
        "last_response_excerpt": answered.get("response_excerpt") if answered else None,
        "last_error": attempts[-1].get("error") if attempts else None,
    }


def print_delivery(view: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    if not view["attempts"]:
        console.print(f"no result records for delivery {view['delivery_id']}")
        return
    console.print(f"delivery {view['delivery_id']}: flow {view['flow_id']}, step {view['step_id']}, "
                  f"profile {view['profile_id']}, to {view['destination']}", markup=False, highlight=False)
    table = Table(show_edge=False)
    for name in ("attempt", "outcome", "http", "latency", "sent at", "finished at", "error"):
        table.add_column(name)
    for r in view["attempts"]:
        latency = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.0f} ms"
        table.add_row(str(r.get("attempt")), r["outcome"], str(r.get("http_status") or "-"), latency,
                      r.get("sent_at") or "-", r.get("finished_at") or "-", r.get("error") or "")
    console.print(table)
    status = view["last_http_status"] or "-"
    console.print(f"final outcome: {view['final_outcome']}; last HTTP status: {status}",
                  markup=False, highlight=False)
    if view["last_response_excerpt"]:
        console.print("last response:", markup=False)
        console.print(view["last_response_excerpt"], markup=False, highlight=False, soft_wrap=True)
