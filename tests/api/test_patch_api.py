"""PATCH over HTTP: JSON Patch and FHIRPath Patch (JSON and XML), versioning, preconditions,
and every way a patch can fail without writing anything."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_crud import FHIR_JSON, create, patient
from tests.api.test_errors import expressions, outcome

JSON_PATCH = {"Content-Type": "application/json-patch+json"}
FHIR_XML = {"Content-Type": "application/fhir+xml"}


def fhirpath_patch(*operations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "operation", "part": parts} for parts in operations],
    }


def replace(path: str, **value: Any) -> list[dict[str, Any]]:
    return [{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path},
            {"name": "value", **value}]


async def versions(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    response = await client.get(f"{url}/_history")
    assert response.status_code == 200, response.text
    return response.json()["entry"]


async def unchanged(client: httpx.AsyncClient, url: str, before: dict[str, Any]) -> None:
    """Nothing was written: the current version and the history are as before."""
    assert (await client.get(url)).json() == before
    assert len(await versions(client, url)) == int(before["meta"]["versionId"])


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> dict[str, Any]:
    return await create(client, patient(telecom=[{"system": "phone", "value": "+359 1"}]))


# --- successful patches ---------------------------------------------------------------------------


async def test_json_patch_creates_version_2(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    operations = [
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/name/0/given/-", "value": "Петрова"},
        {"op": "remove", "path": "/telecom"},
    ]
    response = await client.patch(url, json=operations, headers=JSON_PATCH)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    assert response.headers["location"].endswith(f"{url}/_history/2")
    patched = response.json()
    assert patched["meta"]["versionId"] == "2"
    expected = {**stored, "gender": "male",
                "name": [{**stored["name"][0], "given": [*stored["name"][0]["given"], "Петрова"]}]}
    del expected["telecom"]
    assert {k: v for k, v in patched.items() if k != "meta"} == {
        k: v for k, v in expected.items() if k != "meta"}
    assert (await client.get(url)).json() == patched
    assert (await client.get(f"{url}/_history/1")).json() == stored
    assert [e["request"]["method"] for e in await versions(client, url)] == ["PATCH", "POST"]


async def test_fhirpath_patch_json(client: httpx.AsyncClient, stored: dict[str, Any]) -> None:
    url = f"/Patient/{stored['id']}"
    document = fhirpath_patch(
        replace("Patient.gender", valueCode="other"),
        [{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
         {"name": "name", "valueString": "active"}, {"name": "value", "valueBoolean": False}],
        [{"name": "type", "valueCode": "delete"},
         {"name": "path", "valueString": "Patient.telecom"}],
    )
    response = await client.patch(url, json=document, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["meta"]["versionId"] == "2"
    assert (patched["gender"], patched["active"]) == ("other", False)
    assert "telecom" not in patched
    assert patched["name"] == stored["name"]
    assert (await client.get(url)).json() == patched


async def test_fhirpath_patch_xml(client: httpx.AsyncClient, stored: dict[str, Any]) -> None:
    url = f"/Patient/{stored['id']}"
    document = b"""<Parameters xmlns="http://hl7.org/fhir">
  <parameter>
    <name value="operation"/>
    <part><name value="type"/><valueCode value="replace"/></part>
    <part><name value="path"/><valueString value="Patient.birthDate"/></part>
    <part><name value="value"/><valueDate value="1981-05-13"/></part>
  </parameter>
