"""Checking a webhook step: URL, method, headers, secrets, body and delivery options."""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from processor.basics import SECRET_TAG
from processor.constants import RESERVED_HEADERS
from processor.flows import templates
from processor.flows.checks import (
    Checker,
    Path,
    as_list,
    check_template,
    claim_id,
    duration,
    identifier,
    known_keys,
    mapping,
    text_field,
    type_name,
)
from processor.flows.klaviyo import ANY_TAG, tags_in_json
from processor.flows.model import WebhookStep
from processor.flows.render import is_secret_header

HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z\-]+$")
METHODS: Final = ("POST", "PUT", "PATCH")
MAX_TIMEOUT_MS: Final = 5 * 60_000

WEBHOOK_KEYS: Final = (
    "id", "url", "method", "headers", "body", "timeout", "retry", "max_age", "rate_limit", "signing_secret",
)


# --- webhook ---------------------------------------------------------------------------


def build_webhook(ck: Checker, value: Any, path: Path, _derived_id: str) -> WebhookStep | None:

    """A webhook step, or None when a problem was recorded (its id is its own, not derived)."""
    obj = mapping(ck, value, path, "webhook")
    if obj is None:
        return None
    known_keys(ck, obj, WEBHOOK_KEYS, path, "webhook")
    step_id = text_field(ck, obj, "id", path, hint="give each webhook a stable id, e.g. id: crm-lead "
                                              "(delivery ids are derived from it)")
    if step_id is not None:
        step_id = identifier(ck, step_id, (*path, "id"), "webhook id")
        if step_id is not None:
            claim_id(ck, step_id, (*path, "id"))
    url = _url(ck, obj, path)
    method = _method(ck, obj.get("method", "POST"), (*path, "method"))
    headers = _headers(ck, obj.get("headers", {}), (*path, "headers"))
    body = _body(ck, obj.get("body"), (*path, "body"))
    options = _options(ck, obj, path)
    signing = _signing(ck, obj.get("signing_secret"), (*path, "signing_secret"))
    if None in (step_id, url, method, headers, options, signing) or body is False:
        return None
    return WebhookStep(id=str(step_id), url=str(url), method=str(method), headers=dict(headers or {}),
                       body=body, signing_secrets=tuple(signing or ()), **(options or {}))


def _url(ck: Checker, obj: dict[str, Any], path: Path) -> str | None:
    url = text_field(ck, obj, "url", path, hint="where to send, e.g. url: https://api.example.com/hook")
    if url is None:
        return None
    upath = (*path, "url")
    check_template(ck, url, upath)
    schemes = ("https://", "http://") if ck.allow_http else ("https://",)
    if not url.lower().startswith(schemes):
        hint = "" if ck.allow_http else (" (http:// only when the operator allows it: FLOWHOOK_ALLOW_HTTP=1 "
                                         "or --allow-http)")
        ck.add(upath, f"must start with https://{hint}, got {url[:60]!r}")
        return None
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if templates.has_tags(authority):
        ck.add(upath, "the host must be written literally; templates may appear in the path and query only")
        return None
    literal = ANY_TAG.sub("x", url)
    parts = urlsplit(literal)
    if not parts.hostname or any(ch.isspace() for ch in literal):
        ck.add(upath, f"{url[:80]!r} is not a valid URL")
        return None
    if parts.username or parts.password:
        ck.add(upath, "must not carry credentials; send them in a header with {{ secrets.NAME }}")
        return None
    return url


def _method(ck: Checker, value: Any, path: Path) -> str | None:
    if isinstance(value, str) and value.upper() in METHODS:
        return value.upper()
    ck.add(path, f"must be one of {', '.join(METHODS)}, got {value!r}")
    return None


def _headers(ck: Checker, value: Any, path: Path) -> dict[str, str] | None:
    obj = mapping(ck, value, path, "headers")
    if obj is None:
        return None
    seen: set[str] = set()
    ok = True
    for name, header_value in obj.items():
        hpath = (*path, str(name))
        ok = _header(ck, str(name), header_value, hpath, seen) and ok
    return {str(k): v for k, v in obj.items()} if ok else None


def _header(ck: Checker, name: str, value: Any, path: Path, seen: set[str]) -> bool:
    if not HEADER_NAME.match(name):
        ck.add(path, f"header name {name!r} has characters a header name cannot have "
                     "(spaces, colons, CR/LF, ...)")
        return False
    if name.lower() in RESERVED_HEADERS:
        ck.add(path, f"{name} is set by Flowhook itself and cannot be overridden; remove it")
        return False
    if name.lower() in seen:
        ck.add(path, f"header {name} is given twice (names ignore case)")
        return False
    seen.add(name.lower())
    if not isinstance(value, str):
        ck.add(path, f"header values are text; quote it, got {type_name(value)}")
        return False
    if "\r" in value or "\n" in value:
        ck.add(path, "header values cannot contain line breaks")
        return False
    if is_secret_header(value):
        return _secret_header(ck, value, path)
    before = len(ck.problems)
    check_template(ck, value, path)
    return len(ck.problems) == before


def _secret_header(ck: Checker, value: str, path: Path) -> bool:
    rest = SECRET_TAG.sub("", value)
    if templates.has_tags(rest) or "}}" in rest or "secrets." in rest:
        ck.add(path, "a header that uses secrets may hold only literal text and {{ secrets.NAME }} tags "
                     "(NAME: letters, digits, _); put other values in a separate header")
        return False
    return True


