"""Start-up seeding from seed_data/: everything is loaded once, and never again."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.app import create_app, seed
from fhir_server.config import PROJECT_ROOT, Settings
from fhir_server.formats.xml import xml_to_resource
from fhir_server.loader import load_paths
from fhir_server.search.registry import default_registry
from fhir_server.store.base import Store
from tests.api.conftest import BASE
from tests.api.test_crud import FHIR_JSON, patient
from tests.conftest import drop_store, make_store, without_audit

SEED_DIR = PROJECT_ROOT / "seed_data"
CYRILLIC = re.compile(r"[\u0400-\u04FF]")


def seed_resources() -> list[dict[str, Any]]:
    """Every resource in the seed files, read straight from the files."""
    found = []
    for path in sorted(SEED_DIR.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        found += [entry["resource"] for entry in bundle["entry"]]
    return found


def content(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in resource.get("meta", {}).items()
            if k not in ("versionId", "lastUpdated")}
    rest = {k: v for k, v in resource.items() if k != "meta"}
    return {**rest, "meta": meta} if meta else rest


def seeding(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(**{"data_dir": tmp_path, "seed": True, "seed_dir": SEED_DIR, **overrides})


@pytest.fixture
async def seed_store(engine: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A store that outlives the apps started on it (each app opens and closes it)."""
    s, handle = await make_store(engine, tmp_path)
    yield s
    await drop_store(handle)


@asynccontextmanager
async def running(settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http


async def system_history(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/_history", params={"_count": 1000})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert not [link for link in bundle["link"] if link["relation"] == "next"]
    return without_audit(bundle.get("entry", []))


async def test_seed_loads_every_resource(
    seed_store: Store, tmp_path: Path
) -> None:
    expected = seed_resources()
    async with running(seeding(tmp_path), seed_store) as client:
        entries = await system_history(client)
        assert len(entries) == len(expected)
        assert all(e["response"]["etag"] == 'W/"1"' for e in entries)
        assert Counter(e["resource"]["resourceType"] for e in entries) == Counter(
            r["resourceType"] for r in expected)
        for resource in expected:
            response = await client.get(f"/{resource['resourceType']}/{resource['id']}")
            assert response.status_code == 200, response.text
            assert content(response.json()) == content(resource)
            assert response.json()["meta"]["versionId"] == "1"


async def test_cyrillic_patients_are_readable(seed_store: Store, tmp_path: Path) -> None:
    cyrillic = [r for r in seed_resources() if r["resourceType"] == "Patient"
                and CYRILLIC.search(r["name"][0].get("family", ""))]
    assert cyrillic, "the seed data promises patients with Cyrillic names"
    async with running(seeding(tmp_path), seed_store) as client:
        for resource in cyrillic:
            url = f"/Patient/{resource['id']}"
            response = await client.get(url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/fhir+json")
            assert response.json()["name"] == resource["name"]
            assert resource["name"][0]["family"].encode() in response.content  # raw UTF-8
            xml = await client.get(url, headers={"Accept": "application/fhir+xml"})
            assert xml_to_resource(xml.content)["name"] == resource["name"]


async def test_second_start_changes_nothing(seed_store: Store, tmp_path: Path) -> None:
    settings = seeding(tmp_path)
    async with running(settings, seed_store) as client:
        first = await system_history(client)
    async with running(settings, seed_store) as client:
        assert await system_history(client) == first
        assert all(e["response"]["etag"] == 'W/"1"' for e in first)


async def test_loading_the_seed_again_changes_nothing(seed_store: Store, tmp_path: Path) -> None:
    settings = seeding(tmp_path)
    expected = seed_resources()
    async with running(settings, seed_store) as client:
        first = await system_history(client)
        summary = await load_paths(seed_store, settings, default_registry(), [SEED_DIR])
        assert (summary.created, summary.updated, summary.deleted) == (0, 0, 0)
        assert summary.unchanged == len(expected)
        assert summary.failures == []
        await seed(seed_store, settings, default_registry())
        assert await system_history(client) == first


async def test_no_seed_on_a_store_with_data(seed_store: Store, tmp_path: Path) -> None:
    async with running(seeding(tmp_path, seed=False), seed_store) as client:
        assert await system_history(client) == []
        response = await client.put("/Patient/mine", json=patient(id="mine"), headers=FHIR_JSON)
        assert response.status_code == 201
    async with running(seeding(tmp_path), seed_store) as client:
        entries = await system_history(client)
        assert [e["fullUrl"] for e in entries] == [f"{BASE}/Patient/mine"]


async def test_missing_seed_dir_starts_empty(seed_store: Store, tmp_path: Path) -> None:
    async with running(seeding(tmp_path, seed_dir=tmp_path / "nowhere"), seed_store) as client:
        assert await system_history(client) == []
        assert (await client.get("/metadata")).status_code == 200
