"""Helpers the type modules share: escaping, prefixes, implicit precision, ranges, sort extremes.

Escaping (search.html#escaping): `\\,` `\\$` `\\|` and `\\\\` stand for the literal character. A
value handed to a type module's `parse` has been split from its comma list but is still escaped,
because token, quantity and composite values must first be split on their own separators (`|`,
`$`); each module unescapes the parts it keeps with `unescape()`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args

from fhir_server.search.model import Prefix

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

PREFIXES: tuple[str, ...] = get_args(Prefix)
MIN_NUMBER = -sys.float_info.max
MAX_NUMBER = sys.float_info.max
"""Open ends of number/quantity ranges. Finite on purpose: JSON (orjson) and some drivers cannot
carry infinities, and the largest float still compares correctly with every stored value."""

_ESCAPED = re.compile(r"\\([,$|\\])")
_DECIMAL = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
_MAX_EXPONENT = 400
APPROXIMATION = Decimal("0.1")
"""`ap` means within 10% of the stated value (search.html#prefix recommends 10%)."""

T = TypeVar("T")


def _no_component(code: str) -> SearchParam | None:
    return None


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What parsing one value may need besides the parameter itself."""

    base_url: str = ""
    """This server's base URL: absolute references under it are local `Type/id` references."""
    component: Callable[[str], SearchParam | None] = _no_component
    """Looks up a composite's component parameter by code (on the same resource type)."""
    now: datetime | None = None
    """The reference point of a date `ap` search; None means the current time."""


DEFAULT_CONTEXT = ParseContext()


# ---------------------------------------------------------------------------- escaping


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on every `separator` not preceded by an escaping backslash; escapes stay in place."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if text[i] == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """Resolve the four escapes; any other backslash is an ordinary character."""
    return _ESCAPED.sub(r"\1", text)


def required(text: str, what: str) -> str:
    """`text` unescaped, or ValueError when it is empty (an empty value matches nothing useful)."""
    value = unescape(text)
    if not value:
        raise ValueError(f"empty {what}")
    return value


def reject_modifier(param: SearchParam, modifier: str | None, allowed: Iterable[str] = ()) -> None:
    if modifier is not None and modifier not in allowed:
        raise ValueError(
            f"modifier ':{modifier}' is not supported on {param.type} parameter '{param.code}'"
        )


# ---------------------------------------------------------------------------- prefixes & numbers


def split_prefix(text: str) -> tuple[Prefix, str]:
    """`ge2020` -> ("ge", "2020"); no prefix -> ("eq", text)."""
    if len(text) > 2 and text[:2] in PREFIXES:
        return cast(Prefix, text[:2]), text[2:]
    return "eq", text


def parse_decimal(text: str) -> Decimal:
    """A FHIR decimal (optionally in exponent form, as search.html allows); ValueError if not."""
    if not _DECIMAL.fullmatch(text):  # also keeps out what Decimal accepts but FHIR does not
        raise ValueError(f"'{text}' is not a number")  # (NaN, Infinity, _ separators, spaces)
    value = Decimal(text)
    # Beyond a float's range (or its smallest step) the value cannot be compared meaningfully.
    if abs(value.adjusted()) > _MAX_EXPONENT or not MIN_NUMBER <= value <= MAX_NUMBER:
        raise ValueError(f"'{text}' is out of range")
    return value


def search_range(value: Decimal, prefix: Prefix) -> tuple[float, float]:
    """The range a number or quantity search value stands for (see `ranges.py`).

    eq/ne: the implicit precision of the value as written, half a unit of its last digit either
    side: `100` -> [99.5, 100.5), `100.00` -> [99.995, 100.005), `1e2` -> [50, 150) (one
    significant figure), `1.0e2` -> [95, 105). ap: 10% of the value either side, or the
    precision range when that is wider (so `ap0` is not a point). Other prefixes compare with the
    exact value, as the spec's `gt100` = "greater than exactly 100": a point.
    """
    if prefix not in ("eq", "ne", "ap"):
        return float(value), float(value)
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)  # type: ignore[operator]
    if prefix == "ap":
        half = max(half, abs(value) * APPROXIMATION)
    return float(value - half), float(value + half)


def as_number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)


def range_bounds(element: dict[str, Any]) -> tuple[float, float, dict[str, Any]] | None:
    """[low, high] of a FHIR Range (an absent end is open), with the Quantity carrying its unit;
    None when neither end has a value."""
    low_q, high_q = element.get("low") or {}, element.get("high") or {}
    low, high = as_number(low_q.get("value")), as_number(high_q.get("value"))
    if low is None and high is None:
        return None
    unit_source = low_q if low is not None else high_q
    return (
        MIN_NUMBER if low is None else low,
        MAX_NUMBER if high is None else high,
        unit_source,
    )


# ---------------------------------------------------------------------------- entries


def unique(entries: Iterable[T]) -> list[T]:
    """Entries without repeats, first occurrence first (a name part repeated adds nothing)."""
    return list(dict.fromkeys(entries))


def extreme(keys: Iterable[T | None], descending: bool) -> T | None:
    """The key a resource sorts by: its smallest value ascending, its largest descending, so a
    resource with any value early in the requested order comes early."""
    present = [k for k in keys if k is not None]
    if not present:
        return None
    return max(present) if descending else min(present)  # type: ignore[type-var]


def bound_key(bounds: Iterable[tuple[T, T]], descending: bool) -> T | None:
    """Sort key of range entries given as (low, high): the earliest low ascending, the latest
    high descending."""
    return extreme((high if descending else low for low, high in bounds), descending)
