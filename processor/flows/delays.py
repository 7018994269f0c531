"""When a run that reaches a delay step moves on: Klaviyo's time delays, as pure functions.

The steps, as Klaviyo's flow builder describes its delays:
1. the time zone: a fixed IANA zone, or `profile` (the profile's own `timezone` property,
   Klaviyo's location.timezone or `$timezone`; an unknown or missing one falls back to the
   step's `fallback_timezone`);
2. the moment: `now + duration` for N minutes/hours/days; for "N days, until HH:MM" the time
   of day on the N-th calendar day from today in that zone (N = 0: the next such time, today
   if it is still ahead);
3. the weekdays: when the moment falls on a day not allowed, the next allowed day at the
   time of day given (or at midnight).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processor.durations import format_duration_ms
from processor.flows.lookup import MISSING, profile_value
from processor.flows.model import PROFILE_TIMEZONE, DelayStep

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
PROFILE_TIMEZONE_FIELDS: Final = ("timezone", "$timezone")


def hh_mm(text: str) -> time:
    """'09:30' -> time(9, 30)."""
    hours, minutes = text.split(":")[:2]
    return time(int(hours), int(minutes))


def zone_for(step: DelayStep, profile: Mapping[str, Any] | None) -> ZoneInfo:
    """The step's time zone; for `profile`, the profile's own one when it names a real zone."""
    if step.timezone != PROFILE_TIMEZONE:
        return ZoneInfo(step.timezone)
    for name in PROFILE_TIMEZONE_FIELDS:
        value = MISSING if profile is None else profile_value(profile, name)
        if isinstance(value, str) and value.strip():
            try:
                return ZoneInfo(value.strip())
            except (ZoneInfoNotFoundError, ValueError):
                break  # an unknown zone: Klaviyo falls back too
    return ZoneInfo(step.fallback_timezone)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _at(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone)


def next_time_of_day(now_ms: int, at: str, timezone: str) -> int:
    """The first moment at or after `now_ms` when the clock in `timezone` shows `at` (HH:MM)."""
    zone = ZoneInfo(timezone)
    local_now = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
    for days in range(3):
        candidate = _ms(_at(local_now.date() + timedelta(days=days), hh_mm(at), zone))
        if candidate >= now_ms:
            return candidate
    raise AssertionError("a time of day recurs within two days")  # pragma: no cover


def delay_until(step: DelayStep, now_ms: int, profile: Mapping[str, Any] | None = None) -> int:
    """When a run that reaches `step` at `now_ms` moves on (epoch ms)."""
    zone = zone_for(step, profile)
    local_now = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
    if step.until is not None:
        moment = _at(local_now.date() + timedelta(days=step.days), hh_mm(step.until), zone)
        if _ms(moment) < now_ms:  # days == 0 and the time has passed today: tomorrow
            moment = _at(local_now.date() + timedelta(days=1), hh_mm(step.until), zone)
    else:
        moment = local_now + timedelta(milliseconds=step.duration_ms or 0)
    return _ms(_on_allowed_day(moment.astimezone(zone), step, zone))


def _on_allowed_day(moment: datetime, step: DelayStep, zone: ZoneInfo) -> datetime:
    if not step.weekdays or moment.weekday() in step.weekdays:
        return moment
    at = hh_mm(step.until) if step.until is not None else time(0, 0)
    for ahead in range(1, 8):
        day = moment.date() + timedelta(days=ahead)
        if day.weekday() in step.weekdays:
            return _at(day, at, zone)
    return moment  # pragma: no cover - weekdays is never empty here


def describe(step: DelayStep) -> str:
    """How `preview` and `flows list` say it: 'wait 2d', 'wait 1 day, then until 09:00 profile'."""
    zone = step.timezone if step.timezone != PROFILE_TIMEZONE else (
        f"in the profile's time zone (else {step.fallback_timezone})")
    if step.until is not None:
        days = f"{step.days} day{'s' if step.days != 1 else ''}, then " if step.days else ""
        text = f"wait {days}until {step.until} {zone}"
    else:
        text = f"wait {format_duration_ms(step.duration_ms or 0)}"
    if step.weekdays:
        text += " on " + "/".join(WEEKDAYS[d][:3] for d in step.weekdays) + " only"
    return text
