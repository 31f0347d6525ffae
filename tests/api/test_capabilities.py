"""GET /metadata: the CapabilityStatement, and whether what it states is true."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_server.definitions import (
    MODELLED_RESOURCE_TYPES,
    R4_RESOURCE_TYPES,
    Kind,
    type_definition,
)
from fhir_server.formats.xml import xml_to_resource
from tests.api.conftest import BASE
from tests.api.test_crud import FHIR_JSON
from tests.validation.fixtures.minimal import minimal_valid

INTERACTIONS = {"read", "vread", "update", "patch", "delete", "create", "history-instance",
                "history-type", "search-type"}
# A well-formed value for each search parameter type, to try every declared parameter.
SAMPLE_VALUES = {"string": "a", "token": "a", "reference": "Patient/x", "date": "2020",
                 "number": "1", "quantity": "1", "uri": "http://example.org/x"}


async def statement(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/metadata")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    return response.json()


def resources(capabilities: dict[str, Any]) -> list[dict[str, Any]]:
    (rest,) = capabilities["rest"]
    assert rest["mode"] == "server"
    return rest["resource"]


async def test_capability_statement_basics(client: httpx.AsyncClient) -> None:
    capabilities = await statement(client)
    assert capabilities["resourceType"] == "CapabilityStatement"
    assert capabilities["fhirVersion"] == "4.0.1"
    assert capabilities["kind"] == "instance"
    assert capabilities["status"] == "active"
    assert {"application/fhir+json", "application/fhir+xml"} <= set(capabilities["format"])
    assert {"application/json-patch+json", "application/fhir+json"} <= set(
        capabilities["patchFormat"])
    assert capabilities["implementation"]["url"] == BASE


async def test_one_resource_entry_per_served_type(client: httpx.AsyncClient) -> None:
    entries = resources(await statement(client))
    types = [r["type"] for r in entries]
    assert len(types) == len(set(types))
    assert set(types) == set(R4_RESOURCE_TYPES)
    assert len(types) == 147
    for entry in entries:
        codes = {i["code"] for i in entry["interaction"]}
        append_only = entry["type"] == "AuditEvent"
        refused = {"update", "patch", "delete"} if append_only else set()
        assert codes == INTERACTIONS - refused, entry["type"]
        assert entry["versioning"] == "versioned-update"
        assert entry["readHistory"] is True
        assert entry["updateCreate"] is not append_only
        assert entry["conditionalUpdate"] is not append_only


@pytest.mark.parametrize("type_", ["Patient", "Observation", "Encounter", "MedicationRequest"])
async def test_declared_search_parameters_are_accepted(
    client: httpx.AsyncClient, type_: str
) -> None:
    (entry,) = [r for r in resources(await statement(client)) if r["type"] == type_]
    declared = {p["name"]: p["type"] for p in entry["searchParam"]}
    assert {"_id", "_lastUpdated"} <= set(declared)
    for name, kind in declared.items():
        if kind not in SAMPLE_VALUES:
            continue
        response = await client.get(f"/{type_}", params={name: SAMPLE_VALUES[kind]},
                                    headers={"Prefer": "handling=strict"})
        assert response.status_code == 200, (name, response.text)


async def test_system_history_is_declared_and_works(client: httpx.AsyncClient) -> None:
    (rest,) = (await statement(client))["rest"]
    assert {"code": "history-system"} in rest["interaction"]
    assert (await client.get("/_history")).status_code == 200


async def test_metadata_in_xml(client: httpx.AsyncClient) -> None:
    response = await client.get("/metadata", params={"_format": "xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+xml")
    assert xml_to_resource(response.content) == await statement(client)


async def test_metadata_is_a_valid_resource(client: httpx.AsyncClient) -> None:
    """Storing the statement as a resource proves it passes the server's own validation."""
    capabilities = await statement(client)
    response = await client.post("/CapabilityStatement", json=capabilities, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


# --- the statement is truthful: every declared type supports what it lists ----------------------

XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'
PRIMITIVE_SAMPLES: dict[str, Any] = {
    "boolean": True, "integer": 1, "positiveInt": 1, "unsignedInt": 0, "decimal": 1.5,
    "date": "2024-01-01", "dateTime": "2024-01-01T10:00:00Z", "instant": "2024-01-01T10:00:00Z",
    "time": "10:00:00", "uri": "http://example.org/x", "url": "http://example.org/x",
    "canonical": "http://example.org/x", "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:6b1b1b1b-1b1b-4b1b-8b1b-1b1b1b1b1b1b", "id": "x1", "base64Binary": "AAAA",
    "code": "x", "string": "x", "markdown": "x", "xhtml": XHTML,
}
# Datatypes without mandatory children: a small valid value of each that occurs as mandatory.
COMPLEX_SAMPLES: dict[str, Any] = {
    "CodeableConcept": {"text": "x"}, "Reference": {"reference": "Patient/x"},
    "Coding": {"code": "x"}, "Identifier": {"value": "x"}, "Period": {"start": "2024-01-01"},
    "Quantity": {"value": 1}, "Money": {"value": 1}, "Attachment": {"title": "x"},
    "Narrative": {"status": "generated", "div": XHTML},
}


def sample(type_name: str) -> Any:
    """A minimal valid value of a type, filling every mandatory element from the definitions."""
    if type_name in PRIMITIVE_SAMPLES:
        return PRIMITIVE_SAMPLES[type_name]
    if type_name in COMPLEX_SAMPLES:
        return dict(COMPLEX_SAMPLES[type_name])
    properties = type_definition(type_name).properties
    value: dict[str, Any] = {}
    filled: set[str] = set()
    for prop in properties.values():
        if prop.mandatory and prop.element not in filled:  # one type of a choice element
            filled.add(prop.element)
            item = sample(prop.type)
            value[prop.name] = [item] if prop.array else item
    if not value and type_name not in MODELLED_RESOURCE_TYPES:
        # An element must not be empty: give it its first string child.
        first = next(p for p in properties.values() if p.kind is Kind.STRING and p.name != "id")
        item = sample(first.type)
        value[first.name] = [item] if first.array else item
    return value


def minimal(type_: str) -> dict[str, Any]:
    return {"resourceType": type_, **sample(type_)}


def _type_params() -> list[Any]:
    return sorted(R4_RESOURCE_TYPES)


def test_minimal_samples_follow_the_definitions() -> None:
    """Guard the generator: the hand-checked cases come out as expected."""
    assert minimal("Patient") == {"resourceType": "Patient"}
    assert minimal("Observation") == {
        "resourceType": "Observation", "status": "x", "code": {"text": "x"}}
    assert minimal("Basic") == {"resourceType": "Basic", "code": {"text": "x"}}
    assert minimal("Bundle") == {"resourceType": "Bundle", "type": "x"}


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "name": [{"family": "Шевченко", "given": ["Олена"]}]},
        {"resourceType": "Observation", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
         "valueQuantity": {"value": 5.4, "unit": "mmol/L"}},
        {"resourceType": "Organization", "name": "City General Hospital"},
        {"resourceType": "Basic", "code": {"text": "note"}},
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"resource": {"resourceType": "Patient", "active": True}}]},
    ],
    ids=lambda r: r["resourceType"],
)
async def test_declared_interactions_work_for_common_types(
    client: httpx.AsyncClient, resource: dict[str, Any]
) -> None:
    await exercise(client, resource)


