"""The FHIR REST routes: HTTP in, interaction call, HTTP out. No FHIR logic lives here.

Plain Starlette routes rather than FastAPI endpoints: every handler takes the request only, so
FastAPI's parameter machinery would add cost to each request (about 15 µs of a 110 µs read)
and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_server import bundles, conditional, errors, interactions, operations
from fhir_server.api.audit import audited
from fhir_server.api.formats import (
    JSON,
    JSON_PATCH,
    XML,
    body_format,
    is_pretty,
    negotiate,
    parse,
    read_body,
    render,
)
from fhir_server.api.security import with_access
from fhir_server.capabilities import capability_statement
from fhir_server.context import RequestContext
from fhir_server.fhirtime import http_date, parse_http_date, parse_instant
from fhir_server.search import execute, reindex
from fhir_server.shaping import check_summary, shape
from fhir_server.store.base import Version

FORM = "application/x-www-form-urlencoded"


def base_url(request: Request) -> str:
    """The FHIR base URL as this client reached it (or as configured)."""
    configured = request.app.state.settings.base_url
    if configured:
        return configured.rstrip("/")
    scope = request.scope
    host = request.headers.get("host")
    if host is None:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}/fhir"


def context(request: Request) -> RequestContext:
    state = request.app.state
    ctx = RequestContext(
        state.store, state.settings, state.registry, base_url(request),
        conformance=state.conformance, indexing=state.indexing,
        audit=getattr(request.state, "audit", None),
    )
    return with_access(request, ctx)


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def _prefer(request: Request, key: str) -> str | None:
    for part in request.headers.get("prefer", "").replace(",", ";").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == key:
            return value.strip().strip('"')
    return None


def _version_headers(v: Version, base: str | None = None) -> dict[str, str]:
    headers = {"ETag": f'W/"{v.version}"', "Last-Modified": http_date(v.last_updated)}
    if base is not None:
        headers["Location"] = f"{base}/{v.type}/{v.id}/_history/{v.version}"
    return headers


def document_response(
    request: Request, data: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    fmt = negotiate(request)
    summary = request.query_params.get("_summary")
    elements = request.query_params.get("_elements")
    if (summary or elements) and data.get("resourceType") != "Bundle":
        check_summary(summary)
        data = shape(data, summary, elements)
    return Response(render(data, fmt, is_pretty(request)), status, headers, media_type=fmt)


def version_response(
    request: Request, v: Version, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    params = request.query_params
    plain = not params or not any(
        k in params for k in ("_format", "_pretty", "_summary", "_elements")
    )
    if plain and negotiate(request) == JSON:
        # Hot path: the stored bytes are the response; no parsing, no re-serialising.
        return Response(v.body, status, headers, media_type=JSON)
    return document_response(request, v.resource(), status, headers)


def _not_modified(request: Request, v: Version) -> bool:
    etag = request.headers.get("if-none-match")
    if etag is not None:
        return etag.strip().removeprefix("W/") == f'"{v.version}"'
    since = request.headers.get("if-modified-since")
    if since is not None and (moment := parse_http_date(since)) is not None:
        return parse_instant(v.last_updated).replace(microsecond=0) <= moment
    return False


def write_response(
    request: Request, ctx: RequestContext, result: interactions.WriteResult, status: int
) -> Response:
    headers = _version_headers(result.version, ctx.base_url)
    preference = _prefer(request, "return")
    if preference == "minimal":
        return Response(status_code=status, headers=headers)
    if preference == "OperationOutcome":
        v = result.version
        verb = "Created" if result.created else "Updated" if result.changed else "Unchanged"
        text = f"{verb} {v.type}/{v.id} (version {v.version})"
        return document_response(request, errors.information_outcome(text), status, headers)
    return version_response(request, result.version, status, headers)


async def _resource_body(request: Request, ctx: RequestContext) -> Any:
    fmt = body_format(request)
    return parse(await read_body(request, ctx.settings.max_body_bytes), fmt)


def _type(request: Request) -> str:
    rtype: str = request.path_params["rtype"]
    interactions.check_type(rtype)
    return rtype


def _writer(request: Request) -> tuple[RequestContext, str, int | None]:
    """Context, type and If-Match of a write; refuses an unacceptable Accept before writing."""
    negotiate(request)
    rtype = _type(request)
    return context(request), rtype, interactions.parse_if_match(request.headers.get("if-match"))


async def metadata(request: Request) -> Response:
    return document_response(request, capability_statement(context(request)))


async def history_system(request: Request) -> Response:
    bundle = await interactions.history(context(request), None, None, _params(request))
    return document_response(request, bundle)


async def history_type(request: Request) -> Response:
    rtype = _type(request)
    bundle = await interactions.history(context(request), rtype, None, _params(request))
    return document_response(request, bundle)


async def history_instance(request: Request) -> Response:
    rtype = _type(request)
    rid = request.path_params["rid"]
    bundle = await interactions.history(context(request), rtype, rid, _params(request))
    return document_response(request, bundle)


async def vread(request: Request) -> Response:
    rtype = _type(request)
    p = request.path_params
    v = await interactions.vread(context(request), rtype, p["rid"], p["vid"])
    return version_response(request, v, headers=_version_headers(v))


async def read(request: Request) -> Response:
    rtype = _type(request)
    state = request.app.state
    # A read needs no base URL: a light context keeps the hot path short.
    ctx = with_access(request, RequestContext(
        state.store, state.settings, state.registry, "", audit=getattr(request.state, "audit", None)
    ))
    v = await interactions.read(ctx, rtype, request.path_params["rid"])
    headers = _version_headers(v)
    if _not_modified(request, v):
        return Response(status_code=304, headers=headers)
    return version_response(request, v, headers=headers)


async def create(request: Request) -> Response:
    ctx, rtype, _ = _writer(request)
    resource = await _resource_body(request, ctx)
    if_none_exist = request.headers.get("if-none-exist")
    if if_none_exist:
        result = await conditional.create(ctx, rtype, resource, if_none_exist)
        return write_response(request, ctx, result, 201 if result.created else 200)
    result = await interactions.create(ctx, rtype, resource)
    return write_response(request, ctx, result, 201)


async def process_bundle(request: Request) -> Response:
    """`POST [base]`: a batch or transaction Bundle."""
    negotiate(request)
    ctx = context(request)
    bundle = await _resource_body(request, ctx)
    response = await bundles.process_bundle(ctx, bundle, _prefer(request, "return"))
    return document_response(request, response)


def _conditional(request: Request) -> None:
    """PUT/PATCH/DELETE on a type are conditional interactions: they need search criteria.
    Without any (or on /metadata, /_history, ...) the method is not allowed there: 405."""
    rtype = request.path_params["rtype"]
    criteria = [k for k in request.query_params if k not in ("_format", "_pretty")]
    if not criteria or rtype == "metadata" or rtype.startswith("_"):
        raise errors.method_not_allowed(
            f"{request.method} is not supported on {request.url.path} without search criteria "
            f"(conditional {request.method}: {request.url.path}?identifier=system|value)"
        )


async def conditional_update(request: Request) -> Response:
    _conditional(request)
    ctx, rtype, if_match = _writer(request)
    resource = await _resource_body(request, ctx)
    result = await conditional.update(ctx, rtype, request.url.query, resource, if_match)
    return write_response(request, ctx, result, 201 if result.created else 200)


async def _patch_document(request: Request, ctx: RequestContext) -> tuple[str, Any]:
    fmt = body_format(request, (JSON_PATCH, JSON, XML))
    body = await read_body(request, ctx.settings.max_body_bytes)
    document = parse(body, XML if fmt == XML else JSON)
    if fmt != JSON_PATCH and (
        not isinstance(document, dict) or document.get("resourceType") != "Parameters"
    ):
        raise errors.bad_request(
            "A FHIR patch body must be a Parameters resource (FHIRPath Patch); send JSON Patch "
            f"as {JSON_PATCH}"
        )
    return ("json-patch" if fmt == JSON_PATCH else "fhirpath-patch"), document


async def conditional_patch(request: Request) -> Response:
    _conditional(request)
    ctx, rtype, if_match = _writer(request)
    kind, document = await _patch_document(request, ctx)
    query = request.url.query
    result = await conditional.patch(ctx, rtype, query, kind, document, if_match)
    return write_response(request, ctx, result, 200)


async def conditional_delete(request: Request) -> Response:
    _conditional(request)
    ctx, rtype, _ = _writer(request)
    results = await conditional.delete(ctx, rtype, request.url.query)
    headers = _version_headers(results[0].version) if len(results) == 1 else {}
    if _prefer(request, "return") == "minimal":
        return Response(status_code=204, headers=headers)
    if results:
        names = ", ".join(f"{r.version.type}/{r.version.id}" for r in results[:20])
        more = f" and {len(results) - 20} more" if len(results) > 20 else ""
        text = f"Deleted {len(results)} resource(s): {names}{more}"
    else:
        text = f"No {rtype} matches the criteria; nothing changed"
    return document_response(request, errors.information_outcome(text), 200, headers)


async def update(request: Request) -> Response:
    ctx, rtype, if_match = _writer(request)
    resource = await _resource_body(request, ctx)
    result = await interactions.update(ctx, rtype, request.path_params["rid"], resource, if_match)
    return write_response(request, ctx, result, 201 if result.created else 200)


async def patch(request: Request) -> Response:
    ctx, rtype, if_match = _writer(request)
    kind, document = await _patch_document(request, ctx)
    rid = request.path_params["rid"]
    result = await interactions.patch(ctx, rtype, rid, kind, document, if_match)
    return write_response(request, ctx, result, 200)


async def delete(request: Request) -> Response:
    ctx, rtype, if_match = _writer(request)
    rid = request.path_params["rid"]
    result = await interactions.delete(ctx, rtype, rid, if_match)
    headers = _version_headers(result.version) if result else {}
    if _prefer(request, "return") == "minimal":
        return Response(status_code=204, headers=headers)
    text = (
        f"Deleted {rtype}/{rid} (version {result.version.version})"
        if result
        else f"{rtype}/{rid} did not exist or was already deleted; nothing changed"
    )
    return document_response(request, errors.information_outcome(text), 200, headers)


async def _search_params(request: Request) -> list[tuple[str, str]]:
    """Query parameters, plus the form body of `POST _search` (search.html#search)."""
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        content_type = request.headers.get("content-type", FORM)
        if not content_type.lower().startswith(FORM):
            raise errors.unsupported_media_type(
                f"POST _search takes a form body ({FORM}), not '{content_type}'"
            )
        limit = request.app.state.settings.max_body_bytes
        body = await read_body(request, limit)
        try:
            params += parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise errors.bad_request("The form body is not UTF-8") from None
    return params


async def _run_search(request: Request, scope: execute.Scope) -> Response:
    raw = negotiate(request) == JSON
    ctx = context(request)
    strict = _prefer(request, "handling") == "strict"
    params = await _search_params(request)
    if ctx.audit is not None:
        ctx.audit.query = f"{scope.path}?{urlencode(params)}" if params else scope.path
    bundle = await execute.search(ctx, scope, params, strict, raw)
    return document_response(request, bundle)


async def reindex_type(request: Request) -> Response:
    """`POST [type]/$reindex`: backfill custom SearchParameters, then switch them on."""
    negotiate(request)
    rtype = _type(request)
    ctx = context(request)
    if ctx.access is not None:
        # Administrators and system clients; it tells how many resources there are, so only
        # to a caller who may search all of the type.
        await ctx.access.require("SearchParameter", "u")
        if await ctx.access.limit(rtype) is not None:
            raise errors.forbidden(f"Access denied: $reindex needs access to every {rtype}")
    result = await reindex.reindex(ctx, request.app.state.indexing, rtype)
    active = ", ".join(result.activated) or "none"
    text = (f"Reindexed {result.reindexed} {rtype} resources; custom parameters searchable "
            f"now: {active}")
    return document_response(request, errors.information_outcome(text))


async def _operation_params(request: Request) -> operations.Params:
    """Query parameters plus, for POST, the body (a Parameters resource or a bare resource)."""
    body: Any = None
    if request.method == "POST":
        raw = await read_body(request, request.app.state.settings.max_body_bytes)
        if raw.strip():
            body = parse(raw, body_format(request))
    return operations.parameters(list(request.query_params.multi_items()), body)


async def validate_operation(request: Request) -> Response:
    negotiate(request)
    rtype = _type(request)
    params = await _operation_params(request)
    outcome = await operations.validate(context(request), rtype, request.path_params.get("rid"),
                                        params)
    return document_response(request, outcome)


async def expand_operation(request: Request) -> Response:
    negotiate(request)
    params = await _operation_params(request)
    result = await operations.expand(context(request), request.path_params.get("rid"), params)
    return document_response(request, result)


def _validate_code_route(type_: str) -> Handler:
    async def handler(request: Request) -> Response:
        negotiate(request)
        params = await _operation_params(request)
        result = await operations.validate_code(
            context(request), type_, request.path_params.get("rid"), params
        )
        return document_response(request, result)

    return handler


async def lookup_operation(request: Request) -> Response:
    negotiate(request)
    params = await _operation_params(request)
    return document_response(request, await operations.lookup(context(request), params))


async def search_type(request: Request) -> Response:
    return await _run_search(request, execute.type_scope(_type(request)))


async def search_system(request: Request) -> Response:
    return await _run_search(request, execute.system_scope())


async def search_compartment(request: Request) -> Response:
    p = request.path_params
    owner = _type(request)
    ctype = p["ctype"]
    if ctype != "*":
        interactions.check_type(ctype)
    scope = execute.compartment_scope(owner, p["rid"], ctype)
    return await _run_search(request, scope)


Handler = Callable[[Request], Awaitable[Response]]


def _route(path: str, handler: Handler, subtype: str | None, *methods: str) -> Route:
    """A route; with `subtype` (the interaction it is), every request to it is audited."""
    endpoint = handler if subtype is None else audited(subtype, handler)
    return Route(f"/fhir{path}", endpoint, methods=list(methods))


_validate_code_value_set = _validate_code_route("ValueSet")
_validate_code_code_system = _validate_code_route("CodeSystem")

# Order matters: fixed segments (_history, _search) before the parameters they would match.
# Capabilities are not audited (BALP leaves them out: they disclose nothing about anyone).
routes = [
    _route("/metadata", metadata, None, "GET"),
    _route("", search_system, "search-system", "GET"),
    _route("", process_bundle, "batch", "POST"),
    _route("/", search_system, "search-system", "GET"),
    _route("/", process_bundle, "batch", "POST"),
    _route("/_search", search_system, "search-system", "POST"),
    _route("/_history", history_system, "history-system", "GET"),
    _route("/{rtype}/_history", history_type, "history-type", "GET"),
    _route("/{rtype}/_search", search_type, "search-type", "POST"),
    _route("/{rtype}/$reindex", reindex_type, "operation", "POST"),
    _route("/{rtype}/$validate", validate_operation, "operation", "POST"),
    _route("/{rtype}/{rid}/$validate", validate_operation, "operation", "POST"),
    _route("/ValueSet/$expand", expand_operation, "operation", "GET", "POST"),
    _route("/ValueSet/{rid}/$expand", expand_operation, "operation", "GET", "POST"),
    _route("/ValueSet/$validate-code", _validate_code_value_set, "operation", "GET", "POST"),
    _route("/ValueSet/{rid}/$validate-code", _validate_code_value_set, "operation", "GET",
           "POST"),
    _route("/CodeSystem/$validate-code", _validate_code_code_system, "operation", "GET",
           "POST"),
    _route("/CodeSystem/{rid}/$validate-code", _validate_code_code_system, "operation", "GET",
           "POST"),
    _route("/CodeSystem/$lookup", lookup_operation, "operation", "GET", "POST"),
    _route("/{rtype}/{rid}/_history", history_instance, "history-instance", "GET"),
    _route("/{rtype}/{rid}/_history/{vid}", vread, "vread", "GET"),
    _route("/{rtype}/{rid}/{ctype}", search_compartment, "search-type", "GET"),
    _route("/{rtype}/{rid}", read, "read", "GET"),
    _route("/{rtype}/{rid}", update, "update", "PUT"),
    _route("/{rtype}/{rid}", patch, "patch", "PATCH"),
    _route("/{rtype}/{rid}", delete, "delete", "DELETE"),
    _route("/{rtype}", search_type, "search-type", "GET"),
    _route("/{rtype}", create, "create", "POST"),
    _route("/{rtype}", conditional_update, "update", "PUT"),
    _route("/{rtype}", conditional_patch, "patch", "PATCH"),
    _route("/{rtype}", conditional_delete, "delete", "DELETE"),
]
