"""Quantity search parameters (search.html#quantity).

Extraction: Quantity and its profiles (Age, Duration, SimpleQuantity, Count, Distance,
MoneyQuantity) give [value, value] with system, code and unit; a comparator makes the range open
on one side (`<5` is [MIN_NUMBER, 5], `>=5` is [5, MAX_NUMBER]). Money gives its value with
system `urn:iso:std:iso:4217` and its currency as code. A Range gives [low, high] (an absent end
open) with the unit of whichever end is present. A bare number is a quantity without unit.
SampledData and anything else give nothing. Units are stored as written: no UCUM conversion, so
`1 g` is not found by a search in `mg`.

Matching: `[prefix]number`, `[prefix]number|system|code`, `[prefix]number||code` (no system: the
code or the human unit must equal it, so two alternatives), `[prefix]number|system|` (system
only). Numbers and prefixes mean what they mean for number parameters (`number.py`). No
modifier applies.

Sorting: by the smallest low ascending, the largest high descending, ignoring units.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from fhir_server.search.model import Entry, Or, Predicate, QuantityEntry, RangeMatch, SortValue
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    MAX_NUMBER,
    MIN_NUMBER,
    ParseContext,
    as_number,
    bound_key,
    parse_decimal,
    range_bounds,
    reject_modifier,
    required,
    search_range,
    split_escaped,
    split_prefix,
    unescape,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
_QUANTITIES = frozenset(
    {"Quantity", "Age", "Duration", "SimpleQuantity", "Count", "Distance", "MoneyQuantity"}
)


def _quantity(q: dict[str, Any]) -> QuantityEntry | None:
    value = as_number(q.get("value"))
    if value is None:
        return None
    comparator = q.get("comparator")
    low = MIN_NUMBER if comparator in ("<", "<=") else value
    high = MAX_NUMBER if comparator in (">", ">=") else value
    return QuantityEntry(low, high, q.get("system"), q.get("code"), q.get("unit"))


def _money(money: dict[str, Any]) -> QuantityEntry | None:
    value = as_number(money.get("value"))
    if value is None:
        return None
    currency = money.get("currency")
    return QuantityEntry(value, value, CURRENCY_SYSTEM if currency else None, currency, None)


def _range(element: dict[str, Any]) -> QuantityEntry | None:
    bounds = range_bounds(element)
    if bounds is None:
        return None
    low, high, unit = bounds
    return QuantityEntry(low, high, unit.get("system"), unit.get("code"), unit.get("unit"))


def extract(value: Any, fhir_type: str) -> list[Entry]:
    number = as_number(value)
    if number is not None:
        return [QuantityEntry(number, number, None, None, None)]
    if not isinstance(value, dict):
        return []
    if fhir_type in _QUANTITIES:
        found = _quantity(value)
    elif fhir_type == "Money":
        found = _money(value)
    elif fhir_type == "Range":
        found = _range(value)
    else:
        return []
    return [found] if found else []


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    reject_modifier(param, modifier)
    parts = split_escaped(value, "|")
    if len(parts) not in (1, 3):
        raise ValueError(f"'{value}' is not 'number', 'number|system|code' or 'number||code'")
    prefix, text = split_prefix(required(parts[0], "quantity"))
    compare = partial(
        RangeMatch, param.code, "quantity", prefix, *search_range(parse_decimal(text), prefix)
    )
    if len(parts) == 1:
        return compare()
    system, code = unescape(parts[1]) or None, unescape(parts[2]) or None
    if system is None and code is not None:
        return Or((compare(code=code), compare(unit=code)))
    return compare(system=system, code=code)


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    return bound_key(((e.low, e.high) for e in entries if isinstance(e, QuantityEntry)), descending)
