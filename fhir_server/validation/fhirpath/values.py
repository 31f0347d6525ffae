"""FHIRPath values over plain FHIR JSON, for the compiled evaluator.

A collection is a Python list. Its items are the JSON values themselves: dicts for complex
values and resources, str / bool / int / float for primitives. A primitive element that has no
value, only an id or extensions in its `_name` companion, is a `Valueless` item: it exists
(`exists()`, `count()`), but has no value to compare (`hasValue()` is false, comparisons and
string functions treat it as empty).

Comparison follows the FHIRPath rules the R4 invariants rely on: numbers numerically, strings
that are dates / dateTimes / instants by their components with precision (different precisions
whose common part is equal give empty, "unknown"), times by their text, Quantities by value when
their units are the same (no unit conversion: different units give empty), other strings by text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import orjson

__all__ = [
    "EvalError",
    "Valueless",
    "compare",
    "distinct",
    "equal",
    "is_distinct",
    "single_value",
    "singleton_bool",
    "to_string",
    "values_only",
]


class EvalError(Exception):
    """A FHIRPath evaluation error (e.g. more than one item where one was expected)."""


class Valueless:
    """A primitive element without a value (only `_name`: id / extensions)."""

    __slots__ = ("element",)

    def __init__(self, element: Any) -> None:
        self.element = element


def singleton_bool(items: list[Any]) -> bool | None:
    """Singleton evaluation as Boolean: empty -> None, one boolean -> it, one other item -> True."""
    if not items:
        return None
    if len(items) == 1:
        value = items[0]
        return value if type(value) is bool else True
    raise EvalError(f"expected a single boolean, found {len(items)} items")


def values_only(items: list[Any]) -> list[Any]:
    """The items that have a value (Valueless primitives dropped)."""
    return [i for i in items if type(i) is not Valueless]


def single_value(items: list[Any]) -> Any:
    """The one value of a singleton collection; None when empty (or valueless)."""
    if not items:
        return None
    if len(items) > 1:
        raise EvalError(f"expected a single item, found {len(items)}")
    value = items[0]
    return None if type(value) is Valueless else value


def _number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def equal(a: Any, b: Any) -> bool:
    """FHIRPath `=` of two items (booleans only equal booleans)."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if type(a) is Valueless or type(b) is Valueless:
        return False
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


def _key(value: Any) -> Any:
    if isinstance(value, dict | list):
        return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    if type(value) is Valueless:
        return ("valueless", id(value))
    if type(value) is bool:
        return ("bool", value)
    if _number(value):
        return ("number", value)
    return ("text", value)


def distinct(items: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for item in items:
        key = _key(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def is_distinct(items: list[Any]) -> bool:
    return len({_key(i) for i in items}) == len(items)


_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?")


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


@dataclass(frozen=True, slots=True)
class _When:
    """A date / dateTime / instant: its date parts, and for one with a time the UTC instant
    (seconds since year 1, microseconds) and whether it has seconds."""

    parts: tuple[int, ...]  # (year[, month[, day]])
    instant: tuple[int, int] | None
    seconds: bool


@lru_cache(maxsize=8192)
def _when(text: str) -> _When | None:
    m = _DATE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    parts = tuple(int(x) for x in (year, month, day) if x is not None)
    if hour is None:
        return _When(parts, None, False)
    offset = 0
    if zone is not None and zone != "Z":
        offset = (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    try:
        days = date(int(year), int(month or 1), int(day or 1)).toordinal()
    except ValueError:
        return None
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second or 0) - offset
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    return _When(parts, (seconds, micro), second is not None)


def _compare_dates(a: _When, b: _When) -> int | None:
    if a.instant is not None and b.instant is not None:  # both have a time: compare instants
        if a.seconds != b.seconds:  # seconds on one side only: compare to the minute
            result = _cmp(a.instant[0] // 60, b.instant[0] // 60)
            return result if result else None
        return _cmp(a.instant, b.instant)
    # At least one side has a precision of a day or coarser: compare the common components.
    common = min(len(a.parts), len(b.parts))
    result = _cmp(a.parts[:common], b.parts[:common])
    if result:
        return result
    precision_a = len(a.parts) + (3 if a.instant is not None else 0)
    precision_b = len(b.parts) + (3 if b.instant is not None else 0)
    return 0 if precision_a == precision_b else None


def _quantity(value: dict[str, Any]) -> tuple[Any, Any] | None:
    number = value.get("value")
    if not _number(number):
        return None
    if value.get("code") is not None:
        return number, (value.get("system"), value["code"])
    return number, ("unit", value.get("unit"))


def compare(a: Any, b: Any) -> int | None:
    """-1 / 0 / 1, or None when the two cannot be ordered (empty result)."""
    if _number(a) and _number(b):
        return _cmp(a, b)
    if isinstance(a, str) and isinstance(b, str):
        da, db = _when(a), _when(b)
        if da is not None and db is not None:
            return _compare_dates(da, db)
        ta, tb = _TIME.fullmatch(a), _TIME.fullmatch(b)
        if ta is not None and tb is not None:
            if (ta.group(3) is None) != (tb.group(3) is None):
                result = _cmp(a[:5], b[:5])
                return result if result else None
            return _cmp(a, b)
        return _cmp(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        qa, qb = _quantity(a), _quantity(b)
        if qa is None or qb is None or qa[1] != qb[1]:
            return None
        return _cmp(qa[0], qb[0])
    return None


def to_string(value: Any) -> str | None:
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if _number(value):
        return str(value)
    return None
