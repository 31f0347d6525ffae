"""FHIR date/time values as UTC ranges, and the server's own instants.

A FHIR date or dateTime denotes a range as wide as its precision (`2024` is the whole year);
`parse_range` returns [start, end). Values without a timezone are taken as UTC. Stored instants
(`meta.lastUpdated`) are fixed-width UTC strings, so comparing them as text compares times.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_DATE_TIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def format_instant(moment: datetime) -> str:
    """The fixed-width UTC text of `moment` (INSTANT_FORMAT; an f-string is ~4x strftime, and
    this runs for every date a write indexes)."""
    m = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return (f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:"
            f"{m.second:02d}.{m.microsecond:06d}Z")


def parse_instant(text: str) -> datetime:
    return datetime.strptime(text, INSTANT_FORMAT).replace(tzinfo=UTC)


def instant_before(text: str) -> str:
    """The instant one microsecond before `text` (a stored instant); "" (before every instant)
    when there is none."""
    try:
        return format_instant(parse_instant(text) - timedelta(microseconds=1))
    except OverflowError:
        return ""


def _add_months(moment: datetime, months: int) -> datetime:
    month = moment.month - 1 + months
    return moment.replace(year=moment.year + month // 12, month=month % 12 + 1)


def parse_range(text: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a FHIR date, dateTime or instant; ValueError if malformed."""
    m = _DATE_TIME.fullmatch(text)
    if not m:
        raise ValueError(f"'{text}' is not a FHIR date, dateTime or instant")
    g = m.groupdict()
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    fraction = g["fraction"] or ""
    start = datetime(
        int(g["year"]),
        int(g["month"] or 1),
        int(g["day"] or 1),
        int(g["hour"] or 0),
        int(g["minute"] or 0),
        int(g["second"] or 0),
        int((fraction + "000000")[:6]),
        tzinfo=tz,
    )
    if g["month"] is None:
        end = start.replace(year=start.year + 1)
    elif g["day"] is None:
        end = _add_months(start, 1)
    elif g["hour"] is None:
        end = start + timedelta(days=1)
    elif g["second"] is None:
        end = start + timedelta(minutes=1)
    else:
        end = start + timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    return start.astimezone(UTC), end.astimezone(UTC)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(instant: str) -> str:
    """RFC 9110 date of a stored instant (on every response: fromisoformat, not strptime)."""
    m = datetime.fromisoformat(instant)
    return (f"{_DAYS[m.weekday()]}, {m.day:02d} {_MONTHS[m.month - 1]} {m.year:04d} "
            f"{m.hour:02d}:{m.minute:02d}:{m.second:02d} GMT")


def parse_http_date(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECONDS = timedelta(microseconds=1)


class Clock:
    """Hands out strictly increasing instants within this process.

    A resource's versions must have increasing lastUpdated even when written within the same
    microsecond, and across processes (the CLI writing while the server runs) we also step past
    the previous version's instant. Every write and every AuditEvent takes one, so the clock
    counts integer microseconds and formats each second's text once.
    """

    def __init__(self) -> None:
        self._last = 0
        """Microseconds since the epoch of the last instant handed out."""
        self._second = -1
        self._prefix = ""
        self._lock = threading.Lock()

    def next(self, after: str | None = None) -> str:
        with self._lock:
            moment = max(time.time_ns() // 1000, self._last + 1)
            text = self._text(moment)
            # Stored instants are fixed-width, so they compare as text: `after` is parsed
            # only when the clock has not yet passed it.
            if after is not None and (len(after) != len(text) or text <= after):
                passed = (parse_instant(after) - _EPOCH) // _MICROSECONDS + 1
                if passed > moment:
                    moment, text = passed, self._text(passed)
            self._last = moment
        return text

    def _text(self, moment: int) -> str:
        second, fraction = divmod(moment, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = format_instant(datetime.fromtimestamp(second, UTC))[:20]
        return f"{self._prefix}{fraction:06d}Z"


clock = Clock()
