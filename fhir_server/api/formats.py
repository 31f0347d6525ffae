"""Content negotiation and (de)serialisation: FHIR JSON and FHIR XML, `_format`, `_pretty`."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from fhir_server import errors
from fhir_server.formats.xml import resource_to_xml, xml_to_resource

JSON = "application/fhir+json"
XML = "application/fhir+xml"
JSON_PATCH = "application/json-patch+json"

# Media types (and `_format` shorthands) we read and write, with the format each one means.
MEDIA_TYPES = {
    "json": JSON,
    "application/json": JSON,
    "application/fhir+json": JSON,
    "application/json+fhir": JSON,
    "text/json": JSON,
    "xml": XML,
    "text/xml": XML,
    "application/xml": XML,
    "application/fhir+xml": XML,
    "application/xml+fhir": XML,
}
_WILDCARDS = {"*/*": JSON, "application/*": JSON, "text/*": JSON}


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def negotiate(request: Request) -> str:
    """The response format: `_format` wins over Accept; JSON when the client does not care."""
    requested = request.query_params.get("_format")
    if requested:
        fmt = MEDIA_TYPES.get(_media_type(requested.replace(" ", "+")))
        if fmt is None:
            raise errors.not_acceptable(
                f"_format '{requested}' is not supported; use json or xml", "_format"
            )
        return fmt
    accept = request.headers.get("accept")
    if not accept:
        return JSON
    ranges: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, *params = part.split(";")
        quality = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranges.append((-quality, position, media.strip().lower()))
    for _, _, media in sorted(ranges):
        fmt = MEDIA_TYPES.get(media) or _WILDCARDS.get(media)
        if fmt is not None:
            return fmt
    raise errors.not_acceptable(
        f"None of the accepted types ({accept}) is available; this server speaks "
        f"{JSON} and {XML}"
    )


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


def render(data: dict[str, Any], fmt: str, pretty: bool = False) -> bytes:
    if fmt == XML:
        return resource_to_xml(data, pretty=pretty)
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 if pretty else 0)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.payload_too_large(f"The body ({declared} bytes) exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.payload_too_large(f"The body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def body_format(request: Request, allowed: tuple[str, ...] = (JSON, XML)) -> str:
    """The format of the request body from Content-Type (415 when not one of `allowed`)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return JSON
    media = _media_type(content_type)
    fmt = JSON_PATCH if media == JSON_PATCH else MEDIA_TYPES.get(media)
    if fmt is None or fmt not in allowed:
        raise errors.unsupported_media_type(
            f"Content-Type '{content_type}' is not supported here; use one of "
            f"{', '.join(allowed)}"
        )
    return fmt


def parse(body: bytes, fmt: str) -> Any:
    """Parse a request body; 400 when it is not well-formed."""
    if not body.strip():
        raise errors.bad_request("The request body is empty")
    if fmt == XML:
        return xml_to_resource(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"The body is not valid JSON: {exc}") from None
