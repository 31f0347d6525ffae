"""Predicates that need stored resources to mean anything, made concrete before a search runs.

The parser leaves three shapes the engines never see, because answering them takes reading
other resources first:
- ValueSetMatch (token `:in` / `:not-in`): the codes of the ValueSet (`valuesets.py`).
- ListMatch (`_list=42`): the ids of the List's entries of the searched type; a List that does
  not exist (or names none of them) selects nothing.
- Hierarchy (reference `:below` / `:above`, search.html#recursive): the resource and every
  resource below (above) it through its type's circular reference parameter (Location
  `partof`, Encounter `part-of`, ...). A type with several such parameters uses the one named
  part-of/partof. Following stops at MAX_HIERARCHY resources, and cycles end it.

`resolve` walks the predicate (through chains, `_has`, composites and negations) and replaces
each of them; everything else is returned as it is.
"""

from __future__ import annotations

from fhir_server import errors
from fhir_server.context import RequestContext
from fhir_server.search import types, valuesets
from fhir_server.search.fhirpath import compile_expression
from fhir_server.search.model import (
    And,
    Chain,
    Composite,
    Has,
    Hierarchy,
    IdMatch,
    ListMatch,
    Not,
    Or,
    Predicate,
    ReferenceEntry,
    ReferenceMatch,
    ValueSetMatch,
)
from fhir_server.search.registry import SearchParam
from fhir_server.store.base import SearchQuery, Version

MAX_HIERARCHY = 1000
"""How many resources a `:below` / `:above` search follows before it gives up (a 400)."""
_PART_OF = ("partof", "part-of")


async def resolve(ctx: RequestContext, p: Predicate) -> Predicate:
    """`p` with every ValueSetMatch, ListMatch and Hierarchy replaced by plain predicates."""
    if isinstance(p, ValueSetMatch):
        return await valuesets.codes_match(ctx, p)
    if isinstance(p, ListMatch):
        return await _list(ctx, p)
    if isinstance(p, Hierarchy):
        return await _hierarchy(ctx, p)
    if isinstance(p, And | Or):
        children = tuple([await resolve(ctx, c) for c in p.predicates])
        return type(p)(children)
    if isinstance(p, Not):
        return Not(await resolve(ctx, p.predicate))
    if isinstance(p, Chain):
        return Chain(p.param, p.target_type, await resolve(ctx, p.where))
    if isinstance(p, Has):
        return Has(p.source_type, p.param, await resolve(ctx, p.where))
    if isinstance(p, Composite):
        return Composite(p.param, tuple([await resolve(ctx, c) for c in p.components]))
    return p


def _targets(param: SearchParam, version: Version) -> list[tuple[str, str]]:
    """(type, id) of the literal references `param` finds in a resource."""
    found = []
    for value in compile_expression(param.expression, version.type)(version.resource()):
        for entry in types.extract("reference", value.value, value.type):
            if isinstance(entry, ReferenceEntry) and entry.type and entry.id:
                found.append((entry.type, entry.id))
    return found


async def _list(ctx: RequestContext, p: ListMatch) -> Predicate:
    found = await ctx.store.read_many([("List", p.list_id)])
    if ctx.access is not None:  # a List the caller may not see selects nothing, as a missing one
        found = [v for v in found if await ctx.access.may_see(v)]
    ids: list[str] = []
    for version in found:
        for entry in version.resource().get("entry") or []:
            item = entry.get("item") or {}
            for e in types.extract("reference", item, "Reference"):
                if isinstance(e, ReferenceEntry) and e.type == p.resource_type and e.id:
                    ids.append(e.id)
    return IdMatch(tuple(dict.fromkeys(ids)))


def _circular(ctx: RequestContext, type_: str) -> SearchParam | None:
    """The reference parameter of `type_` that points at `type_` only (its hierarchy)."""
    own = [
        p
        for p in ctx.registry.params(type_).values()
        if p.type == "reference" and p.targets == (type_,)
    ]
    if len(own) > 1:
        own = [p for p in own if p.code in _PART_OF]
    return own[0] if len(own) == 1 else None


async def _below(ctx: RequestContext, type_: str, param: SearchParam, root: str) -> set[str]:
    found = {root}
    frontier = [root]
    while frontier:
        links = Or(tuple(ReferenceMatch(param.code, type_, i) for i in frontier))
        matches = await ctx.store.search(SearchQuery(type_, links, limit=MAX_HIERARCHY + 1))
        frontier = [m.version.id for m in matches if m.version.id not in found]
        found.update(frontier)
        if len(found) > MAX_HIERARCHY:
            raise errors.bad_request(f"More than {MAX_HIERARCHY} {type_} below {type_}/{root}")
    return found


async def _above(ctx: RequestContext, type_: str, param: SearchParam, start: str) -> set[str]:
    found = {start}
    frontier = [start]
    while frontier:
        versions = await ctx.store.read_many([(type_, i) for i in frontier])
        parents = {i for v in versions for t, i in _targets(param, v) if t == type_}
        frontier = sorted(parents - found)
        found.update(frontier)
        if len(found) > MAX_HIERARCHY:
            raise errors.bad_request(f"More than {MAX_HIERARCHY} {type_} above {type_}/{start}")
    return found


async def _hierarchy(ctx: RequestContext, p: Hierarchy) -> Predicate:
    links: list[Predicate] = []
    for type_ in p.types:
        param = _circular(ctx, type_)
        if param is None:
            continue
        walk = _above if p.above else _below
        ids = await walk(ctx, type_, param, p.id)
        links += [ReferenceMatch(p.param, type_, i) for i in sorted(ids)]
    if not links:
        raise errors.bad_request(
            f":{'above' if p.above else 'below'} on '{p.param}' needs a hierarchy, and "
            f"{', '.join(p.types)} has none",
            p.param,
        )
    return Or(tuple(links))
