"""The FHIR REST routes: HTTP in, interaction call, HTTP out. No FHIR logic lives here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from fhir_server import errors, interactions
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
from fhir_server.capabilities import capability_statement
from fhir_server.context import RequestContext
from fhir_server.fhirtime import http_date, parse_http_date, parse_instant
from fhir_server.shaping import check_summary, shape
from fhir_server.store.base import Version

router = APIRouter(prefix="/fhir")


def context(request: Request) -> RequestContext:
    state = request.app.state
    base = state.settings.base_url or f"{str(request.base_url).rstrip('/')}/fhir"
    return RequestContext(state.store, state.settings, base.rstrip("/"))


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def _prefer(request: Request, key: str) -> str | None:
    for part in request.headers.get("prefer", "").split(";"):
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
    if summary or elements:
        check_summary(summary)
        if data.get("resourceType") != "Bundle":
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


def write_response(request: Request, ctx: RequestContext, result: interactions.WriteResult,
                   status: int) -> Response:
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


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    return document_response(request, capability_statement(context(request)))


@router.get("/_history")
async def history_system(request: Request) -> Response:
    ctx = context(request)
    return document_response(request, await interactions.history(ctx, None, None, _params(request)))


@router.get("/{rtype}/_history")
async def history_type(request: Request, rtype: str) -> Response:
    interactions.check_type(rtype)
    ctx = context(request)
    bundle = await interactions.history(ctx, rtype, None, _params(request))
    return document_response(request, bundle)


@router.get("/{rtype}/{rid}/_history")
async def history_instance(request: Request, rtype: str, rid: str) -> Response:
    interactions.check_type(rtype)
    ctx = context(request)
    bundle = await interactions.history(ctx, rtype, rid, _params(request))
    return document_response(request, bundle)


@router.get("/{rtype}/{rid}/_history/{vid}")
async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    interactions.check_type(rtype)
    v = await interactions.vread(context(request), rtype, rid, vid)
    return version_response(request, v, headers=_version_headers(v))


@router.get("/{rtype}/{rid}")
async def read(request: Request, rtype: str, rid: str) -> Response:
    interactions.check_type(rtype)
    v = await interactions.read(context(request), rtype, rid)
    headers = _version_headers(v)
    if _not_modified(request, v):
        return Response(status_code=304, headers=headers)
    return version_response(request, v, headers=headers)


@router.post("/{rtype}")
async def create(request: Request, rtype: str) -> Response:
    interactions.check_type(rtype)
    ctx = context(request)
    result = await interactions.create(ctx, rtype, await _resource_body(request, ctx))
    return write_response(request, ctx, result, 201)


@router.put("/{rtype}/{rid}")
async def update(request: Request, rtype: str, rid: str) -> Response:
    interactions.check_type(rtype)
    ctx = context(request)
    if_match = interactions.parse_if_match(request.headers.get("if-match"))
    resource = await _resource_body(request, ctx)
    result = await interactions.update(ctx, rtype, rid, resource, if_match)
    return write_response(request, ctx, result, 201 if result.created else 200)


@router.patch("/{rtype}/{rid}")
async def patch(request: Request, rtype: str, rid: str) -> Response:
    interactions.check_type(rtype)
    ctx = context(request)
    if_match = interactions.parse_if_match(request.headers.get("if-match"))
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
    kind = "json-patch" if fmt == JSON_PATCH else "fhirpath-patch"
    result = await interactions.patch(ctx, rtype, rid, kind, document, if_match)
    return write_response(request, ctx, result, 200)


@router.delete("/{rtype}/{rid}")
async def delete(request: Request, rtype: str, rid: str) -> Response:
    interactions.check_type(rtype)
    ctx = context(request)
    if_match = interactions.parse_if_match(request.headers.get("if-match"))
    result = await interactions.delete(ctx, rtype, rid, if_match)
    headers = _version_headers(result.version) if result else {}
    if _prefer(request, "return") == "minimal":
        return Response(status_code=204, headers=headers)
    text = (f"Deleted {rtype}/{rid} (version {result.version.version})" if result
            else f"{rtype}/{rid} did not exist or was already deleted; nothing changed")
    return document_response(request, errors.information_outcome(text), 200, headers)
