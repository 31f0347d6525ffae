"""The FHIR interactions, free of HTTP: REST routes and (later) bundle entries both call these.

Each takes a RequestContext and plain data (resource dicts, ids, query parameters) and returns
stored versions or FHIR documents; failures are FhirErrors. Every write goes through `_write`,
which reads the current version inside a storage transaction, checks preconditions, and stores
the next version with a compare-and-set, retrying when another writer won the race.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server import errors
from fhir_server.audit import trail as audit
from fhir_server.audit.chain import Unsealed
from fhir_server.auth.scopes import INTERACTION_PERMS
from fhir_server.context import RequestContext
from fhir_server.definitions import R4_RESOURCE_TYPES
from fhir_server.fhirtime import clock, format_instant, parse_range
from fhir_server.ids import new_id
from fhir_server.patch import apply_fhirpath_patch, apply_json_patch
from fhir_server.search.indexer import index_resource
from fhir_server.store.base import (
    APPEND_ONLY_TYPES,
    HistoryCursor,
    HistoryQuery,
    StorageError,
    Transaction,
    Version,
    VersionConflict,
)
from fhir_server.validation.structure import check_id, validate_structure

Resource = dict[str, Any]
# Compare-and-set retries when another writer changed the resource between our read and write.
MAX_WRITE_ATTEMPTS = 200
UNCHANGED = object()


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: Version
    created: bool
    """The write brought the resource into existence (new, or again after a delete)."""
    changed: bool = True
    """False when nothing was written: an update with identical content, or a repeated delete."""


def check_type(type_: str) -> None:
    if type_ not in R4_RESOURCE_TYPES:
        raise errors.not_found(f"Resource type '{type_}' is not supported by this server")


def _check_body(resource: Any, type_: str) -> Resource:
    if not isinstance(resource, dict):
        raise errors.bad_request("The body must be a FHIR resource (a JSON object)")
    found = resource.get("resourceType")
    if found != type_:
        raise errors.bad_request(
            f"resourceType '{found}' in the body does not match '{type_}' in the URL",
            f"{type_}.resourceType" if found is None else str(found),
        )
    return resource


def _with_meta(resource: Resource, type_: str, id_: str, version: int, instant: str) -> Resource:
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant
    rest = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    return {"resourceType": type_, "id": id_, "meta": meta, **rest}


def _content(resource: Resource) -> Resource:
    """The resource without the server-managed meta fields, for no-op update detection."""
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    rest = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    return {**rest, "meta": meta} if meta else rest


def _validate(ctx: RequestContext, resource: Resource) -> None:
    """Structure always; profiles when the resource claims or must meet one (422 on errors)."""
    validate_structure(resource)
    if ctx.conformance is not None:
        ctx.conformance.check(resource)


def parse_if_match(header: str | None) -> int | None:
    """`W/"3"`, `"3"` -> 3; None when absent."""
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise errors.bad_request(f"If-Match '{header}' is not a version ETag like W/\"3\"")
    return int(text)


def _check_if_match(current: Version | None, if_match: int | None, ref: str) -> None:
    if if_match is None:
        return
    found = 0 if current is None or current.deleted else current.version
    if found != if_match:
        raise errors.precondition_failed(
            f"If-Match version {if_match} does not match the current version of {ref} "
            f"({found or 'none'})"
        )


Builder = Callable[[Version | None], Resource | object | None]


async def _write(
    ctx: RequestContext, type_: str, id_: str, method: str, build: Builder, if_match: int | None
) -> WriteResult:
    """Store the next version of type_/id_ with the content `build(current)` returns.

    `build` returns the new resource, None for a deletion, or UNCHANGED to write nothing.
    Inside a transaction bundle (ctx.tx) the write joins it; otherwise it is a transaction of
    its own, retried when another writer changes the resource between our read and write.
    """
    ref = f"{type_}/{id_}"
    if ctx.tx is not None:
        try:
            return await _write_in(ctx, ctx.tx, type_, id_, method, build, if_match)
        except VersionConflict:
            raise errors.conflict(f"{ref} was changed by another request; retry") from None
    for _ in range(MAX_WRITE_ATTEMPTS):
        try:
            async with audit.transaction(ctx) as tx:
                result = await _write_in(ctx, tx, type_, id_, method, build, if_match)
            if type_ == "AuditEvent" and ctx.audit is not None:
                # An AuditEvent is stored as the audit chain sealed it, with its chain link.
                sealed = ctx.audit.sealed.get(id_, result.version)
                return WriteResult(sealed, result.created, result.changed)
            return result
        except VersionConflict:
            if if_match is not None:
                raise errors.precondition_failed(
                    f"{ref} was changed by another request; version {if_match} is no longer current"
                ) from None
        except StorageError as exc:
            raise errors.unavailable(f"Storage failed, nothing was written: {exc}") from None
    raise errors.conflict(f"{ref} is being changed by too many requests at once; retry")


async def _write_in(
    ctx: RequestContext,
    tx: Transaction,
    type_: str,
    id_: str,
    method: str,
    build: Builder,
    if_match: int | None,
) -> WriteResult:
    current = await tx.current(type_, id_)
    access = ctx.access
    if access is not None:
        # Before any other answer (412, 410...): a hidden resource is as if absent.
        perm = WRITE_PERMS[method] if current is not None else "c"
        limit = await access.require(type_, perm)
        await access.require_visible(current, perm)
        if current is None and method == "PUT" and limit is not None:
            # Update-as-create would tell a free id (201) from a hidden one (404).
            raise errors.not_found(
                f"{type_}/{id_} is not known (create it with POST)", f"{type_}.id"
            )
    _check_if_match(current, if_match, f"{type_}/{id_}")
    content = build(current)
    if access is not None and isinstance(content, dict):
        await access.check_content(type_, content, current, perm)
    if content is UNCHANGED and current is not None:
        if ctx.audit is not None:
            ctx.audit.saw(current)
        return WriteResult(current, created=False, changed=False)
    number = (current.version if current else 0) + 1
    instant = clock.next(current.last_updated if current else None)
    index = None
    if content is None:
        version = Version(type_, id_, number, instant, method, None)
        await tx.put(version)
    else:
        stored = _with_meta(content, type_, id_, number, instant)  # type: ignore[arg-type]
        version = Version(type_, id_, number, instant, method, orjson.dumps(stored))
        index = index_resource(stored, ctx.indexing or ctx.registry)
        if type_ == "AuditEvent" and ctx.audit is not None:
            # Chained with the other events at commit (and indexed then, with its link).
            ctx.audit.pending.append(Unsealed(stored, ours=False))
        else:
            await tx.put(version, index)
    if ctx.audit is not None:
        ctx.audit.wrote(version, index, current)
    return WriteResult(version, created=current is None or current.deleted)


WRITE_PERMS = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}
"""The SMART permission each write needs (an update that creates needs `c`)."""


def check_mutable(type_: str) -> None:
    """AuditEvents are append-only: 405 for update, patch and delete."""
    if type_ in APPEND_ONLY_TYPES:
        raise errors.method_not_allowed(
            "AuditEvents are append-only: they cannot be updated, patched or deleted"
        )


def prepare_create(ctx: RequestContext, type_: str, resource: Any) -> Resource:
    """Check and validate the body of a create (400/422), dropping any client id."""
    resource = _check_body(resource, type_)
    # The server assigns the id; a client-supplied one is ignored (http.html#create).
    resource.pop("id", None)
    _validate(ctx, resource)
    return resource


async def create(
    ctx: RequestContext,
    type_: str,
    resource: Any,
    id_: str | None = None,
    *,
    prepared: bool = False,
) -> WriteResult:
    """Create with a new server id (`id_`: one chosen in advance, as a transaction bundle does
    for its POST entries); `prepared` when `prepare_create` already checked the body."""
    if not prepared:
        resource = prepare_create(ctx, type_, resource)
    return await _write(ctx, type_, id_ or new_id(), "POST", lambda _: resource, None)




def check_body(resource: Any, type_: str) -> Resource:
    """400 unless `resource` is a JSON object of `type_`."""
    return _check_body(resource, type_)


async def update(
    ctx: RequestContext, type_: str, id_: str, resource: Any, if_match: int | None = None
) -> WriteResult:
    check_mutable(type_)
    check_id(id_, f"{type_}.id")
    resource = _check_body(resource, type_)
    if resource.get("id") != id_:
        raise errors.bad_request(
            f"The resource id '{resource.get('id')}' does not match '{id_}' in the URL",
            f"{type_}.id",
        )
    _validate(ctx, resource)
    new_content = _content(resource)

    def build(current: Version | None) -> Resource | object:
        if (
            current is not None
            and not current.deleted
            and (_content(current.resource()) == new_content)
        ):
            return UNCHANGED
        return resource

    return await _write(ctx, type_, id_, "PUT", build, if_match)


async def patch(
    ctx: RequestContext,
    type_: str,
    id_: str,
    kind: str,
    document: Any,
    if_match: int | None = None,
) -> WriteResult:
    """Apply a JSON Patch (`kind="json-patch"`) or a FHIRPath Patch Parameters resource."""
    check_mutable(type_)

    def build(current: Version | None) -> Resource | object:
        _require_live(current, type_, id_)
        assert current is not None
        before = current.resource()
        if kind == "json-patch":
            after = apply_json_patch(before, document)
        else:
            after = apply_fhirpath_patch(before, document)
        if after.get("resourceType") != type_ or after.get("id") != id_:
            raise errors.unprocessable(
                [
                    errors.Issue(
                        "invalid",
                        "A patch may not change the resource's type or id",
                        expression=(f"{type_}.id",),
                    )
                ]
            )
        _validate(ctx, after)
        return UNCHANGED if _content(after) == _content(before) else after

    return await _write(ctx, type_, id_, "PATCH", build, if_match)


async def delete(
    ctx: RequestContext, type_: str, id_: str, if_match: int | None = None
) -> WriteResult | None:
    """Leave a tombstone version; None when there was nothing to delete."""
    check_mutable(type_)

    def build(current: Version | None) -> object:
        if current is None:
            raise _NothingToDelete
        return UNCHANGED if current.deleted else None

    try:
        result = await _write(ctx, type_, id_, "DELETE", build, if_match)
    except _NothingToDelete:
        if ctx.access is not None:
            # As for a resource it may not see: "did not exist" would tell the difference.
            raise errors.not_found(f"{type_}/{id_} is not known") from None
        return None
    return result if result.changed else None


class _NothingToDelete(Exception):
    """Raised inside a delete's transaction when the resource never existed."""


