"""Authentication of FHIR requests: the principal behind each one, and what it may do."""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request

from fhir_server.audit.events import Agent
from fhir_server.auth.access import ANONYMOUS, Access, Principal
from fhir_server.auth.service import BREAK_GLASS_HEADER, Security
from fhir_server.context import RequestContext


def agent_for(principal: Principal, address: str | None) -> Agent:
    """How the audit trail names the principal."""
    if principal is ANONYMOUS:
        return Agent(address=address)
    roles = (principal.role,) if principal.role else ("client",)
    return Agent(
        principal.subject, principal.subject, principal.resource, roles, address,
        principal.break_glass,
    )


async def authenticate(request: Request) -> Principal:
    """The request's principal (401 without a valid token when authentication is required);
    the request's audit record names it from here on."""
    security: Security = request.app.state.security
    principal = await security.principal(
        request.headers.get("authorization"), request.headers.get(BREAK_GLASS_HEADER)
    )
    request.state.principal = principal
    scope = getattr(request.state, "audit", None)
    if scope is not None:
        scope.agent = agent_for(principal, scope.agent.address)
    return principal


def with_access(request: Request, ctx: RequestContext) -> RequestContext:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    if principal.scopes is None:
        return ctx
    return replace(ctx, access=Access(ctx, principal))
