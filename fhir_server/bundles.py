"""Batch and transaction Bundles (http.html#transaction), HTTP-free.

Every entry goes through the same interaction functions as plain REST (interactions.py,
conditional.py, search/execute.py); this module adds what only bundles have:

- **transaction**: all-or-nothing. One storage transaction holds every entry; any error (a
  FhirError of an entry, or a storage failure) rolls it back and the answer is an
  OperationOutcome naming the entry (index and fullUrl) and why, with that entry's status
  (storage failure: 503). Entries run in the order the specification prescribes — DELETE,
  POST, PUT/PATCH, then GET/HEAD — and are answered in their own order. Before anything is
  written, every POST gets its server id (or, with `ifNoneExist`, the id of the one match),
  conditional PUT/PATCH/DELETE find their targets, and then every reference to an entry's
  fullUrl (`urn:uuid:`, `urn:oid:` or absolute) is rewritten to `Type/id` wherever it occurs:
  `reference` elements at any depth (extensions, contained resources included), uri/canonical
  strings equal to a mapped `urn:`, and `urn:` links in narrative. Conditional references
  (`Patient?identifier=s|v`) resolve to their one match (none or several: 412). Two entries
  writing the same resource, or sharing a fullUrl, are a 400.
- **batch**: each entry on its own (its own implicit transaction), with its own status and
  OperationOutcome; a failing entry never affects the others.

Searches inside a transaction see its earlier writes (`Transaction.search`); history and vread
see committed data only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_server import conditional, errors, interactions
from fhir_server.audit import trail as audit
from fhir_server.audit.events import QUERIED, request_subtype
from fhir_server.capabilities import capability_statement
from fhir_server.context import RequestContext
from fhir_server.interactions import WriteResult
from fhir_server.search import execute
from fhir_server.search.model import Predicate
from fhir_server.store.base import (
    DelegatingStore,
    LockTimeout,
    Match,
    SearchQuery,
    StorageError,
    Store,
    Transaction,
    Version,
    VersionConflict,
)
from fhir_server.validation.structure import check_id

Resource = dict[str, Any]
PROCESSING = ("transaction", "batch")
PHASES = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_CONDITIONAL_REF = re.compile(r"[A-Z][A-Za-z]+\?.+")
_URN = re.compile(r"urn:(?:uuid|oid):[A-Za-z0-9.\-]+")
_NOT_REWRITTEN = frozenset({"value", "system", "id", "fullUrl"})
"""Keys whose strings are identifiers or code systems, never references to entries."""
JSON_PATCH = "application/json-patch+json"


@dataclass(slots=True)
class Entry:
    """One parsed entry of a batch or transaction."""

    index: int
    full_url: str | None
    method: str
    url: str
    parts: list[str]
    query: str
    resource: Any = None
    if_match: int | None = None
    if_none_exist: str | None = None
    type: str | None = None
    id: str | None = None
    existing: Version | None = None
    """Conditional create: the one resource the criteria matched (nothing is written)."""
    deletes: list[Version] = field(default_factory=list)
    """Conditional delete: the resources it removes."""

    @property
    def label(self) -> str:
        where = f"Bundle.entry[{self.index}]"
        return f"{where} ({self.full_url})" if self.full_url else where


@dataclass(slots=True)
class Result:
    """What one entry did: its status and what the response entry carries."""

    status: int
    version: Version | None = None
    resource: Resource | None = None
    outcome: Resource | None = None
    write: WriteResult | None = None
    deleted: int = 0


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def check_bundle(ctx: RequestContext, bundle: Any) -> str:
    """The bundle's type when it is a batch or transaction we will process; else 400/413."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        found = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise errors.bad_request(
            f"POST to the base URL takes a Bundle of type batch or transaction, not {found}"
        )
    kind = bundle.get("type")
    if kind not in PROCESSING:
        raise errors.bad_request(
            f"POST to the base URL takes a Bundle of type batch or transaction; this one is "
            f"'{kind}'. Store other Bundles (document, message, collection, searchset, ...) "
            "with POST [base]/Bundle",
            "Bundle.type",
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise errors.bad_request("Bundle.entry must be a list", "Bundle.entry")
    limit = ctx.settings.max_bundle_entries
    if len(entries) > limit:
        raise errors.payload_too_large(
            f"The bundle has {len(entries)} entries; this server takes at most {limit}",
            "Bundle.entry",
        )
    return str(kind)


async def process_bundle(ctx: RequestContext, bundle: Any, prefer: str | None = None) -> Resource:
    """Process a batch or transaction Bundle; the batch-response / transaction-response.

    `prefer` is the `Prefer: return=` value: `representation` (default) puts each written
    resource in its entry, `minimal` leaves it out, `OperationOutcome` adds an outcome.
    A failed transaction raises the FhirError naming the failing entry.
    """
    if ctx.audit is not None and isinstance(bundle, dict) and bundle.get("type") in PROCESSING:
        ctx.audit.subtype = bundle["type"]  # recorded as what it is, even if refused
    kind = check_bundle(ctx, bundle)
    raw = bundle.get("entry") or []
    if kind == "batch":
        results = [await batch_entry(ctx, i, e) for i, e in enumerate(raw)]
    else:
        results = await run_transaction(ctx, [parse_entry(ctx, i, e) for i, e in enumerate(raw)])
    return response_bundle(kind, results, prefer, ctx.base_url)


def response_bundle(kind: str, results: list[Result], prefer: str | None, base: str) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "entry": [_response_entry(r, prefer, base) for r in results],
    }


