"""Fixtures that load search test data into a server on each storage engine.

`loaded` is one server per engine and test module with the generated dataset
(`fixtures/dataset.py`) PUT into it; tests only read from it, so one load serves every query of
a module. Tests that write use the function-scoped `client` fixture instead. Both build the app
the same way (`tests/conftest.py`: `make_store`, `create_app`).

Async fixtures and tests sharing `loaded` must run in the module's event loop, so such test
modules declare `pytestmark = pytest.mark.asyncio(loop_scope="module")` and tests that use the
function-scoped `client` there mark themselves `loop_scope="function"`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.conftest import ENGINES, drop_store, make_store
from tests.search.fixtures.dataset import build_dataset

BASE = "http://testserver/fhir"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
BIG = "1000"
"""A _count large enough for every result set of these tests (checked: no `next` link)."""

Resource = dict[str, Any]
Params = Sequence[tuple[str, str]]


@asynccontextmanager
async def open_client(engine: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on a fresh app and empty store of `engine` (as the `client` fixture)."""
    store, handle = await make_store(engine, tmp_path)
    app = create_app(Settings(data_dir=tmp_path, seed=False), store)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                yield http
    finally:
        await drop_store(handle)


async def put(client: httpx.AsyncClient, resource: Resource) -> Resource:
    """PUT a resource with its id; the stored version (with meta) as the server returns it."""
    url = f"/{resource['resourceType']}/{resource['id']}"
    response = await client.put(url, json=resource, headers=FHIR_JSON)
    assert response.status_code in (200, 201), f"PUT {url}: {response.text}"
    stored: Resource = response.json()
    return stored


async def delete(client: httpx.AsyncClient, resource_type: str, rid: str) -> None:
    response = await client.delete(f"/{resource_type}/{rid}")
    assert response.status_code in (200, 204), response.text


@dataclass
class Loaded:
    """A server holding a dataset, and that dataset as stored (keyed by (type, id))."""

    client: httpx.AsyncClient
    engine: str
    resources: dict[tuple[str, str], Resource] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> list[Resource]:
        return [r for (t, _), r in self.resources.items() if t == resource_type]

    def get(self, resource_type: str, rid: str) -> Resource | None:
        return self.resources.get((resource_type, rid))

    def ids(self, resource_type: str, predicate: Any) -> set[str]:
        """Ids of the resources of a type for which `predicate(resource)` holds."""
        return {r["id"] for r in self.of_type(resource_type) if predicate(r)}


async def load(client: httpx.AsyncClient, engine: str, resources: Iterable[Resource]) -> Loaded:
    loaded = Loaded(client, engine)
    for resource in resources:
        stored = await put(client, resource)
        loaded.resources[(stored["resourceType"], stored["id"])] = stored
    return loaded


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Loaded]:
    """The generated dataset on one engine, loaded once per test module."""
    engine: str = request.param
    async with open_client(engine, tmp_path_factory.mktemp(f"search-{engine}")) as http:
        yield await load(http, engine, build_dataset())


# ---------------------------------------------------------------------------- searching


async def search_pages(
    client: httpx.AsyncClient,
    path: str,
    params: Params = (),
    headers: dict[str, str] | None = None,
    max_pages: int = 200,
) -> list[Resource]:
    """Every page of a search (GET), following `next` links; fails on a non-200."""
    response = await client.get(path, params=list(params), headers=headers)
    assert response.status_code == 200, f"GET {path} {params}: {response.text}"
    pages = [response.json()]
    while (url := link(pages[-1], "next")) is not None:
        assert len(pages) < max_pages, f"more than {max_pages} pages for {path} {params}"
        response = await client.get(url, headers=headers)
        assert response.status_code == 200, f"GET {url}: {response.text}"
        pages.append(response.json())
    return pages


def link(bundle: Resource, relation: str) -> str | None:
    for item in bundle.get("link", []):
        if item.get("relation") == relation:
            url: str = item["url"]
            return url
    return None


def entries(bundle: Resource, mode: str | None = "match") -> list[Resource]:
    return [
        e
        for e in bundle.get("entry", [])
        if mode is None or e.get("search", {}).get("mode") == mode
    ]


def match_keys(pages: Iterable[Resource]) -> list[tuple[str, str]]:
    """(type, id) of every match entry over the pages, in order, repeats kept."""
    return [
        (e["resource"]["resourceType"], e["resource"]["id"]) for p in pages for e in entries(p)
    ]


async def search_ids(
    client: httpx.AsyncClient,
    path: str,
    params: Params = (),
    headers: dict[str, str] | None = None,
) -> list[str]:
    """Ids of the matches of a search over all its pages, in order (repeats kept)."""
    return [rid for _, rid in match_keys(await search_pages(client, path, params, headers))]
