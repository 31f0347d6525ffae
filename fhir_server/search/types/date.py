"""Date search parameters (search.html#date).

Every date is a range [start, end) of UTC instants as wide as its precision (`fhirtime.
parse_range`: `2024` is the whole year, `2024-03-01T10:00+02:00` the minute from 08:00Z). Values
without a timezone are taken as UTC.

Extraction: date, dateTime and instant values (any string) give their range; a Period gives
[start of its start, end of its end), an absent end being open (MIN_INSTANT / MAX_INSTANT); a
Timing gives each `event` and its `repeat.boundsPeriod`. Age and Duration are not dates and give
nothing, as do malformed values (validation rejects them before they are stored). A Period
ending 9999-12-31 is open-ended: the end of that day is past what `datetime` can hold, and it
means "forever" anyway.

Matching: an optional prefix (eq ne gt lt ge le sa eb ap, default eq) and a date whose range is
compared with each entry's range by `ranges.py`. `ap` widens the value's range by 10% of the gap
between now and the value either side (search.html's recommendation for dates). A space in the
value is read as `+`: an unencoded `+02:00` offset in a query string arrives as a space.
No modifier applies (`:missing` is handled by the parser for every type).

Sorting: by the earliest start ascending, the latest end descending.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fhir_server.fhirtime import format_instant, parse_range
from fhir_server.search.model import (
    MAX_INSTANT,
    MIN_INSTANT,
    DateEntry,
    Entry,
    Predicate,
    RangeMatch,
    SortValue,
)
from fhir_server.search.types.common import (
    APPROXIMATION,
    DEFAULT_CONTEXT,
    ParseContext,
    bound_key,
    reject_modifier,
    required,
    split_prefix,
    unique,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam


def _parse_range(text: str) -> tuple[datetime, datetime]:
    try:
        return parse_range(text)
    except OverflowError as exc:  # the end of 9999-12-31 is past datetime's range
        raise ValueError(f"'{text}' is too close to the end of time") from exc


_MICROSECOND = timedelta(microseconds=1)


def _instant_range(text: Any) -> tuple[str, str] | None:
    if not isinstance(text, str):
        return None
    if len(text) == 27 and text[26] == "Z" and text[19] == "." and text[10] == "T":
        # Already a stored instant (meta.lastUpdated, AuditEvent.recorded): the range is that
        # microsecond. fromisoformat is C; the general path below costs about 5 times more.
        try:
            start = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if (last := text[25]) < "9":  # the next microsecond, as text
                return text, f"{text[:25]}{chr(ord(last) + 1)}Z"
            return text, _shift(start, _MICROSECOND)
    try:
        start, end = _parse_range(text)
    except (ValueError, OverflowError):  # the last moment of year 9999 has no end
        return None
    return format_instant(start), format_instant(end)


def _period(period: dict[str, Any]) -> Iterator[DateEntry]:
    start, end = _instant_range(period.get("start")), _instant_range(period.get("end"))
    if start or end:
        yield DateEntry(start[0] if start else MIN_INSTANT, end[1] if end else MAX_INSTANT)


def _timing(timing: dict[str, Any]) -> Iterator[DateEntry]:
    for event in timing.get("event") or []:
        if found := _instant_range(event):
            yield DateEntry(*found)
    yield from _period((timing.get("repeat") or {}).get("boundsPeriod") or {})


def extract(value: Any, fhir_type: str) -> list[Entry]:
    if isinstance(value, str):
        found = _instant_range(value)
        return [DateEntry(*found)] if found else []
    if isinstance(value, dict) and fhir_type == "Period":
        return list(_period(value))
    if isinstance(value, dict) and fhir_type == "Timing":
        return unique(_timing(value))
    return []


def _shift(moment: datetime, delta: timedelta) -> str:
    try:
        return format_instant(moment + delta)
    except OverflowError:  # widened past year 1 or 9999: the open end is the honest answer
        return MIN_INSTANT if delta < timedelta(0) else MAX_INSTANT


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    reject_modifier(param, modifier)
    prefix, text = split_prefix(required(value, "date").replace(" ", "+"))
    start, end = _parse_range(text)
    if prefix != "ap":
        return RangeMatch(param.code, "date", prefix, format_instant(start), format_instant(end))
    now = ctx.now or datetime.now(UTC)
    margin = abs(now - start) * float(APPROXIMATION)
    return RangeMatch(param.code, "date", prefix, _shift(start, -margin), _shift(end, margin))


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    return bound_key(((e.start, e.end) for e in entries if isinstance(e, DateEntry)), descending)
