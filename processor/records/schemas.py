"""The JSON Schemas in `schemas/` for the records on topics, generated from the types.

`python -m processor.records.schemas --write` rewrites them; `--check` exits 1 naming the
files that differ from the types (a test runs the same comparison). `flow.schema.json` is
not a topic record but the flow file format, checked by `flows validate`: it stays written
by hand.

msgspec's schema is post-processed into the shape the files have always had: every `$ref`
inlined (no record type is recursive), `anyOf` of a type and null folded into one `type`
list, a single-value enum written as `const`, the tagged result union as `oneOf`, and the
int64 bounds left out (strict_json states that rule once for every topic). What a type
annotation cannot say (an event's profile needs `id` or `email`) is added from `_EXTRA`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson

from processor.records import types as t
from processor.resources import shipped_dir

__all__ = ["SCHEMAS", "differences", "generate", "render", "write"]

_BASE_ID: Final = "https://flowhook.dev/schemas/"
_ID_OR_EMAIL: Final = {"anyOf": [
    {"required": ["id"], "properties": {"id": {"type": "string", "minLength": 1}}},
    {"required": ["email"], "properties": {"email": {"type": "string", "minLength": 3}}},
]}

# file stem -> (type, title, description or None for the type's docstring)
SCHEMAS: Final[dict[str, tuple[Any, str, str | None]]] = {
    "event": (t.Event, "Event", None),
    "profile": (t.ProfileUpdate, "Profile update", None),
    "flow-record": (t.FlowRecord, "Flow record", None),
    "wakeup": (t.WakeUp, "Wake-up", None),
    "webhook": (t.WebhookDue, "Webhook due", None),
    "result": (t.Result, "Result",
               "One delivery attempt outcome or one run lifecycle change, on flowhook.results."),
    "invalid": (t.InvalidInput, "Invalid input", None),
    "audit": (t.Audit, "Audit record", None),
}

# Constraints beyond what a type annotation says, merged into the generated schema by path.
_EXTRA: Final[dict[str, dict[tuple[str, ...], dict[str, Any]]]] = {
    "event": {("properties", "profile"): _ID_OR_EMAIL},
    "profile": {(): _ID_OR_EMAIL},
}
_INT64_BOUNDS: Final = {"minimum": -(2**63), "maximum": t.INT64_MAX}


def _dropped(key: str, value: Any) -> bool:
    """The int64 bounds and the union's discriminator (JSON Schema validators ignore it)."""
    return key == "discriminator" or (type(value) is int and _INT64_BOUNDS.get(key) == value)


def generate(name: str) -> dict[str, Any]:
    """The schema of one record type, as written to `schemas/<name>.schema.json`."""
    kind, title, description = SCHEMAS[name]
    raw = msgspec.json.schema(kind)
    defs = raw.pop("$defs", {})
    body = _tidy(_inline(raw, defs))
    if "oneOf" in body:  # the result union: the tagged alternatives
        body = {"oneOf": body["oneOf"]}
    body.pop("title", None)
    doc = body.pop("description", None)
    for path, extra in _EXTRA.get(name, {}).items():
        _at(body, path).update(extra)
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_BASE_ID}{name}.schema.json",
        "title": title,
        "description": description or doc,
    }
    return {**head, **body}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            target = _inline(defs[ref.rsplit("/", 1)[1]], defs)
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**{k: v for k, v in target.items() if k != "title"}, **rest}
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _tidy(node: Any) -> Any:
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _tidy(v) for k, v in node.items() if not _dropped(k, v)}
    if node.get("required") == []:
        del node["required"]
    if "default" in node and node["default"] is None:  # a null default says nothing a reader needs
        del node["default"]
    if "anyOf" in node:
        node = _fold_any_of(node)
    if isinstance(node.get("enum"), list) and len(node["enum"]) == 1:
        node["const"] = node.pop("enum")[0]
    return node


def _fold_any_of(node: dict[str, Any]) -> dict[str, Any]:
    """`anyOf` of alternatives of distinct types (each keyword only applies to its own type)
    folded into one schema with a `type` list; a tagged union becomes `oneOf`."""
    options = node["anyOf"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if all(o.get("type") == "object" and "const" in o.get("properties", {}).get("type", {})
           for o in options):
        return {**rest, "oneOf": options}
    nulls = [o for o in options if o == {"type": "null"}]
    others = [o for o in options if o != {"type": "null"}]
    if len(others) == 1 and nulls and "enum" in others[0] and "type" not in others[0]:
        return {**rest, **others[0], "enum": [*others[0]["enum"], None]}
    types = [o.get("type") for o in options]
    keys = [set(o) - {"type"} for o in options]
    distinct = all(isinstance(x, str) for x in types) and len(set(types)) == len(types)
    if distinct and not set.intersection(*keys):
        merged: dict[str, Any] = {"type": types}
        for option in options:
            merged.update({k: v for k, v in option.items() if k != "type"})
        return {**merged, **rest}
    return node


def _at(node: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        node = node[key]
    return node


def render(name: str) -> bytes:
    """The file's bytes: two-space indented, short parts on one line, a newline at the end."""
    return (_pretty(generate(name), "") + "\n").encode()


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{orjson.dumps(k).decode()}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def _pretty(value: Any, indent: str, width: int = 110) -> str:
    flat = _flat(value)
    if len(indent) + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, list):
        items = [_pretty(v, inner, width) for v in value]
    else:
        items = [f"{orjson.dumps(k).decode()}: {_pretty(v, inner, width)}" for k, v in value.items()]
    open_, close = ("[", "]") if isinstance(value, list) else ("{", "}")
    return open_ + "\n" + ",\n".join(inner + item for item in items) + "\n" + indent + close


def _path(name: str, folder: Path | None) -> Path:
    return (folder or shipped_dir("schemas")) / f"{name}.schema.json"


def differences(folder: Path | None = None) -> list[str]:
    """The schema files that are not what the types generate."""
    return [
        str(_path(name, folder))
        for name in SCHEMAS
        if not _path(name, folder).is_file() or _path(name, folder).read_bytes() != render(name)
    ]


def write(folder: Path | None = None) -> list[str]:
    """Rewrite the files that differ; the ones written."""
    changed = differences(folder)
    for name in SCHEMAS:
        if str(_path(name, folder)) in changed:
            _path(name, folder).write_bytes(render(name))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processor.records.schemas", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the schema files from the types")
    action.add_argument("--check", action="store_true",
                        help="exit 1 when a schema file differs from the types")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            sys.stdout.write(f"wrote {path}\n")
        return 0
    stale = differences()
    for path in stale:
        sys.stderr.write(f"{path} differs from processor/records/types.py: run "
                         "python -m processor.records.schemas --write\n")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