def _signing(ck: Checker, value: Any, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    names = []
    for i, item in enumerate(items):
        match = SECRET_TAG.fullmatch(item.strip()) if isinstance(item, str) else None
        if match is None:
            where = (*path, i) if isinstance(value, list) else path
            ck.add(where, "must be \"{{ secrets.NAME }}\" (or a list of them), naming a whsec_ secret "
                          "set as FLOWHOOK_SECRET_NAME; the secret itself never goes in a flow file")
            return None
        names.append(match.group(1))
    if not names:
        ck.add(path, "is an empty list; remove it or name at least one secret")
        return None
    return tuple(names)


def _body(ck: Checker, value: Any, path: Path) -> Any:
    """The body as given (False when wrong): object bodies checked leaf by leaf."""
    if value is None:
        return None
    if isinstance(value, str):
        return _text_body(ck, value, path)
    if not isinstance(value, dict | list):
        ck.add(path, f"body must be a mapping, a list or text, got {type_name(value)}")
        return False
    before = len(ck.problems)
    _body_leaves(ck, value, path)
    return value if len(ck.problems) == before else False


def _text_body(ck: Checker, value: str, path: Path) -> str | bool:
    """A text body: an error when it can never be JSON (no tags, not JSON), else a warning."""
    if not templates.has_tags(value):
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            ck.add(path, f"a text body must be JSON, and this one is not ({exc}); "
                         "write the body as a mapping instead")
            return False
    before = len(ck.problems)
    check_template(ck, value, path)
    if len(ck.problems) == before:
        ck.warn(path, suggest_object_body(value))
    return value if len(ck.problems) == before else False


def _body_leaves(ck: Checker, node: Any, path: Path) -> None:
    if isinstance(node, dict):
        for key, child in node.items():
            if templates.has_tags(str(key)):
                ck.warn((*path, str(key)), "keys are sent as written: templates work in values only")
            _body_leaves(ck, child, (*path, str(key)))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _body_leaves(ck, child, (*path, i))
    elif isinstance(node, str):
        check_template(ck, node, path)


def _options(ck: Checker, obj: dict[str, Any], path: Path) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    ok = True
    if "timeout" in obj:
        timeout = duration(ck, obj["timeout"], (*path, "timeout"))
        if timeout is not None and timeout > MAX_TIMEOUT_MS:
            ck.add((*path, "timeout"), "must be at most 5m")
            timeout = None
        ok = ok and timeout is not None
        options["timeout_ms"] = timeout
    if "max_age" in obj:
        options["max_age_ms"] = duration(ck, obj["max_age"], (*path, "max_age"))
        ok = ok and options["max_age_ms"] is not None
    if "retry" in obj:
        options["retry_ms"] = _retry(ck, obj["retry"], (*path, "retry"))
        ok = ok and options["retry_ms"] is not None
    if "rate_limit" in obj:
        rate = obj["rate_limit"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            ck.add((*path, "rate_limit"), f"must be a number of requests per second above 0, got {rate!r}")
            ok = False
        else:
            options["rate_limit"] = float(rate)
    return options if ok else None


def _retry(ck: Checker, value: Any, path: Path) -> tuple[int, ...] | None:
    items = as_list(ck, value, path, "retry (the delays between tries, e.g. [1s, 5s])")
    if items is None:
        return None
    delays = [duration(ck, item, (*path, i)) for i, item in enumerate(items)]
    if len(delays) > 50:
        ck.add(path, "at most 50 retries")
        return None
    return None if None in delays else tuple(d for d in delays if d is not None)


# --- string bodies ---------------------------------------------------------------------



def suggest_object_body(body: str) -> str:
    """The warning for a text body, with the object form when it can be worked out."""
    base = ("body is text, so it renders as text and must be valid JSON afterwards (each value is "
            "escaped for where its tag stands, but a {% if %} or a typo can still break it); "
            "write it as a mapping so the structure is fixed and checked before publishing")
    suggestion = object_form(body)
    if suggestion is None:
        return f"{base}; as written it does not look like JSON, so check it with flowhook preview"
    return f"{base}: body: {orjson.dumps(suggestion).decode()}"


def object_form(body: str) -> Any:
    """A text body with `{{ }}` tags rewritten as an object body, or None if that cannot be done.

    A tag inside a JSON string stays inside that string leaf; a bare tag becomes a lone-tag
    leaf, which keeps its value's type, as the text form intended.
    """
    tags: list[str] = []
    out: list[str] = []
    for literal, tag, in_string in tags_in_json(body):
        out.append(literal)
        if tag is None:
            break
        if tag.startswith("{%"):
            return None
        tags.append(tag)
        marker = f"\u0000{len(tags) - 1}\u0000"
        out.append(marker if in_string else f'"{marker}"')
    try:
        data = orjson.loads("".join(out).replace("\u0000", "\\u0000"))
    except orjson.JSONDecodeError:
        return None
    return _restore(data, tags)


def _restore(node: Any, tags: list[str]) -> Any:
    if isinstance(node, str):
        return re.sub("\u0000(\\d+)\u0000", lambda m: tags[int(m.group(1))], node)
    if isinstance(node, dict):
        return {k: _restore(v, tags) for k, v in node.items()}
    if isinstance(node, list):
        return [_restore(v, tags) for v in node]
    return node
