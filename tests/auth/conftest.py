"""A server with authentication required, on each storage engine, and tokens for any caller.

Tokens are issued by the server's own TokenService (as its /auth/token endpoint would), so
tests of what a role may see need no login dance; tests/auth/test_auth_flow.py covers that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.auth import accounts as accounts_module
from fhir_server.auth.service import Security
from tests.conftest import BASE, drop_store, make_store, settings_for

ADDRESS = "198.51.100.7"


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """argon2id with minimal costs: the server's own take ~0.25 s a hash here, and these
    tests hash hundreds of times (test_accounts checks the real costs on their own)."""
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(accounts_module, "PASSWORDS", cheap)
    accounts_module._dummy_hash.cache_clear()  # made with whichever hasher came first
    yield
    accounts_module._dummy_hash.cache_clear()


@dataclass
class AuthServer:
    app: FastAPI
    http: httpx.AsyncClient
    """A client of the FHIR base (http://testserver/fhir) that sends no token by itself."""
    root: httpx.AsyncClient
    """A client of the server root, for /auth/..."""

    @property
    def security(self) -> Security:
        return self.app.state.security

    def headers(
        self, role: str | None = None, resource: str | None = None,
        scope: str = "user/*.cruds", sub: str = "someone", **extra: str,
    ) -> dict[str, str]:
        """Authorization for a user of `role` acting as `resource` (a client of its own when
        role is None), with `scope`."""
        token, _ = self.security.tokens.issue(sub, scope, "test-client", resource, role)
        return {"Authorization": f"Bearer {token}", **extra}

    @property
    def system(self) -> dict[str, str]:
        """A backend service allowed everything: sets up the data of a test."""
        return self.headers(scope="system/*.cruds", sub="loader")

    async def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource,
                                headers=self.system)
        assert r.status_code in (200, 201), r.text
        return r.json()


@pytest.fixture
async def auth_server(engine: str, tmp_path: Path) -> AsyncIterator[AuthServer]:
    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings_for(tmp_path, auth="required"), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False, client=(ADDRESS, 40100)
        )
        async with (
            httpx.AsyncClient(transport=transport, base_url=BASE) as http,
            httpx.AsyncClient(transport=transport, base_url=BASE.removesuffix("/fhir")) as root,
        ):
            yield AuthServer(app, http, root)
    await drop_store(handle)
