"""Custom SearchParameters: searchable after $reindex, for old and new resources, on both
engines, and still after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fhir_server.app import create_app
from fhir_server.cli import app as cli
from fhir_server.config import Settings
from tests.api.test_crud import FHIR_JSON
from tests.conftest import BASE, make_store

MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
SEARCH_PARAMETER = {
    "resourceType": "SearchParameter", "id": "patient-marital", "status": "active",
    "url": "http://example.org/SearchParameter/patient-marital", "name": "marital",
    "description": "Marital status", "code": "marital", "base": ["Patient"], "type": "token",
    "expression": "Patient.maritalStatus",
}


def married(id_: str, code: str) -> dict[str, object]:
    return {"resourceType": "Patient", "id": id_,
            "maritalStatus": {"coding": [{"system": MARITAL, "code": code}]}}


async def ids(client: httpx.AsyncClient, query: str, **headers: str) -> list[str]:
    response = await client.get(f"/Patient?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", [])
                  if e["search"]["mode"] == "match")


async def test_searchable_only_after_reindex(client: httpx.AsyncClient) -> None:
    patients = {"a": "M", "b": "S", "c": "M"}
    for id_, code in patients.items():
        await client.put(f"/Patient/{id_}", json=married(id_, code), headers=FHIR_JSON)
    await client.put("/SearchParameter/patient-marital", json=SEARCH_PARAMETER,
                     headers=FHIR_JSON)
    before = await client.get("/Patient?marital=M", headers={"Prefer": "handling=strict"})
    assert before.status_code == 400  # not switched on yet
    response = await client.post("/Patient/$reindex")
    assert response.status_code == 200, response.text
    assert "marital" in response.json()["issue"][0]["diagnostics"]
    expected = sorted(i for i, c in patients.items() if c == "M")
    assert await ids(client, "marital=M") == expected
    assert await ids(client, f"marital={MARITAL}|S") == ["b"]
    await client.put("/Patient/d", json=married("d", "M"), headers=FHIR_JSON)
    assert await ids(client, "marital=M") == [*expected, "d"]


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_active_after_restart_and_cli(engine: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, seed=False)
    for id_, code in {"a": "M", "b": "S"}.items():
        store, _ = await make_store(engine, tmp_path)
        app = create_app(settings, store)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                await client.put(f"/Patient/{id_}", json=married(id_, code), headers=FHIR_JSON)
                await client.put("/SearchParameter/patient-marital", json=SEARCH_PARAMETER,
                                 headers=FHIR_JSON)
    # The CLI runs its own event loop, so it gets a thread of its own here.
    args = ["reindex", "Patient", "--data-dir", str(tmp_path)]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert result.exit_code == 0, result.output
    assert "Reindexed 2 Patient" in result.output
    store, _ = await make_store(engine, tmp_path)
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            assert await ids(client, "marital=M") == ["a"]


async def test_unusable_search_parameter_is_reported(client: httpx.AsyncClient) -> None:
    broken = {**SEARCH_PARAMETER, "expression": "Patient.noSuchElement"}
    await client.put("/SearchParameter/patient-marital", json=broken, headers=FHIR_JSON)
    response = await client.post("/Patient/$reindex")
    assert response.status_code == 400
    assert "noSuchElement" in response.json()["issue"][0]["diagnostics"]
