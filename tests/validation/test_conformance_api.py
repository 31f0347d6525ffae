"""Profiles on writes, on both engines: a resource that breaks a profile it claims (or that the
settings require) is refused with 422 naming what to fix; conforming data is stored."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.app import create_app
from fhir_server.config import PROJECT_ROOT
from fhir_server.validation.conformance import NATIONAL_CORE_REQUIRED
from tests.api.test_crud import FHIR_JSON
from tests.conftest import BASE, drop_store, make_store, settings_for

PATIENT_PROFILE = NATIONAL_CORE_REQUIRED["Patient"]


def seed_resource(type_: str, id_: str) -> dict[str, Any]:
    for path in sorted((PROJECT_ROOT / "seed_data").glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == type_ and resource["id"] == id_:
                return copy.deepcopy(resource)
    raise KeyError(id_)


@pytest.fixture
async def strict_client(engine: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The national-core profiles required, and unknown profiles refused."""
    settings = settings_for(tmp_path, require_national_core=True, unknown_profile="error")
    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http
    await drop_store(handle)


def without_national_id(patient: dict[str, Any]) -> dict[str, Any]:
    patient["identifier"] = [i for i in patient["identifier"]
                             if "national-id" not in i.get("system", "")]
    if not patient["identifier"]:
        del patient["identifier"]
    return patient


async def test_claimed_profile_is_enforced(client: httpx.AsyncClient) -> None:
    good = seed_resource("Patient", "pat-ivanova-maria")
    good["meta"] = {"profile": [PATIENT_PROFILE]}
    assert (await client.put("/Patient/pat-ivanova-maria", json=good,
                             headers=FHIR_JSON)).status_code == 201
    bad = without_national_id(seed_resource("Patient", "pat-petrov-georgi"))
    bad["meta"] = {"profile": [PATIENT_PROFILE]}
    response = await client.put("/Patient/pat-petrov-georgi", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    errors = [i for i in response.json()["issue"] if i["severity"] == "error"]
    assert errors
    assert all(PATIENT_PROFILE in i["diagnostics"] for i in errors)
    assert any(e.startswith("Patient.identifier") or e == "Patient"
               for i in errors for e in i.get("expression", []))
    assert (await client.get("/Patient/pat-petrov-georgi")).status_code == 404
    # Without the claim and without the setting, the same resource is only structure-checked.
    del bad["meta"]
    assert (await client.put("/Patient/pat-petrov-georgi", json=bad,
                             headers=FHIR_JSON)).status_code == 201


async def test_unknown_profile_is_a_warning_by_default(client: httpx.AsyncClient) -> None:
    patient = seed_resource("Patient", "pat-smith-john")
    patient["meta"] = {"profile": ["http://example.org/StructureDefinition/unknown"]}
    assert (await client.put("/Patient/pat-smith-john", json=patient,
                             headers=FHIR_JSON)).status_code == 201


async def test_required_profiles_and_unknown_profile_as_error(
    strict_client: httpx.AsyncClient,
) -> None:
    ok = seed_resource("Patient", "pat-ivanova-maria")
    assert (await strict_client.put("/Patient/pat-ivanova-maria", json=ok,
                                    headers=FHIR_JSON)).status_code == 201
    bad = without_national_id(seed_resource("Patient", "pat-petrov-georgi"))
    response = await strict_client.put("/Patient/pat-petrov-georgi", json=bad,
                                       headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    unknown = seed_resource("Patient", "pat-smith-john")
    unknown["meta"] = {"profile": ["http://example.org/StructureDefinition/unknown"]}
    response = await strict_client.put("/Patient/pat-smith-john", json=unknown,
                                       headers=FHIR_JSON)
    assert response.status_code == 422
    assert "not known" in response.text


async def test_seed_data_conforms_when_national_core_is_required(
    strict_client: httpx.AsyncClient,
) -> None:
    for path in sorted((PROJECT_ROOT / "seed_data").glob("*.json")):
        response = await strict_client.post("", content=path.read_bytes(), headers=FHIR_JSON)
        assert response.status_code == 200, (path.name, response.text)
