"""The 18 R4 types without an R4B model are validated from the R4 definitions alone."""

from __future__ import annotations

import httpx
import pytest

from fhir_server.definitions import MODELLED_RESOURCE_TYPES, R4_RESOURCE_TYPES
from tests.api.test_crud import FHIR_JSON

UNMODELLED = sorted(R4_RESOURCE_TYPES - MODELLED_RESOURCE_TYPES)


def test_there_are_eighteen() -> None:
    assert len(UNMODELLED) == 18


@pytest.mark.parametrize("body", [
    {"resourceType": "MedicinalProduct", "id": "mp", "name": [{"productName": "Aspirin"}]},
    {"resourceType": "SubstanceProtein", "id": "sp", "numberOfSubunits": 2},
])
async def test_valid_ones_are_stored(client: httpx.AsyncClient, body: dict) -> None:
    url = f"/{body['resourceType']}/{body['id']}"
    response = await client.put(url, json=body, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    assert (await client.get(url)).json()["id"] == body["id"]


@pytest.mark.parametrize(("body", "expression"), [
    ({"resourceType": "MedicinalProduct", "id": "mp", "name": [{"productName": "A"}],
      "masterFile": [{"reference": "Document/x"}], "specialDesignation": [{"date": "2024-13"}]},
     "MedicinalProduct.specialDesignation[0].date"),
    ({"resourceType": "SubstanceProtein", "id": "sp", "numberOfSubunits": "2"},
     "SubstanceProtein.numberOfSubunits"),
    ({"resourceType": "MedicinalProduct", "id": "mp", "nosuch": 1}, "MedicinalProduct.nosuch"),
    ({"resourceType": "MedicinalProduct", "id": "mp"}, "MedicinalProduct.name"),
])
async def test_invalid_ones_are_422_with_the_element(
    client: httpx.AsyncClient, body: dict, expression: str
) -> None:
    url = f"/{body['resourceType']}/{body['id']}"
    response = await client.put(url, json=body, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    found = [e for i in response.json()["issue"] for e in i.get("expression", [])]
    assert expression in found


async def test_formats_are_checked_on_modelled_types_too(client: httpx.AsyncClient) -> None:
    body = {"resourceType": "Patient", "birthDate": "12/04/1980", "id": "x"}
    response = await client.put("/Patient/x", json=body, headers=FHIR_JSON)
    assert response.status_code == 422
    issues = response.json()["issue"]
    assert [e for i in issues for e in i.get("expression", [])] == ["Patient.birthDate"]