def _require_live(current: Version | None, type_: str, id_: str) -> None:
    if current is None:
        raise errors.not_found(f"{type_}/{id_} is not known")
    if current.deleted:
        raise errors.gone(
            f"{type_}/{id_} was deleted (version {current.version})",
            ETag=f'W/"{current.version}"',
        )


async def _require_readable(
    ctx: RequestContext, type_: str, found: Version | None, perm: str = "r"
) -> None:
    if ctx.access is not None:
        await ctx.access.require(type_, perm)
        await ctx.access.require_visible(found, perm)


async def read(ctx: RequestContext, type_: str, id_: str) -> Version:
    try:
        # Inside a transaction bundle, reads see the bundle's own earlier writes.
        if ctx.tx is not None:
            current = await ctx.tx.current(type_, id_)
        else:
            current = await ctx.store.read(type_, id_)
    except StorageError as exc:
        raise errors.unavailable(f"Storage failed: {exc}") from None
    await _require_readable(ctx, type_, current)
    _require_live(current, type_, id_)
    assert current is not None
    if ctx.audit is not None:
        ctx.audit.saw(current)
    return current if ctx.access is None else ctx.access.shown(current)


async def vread(ctx: RequestContext, type_: str, id_: str, version_id: str) -> Version:
    if not version_id.isdigit():
        raise errors.not_found(f"{type_}/{id_} has no version '{version_id}'")
    try:
        found = await ctx.store.vread(type_, id_, int(version_id))
    except StorageError as exc:
        raise errors.unavailable(f"Storage failed: {exc}") from None
    if found is None:
        # Said as of a resource that does not exist when the caller's view is limited: "has
        # no version" would tell that it exists.
        await _require_readable(ctx, type_, None)
        if ctx.access is not None:
            raise errors.not_found(f"{type_}/{id_} is not known")
        raise errors.not_found(f"{type_}/{id_} has no version {version_id}")
    await _require_readable(ctx, type_, found)
    if found.deleted:
        raise errors.gone(f"Version {version_id} of {type_}/{id_} is a deletion")
    if ctx.audit is not None:
        ctx.audit.saw(found)
    return found if ctx.access is None else ctx.access.shown(found)


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise errors.bad_request(f"Parameter {name} may be given only once")
    return values[0]


