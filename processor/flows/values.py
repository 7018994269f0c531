"""Template values: the render budget, JSON-only views of data, and values as JSON or text.

Every render runs under a `Budget` (steps, output characters, wall time); templates see
lists and objects through `SeqView`/`MapView`, whose iteration is counted against it.
"""

from __future__ import annotations

import contextvars
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

import orjson
from jinja2 import Undefined

from processor.errors import FlowhookError
from processor.flows.lookup import EventView, ProfileView

MAX_STEPS: Final = 1_000_000
MAX_OUTPUT_CHARS: Final = 1024 * 1024
MAX_RENDER_SECONDS: Final = 0.5
MAX_DEPTH: Final = 200


class RenderLimitError(FlowhookError, RuntimeError):
    """A render ran past its step, size or time budget."""


# --- budget ----------------------------------------------------------------------------


@dataclass
class Budget:
    """What one render may still spend."""

    steps: int = MAX_STEPS
    output: int = MAX_OUTPUT_CHARS
    deadline: float = 0.0

    def tick(self, n: int = 1) -> None:
        """Spend `n` steps; RenderLimitError past the step or time budget."""
        self.steps -= n
        if self.steps < 0:
            raise RenderLimitError(f"template did more than {MAX_STEPS} steps")
        if (n > 1 or self.steps % 64 == 0) and time.monotonic() > self.deadline:
            raise RenderLimitError(f"template took longer than {MAX_RENDER_SECONDS}s")

    def spend_output(self, n: int) -> None:
        """Spend `n` output characters; RenderLimitError past the size budget."""
        self.output -= n
        if self.output < 0:
            raise RenderLimitError(f"template output is larger than {MAX_OUTPUT_CHARS} characters")
        self.tick()


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("flowhook_budget", default=None)


def new_budget() -> contextvars.Token[Budget | None]:
    """Start a fresh budget for one render; pass the token to `end_budget`."""
    return _budget.set(Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS))


def end_budget(token: contextvars.Token[Budget | None]) -> None:
    """End the render's budget started by `new_budget`."""
    _budget.reset(token)


def current_budget() -> Budget | None:
    """The budget of the render in progress, if any."""
    return _budget.get()


def spend(n: int) -> None:
    """Count `n` output characters against the current render's budget (if any)."""
    budget = _budget.get()
    if budget is not None:
        budget.spend_output(n)


def tick(n: int = 1) -> None:
    """Count `n` steps against the current render's budget (if any)."""
    budget = _budget.get()
    if budget is not None:
        budget.tick(n)


# --- data views: JSON data only, with counted iteration ---------------------------------


class SeqView(Sequence[Any]):
    """A list as templates see it: items wrapped, iteration counted against the budget."""

    __slots__ = ("data",)

    def __init__(self, data: Sequence[Any]) -> None:
        self.data = data

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return SeqView(self.data[index])
        return wrap(self.data[index])

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[Any]:
        for item in self.data:
            tick()
            yield wrap(item)


class MapView(Mapping[str, Any]):
    """A JSON object as templates see it: values wrapped, iteration counted."""

    __slots__ = ("data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return wrap(self.data[key])

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[str]:
        for key in self.data:
            tick()
            yield key


def wrap(value: Any) -> Any:
    """Lists and objects become views; scalars and views pass through."""
    if isinstance(value, list | tuple):
        return SeqView(value)
    if isinstance(value, dict):
        return MapView(value)
    return value


def plain(value: Any) -> Any:
    """The data behind a view (one level); anything else unchanged."""
    if isinstance(value, SeqView | MapView):
        return value.data
    if isinstance(value, ProfileView | EventView):
        return value.plain()
    return value


# --- values to JSON and to text ---------------------------------------------------------


def to_json_value(value: Any, depth: int = 0) -> Any:
    """Any template value as JSON data: views unwrapped, non-finite floats as null."""
    if depth > MAX_DEPTH:
        raise RenderLimitError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind in _PLAIN_JSON:
        return _plain_json(value, kind, depth)
    value = plain(value)
    if isinstance(value, Undefined) or value is None:
        return None
    if isinstance(value, str):
        spend(len(value))
        return value if type(value) is str else str(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        tick(len(value) + 1)
        return {str(k): to_json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | SeqView):
        tick(len(value) + 1)
        return [to_json_value(v, depth + 1) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


_PLAIN_JSON: Final = frozenset({str, int, bool, type(None), dict, list})


def _plain_json(value: Any, kind: type, depth: int) -> Any:
    """`to_json_value` of plain JSON types, by exact type: what decoded records hold. The same
    branches the general checks take for them, without their abstract-class checks."""
    if kind is str:
        spend(len(value))
        return value
    if kind is dict:
        tick(len(value) + 1)
        return {str(k): to_json_value(v, depth + 1) for k, v in value.items()}
    if kind is list:
        tick(len(value) + 1)
        return [to_json_value(v, depth + 1) for v in value]
    return value  # int, bool, None


def dumps(value: Any, *, indent: bool = False) -> str:
    """JSON text of JSON data; falls back to the stdlib for integers beyond 64 bits."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=True, allow_nan=False, indent=2 if indent else None,
                          separators=None if indent else (",", ":"))


def text(value: Any) -> str:
    """How a value prints inside text: missing and null as nothing, the rest as JSON would."""
    if isinstance(value, str):
        return value
    if isinstance(value, Undefined) or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return dumps(to_json_value(value))


def finalize(value: Any) -> str:
    """Jinja's finalize: a printed value as text, counted against the budget."""
    out = text(value)
    budget = _budget.get()
    if budget is not None:
        budget.spend_output(len(out))
    return out