def _response_entry(r: Result, prefer: str | None, base: str) -> Resource:
    entry: Resource = {}
    v = r.version
    if v is not None and not v.deleted:
        entry["fullUrl"] = f"{base}/{v.type}/{v.id}"
    if r.write is None:
        body = r.resource  # a read or search: the resource is the answer
    elif prefer in ("minimal", "OperationOutcome") or v is None or v.deleted:
        body = None
    else:
        body = v.resource()
    if body is not None:
        entry["resource"] = body
    response: Resource = {"status": status_line(r.status)}
    if v is not None:
        if r.write is not None and not v.deleted:
            response["location"] = f"{v.type}/{v.id}/_history/{v.version}"
        response["etag"] = f'W/"{v.version}"'
        response["lastModified"] = v.last_updated
    outcome = r.outcome
    if outcome is None and prefer == "OperationOutcome" and r.write is not None:
        outcome = errors.information_outcome(_describe(r))
    if outcome is not None:
        response["outcome"] = outcome
    entry["response"] = response
    return entry


def _describe(r: Result) -> str:
    v = r.version
    assert v is not None and r.write is not None
    if v.deleted:
        return f"Deleted {v.type}/{v.id} (version {v.version})"
    verb = "Created" if r.write.created else "Updated" if r.write.changed else "Unchanged"
    return f"{verb} {v.type}/{v.id} (version {v.version})"


# --- parsing entries -----------------------------------------------------------------------


def _split_url(ctx: RequestContext, url: str) -> tuple[list[str], str]:
    base = ctx.base_url
    if base and url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    elif "://" in url.split("?", 1)[0]:
        raise errors.bad_request(f"request.url '{url}' is not on this server", "request.url")
    path, _, query = url.lstrip("/").partition("?")
    return [p for p in path.split("/") if p], query


def parse_entry(ctx: RequestContext, index: int, raw: Any) -> Entry:
    """Read one entry's request; its errors name the entry."""
    full_url = raw.get("fullUrl") if isinstance(raw, dict) else None
    stub = Entry(index, full_url if isinstance(full_url, str) else None, "", "", [], "")
    try:
        return _parse_entry(ctx, stub, raw)
    except errors.FhirError as exc:
        raise entry_error(stub, exc) from None


