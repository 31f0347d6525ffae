"""Shared fixtures: every behaviour test runs on both storage engines.

The Mongo engine runs against mongomock (through tests/mongomock_async.py) unless
FHIR_SERVER_TEST_MONGODB_URL points at a real MongoDB, in which case each test gets its own
database, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.store.base import Store

ENGINES = ["sqlite", "mongo"]
BASE = "http://testserver/fhir"
MONGODB_URL = os.environ.get("FHIR_SERVER_TEST_MONGODB_URL")


async def make_store(engine: str, tmp_path: Path) -> tuple[Store, object]:
    """A new, empty store of the given engine, and a handle to clean it up with."""
    if engine == "sqlite":
        from fhir_server.store.sqlite import SqliteStore

        return SqliteStore(tmp_path / "fhir.sqlite"), None
    from fhir_server.store.mongo import MongoStore

    db_name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    if MONGODB_URL:
        from pymongo import AsyncMongoClient

        client = AsyncMongoClient(MONGODB_URL)
    else:
        from tests.mongomock_async import AsyncMongoMockClient

        client = AsyncMongoMockClient()
    return MongoStore(client, db_name), (client, db_name)


async def drop_store(handle: object) -> None:
    if handle is None or not MONGODB_URL:
        return
    client, db_name = handle  # type: ignore[misc]
    await client.drop_database(db_name)
    await client.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store(engine: str, tmp_path: Path) -> AsyncIterator[Store]:
    s, handle = await make_store(engine, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        await drop_store(handle)


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, seed=False, **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture
async def client(
    engine: str, tmp_path: Path, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the whole app, once per storage engine."""
    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http
    await drop_store(handle)


def without_audit(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bundle entries other than AuditEvents: the audit trail records every request, so
    "nothing was written" means no data besides those records."""
    return [e for e in entries if "/AuditEvent/" not in e.get("fullUrl", "")]


async def data_history(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """System history without the audit trail's own records."""
    response = await client.get("/_history", params={"_count": 1000})
    assert response.status_code == 200, response.text
    return without_audit(response.json().get("entry", []))


async def audit_events(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    """The stored AuditEvents (matching `params`), in the order they were recorded."""
    query = {"_sort": "_lastUpdated", "_count": "1000", **params}
    response = await client.get("/AuditEvent", params=query)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]
