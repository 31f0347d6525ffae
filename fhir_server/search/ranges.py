"""Prefix semantics of date, number and quantity search, as conditions on one index entry.

Both engines render these the same way (a disjunction of conjunctions over the entry's `low` and
`high`), so the meaning of `gt`, `sa`, `ap`, ... is written once (search.html#prefix).

Date entries are half-open ranges [low, high); number and quantity entries are closed
[low, high] (a stored value is a point, low == high). The search value is the half-open range
[lo, hi) of its implicit precision, except that for numbers and quantities with a prefix other
than eq/ne/ap the parser passes a point (lo == hi), and comparisons are then strict.
"""

from __future__ import annotations

from typing import Literal

from fhir_server.search.model import RangeMatch

Op = Literal["<", "<=", ">", ">="]
Condition = tuple[Literal["low", "high"], Op, str | float]
Conditions = list[list[Condition]]


def _point(prefix: str, v: str | float) -> Conditions:
    return {
        "eq": [[("low", ">=", v), ("low", "<=", v), ("high", "<=", v)]],
        "ne": [[("low", "<", v)], [("high", ">", v)]],
        "gt": [[("high", ">", v)]],
        "lt": [[("low", "<", v)]],
        "ge": [[("high", ">=", v)]],
        "le": [[("low", "<=", v)]],
        "sa": [[("low", ">", v)]],
        "eb": [[("high", "<", v)]],
        "ap": [[("low", "<=", v), ("high", ">=", v)]],
    }[prefix]


def _ranged(prefix: str, lo: str | float, hi: str | float, closed: bool) -> Conditions:
    # Upper bound of a closed entry is inside it; of a half-open entry just past it.
    below_hi: Op = "<" if closed else "<="
    above_hi: Op = ">=" if closed else ">"
    above_lo: Op = ">=" if closed else ">"
    # `low < hi` follows from the other two; stated, it bounds the index range scan on low.
    within = [("low", ">=", lo), ("low", "<", hi), ("high", below_hi, hi)]
    return {
        "eq": [within],
        "ne": [[("low", "<", lo)], [("high", above_hi, hi)]],
        "gt": [[("high", above_hi, hi)]],
        "lt": [[("low", "<", lo)]],
        "ge": [[("high", above_hi, hi)], within],
        "le": [[("low", "<", lo)], within],
        "sa": [[("low", ">=", hi)]],
        "eb": [[("high", "<" if closed else "<=", lo)]],
        "ap": [[("low", "<", hi), ("high", above_lo, lo)]],
    }[prefix]  # type: ignore[return-value]


def range_conditions(match: RangeMatch) -> Conditions:
    closed = match.kind != "date"
    if closed and match.low == match.high:
        return _point(match.prefix, match.low)
    return _ranged(match.prefix, match.low, match.high, closed)
