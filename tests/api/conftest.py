"""An HTTP client on the whole app, once per storage engine (the `engine` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.conftest import drop_store, make_store

BASE = "http://testserver/fhir"


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, seed=False, **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture
async def client(
    engine: str, tmp_path: Path, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http
    await drop_store(handle)
