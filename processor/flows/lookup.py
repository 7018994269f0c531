"""How a property name is found on a profile or an event (shared by filters and templates).

Profile: top-level fields (id, email, phone_number, first_name, ...) first, then the custom
`properties`; a `$`-prefixed name such as `$phone_number` means the top-level field without
the `$` (Klaviyo spells its standard fields that way), and in `properties` a name and its
`$` twin (`city` / `$city`) find each other, the exact name first. Klaviyo's profile ids
(`KlaviyoID`, `$id`, `id`) are the Flowhook profile id, and location fields (`city`,
`region`, `zip`, ...) are also found in a `location` object, the shape Klaviyo's API uses.
Event: the event record's `properties` (a name and its `$` twin find each other, so
Klaviyo's `event.extra` reads `$extra`), plus `$event_id`, `$time` and `metric` taken from
the record itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final


class _Missing:
    """The one value meaning "no such property" (distinct from a stored null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
PROPERTIES: Final = "properties"
EVENT_SPECIALS: Final = ("$event_id", "$time", "metric")
# Klaviyo's names for the profile id: `{{ person.KlaviyoID }}` in vendor bodies, `$id` (the
# external id) in exports. The Flowhook profile id is the storefront's id for the profile.
PROFILE_ID_ALIASES: Final = frozenset({"KlaviyoID", "$id", "$KlaviyoID", "klaviyo_id"})
LOCATION: Final = "location"
LOCATION_FIELDS: Final = frozenset(
    {"address1", "address2", "city", "region", "country", "zip", "timezone", "latitude", "longitude"}
)


def profile_value(profile: Mapping[str, Any], name: str) -> Any:
    """The value of `name` on a stored profile, or MISSING."""
    if name.startswith("$") and name[1:] in profile and name[1:] != PROPERTIES:
        return profile[name[1:]]
    if name in profile and name != PROPERTIES:
        return profile[name]
    custom = profile.get(PROPERTIES)
    if isinstance(custom, Mapping):
        # Klaviyo exports keep standard fields as `$city`, `$phone_number` in properties.
        found = _twin(custom, name)
        if found is not MISSING:
            return found
    if name == PROPERTIES:
        return custom if isinstance(custom, Mapping) else MISSING
    return _klaviyo_profile_field(profile, name)


def _twin(mapping: Mapping[str, Any], name: str) -> Any:
    """mapping[name], else mapping[its `$` twin] (`extra` <-> `$extra`), else MISSING."""
    if name in mapping:
        return mapping[name]
    twin = name[1:] if name.startswith("$") else f"${name}"
    return mapping.get(twin, MISSING)


def _klaviyo_profile_field(profile: Mapping[str, Any], name: str) -> Any:
    """Klaviyo's spellings of fields Flowhook stores under another name."""
    if name in PROFILE_ID_ALIASES:
        return profile.get("id", MISSING)
    bare = name[1:] if name.startswith("$") else name
    location = profile.get(LOCATION)
    if bare in LOCATION_FIELDS and isinstance(location, Mapping) and bare in location:
        return location[bare]
    return MISSING


def event_value(event: Mapping[str, Any], name: str) -> Any:
    """The value of `name` on an event record (its properties, `$event_id`, `$time`, `metric`)."""
    if name == "$event_id":
        return event.get("id", MISSING)
    if name == "$time":
        return event.get("time", MISSING)
    if name == "metric":
        return event.get("metric", MISSING)
    props = event.get(PROPERTIES)
    return _twin(props, name) if isinstance(props, Mapping) else MISSING


class _RecordView(Mapping[str, Any]):
    """A record seen as one flat mapping, through a lookup function (the rule above)."""

    __slots__ = ("_record",)

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record

    @staticmethod
    def _find(record: Mapping[str, Any], name: str) -> Any:
        raise NotImplementedError

    def __getitem__(self, name: str) -> Any:
        value = self._find(self._record, name) if isinstance(name, str) else MISSING
        if value is MISSING:
            raise KeyError(name)
        return value

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def plain(self) -> dict[str, Any]:
        """The flattened record as a plain dict (for `person|tojson` and `event|tojson`)."""
        return {k: self[k] for k in self}


class ProfileView(_RecordView):
    """A stored profile seen as one flat mapping, by the lookup rule above."""

    __slots__ = ()
    _find = staticmethod(profile_value)  # type: ignore[assignment]  # same signature, other parameter name

    def __iter__(self) -> Iterator[str]:
        seen = [k for k in self._record if k != PROPERTIES]
        custom = self._record.get(PROPERTIES)
        if isinstance(custom, Mapping):
            seen += [k for k in custom if k not in self._record]
        return iter(seen)


class EventView(_RecordView):
    """An event record seen as its properties plus `$event_id`, `$time` and `metric`."""

    __slots__ = ()
    _find = staticmethod(event_value)  # type: ignore[assignment]  # same signature, other parameter name

    def __iter__(self) -> Iterator[str]:
        props = self._record.get(PROPERTIES)
        names = [k for k in props if k not in EVENT_SPECIALS] if isinstance(props, Mapping) else []
        return iter([*names, *(k for k in EVENT_SPECIALS if k in self)])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and event_value(self._record, name) is not MISSING
