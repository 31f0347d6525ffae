"""Every REST request leaves its AuditEvent: the route wrapper that makes it so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from fhir_server import errors
from fhir_server.api.security import authenticate
from fhir_server.audit.events import QUERIED, Agent, request_subtype
from fhir_server.audit.trail import AuditScope, AuditTrail

Handler = Callable[[Request], Awaitable[Response]]


def agent_of(request: Request) -> Agent:
    """Who sent the request. Until authentication exists everyone is anonymous; the network
    address is the peer's."""
    client = request.client
    return Agent(address=client.host if client else None)


def _relative_path(request: Request) -> str:
    path = request.url.path
    return path.split("/fhir", 1)[1].lstrip("/") if "/fhir" in path else path.lstrip("/")


def request_query(request: Request) -> str:
    """The request below the base URL (`Observation?code=...`), as the audit record keeps it."""
    path, query = _relative_path(request), request.url.query
    return f"{path}?{query}" if query else path


def begin(request: Request) -> AuditScope | None:
    trail: AuditTrail | None = request.app.state.audit
    if trail is None:
        return None
    scope = trail.scope(agent_of(request))
    request.state.audit = scope
    return scope


def audited(subtype: str, handler: Handler) -> Handler:
    """`handler` for an authenticated caller, recording its interaction (refusals included):
    writes in their own transaction (see audit.trail), everything else here, before the
    response leaves. If the record cannot be stored, the answer is a 503 instead."""

    async def audited_handler(request: Request) -> Response:
        scope = begin(request)
        if scope is None:
            await authenticate(request)
            return await handler(request)
        if subtype in QUERIED:
            scope.query = request_query(request)
        try:
            await authenticate(request)
            response = await handler(request)
        except errors.FhirError as exc:
            params = request.path_params
            if "rid" in params and "rtype" in params:
                scope.target(f"{params['rtype']}/{params['rid']}")
            await scope.finish(subtype, exc.status, str(exc))
            raise
        except Exception:
            await scope.finish(subtype, 500, "Internal server error")
            raise
        await scope.finish(subtype, response.status_code)
        return response

    return audited_handler


async def record_unrouted(request: Request, error: errors.FhirError) -> errors.FhirError:
    """A request no route took (unknown path, method not allowed) is recorded too; the error
    to answer with (503 when the record cannot be stored)."""
    if getattr(request.state, "audit", None) is not None:
        return error  # a route's wrapper has recorded it
    scope = begin(request)
    if scope is None:
        return error
    parts = [p for p in _relative_path(request).split("/") if p]
    scope.query = request_query(request)
    try:
        await scope.finish(request_subtype(request.method, parts), error.status, str(error))
    except errors.FhirError as failure:
        return failure
    return error
