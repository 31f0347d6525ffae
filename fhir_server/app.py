"""The ASGI application: opens the store, seeds it, mounts the routes, renders every error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from fhir_server import errors
from fhir_server.api.audit import record_unrouted
from fhir_server.api.auth_routes import auth_routes
from fhir_server.api.formats import JSON, negotiate, render
from fhir_server.api.routes import routes
from fhir_server.audit.trail import AuditTrail
from fhir_server.auth.service import Security, auth_required
from fhir_server.config import Settings
from fhir_server.loader import load_paths
from fhir_server.search.registry import Registry, default_registry
from fhir_server.search.reindex import load_active
from fhir_server.store import build_store
from fhir_server.store.base import Store
from fhir_server.validation.conformance import Conformance

log = logging.getLogger("fhir_server")

# Starlette's own errors (no route, wrong method) mapped to OperationOutcome issue codes.
_HTTP_CODES = {404: "not-found", 405: "not-supported"}


def _outcome_response(request: Request, error: errors.FhirError) -> Response:
    try:
        fmt = negotiate(request)
    except errors.FhirError:
        fmt = JSON
    return Response(render(error.outcome(), fmt), error.status, error.headers, media_type=fmt)


async def _fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.FhirError)
    return _outcome_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        text = f"No FHIR endpoint at {request.url.path}"
    elif status == 405:
        text = f"{request.method} is not supported on {request.url.path}"
    else:
        text = str(exc.detail or HTTPStatus(status).phrase)
    issue = errors.Issue(_HTTP_CODES.get(status, "processing"), text)
    error = errors.FhirError([issue], status, dict(exc.headers or {}))
    return _outcome_response(request, await record_unrouted(request, error))


async def _validation_error(request: Request, exc: Exception) -> Response:
    return _outcome_response(request, errors.bad_request(f"Malformed request: {exc}"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("Unexpected error on %s %s", request.method, request.url.path)
    issue = errors.Issue("exception", "Internal server error; it has been logged")
    return _outcome_response(request, errors.FhirError([issue], 500))


async def seed(
    store: Store, settings: Settings, registry: Registry, conformance: Conformance | None = None,
    audit: AuditTrail | None = None,
) -> None:
    if settings.seed and settings.seed_dir.is_dir() and await store.is_empty():
        summary = await load_paths(
            store, settings, registry, [settings.seed_dir], conformance=conformance,
            audit=audit, agent="fhir-server seed",
        )
        log.info("Seeded the empty database from %s: %s", settings.seed_dir, summary)


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The server. `store` may be given already built (tests); it is opened and closed here."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = store or build_store(settings)
        app.state.security = Security(settings, app.state.store, auth_required(settings))
        app.state.audit = AuditTrail(
            app.state.store, app.state.indexing, settings.audit_source, settings.audit
        )
        await app.state.store.open()
        try:
            await load_active(app.state.store, (app.state.registry, app.state.indexing))
            await app.state.security.grants.purge()  # codes and tokens that expired meanwhile
            await seed(app.state.store, settings, app.state.registry, app.state.conformance,
                       app.state.audit)
            yield
        finally:
            await app.state.store.close()

    app = FastAPI(
        title="fhir-server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.audit = None  # the trail, once the store is open
    # Searchable parameters, and the ones writes index (ahead of them during a reindex).
    app.state.registry = default_registry()
    app.state.indexing = default_registry()
    app.state.conformance = Conformance.load(settings)
    app.router.routes.extend(auth_routes)  # before /fhir/{rtype}/{rid} could take them
    app.router.routes.extend(routes)
    app.add_exception_handler(errors.FhirError, _fhir_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    return app
