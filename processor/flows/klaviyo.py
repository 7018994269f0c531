"""What Flowhook knows about Klaviyo's webhook bodies: its variables, its internal fields, and
how a body pasted as text is kept valid JSON.

Text bodies: Klaviyo renders a pasted body as text. Flowhook does too, but it knows where
each `{{ ... }}` tag stands in the JSON text around it (`json_text_template`):
- inside a JSON string (`"name": "{{ person.first_name }}"`) the value is escaped for a JSON
  string, so a quote or a line break in the data cannot break the body;
- outside a string (`"total": {{ event|lookup:'$value' }}`) the value is written as a JSON
  value: numbers and booleans as they are, lists and objects as JSON, missing as `null`,
  text that is itself JSON (`"129.5"`, `"true"`, the output of `|tojson`) as that JSON,
  other text quoted.
Where Klaviyo's output would be valid JSON, Flowhook's is the same JSON; where Klaviyo's
would not be (a quote in a name, an empty value after a colon), Flowhook's still is.

Klaviyo-internal fields (consent, predictive analytics, attribution, ...) have no value in
Flowhook; `internal_field_warnings` finds them so `flows validate` and `preview` can warn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import orjson
from jinja2 import Undefined, nodes

from processor.flows.values import dumps, plain, text, to_json_value

IN_STRING_FILTER: Final = "_flowhook_json_in_string"
BARE_FILTER: Final = "_flowhook_json_value"
PROFILE_ROOTS: Final = ("person", "profile")

# Fields Klaviyo computes or keeps for itself: a Flowhook profile has them only if the
# storefront sends them as profile properties.
INTERNAL_PROFILE_FIELDS: Final = frozenset({
    "created", "updated", "last_event_date", "$consent", "$consent_timestamp", "$source",
    "subscriptions", "predictive_analytics", "$predicted_clv", "$historic_clv", "$total_clv",
    "$average_order_value", "$historic_number_of_orders", "$predicted_number_of_orders",
    "$expected_date_of_next_order", "$churn_probability", "$predicted_gender", "$last_open",
    "$last_click", "$last_active", "email_marketing", "sms_marketing", "$email_domain",
})
INTERNAL_EVENT_FIELDS: Final = frozenset({
    "$flow", "$message", "$attributed_flow", "$attributed_message", "$attribution",
    "$message_interaction", "$cohort_message_send_cohort", "$attributed_channel",
    "$attributed_event_id", "$esp", "$campaign",
})
INTERNAL_VARIABLES: Final = {
    "unsubscribe_link": "unsubscribe links belong to Klaviyo's email messages",
    "unsubscribe_url": "unsubscribe links belong to Klaviyo's email messages",
    "manage_preferences_link": "preference pages belong to Klaviyo's email messages",
    "message": "message variables belong to Klaviyo's email and SMS messages",
    "campaign": "campaign variables belong to Klaviyo's campaigns",
}


# --- warnings for Klaviyo-internal fields ------------------------------------------------


def internal_field_warnings(tree: nodes.Template) -> list[tuple[str, int]]:
    """(message, template line) for every Klaviyo-internal field the template reads."""
    found: list[tuple[str, int]] = []
    for node in tree.find_all(nodes.Getattr):
        root = _root_name(node.node)
        if root is not None and isinstance(node.node, nodes.Name):
            found += _field_warning(root, node.attr, node.lineno)
    for lookup in tree.find_all(nodes.Filter):
        if lookup.name == "lookup" and lookup.node is not None and lookup.args:
            root = _root_name(lookup.node)
            key = lookup.args[0]
            if root is not None and isinstance(lookup.node, nodes.Name) and isinstance(key, nodes.Const):
                found += _field_warning(root, str(key.value), lookup.lineno)
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name in INTERNAL_VARIABLES:
            found.append((f"'{name.name}' has no value in Flowhook ({INTERNAL_VARIABLES[name.name]}), "
                          "so it renders empty; remove it or write the text literally", name.lineno))
    return sorted(set(found), key=lambda item: item[1])


def _root_name(node: nodes.Node | None) -> str | None:
    return node.name if isinstance(node, nodes.Name) and node.name in (*PROFILE_ROOTS, "event") else None


def _field_warning(root: str, field: str, line: int) -> list[tuple[str, int]]:
    internal = INTERNAL_EVENT_FIELDS if root == "event" else INTERNAL_PROFILE_FIELDS
    twin = field if field.startswith("$") else f"${field}"
    if field not in internal and twin not in internal:
        return []
    where = "the triggering event" if root == "event" else "the profile"
    return [(f"{root}.{field.lstrip('$')} is a Klaviyo-internal field that Flowhook does not have, so it "
             f"renders empty unless {where} carries a property '{field}'; send it with "
             f"{'the event' if root == 'event' else 'the profile'} or remove it", line)]


# --- text bodies: tags that know where they stand in the JSON -------------------------

ANY_TAG: Final = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def json_text_template(source: str) -> str:
    """The (translated) text body with each `{{ x }}` wrapped for where it stands in the JSON."""
    out: list[str] = []
    for literal, tag, in_string in tags_in_json(source):
        out.append(literal)
        if tag is not None and tag.startswith("{{"):
            wrapper = IN_STRING_FILTER if in_string else BARE_FILTER
            tag = "{{ (" + tag[2:-2].strip() + ")|" + wrapper + " }}"
        out.append(tag or "")
    return "".join(out)


def tags_in_json(source: str) -> Iterator[tuple[str, str | None, bool]]:
    """(the text before a tag, the tag, whether it stands inside a JSON string) for each
    `{{ }}`, `{% %}` or `{# #}` tag of a text body in order, then (the rest, None, ...)."""
    in_string = False
    position = 0
    for match in ANY_TAG.finditer(source):
        literal = source[position:match.start()]
        in_string = track_quotes(literal, in_string)
        yield literal, match.group(0), in_string
        position = match.end()
    yield source[position:], None, in_string


def track_quotes(literal: str, in_string: bool) -> bool:
    """Whether the text after `literal` is inside a JSON string, given where it started."""
    escaped = False
    for char in literal:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = in_string
        elif char == '"':
            in_string = not in_string
    return in_string


def json_in_string(value: Any) -> str:
    """A value printed inside a JSON string: as text, escaped for the string."""
    printed = text(value)
    return orjson.dumps(printed).decode()[1:-1] if printed else ""


_JSON_NUMBER: Final = re.compile(r"^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$")


def json_value(value: Any) -> str:
    """A value printed where a JSON value is expected: always one valid JSON value."""
    value = plain(value)
    if isinstance(value, Undefined) or value is None:
        return "null"
    if isinstance(value, str):
        stripped = value.strip()
        if _JSON_NUMBER.match(stripped) or stripped in ("true", "false", "null"):
            return stripped
        if stripped[:1] in ("{", "[", '"'):  # JSON text, e.g. from |tojson: as it is, compact
            try:
                return dumps(orjson.loads(stripped))
            except orjson.JSONDecodeError:
                pass
        return orjson.dumps(value).decode()
    return dumps(to_json_value(value))


CONTEXT_FILTERS: Final = {IN_STRING_FILTER: json_in_string, BARE_FILTER: json_value}