def _history_query(
    ctx: RequestContext, type_: str | None, id_: str | None, params: Mapping[str, list[str]]
) -> HistoryQuery:
    count_text = _single(params, "_count")
    count = ctx.settings.history_default_count
    if count_text is not None:
        if not count_text.isdigit():
            raise errors.bad_request(f"_count must be a non-negative integer, not '{count_text}'")
        count = min(int(count_text), ctx.settings.history_max_count)
    since = at = after = None
    try:
        if (text := _single(params, "_since")) is not None:
            since = format_instant(parse_range(text)[0])
        if (text := _single(params, "_at")) is not None:
            start, end = parse_range(text)
            at = (format_instant(start), format_instant(end))
        if (text := _single(params, "_cursor")) is not None:
            after = HistoryCursor.decode(text)
    except ValueError as exc:
        raise errors.bad_request(str(exc)) from None
    return HistoryQuery(type_, id_, since, at, after, count)


def _history_entry(base: str, v: Version) -> Resource:
    url = v.type if v.method == "POST" else f"{v.type}/{v.id}"
    if v.deleted:
        status = "204 No Content"
    elif v.method == "POST" or v.version == 1:
        status = "201 Created"
    else:
        status = "200 OK"
    entry: Resource = {"fullUrl": f"{base}/{v.type}/{v.id}"}
    if not v.deleted:
        entry["resource"] = v.resource()
    entry["request"] = {"method": v.method, "url": url}
    entry["response"] = {
        "status": status,
        "etag": f'W/"{v.version}"',
        "lastModified": v.last_updated,
    }
    return entry


