"""Conditional interactions (http.html#ccreate, #cond-update, #cdelete, #cpatch), HTTP-free.

A conditional interaction finds its target by search criteria (`Type?query`) instead of an id.
To be race-safe, the search and the write it decides happen in one storage transaction, with
the criteria locked first (`Transaction.lock`): two conditional creates with the same criteria
are serialised, so the second sees the first's resource and does not create another. On SQLite
the transaction already holds the database's write lock; on MongoDB the lock is a document
(see store/mongo.py). The lock key is the type and the sorted, URL-encoded parameters, so the
same criteria written in another parameter order share it.

Inside a transaction bundle (`ctx.tx` set) these functions join it; on their own each is a
one-entry transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from fhir_server import errors, interactions
from fhir_server.audit import trail as audit
from fhir_server.context import RequestContext
from fhir_server.interactions import WriteResult
from fhir_server.search.model import And, Predicate
from fhir_server.search.parser import parse_search
from fhir_server.search.resolve import resolve
from fhir_server.store.base import (
    LockTimeout,
    SearchQuery,
    StorageError,
    Version,
    VersionConflict,
)

T = TypeVar("T")
# Result parameters change nothing about which resources match; they are left out.
_IGNORED = frozenset({"_format", "_pretty", "_summary", "_elements", "_count", "_sort",
                      "_total", "_include", "_revinclude", "_cursor"})


@dataclass(frozen=True, slots=True)
class Criteria:
    type: str
    query: str
    """The criteria as given (for messages)."""
    where: Predicate
    key: str
    """Lock key: `Type?` and the sorted, re-encoded parameters."""


def criteria(ctx: RequestContext, type_: str, query: str | list[tuple[str, str]]) -> Criteria:
    """Parse conditional criteria strictly: an unknown or malformed parameter is a 400, and so
    are criteria that select nothing in particular (none given)."""
    interactions.check_type(type_)
    if isinstance(query, str):
        text = query.removeprefix(f"{type_}?").removeprefix("?")
        params = parse_qsl(text, keep_blank_values=True)
    else:
        params = list(query)
        text = urlencode(params)
    params = [(k, v) for k, v in params if k not in _IGNORED]
    if not params:
        raise errors.bad_request(
            f"A conditional interaction on {type_} needs search criteria (e.g. "
            f"{type_}?identifier=system|value)"
        )
    request = parse_search(type_, params, ctx.registry, ctx.base_url, strict=True)
    if request.where is None:
        raise errors.bad_request(f"The criteria '{text}' select nothing in particular")
    return Criteria(type_, text, request.where, f"{type_}?{urlencode(sorted(params))}")


async def matches(ctx: RequestContext, c: Criteria, limit: int = 2) -> list[Version]:
    """Lock the criteria in ctx.tx, then search through it (seeing its own writes)."""
    tx = ctx.tx
    assert tx is not None, "conditional searches run inside a transaction"
    try:
        await tx.lock(c.key)
    except LockTimeout as exc:
        raise errors.conflict(f"Another request holds {c.type}?{c.query}: {exc}") from None
    where = await resolve(ctx, c.where)  # :in, _list, :above/:below become plain predicates
    if ctx.access is not None:
        # Criteria find only what the caller may see: a hidden match is as if absent.
        await ctx.access.require(c.type, "s")
        visible = await ctx.access.search_filter(c.type)
        guarded = await ctx.access.guard(where)
        assert guarded is not None
        where = guarded if visible is None else And((guarded, visible))
    return [m.version for m in await tx.search(SearchQuery(c.type, where, limit=limit))]


def too_many(c: Criteria, what: str) -> errors.FhirError:
    return errors.precondition_failed(
        f"{what}: the criteria {c.type}?{c.query} match more than one resource"
    )


async def atomically(ctx: RequestContext, work: Callable[[RequestContext], Awaitable[T]]) -> T:
    """Run `work` in ctx.tx, or in a transaction of its own (storage failures: 503)."""
    if ctx.tx is not None:
        return await work(ctx)
    try:
        async with audit.transaction(ctx) as tx:
            return await work(replace(ctx, tx=tx))
    except LockTimeout as exc:
        raise errors.conflict(str(exc)) from None
    except VersionConflict:
        # Only the audit chain's head can conflict here (another process extended it).
        raise errors.conflict("The audit trail was busy; nothing was written, retry") from None
    except StorageError as exc:
        raise errors.unavailable(f"Storage failed, nothing was written: {exc}") from None


async def create(
    ctx: RequestContext, type_: str, resource: Any, if_none_exist: str, id_: str | None = None
) -> WriteResult:
    """0 matches: create; 1: that resource (`created` and `changed` False); more: 412."""
    resource = interactions.prepare_create(ctx, type_, resource)
    c = criteria(ctx, type_, if_none_exist)

    async def work(tctx: RequestContext) -> WriteResult:
        found = await matches(tctx, c)
        if len(found) > 1:
            raise too_many(c, "Conditional create (If-None-Exist)")
        if found:
            if tctx.audit is not None:
                tctx.audit.saw(found[0])
            return WriteResult(found[0], created=False, changed=False)
        return await interactions.create(tctx, type_, resource, id_, prepared=True)

    return await atomically(ctx, work)


def update_target(c: Criteria, found: list[Version], resource: dict[str, Any]) -> str:
    """The id a conditional update writes to (http.html#cond-update)."""
    if len(found) > 1:
        raise too_many(c, "Conditional update")
    body_id = resource.get("id")
    if found:
        if body_id is not None and body_id != found[0].id:
            raise errors.bad_request(
                f"The resource id '{body_id}' differs from {c.type}/{found[0].id}, which the "
                f"criteria {c.type}?{c.query} match",
                f"{c.type}.id",
            )
        return found[0].id
    if body_id is not None:
        return str(body_id)  # update as create with the client's id
    return interactions.new_id()


async def update(
    ctx: RequestContext, type_: str, query: str, resource: Any, if_match: int | None = None
) -> WriteResult:
    interactions.check_mutable(type_)
    resource = interactions.check_body(resource, type_)
    c = criteria(ctx, type_, query)

    async def work(tctx: RequestContext) -> WriteResult:
        found = await matches(tctx, c)
        target = update_target(c, found, resource)
        if not found and "id" not in resource and if_match is None:
            # Nothing matched and the client named no id: a creation, with the id chosen here.
            return await interactions.create(tctx, type_, resource, target)
        return await interactions.update(tctx, type_, target, {**resource, "id": target}, if_match)

    return await atomically(ctx, work)


def patch_target(c: Criteria, found: list[Version]) -> str:
    if not found:
        raise errors.not_found(f"Conditional patch: no {c.type} matches {c.query}")
    if len(found) > 1:
        raise too_many(c, "Conditional patch")
    return found[0].id


async def patch(
    ctx: RequestContext,
    type_: str,
    query: str,
    kind: str,
    document: Any,
    if_match: int | None = None,
) -> WriteResult:
    interactions.check_mutable(type_)
    c = criteria(ctx, type_, query)

    async def work(tctx: RequestContext) -> WriteResult:
        target = patch_target(c, await matches(tctx, c))
        return await interactions.patch(tctx, type_, target, kind, document, if_match)

    return await atomically(ctx, work)


async def delete_targets(ctx: RequestContext, c: Criteria) -> list[Version]:
    """The resources a conditional delete removes, per `settings.conditional_delete`."""
    multiple = ctx.settings.conditional_delete == "multiple"
    limit = ctx.settings.max_bundle_entries if multiple else 1
    found = await matches(ctx, c, limit + 1)
    if len(found) > limit:
        if not multiple:
            raise too_many(c, "Conditional delete (this server deletes one resource at a time)")
        raise errors.precondition_failed(
            f"Conditional delete: {c.type}?{c.query} matches more than {limit} resources"
        )
    return found


async def delete(ctx: RequestContext, type_: str, query: str) -> list[WriteResult]:
    """Delete what the criteria match; the tombstones written (none when nothing matched)."""
    interactions.check_mutable(type_)
    c = criteria(ctx, type_, query)

    async def work(tctx: RequestContext) -> list[WriteResult]:
        results = []
        for v in await delete_targets(tctx, c):
            result = await interactions.delete(tctx, type_, v.id)
            if result is not None:
                results.append(result)
        return results

    return await atomically(ctx, work)
