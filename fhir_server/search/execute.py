"""Running a search: parse, query the store page by page, add includes, build the Bundle.

Engine-neutral: the store answers one type at a time with keyset pages (`SearchQuery`); this
module turns them into a searchset Bundle with `self`/`next`/`previous` links, totals,
`_include`/`_revinclude` (with `:iterate`), `_summary`/`_elements`, and an OperationOutcome
entry naming the parameters it ignored.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server import errors
from fhir_server.auth.access import NEVER, Access
from fhir_server.context import RequestContext
from fhir_server.definitions import R4_RESOURCE_TYPES
from fhir_server.search import resolve, types
from fhir_server.search.fhirpath import compile_expression
from fhir_server.search.model import And, IdMatch, Or, Predicate, ReferenceEntry, ReferenceMatch
from fhir_server.search.parser import Include, SearchRequest, parse_search
from fhir_server.search.registry import patient_compartment
from fhir_server.shaping import shape
from fhir_server.store.base import Match, SearchQuery, StorageError, Version

MAX_INCLUDED = 1000
"""Cap on resources added by _include/_revinclude to one page."""
MAX_ITERATIONS = 4
"""How deep `:iterate` follows references."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: the type (for searches over several) and keyset position."""

    type: str
    position: tuple[Any, ...]
    backwards: bool = False

    def encode(self) -> str:
        raw = orjson.dumps([self.type, list(self.position), self.backwards])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            type_, position, backwards = orjson.loads(raw)
            if not (
                isinstance(type_, str)
                and isinstance(position, list)
                and position
                and isinstance(backwards, bool)
            ):
                raise ValueError
            if not all(v is None or isinstance(v, str | int | float) for v in position):
                raise ValueError
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise errors.bad_request(
                f"_cursor '{text}' is not a cursor this server issued", "_cursor"
            ) from None
        return cls(type_, tuple(position), backwards)


@dataclass(frozen=True, slots=True)
class Scope:
    """What is searched: the resource types and, for compartments, the compartment filter."""

    types: tuple[str, ...]
    path: str
    """URL path below the base for links ("Patient", "Patient/1/Observation", "")."""
    compartment: tuple[str, str] | None = None
    limits: dict[str, Predicate] | None = None
    """Per type, what a limited caller may see (fhir_server.auth.access); absent: all."""


def compartment_filter(type_: str, compartment: tuple[str, str]) -> Predicate:
    owner_type, owner_id = compartment
    params = patient_compartment().get(type_, ())
    links: list[Predicate] = [ReferenceMatch(p, owner_type, owner_id) for p in params]
    if type_ == owner_type:
        links.append(IdMatch((owner_id,)))  # the patient is in its own compartment
    return Or(tuple(links))


def compartment_types(owner_type: str, type_: str) -> tuple[str, ...]:
    if owner_type != "Patient":
        raise errors.not_found(f"Compartment '{owner_type}' is not supported; only Patient is")
    members = patient_compartment()
    if type_ == "*":
        return tuple(sorted(t for t in members if t in R4_RESOURCE_TYPES))
    if type_ not in members:
        raise errors.bad_request(f"{type_} is not part of the Patient compartment")
    return (type_,)


def _where(request: SearchRequest, type_: str, scope: Scope) -> Predicate | None:
    parts = [p for p in (request.where,) if p is not None]
    if scope.compartment is not None:
        parts.append(compartment_filter(type_, scope.compartment))
    if scope.limits and type_ in scope.limits:
        parts.append(scope.limits[type_])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(tuple(parts))


async def _limited(
    access: Access, scope: Scope, request: SearchRequest, single: str | None
) -> tuple[Scope, SearchRequest]:
    """The search as a limited caller may run it: each type narrowed to what it may see,
    types it may not search at all left out (a 403 when it named only such a type), chains
    and reverse chains limited alike."""
    if single is not None:
        await access.require(single, "s")
    for type_ in scope.types:
        access.check_criteria(type_, request.where)
    limits: dict[str, Predicate] = {}
    kept: list[str] = []
    for type_ in scope.types:
        limit = await access.search_filter(type_)
        if limit == NEVER:
            continue
        kept.append(type_)
        if limit is not None:
            limits[type_] = limit
    scope = replace(scope, types=tuple(kept), limits=limits)
    return scope, replace(request, where=await access.guard(request.where))


def _page_size(ctx: RequestContext, request: SearchRequest) -> int:
    if request.count is None:
        return ctx.settings.search_default_count
    return min(request.count, ctx.settings.search_max_count)