</Parameters>"""
    response = await client.patch(url, content=document, headers=FHIR_XML)
    assert response.status_code == 200, response.text
    assert response.json()["birthDate"] == "1981-05-13"
    assert response.json()["meta"]["versionId"] == "2"


async def test_patch_with_matching_if_match(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    response = await client.patch(url, json=operations, headers={**JSON_PATCH, "If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["versionId"] == "2"


async def test_patch_prefer_minimal(client: httpx.AsyncClient, stored: dict[str, Any]) -> None:
    url = f"/Patient/{stored['id']}"
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    response = await client.patch(
        url, json=operations, headers={**JSON_PATCH, "Prefer": "return=minimal"}
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["etag"] == 'W/"2"'


async def test_no_op_patch_creates_no_version(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    same = [{"op": "replace", "path": "/gender", "value": stored["gender"]}]
    response = await client.patch(url, json=same, headers=JSON_PATCH)
    assert response.status_code == 200, response.text
    assert response.json() == stored
    assert response.headers["etag"] == 'W/"1"'
    test_only = [{"op": "test", "path": "/gender", "value": stored["gender"]}]
    assert (await client.patch(url, json=test_only, headers=JSON_PATCH)).status_code == 200
    document = fhirpath_patch(replace("Patient.birthDate", valueDate=stored["birthDate"]))
    assert (await client.patch(url, json=document, headers=FHIR_JSON)).status_code == 200
    await unchanged(client, url, stored)


# --- preconditions and missing resources ----------------------------------------------------------


async def test_patch_if_match_mismatch_is_412(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    outcome(await client.patch(url, json=operations, headers={**JSON_PATCH, "If-Match": 'W/"2"'}),
            412)
    document = fhirpath_patch(replace("Patient.gender", valueCode="male"))
    outcome(await client.patch(url, json=document, headers={**FHIR_JSON, "If-Match": 'W/"0"'}),
            412)
    await unchanged(client, url, stored)


async def test_patch_deleted_is_410(client: httpx.AsyncClient, stored: dict[str, Any]) -> None:
    url = f"/Patient/{stored['id']}"
    assert (await client.delete(url)).status_code == 200
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    body = outcome(await client.patch(url, json=operations, headers=JSON_PATCH), 410)
    assert body["issue"][0]["code"] == "deleted"
    assert len(await versions(client, url)) == 2
    assert (await client.get(url)).status_code == 410


async def test_patch_unknown_is_404(client: httpx.AsyncClient) -> None:
    operations = [{"op": "add", "path": "/gender", "value": "male"}]
    outcome(await client.patch("/Patient/nobody", json=operations, headers=JSON_PATCH), 404)
    outcome(await client.get("/Patient/nobody"), 404)
    outcome(await client.patch("/Nope/nobody", json=operations, headers=JSON_PATCH), 404)


# --- malformed (400), unappliable (422) -----------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"op": "replace", "path": "/gender", "value": "male"},
        [{"op": "frobnicate", "path": "/gender"}],
        [{"op": "replace", "value": "male"}],
        [{"op": "replace", "path": "/gender"}],
        [{"op": "replace", "path": "gender", "value": "male"}],
        ["replace"],
        "replace /gender",
    ],
    ids=["object", "unknown-op", "no-path", "no-value", "bad-pointer", "string-op", "string"],
)
async def test_malformed_json_patch_is_400(
    client: httpx.AsyncClient, stored: dict[str, Any], document: Any
) -> None:
    url = f"/Patient/{stored['id']}"
    outcome(await client.patch(url, json=document, headers=JSON_PATCH), 400)
    await unchanged(client, url, stored)


async def test_unparsable_patch_body_is_400(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    outcome(await client.patch(url, content=b"[{", headers=JSON_PATCH), 400)
    outcome(await client.patch(url, content=b"", headers=JSON_PATCH), 400)
    outcome(await client.patch(url, content=b"{", headers=FHIR_JSON), 400)
    outcome(await client.patch(url, content=b"<Parameters", headers=FHIR_XML), 400)
    await unchanged(client, url, stored)


@pytest.mark.parametrize(
    "document",
    [
        fhirpath_patch([{"name": "type", "valueCode": "frobnicate"},
                        {"name": "path", "valueString": "Patient.gender"}]),
        fhirpath_patch([{"name": "type", "valueCode": "replace"},
                        {"name": "value", "valueCode": "male"}]),
        fhirpath_patch(replace("Patient.gender.where(", valueCode="male")),
        fhirpath_patch([{"name": "type", "valueCode": "add"},
                        {"name": "path", "valueString": "Patient"}]),
        {"resourceType": "Parameters", "parameter": {"name": "operation"}},
        {"resourceType": "Parameters", "parameter": [{"name": "not-operation"}]},
    ],
    ids=["unknown-type", "no-path", "bad-fhirpath", "add-without-name", "not-a-list",
         "wrong-name"],
)
async def test_malformed_fhirpath_patch_is_400(
    client: httpx.AsyncClient, stored: dict[str, Any], document: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    outcome(await client.patch(url, json=document, headers=FHIR_JSON), 400)
    await unchanged(client, url, stored)


@pytest.mark.parametrize(
    "body", [patient(), {"resourceType": "Bundle", "type": "collection"}, [], ["op"], "x"],
    ids=["patient", "bundle", "empty-list", "list", "string"],
)
async def test_non_parameters_fhir_body_is_400(
    client: httpx.AsyncClient, stored: dict[str, Any], body: Any
) -> None:
    url = f"/Patient/{stored['id']}"
    outcome(await client.patch(url, json=body, headers=FHIR_JSON), 400)
    await unchanged(client, url, stored)


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "remove", "path": "/photo"}],
        [{"op": "replace", "path": "/name/5/family", "value": "X"}],
        [{"op": "test", "path": "/gender", "value": "male"}],
        [{"op": "replace", "path": "/gender", "value": "male"},
         {"op": "test", "path": "/birthDate", "value": "2000-01-01"}],
        [{"op": "move", "from": "/nothing", "path": "/gender"}],
    ],
    ids=["remove-absent", "index-out-of-range", "failing-test", "test-after-change",
         "move-absent"],
)
async def test_json_patch_that_cannot_apply_is_422(
    client: httpx.AsyncClient, stored: dict[str, Any], operations: list[dict[str, Any]]
) -> None:
    url = f"/Patient/{stored['id']}"
    outcome(await client.patch(url, json=operations, headers=JSON_PATCH), 422)
    await unchanged(client, url, stored)


@pytest.mark.parametrize(
    "document",
    [
        fhirpath_patch(replace("Patient.maritalStatus", valueCodeableConcept={"text": "x"})),
        fhirpath_patch(replace("Patient.name.given", valueString="X")),
        fhirpath_patch([{"name": "type", "valueCode": "insert"},
                        {"name": "path", "valueString": "Patient.name"},
                        {"name": "index", "valueInteger": 7},
                        {"name": "value", "valueHumanName": {"family": "X"}}]),
    ],
    ids=["replace-absent", "replace-ambiguous", "insert-out-of-range"],
)
async def test_fhirpath_patch_that_cannot_apply_is_422(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    two_given = await create(client, patient(name=[{"family": "Иванова",
                                                    "given": ["Мария", "Петрова"]}]))
    url = f"/Patient/{two_given['id']}"
    outcome(await client.patch(url, json=document, headers=FHIR_JSON), 422)
    await unchanged(client, url, two_given)


@pytest.mark.parametrize(
    ("operations", "expression"),
    [
        ([{"op": "replace", "path": "/gender", "value": 5}], "Patient.gender"),
        ([{"op": "add", "path": "/foo", "value": "bar"}], "Patient.foo"),
        ([{"op": "add", "path": "/name/0/nickname", "value": "Mimi"}], "Patient.name[0].nickname"),
        ([{"op": "replace", "path": "/birthDate", "value": "12/04/1980"}], "Patient.birthDate"),
        ([{"op": "replace", "path": "/name", "value": {"family": "X"}}], "Patient.name"),
    ],
    ids=["number-for-code", "unknown-element", "unknown-nested", "bad-date", "object-for-list"],
)
async def test_patch_producing_invalid_resource_is_422(
    client: httpx.AsyncClient, stored: dict[str, Any], operations: list[dict[str, Any]],
    expression: str,
) -> None:
    url = f"/Patient/{stored['id']}"
    body = outcome(await client.patch(url, json=operations, headers=JSON_PATCH), 422)
    assert expression in expressions(body)
    await unchanged(client, url, stored)


async def test_fhirpath_patch_producing_invalid_resource_is_422(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    document = fhirpath_patch(replace("Patient.birthDate", valueString="sometime in 1980"))
    body = outcome(await client.patch(url, json=document, headers=FHIR_JSON), 422)
    assert "Patient.birthDate" in expressions(body)
    await unchanged(client, url, stored)


@pytest.mark.parametrize(
    "operations",
    [[{"op": "replace", "path": "/id", "value": "someone-else"}],
     [{"op": "remove", "path": "/id"}],
     [{"op": "replace", "path": "/resourceType", "value": "Person"}]],
    ids=["replace-id", "remove-id", "change-type"],
)
async def test_patch_may_not_change_id_or_type(
    client: httpx.AsyncClient, stored: dict[str, Any], operations: list[dict[str, Any]]
) -> None:
    url = f"/Patient/{stored['id']}"
    response = await client.patch(url, json=operations, headers=JSON_PATCH)
    assert response.status_code in (400, 422), response.text
    outcome(response, response.status_code)
    await unchanged(client, url, stored)
    outcome(await client.get("/Patient/someone-else"), 404)


async def test_fhirpath_patch_may_not_change_id(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    document = fhirpath_patch(replace("Patient.id", valueId="someone-else"))
    response = await client.patch(url, json=document, headers=FHIR_JSON)
    assert response.status_code in (400, 422), response.text
    outcome(response, response.status_code)
    await unchanged(client, url, stored)


async def test_patch_cannot_forge_version_metadata(
    client: httpx.AsyncClient, stored: dict[str, Any]
) -> None:
    url = f"/Patient/{stored['id']}"
    operations = [{"op": "replace", "path": "/meta/versionId", "value": "99"},
                  {"op": "replace", "path": "/gender", "value": "male"}]
    response = await client.patch(url, json=operations, headers=JSON_PATCH)
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml-patch+xml", "application/octet-stream"]
)
async def test_patch_wrong_content_type_is_415(
    client: httpx.AsyncClient, stored: dict[str, Any], content_type: str
) -> None:
    url = f"/Patient/{stored['id']}"
    content = b'[{"op": "replace", "path": "/gender", "value": "male"}]'
    outcome(await client.patch(url, content=content, headers={"Content-Type": content_type}), 415)
    await unchanged(client, url, stored)