@pytest.mark.parametrize("type_", _type_params())
async def test_declared_interactions_work_for_every_type(
    client: httpx.AsyncClient, type_: str
) -> None:
    # A sample that meets R4's own invariants and required bindings, which every write checks.
    await exercise(client, minimal_valid(type_))


async def exercise(client: httpx.AsyncClient, resource: dict[str, Any]) -> None:
    """create, read, vread, update, patch, history (instance and type), delete — or, where
    the CapabilityStatement leaves update/patch/delete out (AuditEvent), a 405 for each."""
    type_ = resource["resourceType"]
    created = await client.post(f"/{type_}", json=resource, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    body = created.json()
    url = f"/{type_}/{body['id']}"
    assert (await client.get(url)).json() == body
    assert (await client.get(f"{url}/_history/1")).json() == body
    statement = (await client.get("/metadata")).json()
    declared = {i["code"] for r in statement["rest"][0]["resource"] if r["type"] == type_
                for i in r["interaction"]}
    if not {"update", "patch", "delete"} & declared:
        refused = [
            await client.put(url, json=body, headers=FHIR_JSON),
            await client.put(f"/{type_}?_id={body['id']}", json=body, headers=FHIR_JSON),
            await client.patch(url, json=[{"op": "add", "path": "/language", "value": "bg"}],
                               headers={"Content-Type": "application/json-patch+json"}),
            await client.delete(url),
            await client.delete(f"/{type_}?_id={body['id']}"),
        ]
        assert [r.status_code for r in refused] == [405] * 5
        assert (await client.get(url)).json() == body
        return
    with_id = {**resource, "id": "cap-test"}
    updated = await client.put(f"/{type_}/cap-test", json=with_id, headers=FHIR_JSON)
    assert updated.status_code == 201, updated.text
    patched = await client.patch(
        url, json=[{"op": "add", "path": "/language", "value": "bg"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["language"] == "bg"
    assert len((await client.get(f"{url}/_history")).json()["entry"]) == 2
    assert len((await client.get(f"/{type_}/_history")).json()["entry"]) == 3
    assert (await client.delete(url)).status_code == 200
    assert (await client.get(url)).status_code == 410