async def _page(
    ctx: RequestContext, request: SearchRequest, scope: Scope, size: int, cursor: Cursor | None
) -> tuple[list[Match], bool, str | None]:
    """One page of matches, whether more follow, and the type of the first match's page."""
    types_ = scope.types
    start = 0
    if cursor is not None:
        if cursor.type not in types_:
            raise errors.bad_request("_cursor does not belong to this search", "_cursor")
        start = types_.index(cursor.type)
    if cursor is not None and cursor.backwards:
        # Walk back from the cursor through this type, then the types before it.
        earlier: list[Match] = []
        for index in range(start, -1, -1):
            type_ = types_[index]
            after = cursor.position if index == start else None
            query = SearchQuery(
                type_,
                _where(request, type_, scope),
                request.sort,
                size + 1 - len(earlier),
                after,
                backwards=True,
            )
            earlier = await ctx.store.search(query) + earlier
            if len(earlier) > size:
                break
        return earlier[-size:] if size else [], len(earlier) > size, cursor.type
    matches: list[Match] = []
    for index in range(start, len(types_)):
        type_ = types_[index]
        after = cursor.position if cursor is not None and index == start else None
        query = SearchQuery(
            type_, _where(request, type_, scope), request.sort, size + 1 - len(matches), after
        )
        matches += await ctx.store.search(query)
        if len(matches) > size:
            break
    return matches[:size], len(matches) > size, None


async def _total(ctx: RequestContext, request: SearchRequest, scope: Scope) -> int | None:
    """How many resources match: exactly with `_total=accurate` or `_summary=count`, else
    when there are at most `search_total_limit` of them (None: more than that)."""
    exact = request.total == "accurate" or request.summary == "count"
    limit = ctx.settings.search_total_limit
    total = 0
    for t in scope.types:
        remaining = None if exact else limit + 1 - total
        total += await ctx.store.count(t, _where(request, t, scope), remaining)
        if not exact and total > limit:
            return None
    return total


def _references(v: Version, param_code: str, ctx: RequestContext) -> Iterable[tuple[str, str]]:
    resource = v.resource()
    params = ctx.registry.params(v.type)
    chosen = (
        [p for p in params.values() if p.type == "reference"]
        if param_code == "*"
        else ([params[param_code]] if param_code in params else [])
    )
    for param in chosen:
        for value in compile_expression(param.expression, v.type)(resource):
            for entry in types.extract("reference", value.value, value.type):
                if isinstance(entry, ReferenceEntry) and entry.type and entry.id:
                    yield entry.type, entry.id


async def _included(
    ctx: RequestContext, request: SearchRequest, matches: list[Version]
) -> list[Version]:
    seen = {(v.type, v.id) for v in matches}
    included: list[Version] = []
    frontier = matches
    for iteration in range(MAX_ITERATIONS):
        incs = [i for i in request.includes if iteration == 0 or i.iterate]
        revs = [i for i in request.revincludes if iteration == 0 or i.iterate]
        if not (incs or revs) or not frontier:
            break
        found = await _follow(ctx, incs, frontier) + await _reverse(ctx, revs, frontier)
        fresh = []
        for v in found:
            if (v.type, v.id) not in seen and len(included) < MAX_INCLUDED:
                seen.add((v.type, v.id))
                fresh.append(v)
        included += fresh
        frontier = fresh
    return included


async def _follow(
    ctx: RequestContext, incs: list[Include], frontier: list[Version]
) -> list[Version]:
    refs: dict[tuple[str, str], None] = {}
    for inc in incs:
        for v in frontier:
            if inc.source_type in ("*", v.type):
                for ref in _references(v, inc.param, ctx):
                    if inc.target_type in (None, ref[0]):
                        refs[ref] = None
    found = await ctx.store.read_many(list(refs)) if refs else []
    if ctx.access is not None:
        found = [v for v in found if await ctx.access.may_see(v)]
    return found


async def _reverse(
    ctx: RequestContext, revs: list[Include], frontier: list[Version]
) -> list[Version]:
    found: list[Version] = []
    for inc in revs:
        sources = [inc.source_type] if inc.source_type != "*" else sorted(R4_RESOURCE_TYPES)
        for source in sources:
            params = ctx.registry.params(source)
            codes = (
                [c for c, p in params.items() if p.type == "reference"]
                if inc.param == "*"
                else [inc.param]
                if inc.param in params
                else []
            )
            targets = [v for v in frontier if inc.target_type in (None, v.type)]
            links = tuple(ReferenceMatch(c, v.type, v.id) for c in codes for v in targets)
            limit = await ctx.access.search_filter(source) if ctx.access is not None else None
            if links and limit != NEVER:
                where: Predicate = Or(links) if limit is None else And((Or(links), limit))
                query = SearchQuery(source, where, limit=MAX_INCLUDED)
                found += [m.version for m in await ctx.store.search(query)]
    return found


