"""Number search parameters (search.html#number).

Extraction: integer, decimal, positiveInt and unsignedInt values are points [v, v]. A Range (as
in RiskAssessment.prediction.probability[x]) is [low, high], an absent end being open
(MIN_NUMBER / MAX_NUMBER). Anything else gives nothing.

Matching: an optional prefix (default eq) and a decimal, also in exponent form. eq, ne and ap
compare with the range the value stands for by its implicit precision (`100` is [99.5, 100.5),
`100.00` is [99.995, 100.005), `1e2` is [50, 150)); ap is 10% of the value either side; gt, lt,
ge, le, sa and eb compare with the exact value (`common.search_range`). No modifier applies.

Sorting: by the smallest low ascending, the largest high descending.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fhir_server.search.model import Entry, NumberEntry, Predicate, RangeMatch, SortValue
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    as_number,
    bound_key,
    parse_decimal,
    range_bounds,
    reject_modifier,
    required,
    search_range,
    split_prefix,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam


def extract(value: Any, fhir_type: str) -> list[Entry]:
    number = as_number(value)
    if number is not None:
        return [NumberEntry(number, number)]
    if isinstance(value, dict) and fhir_type == "Range" and (bounds := range_bounds(value)):
        return [NumberEntry(bounds[0], bounds[1])]
    return []


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    reject_modifier(param, modifier)
    prefix, text = split_prefix(required(value, "number"))
    low, high = search_range(parse_decimal(text), prefix)
    return RangeMatch(param.code, "number", prefix, low, high)


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    return bound_key(((e.low, e.high) for e in entries if isinstance(e, NumberEntry)), descending)
