"""MongoDB side of search: how a resource's index is stored, and predicates as filters.

Each current document carries its index in four fields, so a handful of fixed indexes per
collection serve every parameter (no per-parameter indexes, no 64-index limit):
- `_k`: strings `param␟kind␟value` for exact and prefix matches (string, token, reference,
  uri); one multikey index, prefix searches are index range scans.
- `_r`: ranges `{p, lo, hi}` (dates as fixed-width instants, numbers and quantities as floats,
  quantities also `s`, `c`, `u`), indexed on (p, lo) and (p, hi).
- `_c`: composite instances `{p, "0": {k, r}, "1": {k, r}}`, matched with $elemMatch.
- `_s`: sort keys `{param: {a, d}}` (ascending and descending key).
`:missing` asks whether any of the four holds something of the parameter (not every parameter
has a sort key: AuditEvent sorts by time only).
Query values only ever appear as values inside these filters (never as field names or
operators), and regular expressions are built with re.escape, so no query text can become a
MongoDB operator.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fhir_server.search.model import (
    ANY,
    And,
    Chain,
    Composite,
    CompositeEntry,
    DateEntry,
    Has,
    IdMatch,
    Missing,
    Not,
    NumberEntry,
    Or,
    Predicate,
    QuantityEntry,
    RangeMatch,
    ReferenceEntry,
    ReferenceMatch,
    ResourceIndex,
    SortKey,
    SortValue,
    StringEntry,
    StringMatch,
    TokenEntry,
    TokenMatch,
    UriEntry,
    UriMatch,
)
from fhir_server.search.ranges import range_conditions

Doc = dict[str, Any]
SEP = "\x1f"
MAX_CHAR = "\U0010ffff"
INDEX_SPECS: list[list[tuple[str, int]]] = [
    [("_k", 1)],
    [("_r.p", 1), ("_r.lo", 1)],
    [("_r.p", 1), ("_r.hi", 1)],
    [("lu", 1)],
]
_OPS = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_FIELDS = {"low": "lo", "high": "hi"}
# Finds the ids of resources of a type matching a filter (the engine supplies it).
Finder = Callable[[str, Doc, Doc], Awaitable[list[Doc]]]


def key(param: str, kind: str, value: str) -> str:
    return f"{param}{SEP}{kind}{SEP}{value}"


def _keys(param: str, entry: Any) -> list[str]:
    if isinstance(entry, StringEntry):
        return [key(param, "s", entry.norm), key(param, "e", entry.exact)]
    if isinstance(entry, TokenEntry):
        keys = []
        if entry.code is not None:
            keys.append(key(param, "c", entry.code))
            if entry.system is None:
                keys.append(key(param, "n", entry.code))
            else:
                keys.append(key(param, "sc", f"{entry.system}{SEP}{entry.code}"))
        if entry.system is not None:
            keys.append(key(param, "y", entry.system))
        if entry.text is not None:
            keys.append(key(param, "t", entry.text))
        return keys
    if isinstance(entry, ReferenceEntry):
        keys = []
        if entry.id is not None:
            keys.append(key(param, "i", entry.id))
            if entry.type is not None:
                keys.append(key(param, "r", f"{entry.type}/{entry.id}"))
        if entry.url is not None:
            keys.append(key(param, "u", entry.url))
        return keys
    if isinstance(entry, UriEntry):
        return [key(param, "v", entry.value)]
    return []


def _range(param: str | None, entry: Any) -> Doc | None:
    if isinstance(entry, DateEntry):
        doc: Doc = {"lo": entry.start, "hi": entry.end}
    elif isinstance(entry, NumberEntry):
        doc = {"lo": entry.low, "hi": entry.high}
    elif isinstance(entry, QuantityEntry):
        doc = {
            "lo": entry.low,
            "hi": entry.high,
            "s": entry.system,
            "c": entry.code,
            "u": entry.unit,
        }
    else:
        return None
    if param is not None:
        doc["p"] = param
    return doc


def _component(entries: tuple[Any, ...]) -> Doc:
    return {
        "k": [k for e in entries for k in _keys("", e)],
        "r": [r for e in entries if (r := _range(None, e)) is not None],
    }


def index_fields(index: ResourceIndex) -> Doc:
    """The index of a resource as the fields its current document carries."""
    keys: list[str] = []
    ranges: list[Doc] = []
    composites: list[Doc] = []
    for param, entries in index.entries.items():
        for entry in entries:
            if isinstance(entry, CompositeEntry):
                instance = {str(i): _component(c) for i, c in enumerate(entry.components)}
                composites.append({"p": param, **instance})
            elif (r := _range(param, entry)) is not None:
                ranges.append(r)
            else:
                keys += _keys(param, entry)
    sort = {param: {"a": a, "d": d} for param, (a, d) in index.sort.items()}
    return {"_k": keys, "_r": ranges, "_c": composites, "_s": sort}


def _prefix(field: str, text: str) -> Doc:
    # $elemMatch: both bounds must hold for the same array element (and bound the index scan).
    return {field: {"$elemMatch": {"$gte": text, "$lt": text + MAX_CHAR}}}


def _key_condition(p: Predicate, field: str, param: str) -> Doc:
    """Condition on a key array `field` for a key-based leaf (keys of `param`)."""
    if isinstance(p, StringMatch):
        if p.mode == "exact":
            return {field: key(param, "e", p.value)}
        if p.mode == "contains":
            pattern = "^" + re.escape(key(param, "s", "")) + ".*" + re.escape(p.value)
            return {field: {"$regex": pattern, "$options": "s"}}
        return _prefix(field, key(param, "s", p.value))
    if isinstance(p, TokenMatch):
        if p.text is not None:
            return _prefix(field, key(param, "t", p.text))
        if p.code is ANY or p.code is None:
            if p.system is ANY or p.system is None:
                return _prefix(field, key(param, "c", ""))
            return {field: key(param, "y", p.system)}
        if p.system is ANY:
            return {field: key(param, "c", p.code)}
        if p.system is None:
            return {field: key(param, "n", p.code)}
        return {field: key(param, "sc", f"{p.system}{SEP}{p.code}")}
    if isinstance(p, ReferenceMatch):
        if p.url is not None:
            return {field: key(param, "u", p.url)}
        if p.id is None:
            return _prefix(field, key(param, "r", f"{p.type}/"))
        if p.type is None:
            return {field: key(param, "i", p.id)}
        return {field: key(param, "r", f"{p.type}/{p.id}")}
    if isinstance(p, UriMatch):
        if p.mode == "below":
            return _prefix(field, key(param, "v", p.value))
        if p.mode == "above":
            prefixes = [p.value[:n] for n in range(1, len(p.value) + 1)]
            return {field: {"$in": [key(param, "v", v) for v in prefixes]}}
        return {field: key(param, "v", p.value)}
    raise TypeError(f"not a key predicate: {p!r}")


def _range_condition(p: RangeMatch, param: str | None) -> Doc:
    """An $elemMatch body for one range entry satisfying p."""
    alternatives = []
    for conjunction in range_conditions(p):
        clause: Doc = {}
        for column, op, value in conjunction:
            clause.setdefault(_FIELDS[column], {})[_OPS[op]] = value
        alternatives.append(clause)
    body: Doc = {"$or": alternatives} if len(alternatives) > 1 else alternatives[0]
    extra: Doc = {} if param is None else {"p": param}
    if p.code is not None:
        extra["c"] = p.code
    if p.system is not None:
        extra["s"] = p.system
    if p.unit is not None:
        return {"$and": [body, extra, {"$or": [{"u": p.unit}, {"c": p.unit}]}]}
    return {**body, **extra} if "$or" not in extra else {"$and": [body, extra]}


def _leaf(p: Predicate) -> Doc:
    if isinstance(p, RangeMatch):
        return {"_r": {"$elemMatch": _range_condition(p, p.param)}}
    return _key_condition(p, "_k", p.param)  # type: ignore[union-attr]


def _component_condition(p: Predicate, position: int) -> Doc:
    if isinstance(p, Or):
        return {"$or": [_component_condition(c, position) for c in p.predicates]}
    if isinstance(p, RangeMatch):
        return {f"{position}.r": {"$elemMatch": _range_condition(p, None)}}
    return _key_condition(p, f"{position}.k", "")


LEAVES = (StringMatch, TokenMatch, RangeMatch, ReferenceMatch, UriMatch)


async def render(p: Predicate, rtype: str, find: Finder) -> Doc:
    """A filter on current documents of `rtype` that holds where p holds."""
    if isinstance(p, LEAVES):
        return _leaf(p)
    if isinstance(p, And):
        return {"$and": [await render(c, rtype, find) for c in p.predicates]}
    if isinstance(p, Or):
        return {"$or": [await render(c, rtype, find) for c in p.predicates]}
    if isinstance(p, Not):
        return {"$nor": [await render(p.predicate, rtype, find)]}
    if isinstance(p, IdMatch):
        return {"_id": {"$in": list(p.ids)}}
    if isinstance(p, Missing):
        present = {"$or": [
            _prefix("_k", f"{p.param}{SEP}"), {"_r.p": p.param}, {"_c.p": p.param},
            {f"_s.{p.param}": {"$exists": True}},
        ]}
        return {"$nor": [present]} if p.missing else present
    if isinstance(p, Composite):
        parts = [_component_condition(c, i) for i, c in enumerate(p.components)]
        return {"_c": {"$elemMatch": {"$and": [{"p": p.param}, *parts]}}}
    if isinstance(p, Chain):
        targets = await find(p.target_type, await render(p.where, p.target_type, find), {})
        keys = [key(p.param, "r", f"{p.target_type}/{d['_id']}") for d in targets]
        return {"_k": {"$in": keys}}
    if isinstance(p, Has):
        pointing = _prefix("_k", key(p.param, "r", f"{rtype}/"))
        where = await render(p.where, p.source_type, find)
        sources = await find(p.source_type, {"$and": [where, pointing]}, {"_k": 1})
        start = key(p.param, "r", f"{rtype}/")
        ids = {k[len(start) :] for d in sources for k in d.get("_k", []) if k.startswith(start)}
        return {"_id": {"$in": sorted(ids)}}
    raise TypeError(f"unknown predicate {p!r}")


def sort_field(k: SortKey) -> str:
    if k.param == "_id":
        return "_id"
    if k.param == "_lastUpdated":
        return "lu"
    return f"_s.{k.param}.{'d' if k.descending else 'a'}"


def field_value(doc: Doc, path: str) -> SortValue:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def keyset_filter(
    fields: list[str], descending: list[bool], after: tuple[SortValue, ...], id_descending: bool
) -> Doc:
    """Documents after position `after` in the order fields..., _id (None sorts lowest)."""
    alternatives: list[Doc] = []
    for i, (field, desc) in enumerate(zip(fields, descending, strict=True)):
        equal = dict(zip(fields[:i], after[:i], strict=True))
        value = after[i]
        if value is None:
            step = None if desc else {field: {"$ne": None}}
        elif desc:
            step = {"$or": [{field: {"$lt": value}}, {field: None}]}
        else:
            step = {field: {"$gt": value}}
        if step is not None:
            alternatives.append({"$and": [equal, step]} if equal else step)
    equal = dict(zip(fields, after[:-1], strict=True))
    tie_break = {"_id": {"$lt" if id_descending else "$gt": after[-1]}}
    # $and, not a merged dict: a sort on _id itself puts "_id" in `equal` too.
    alternatives.append({"$and": [equal, tie_break]} if equal else tie_break)
    return {"$or": alternatives}