def _link(ctx: RequestContext, scope: Scope, params: Iterable[tuple[str, str]]) -> str:
    path = f"{ctx.base_url}/{scope.path}" if scope.path else ctx.base_url
    query = urlencode(list(params))
    return f"{path}?{query}" if query else path


def _entry(
    ctx: RequestContext, v: Version, mode: str, request: SearchRequest, raw: bool
) -> dict[str, Any]:
    resource: Any
    # "The list of elements does not apply to included resources" (search.html#elements).
    wanted = request.elements if mode == "match" else None
    if request.summary or wanted:
        elements = ",".join(wanted) if wanted else None
        resource = shape(v.resource(), request.summary, elements)
    elif raw:
        resource = orjson.Fragment(v.body)  # the stored JSON goes out as it is, unparsed
    else:
        resource = v.resource()
    return {
        "fullUrl": f"{ctx.base_url}/{v.type}/{v.id}",
        "resource": resource,
        "search": {"mode": mode},
    }


async def search(
    ctx: RequestContext, scope: Scope, params: list[tuple[str, str]], strict: bool,
    raw: bool = False,
) -> dict[str, Any]:
    """The searchset Bundle. With `raw`, entry resources are the stored JSON bytes as
    `orjson.Fragment`s: only for a JSON response, which orjson then writes without parsing."""
    single = scope.types[0] if len(scope.types) == 1 and scope.path else None
    request = parse_search(single, params, ctx.registry, ctx.base_url, strict)
    if not scope.path and request.types:
        scope = Scope(request.types, "")
    if request.where is not None:
        request = replace(request, where=await resolve.resolve(ctx, request.where))
    if ctx.access is not None:
        scope, request = await _limited(ctx.access, scope, request, single)
    cursor = Cursor.decode(request.cursor) if request.cursor else None
    size = 0 if request.summary == "count" else _page_size(ctx, request)
    try:
        page, more, backwards_type = await _page(ctx, request, scope, size, cursor)
        if request.total == "none":
            total = None
        elif cursor is None and not more:
            total = len(page)  # the first page holds every match: no count query needed
        else:
            total = await _total(ctx, request, scope)
        versions = [m.version for m in page]
        included = await _included(ctx, request, versions) if versions else []
        if ctx.audit is not None:
            ctx.audit.disclosed([*versions, *included])
        if ctx.access is not None:
            versions = [ctx.access.shown(v) for v in versions]
            included = [ctx.access.shown(v) for v in included]
    except StorageError as exc:
        raise errors.unavailable(f"Storage failed: {exc}") from None
    kept = [*request.kept, ("_count", str(size))]
    links = [
        {
            "relation": "self",
            "url": _link(
                ctx, scope, [*kept, *([("_cursor", request.cursor)] if request.cursor else [])]
            ),
        }
    ]
    forward = backwards_type is None
    if page and (more if forward else True):
        last = page[-1]
        next_cursor = Cursor(last.version.type, last.position).encode()
        links.append(
            {"relation": "next", "url": _link(ctx, scope, [*kept, ("_cursor", next_cursor)])}
        )
    if page and cursor is not None and (more if not forward else True):
        first = page[0]
        previous = Cursor(first.version.type, first.position, backwards=True).encode()
        links.append(
            {"relation": "previous", "url": _link(ctx, scope, [*kept, ("_cursor", previous)])}
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    entries = [_entry(ctx, v, "match", request, raw) for v in versions]
    entries += [_entry(ctx, v, "include", request, raw) for v in included]
    if request.ignored:
        issue = errors.Issue(
            "not-supported",
            "Ignored unknown or malformed parameters: " + ", ".join(request.ignored),
            severity="warning",
            expression=request.ignored,
        )
        entries.append(
            {"resource": errors.operation_outcome([issue]), "search": {"mode": "outcome"}}
        )
    if entries:
        bundle["entry"] = entries
    return bundle


def type_scope(type_: str) -> Scope:
    return Scope((type_,), type_)


def system_scope() -> Scope:
    return Scope(tuple(sorted(R4_RESOURCE_TYPES)), "")


def compartment_scope(owner_type: str, owner_id: str, type_: str) -> Scope:
    return Scope(
        compartment_types(owner_type, type_),
        f"{owner_type}/{owner_id}/{type_}",
        (owner_type, owner_id),
    )