async def history(
    ctx: RequestContext, type_: str | None, id_: str | None, params: Mapping[str, list[str]]
) -> Resource:
    """A history Bundle, newest first, with keyset `next` links that survive concurrent writes."""
    query = _history_query(ctx, type_, id_, params)
    access = ctx.access
    level = "history-instance" if id_ else "history-type" if type_ else "history-system"
    perm = INTERACTION_PERMS[level]
    try:
        current = await ctx.store.read(type_, id_) if id_ is not None else None  # type: ignore[arg-type]
        if type_ is not None:
            await _require_readable(ctx, type_, current, perm)
        if id_ is not None and current is None:
            raise errors.not_found(f"{type_}/{id_} is not known")
        versions = await ctx.store.history(query) if query.limit else []
    except StorageError as exc:
        raise errors.unavailable(f"Storage failed: {exc}") from None
    # A limited caller sees the versions it may see, each judged on its own content (a page
    # may come out shorter; the `next` link still follows the unfiltered listing).
    listed = versions
    if access is not None:
        versions = [access.shown(v) for v in versions if await access.may_see(v, perm)]
    if ctx.audit is not None:
        if current is not None:
            ctx.audit.target(f"{current.type}/{current.id}")
        ctx.audit.disclosed(v for v in versions if not v.deleted)
    path = "/".join(p for p in (ctx.base_url, type_, id_, "_history") if p)
    kept = {k: v for k, v in params.items() if k in ("_count", "_since", "_at", "_cursor")}
    links = [{"relation": "self", "url": _link(path, kept)}]
    if len(listed) == query.limit and listed:
        last = listed[-1]
        cursor = HistoryCursor(last.last_updated, last.type, last.id).encode()
        links.append({"relation": "next", "url": _link(path, {**kept, "_cursor": [cursor]})})
    return {
        "resourceType": "Bundle",
        "type": "history",
        "link": links,
        "entry": [_history_entry(ctx.base_url, v) for v in versions],
    }


def _link(path: str, params: Mapping[str, list[str]]) -> str:
    query = urlencode([(k, v) for k, values in params.items() for v in values])
    return f"{path}?{query}" if query else path