def _parse_entry(ctx: RequestContext, e: Entry, raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise errors.bad_request("A bundle entry must be an object")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise errors.bad_request("The entry has no request (method and url)", "request")
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or method.upper() not in PHASES:
        raise errors.bad_request(f"request.method '{method}' is not supported", "request.method")
    if not isinstance(url, str) or not url.strip():
        raise errors.bad_request("The entry's request has no url", "request.url")
    e.method, e.url = method.upper(), url.strip()
    e.parts, e.query = _split_url(ctx, e.url)
    e.resource = raw.get("resource")
    if_match = request.get("ifMatch")
    e.if_match = interactions.parse_if_match(if_match) if isinstance(if_match, str) else None
    if_none_exist = request.get("ifNoneExist")
    e.if_none_exist = if_none_exist if isinstance(if_none_exist, str) and if_none_exist else None
    if e.parts and e.parts[0] not in ("_history", "metadata", "_search"):
        e.type = e.parts[0]
        interactions.check_type(e.type)
    if e.method in ("POST", "PUT", "PATCH"):
        shape = (len(e.parts) == 1 and (e.method == "POST" or e.query)) or len(e.parts) == 2
        if e.type is None or not shape or (e.method == "POST" and e.query):
            raise errors.bad_request(
                f"{e.method} {e.url} is not a supported request", "request.url"
            )
        if e.resource is None:
            raise errors.bad_request(f"{e.method} {e.url} needs a resource", "resource")
    if e.method in ("POST", "PUT"):
        interactions.check_body(e.resource, e.type)  # type: ignore[arg-type]
    if e.method == "DELETE" and (
        e.type is None or not (len(e.parts) == 2 or (len(e.parts) == 1 and e.query))
    ):
        raise errors.bad_request(f"DELETE {e.url} is not a supported request", "request.url")
    if len(e.parts) == 2 and e.method in ("PUT", "PATCH", "DELETE"):
        e.id = e.parts[1]
        check_id(e.id, "request.url")
    return e


def entry_error(e: Entry, exc: errors.FhirError) -> errors.FhirError:
    """The entry's error, saying which entry it is and pointing the FHIRPath into the bundle."""
    root = f"Bundle.entry[{e.index}]"
    rtype = e.resource.get("resourceType") if isinstance(e.resource, dict) else None
    issues = []
    for issue in exc.issues:
        expressions = tuple(_relocate(x, root, rtype) for x in issue.expression) or (root,)
        text = f"{e.label} ({e.method} {e.url}): {issue.diagnostics}" if e.method else (
            f"{e.label}: {issue.diagnostics}"
        )
        issues.append(errors.Issue(issue.code, text, issue.severity, expressions))
    return type(exc)(issues=issues, status=exc.status)


def _relocate(expression: str, root: str, rtype: str | None) -> str:
    if expression.startswith(("Bundle.", "request")) or expression == "resource":
        return expression if expression.startswith("Bundle.") else f"{root}.{expression}"
    if rtype and (expression == rtype or expression.startswith(rtype + ".")):
        return f"{root}.resource{expression[len(rtype):]}"
    return root


def storage_error(e: Entry, exc: StorageError) -> errors.FhirError:
    if isinstance(exc, LockTimeout):
        return entry_error(e, errors.conflict(str(exc)))
    return entry_error(e, errors.unavailable(f"Storage failed, nothing was written: {exc}"))


# --- transaction ---------------------------------------------------------------------------


async def run_transaction(ctx: RequestContext, entries: list[Entry]) -> list[Result]:
    """All entries in one storage transaction; raises the first entry's error, nothing written."""
    _check_full_urls(entries)
    runner = _Transaction(ctx, entries)
    try:
        async with audit.transaction(ctx) as tx:
            runner.ctx = replace(ctx, tx=tx)
            results = await runner.run()
            if ctx.audit is not None:
                await ctx.audit.finish("transaction", 200, f"{len(entries)} entries", tx=tx)
    except StorageError as exc:
        if runner.current is not None:
            raise storage_error(runner.current, exc) from None
        raise errors.unavailable(f"Storage failed, nothing was written: {exc}") from None
    except VersionConflict:
        # Only the audit chain's head can conflict here (another process extended it).
        raise errors.conflict("The audit trail was busy; nothing was written, retry") from None
    if ctx.audit is not None:
        for r in results:  # AuditEvents created by entries, as the chain sealed them
            if r.version is not None and (sealed := ctx.audit.sealed.get(r.version.id)):
                r.version = sealed
                r.write = WriteResult(sealed, created=True)
    return results


def _check_full_urls(entries: list[Entry]) -> None:
    seen: dict[str, Entry] = {}
    for e in entries:
        if e.full_url is None:
            continue
        if e.full_url in seen and e.method in ("POST", "PUT"):
            first = seen[e.full_url]
            raise entry_error(e, errors.bad_request(
                f"fullUrl {e.full_url} is also the fullUrl of Bundle.entry[{first.index}]",
                "fullUrl",
            ))
        if e.method in ("POST", "PUT"):
            seen[e.full_url] = e


class _Transaction:
    def __init__(self, ctx: RequestContext, entries: list[Entry]) -> None:
        self.ctx = ctx
        self.entries = entries
        self.current: Entry | None = None
        self.mapping: dict[str, str] = {}
        self.conditional_refs: dict[str, str] = {}

    async def _guarded(self, e: Entry, work: Any) -> Any:
        self.current = e
        try:
            return await work
        except errors.FhirError as exc:
            raise entry_error(e, exc) from None

    async def run(self) -> list[Result]:
        ordered = sorted(self.entries, key=lambda e: (PHASES[e.method], e.index))
        for e in ordered:
            await self._guarded(e, self._resolve(e))
        self._check_targets()
        for e in ordered:
            if e.method in ("POST", "PUT") and isinstance(e.resource, dict):
                await self._guarded(e, self._rewrite(e))
        results: dict[int, Result] = {}
        for e in ordered:
            results[e.index] = await self._guarded(e, self._execute(e))
        self.current = None
        return [results[e.index] for e in self.entries]

    async def _criteria_matches(self, e: Entry, query: str, limit: int = 2) -> tuple[Any, Any]:
        c = conditional.criteria(self.ctx, e.type, query)  # type: ignore[arg-type]
        return c, await conditional.matches(self.ctx, c, limit)

    async def _resolve(self, e: Entry) -> None:
        """Decide the resource each write entry targets, before anything is written."""
        if e.method == "POST":
            if e.if_none_exist:
                c, found = await self._criteria_matches(e, e.if_none_exist)
                if len(found) > 1:
                    raise conditional.too_many(c, "Conditional create (ifNoneExist)")
                e.existing = found[0] if found else None
            e.id = e.existing.id if e.existing else interactions.new_id()
        elif e.method in ("PUT", "PATCH") and e.id is None:
            c, found = await self._criteria_matches(e, e.query)
            if e.method == "PUT":
                e.id = conditional.update_target(c, found, e.resource)
            else:
                e.id = conditional.patch_target(c, found)
        elif e.method == "DELETE" and e.id is None:
            c = conditional.criteria(self.ctx, e.type, e.query)  # type: ignore[arg-type]
            e.deletes = await conditional.delete_targets(self.ctx, c)
        if e.full_url and e.method in ("POST", "PUT") and e.id is not None:
            self.mapping[e.full_url] = f"{e.type}/{e.id}"

    def _check_targets(self) -> None:
        seen: dict[tuple[str, str], Entry] = {}
        for e in sorted(self.entries, key=lambda x: x.index):
            if e.method in ("GET", "HEAD"):
                continue
            ids = [v.id for v in e.deletes] if e.method == "DELETE" and e.id is None else [e.id]
            for id_ in ids:
                key = (str(e.type), str(id_))
                if key in seen:
                    raise entry_error(e, errors.bad_request(
                        f"{key[0]}/{key[1]} is also the target of Bundle.entry[{seen[key].index}]"
                        "; a transaction may change a resource only once",
                        "request.url",
                    ))
                seen[key] = e

    async def _rewrite(self, e: Entry) -> None:
        pending: list[tuple[Any, Any, str]] = []
        _walk(e.resource, self.mapping, pending)
        for container, key, value in pending:
            container[key] = await self._resolve_reference(e, value)

    async def _resolve_reference(self, e: Entry, value: str) -> str:
        """A conditional reference's one match, or the error for an unknown urn."""
        if value.startswith("urn:"):
            raise errors.bad_request(
                f"The reference {value} matches no fullUrl in this transaction", "resource"
            )
        if value in self.conditional_refs:
            return self.conditional_refs[value]
        type_, _, query = value.partition("?")
        c = conditional.criteria(self.ctx, type_, query)
        found = await conditional.matches(self.ctx, c)
        if len(found) != 1:
            raise errors.precondition_failed(
                f"The conditional reference {value} matches "
                f"{'no' if not found else 'more than one'} {type_}; it must match exactly one",
                "resource",
            )
        resolved = f"{type_}/{found[0].id}"
        self.conditional_refs[value] = resolved
        return resolved

    async def _execute(self, e: Entry) -> Result:
        scope = self.ctx.audit
        if scope is None:
            return await self._execute_entry(self.ctx, e)
        entry_scope = scope.entry(shared=True)
        subtype = request_subtype(e.method, e.parts)
        if subtype in QUERIED:
            entry_scope.query = e.url
        result = await self._execute_entry(replace(self.ctx, audit=entry_scope), e)
        await entry_scope.finish(subtype, result.status, tx=self.ctx.tx)
        return result

    async def _execute_entry(self, ctx: RequestContext, e: Entry) -> Result:
        type_ = str(e.type)
        if e.method == "DELETE":
            return await _delete(ctx, e)
        if e.method == "POST":
            if e.existing is not None:
                return Result(200, e.existing, write=WriteResult(e.existing, False, False))
            write = await interactions.create(ctx, type_, e.resource, e.id)
            return Result(201, write.version, write=write)
        if e.method == "PUT":
            resource = {**e.resource, "id": e.id} if e.resource.get("id") is None else e.resource
            write = await interactions.update(ctx, type_, str(e.id), resource, e.if_match)
            return Result(201 if write.created else 200, write.version, write=write)
        if e.method == "PATCH":
            kind, document = patch_document(e.resource)
            write = await interactions.patch(ctx, type_, str(e.id), kind, document, e.if_match)
            return Result(200, write.version, write=write)
        view = replace(ctx, store=TransactionView(ctx.store, ctx.tx))  # type: ignore[arg-type]
        return await _get(view, e)


# --- entries shared by batch and transaction -----------------------------------------------


def patch_document(resource: Any) -> tuple[str, Any]:
    """A PATCH entry's body: a Parameters resource (FHIRPath Patch) or a Binary holding a JSON
    Patch (http.html#patch)."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        return "fhirpath-patch", resource
    if (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Binary"
        and str(resource.get("contentType", "")).split(";")[0].strip() == JSON_PATCH
    ):
        try:
            data = base64.b64decode(resource.get("data", ""), validate=True)
            return "json-patch", orjson.loads(data)
        except (binascii.Error, ValueError, TypeError):
            raise errors.bad_request(
                "The Binary's data is not a base64 JSON Patch", "resource"
            ) from None
    raise errors.bad_request(
        f"A PATCH entry takes a Parameters resource (FHIRPath Patch) or a Binary of {JSON_PATCH}",
        "resource",
    )


async def _delete(ctx: RequestContext, e: Entry) -> Result:
    type_ = str(e.type)
    if e.id is not None:
        write = await interactions.delete(ctx, type_, e.id, e.if_match)
        if write is None:
            return Result(204, outcome=errors.information_outcome(
                f"{type_}/{e.id} did not exist or was already deleted; nothing changed"))
        return Result(204, write.version, write=write, deleted=1)
    targets = e.deletes if ctx.tx is not None else None
    if targets is None:
        results = await conditional.delete(ctx, type_, e.query)
    else:
        results = [r for v in targets if (r := await interactions.delete(ctx, type_, v.id))]
    text = f"Deleted {len(results)} {type_} resource(s) matching {e.query}"
    last = results[0].version if len(results) == 1 else None
    return Result(204, last, outcome=errors.information_outcome(text),
                  write=results[0] if len(results) == 1 else None, deleted=len(results))


async def _get(ctx: RequestContext, e: Entry) -> Result:
    parts, params = e.parts, parse_qsl(e.query, keep_blank_values=True)
    head = e.method == "HEAD"
    multi: dict[str, list[str]] = {}
    for k, v in params:
        multi.setdefault(k, []).append(v)
    n = len(parts)
    if n == 2 and parts[1] not in ("_history", "_search"):
        v = await interactions.read(ctx, parts[0], parts[1])
        return Result(200, v, resource=None if head else v.resource())
    if n == 4 and parts[2] == "_history":
        v = await interactions.vread(ctx, parts[0], parts[1], parts[3])
        return Result(200, v, resource=None if head else v.resource())
    if parts == ["metadata"]:
        document = capability_statement(ctx)
    elif parts == ["_history"] or (n == 2 and parts[1] == "_history"):
        document = await interactions.history(ctx, parts[0] if n == 2 else None, None, multi)
    elif n == 3 and parts[2] == "_history":
        document = await interactions.history(ctx, parts[0], parts[1], multi)
    elif n == 0:
        document = await execute.search(ctx, execute.system_scope(), params, False)
    elif n == 1:
        document = await execute.search(ctx, execute.type_scope(parts[0]), params, False)
    else:
        raise errors.bad_request(f"{e.method} {e.url} is not a supported request", "request.url")
    return Result(200, resource=None if head else document)


async def batch_entry(ctx: RequestContext, index: int, raw: Any) -> Result:
    """One batch entry on its own: whatever happens, a Result with its status, and its own
    audit record (an entry whose record cannot be stored fails with 503)."""
    scope = None if ctx.audit is None else ctx.audit.entry(shared=False)
    if scope is not None:
        ctx = replace(ctx, audit=scope)
    e: Entry | None = None
    failure: errors.FhirError | None = None
    try:
        e = parse_entry(ctx, index, raw)
        result = await _batch_execute(ctx, e)
    except errors.FhirError as exc:
        failure = exc if e is None else entry_error(e, exc)
    except StorageError as exc:
        assert e is not None
        failure = storage_error(e, exc)
    if failure is not None:
        result = Result(failure.status, outcome=failure.outcome())
    if scope is None:
        return result
    subtype = _raw_subtype(ctx, raw) if e is None else request_subtype(e.method, e.parts)
    if subtype in QUERIED and e is not None:
        scope.query = e.url
    try:
        await scope.finish(subtype, result.status, str(failure) if failure else None)
    except errors.FhirError as exc:
        return Result(exc.status, outcome=exc.outcome())
    return result


def _raw_subtype(ctx: RequestContext, raw: Any) -> str:
    """What an entry that could not be parsed asked for, as far as its request tells."""
    request = raw.get("request") if isinstance(raw, dict) else None
    method = request.get("method") if isinstance(request, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    try:
        parts = _split_url(ctx, url)[0] if isinstance(url, str) else []
    except errors.FhirError:
        parts = []
    return request_subtype(method if isinstance(method, str) else "GET", parts)


async def _batch_execute(ctx: RequestContext, e: Entry) -> Result:
    type_ = str(e.type)
    if e.method == "POST":
        if e.if_none_exist:
            write = await conditional.create(ctx, type_, e.resource, e.if_none_exist)
        else:
            write = await interactions.create(ctx, type_, e.resource)
        status = 201 if write.created else 200
        return Result(status, write.version, write=write)
    if e.method == "PUT":
        if e.id is None:
            write = await conditional.update(ctx, type_, e.query, e.resource, e.if_match)
        else:
            write = await interactions.update(ctx, type_, e.id, e.resource, e.if_match)
        return Result(201 if write.created else 200, write.version, write=write)
    if e.method == "PATCH":
        kind, document = patch_document(e.resource)
        if e.id is None:
            write = await conditional.patch(ctx, type_, e.query, kind, document, e.if_match)
        else:
            write = await interactions.patch(ctx, type_, e.id, kind, document, e.if_match)
        return Result(200, write.version, write=write)
    if e.method == "DELETE":
        return await _delete(ctx, e)
    return await _get(ctx, e)


# --- reference rewriting -------------------------------------------------------------------


def _walk(node: Any, mapping: dict[str, str], pending: list[tuple[Any, Any, str]]) -> None:
    """Rewrite references to entries in place; collect the ones needing a search (conditional
    references) or failing (unknown urn) in `pending` as (container, key, value)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key == "reference":
                    target = mapping.get(value)
                    if target is not None:
                        node[key] = target
                    elif value.startswith(("urn:uuid:", "urn:oid:")) or _CONDITIONAL_REF.fullmatch(
                        value
                    ):
                        pending.append((node, key, value))
                elif key == "div" and "urn:" in value:
                    node[key] = _URN.sub(lambda m: mapping.get(m.group(0), m.group(0)), value)
                elif key not in _NOT_REWRITTEN and value.startswith("urn:") and value in mapping:
                    node[key] = mapping[value]
            elif isinstance(value, dict | list):
                _walk(value, mapping, pending)
    elif isinstance(node, list):
        for position, item in enumerate(node):
            if isinstance(item, str):
                if item.startswith("urn:") and item in mapping:
                    node[position] = mapping[item]
            elif isinstance(item, dict | list):
                _walk(item, mapping, pending)


# --- the store as a transaction sees it ----------------------------------------------------


class TransactionView(DelegatingStore):
    """Reads and searches through a transaction, so GET entries see the bundle's own writes.
    History and vread see committed data."""

    def __init__(self, store: Store, tx: Transaction) -> None:
        super().__init__(store)
        self._tx = tx

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def read(self, type_: str, id_: str) -> Version | None:
        return await self._tx.current(type_, id_)

    async def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        found = [await self._tx.current(t, i) for t, i in refs]
        return [v for v in found if v is not None and not v.deleted]

    async def search(self, query: SearchQuery) -> list[Match]:
        return await self._tx.search(query)

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        return await self._tx.count(type_, where, limit)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        yield self._tx
