"""Formats over HTTP: JSON and XML both ways, content negotiation, `_pretty`, `_summary`,
`_elements`, and errors in the format the client asked for."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from fhir_server.definitions import mandatory_elements, summary_elements
from fhir_server.formats.xml import xml_to_resource
from tests.api.test_crud import FHIR_JSON, create, patient
from tests.api.test_errors import TRACEBACK_MARKERS, outcome
from tests.conftest import data_history

FHIR_XML = "application/fhir+xml"
SUBSETTED_CODE = "SUBSETTED"
ALWAYS_KEPT = {"resourceType", "id", "meta"}

PATIENT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Мария Иванова</p></div>
  </text>
  <active value="true"/>
  <name>
    <family value="Иванова"/>
    <given value="Мария"/>
    <given value="Петрова"/>
  </name>
  <gender value="female"/>
  <birthDate id="bd" value="1980-04-12">
    <extension url="http://example.org/fhir/StructureDefinition/precision">
      <valueCode value="day"/>
    </extension>
  </birthDate>
  <multipleBirthInteger value="2"/>
</Patient>
"""

# The same content as PATIENT_XML, written by hand in FHIR JSON.
PATIENT_XML_AS_JSON: dict[str, Any] = {
    "resourceType": "Patient",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Мария Иванова</p></div>',
    },
    "active": True,
    "name": [{"family": "Иванова", "given": ["Мария", "Петрова"]}],
    "gender": "female",
    "birthDate": "1980-04-12",
    "_birthDate": {
        "id": "bd",
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/precision",
                       "valueCode": "day"}],
    },
    "multipleBirthInteger": 2,
}


def content(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource without its server-assigned id and meta."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def rich_patient() -> dict[str, Any]:
    """A Patient with summary and non-summary elements, and a narrative."""
    return patient(
        text={"status": "generated",
              "div": '<div xmlns="http://www.w3.org/1999/xhtml">Мария Иванова</div>'},
        identifier=[{"system": "https://ehealth.example.org/sid/national-id", "value": "123"}],
        active=True,
        deceasedBoolean=False,
        maritalStatus={"text": "married"},
        multipleBirthBoolean=False,
        communication=[{"language": {"text": "Bulgarian"}, "preferred": True}],
        contact=[{"name": {"family": "Иванов"}}],
    )


def observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">HbA1c 7.1 %</div>'},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": "Patient/pat-1"},
        "valueQuantity": {"value": 7.1, "unit": "%"},
        "note": [{"text": "fasting"}],
    }


def is_subsetted(resource: dict[str, Any]) -> bool:
    return any(t.get("code") == SUBSETTED_CODE for t in resource.get("meta", {}).get("tag", []))


# --- XML and JSON, both directions ----------------------------------------------------------------


@pytest.mark.parametrize("media_type", [FHIR_XML, "application/xml", "text/xml"])
async def test_xml_create_then_json_read(client: httpx.AsyncClient, media_type: str) -> None:
    response = await client.post(
        "/Patient", content=PATIENT_XML.encode(), headers={"Content-Type": media_type}
    )
    assert response.status_code == 201, response.text
    read = await client.get(response.headers["location"].rsplit("/_history", 1)[0])
    assert read.status_code == 200
    assert read.headers["content-type"].startswith("application/fhir+json")
    assert content(read.json()) == PATIENT_XML_AS_JSON


async def test_xml_create_answers_in_xml_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/Patient", content=PATIENT_XML.encode(),
        headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML},
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR_XML)
    assert content(xml_to_resource(response.content)) == PATIENT_XML_AS_JSON


@pytest.mark.parametrize(
    ("headers", "params"),
    [({"Accept": FHIR_XML}, {}), ({"Accept": "application/xml"}, {}), ({}, {"_format": "xml"}),
     ({}, {"_format": FHIR_XML}), ({"Accept": "application/fhir+json"}, {"_format": "xml"})],
    ids=["accept-fhir-xml", "accept-xml", "format-xml", "format-media-type", "format-wins"],
)
async def test_json_create_then_xml_read(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    created = await create(client, PATIENT_XML_AS_JSON)
    url = f"/Patient/{created['id']}"
    for path in (url, f"{url}/_history/1"):
        response = await client.get(path, headers=headers, params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(FHIR_XML)
        assert response.headers["etag"] == 'W/"1"'
        assert xml_to_resource(response.content) == created


async def test_xml_update_and_history_in_xml(client: httpx.AsyncClient) -> None:
    body = PATIENT_XML.replace("<Patient xmlns=\"http://hl7.org/fhir\">",
                               "<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"px\"/>")
    response = await client.put("/Patient/px", content=body.encode(),
                                headers={"Content-Type": FHIR_XML})
    assert response.status_code == 201, response.text
    changed = body.replace('<gender value="female"/>', '<gender value="other"/>')
    response = await client.put("/Patient/px", content=changed.encode(),
                                headers={"Content-Type": FHIR_XML})
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "other"
    history = await client.get("/Patient/px/_history", params={"_format": "xml"})
    assert history.status_code == 200
    bundle = xml_to_resource(history.content)
    assert bundle == (await client.get("/Patient/px/_history")).json()
    assert [e["resource"]["gender"] for e in bundle["entry"]] == ["other", "female"]


@pytest.mark.parametrize("accept", ["application/json", "application/fhir+json", "text/json"])
async def test_plain_json_media_types_are_json(client: httpx.AsyncClient, accept: str) -> None:
    raw = orjson.dumps(patient())
    response = await client.post(
        "/Patient", content=raw, headers={"Content-Type": "application/json", "Accept": accept}
    )
    assert response.status_code == 201, response.text
    assert content(response.json()) == patient()
    read = await client.get(f"/Patient/{response.json()['id']}", headers={"Accept": accept})
    assert read.status_code == 200
    assert "json" in read.headers["content-type"]
    assert read.json() == response.json()


async def test_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/Patient", content=orjson.dumps(patient()),
        headers={"Content-Type": "application/fhir+json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text
    xml = await client.post(
        "/Patient", content=PATIENT_XML.encode(),
        headers={"Content-Type": "application/fhir+xml;charset=UTF-8"},
    )
    assert xml.status_code == 201, xml.text


@pytest.mark.parametrize(
    "accept",
    ["text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
     "*/*", "application/*", "text/html, */*; q=0.1"],
)
async def test_browser_style_accept_works(client: httpx.AsyncClient, accept: str) -> None:
    created = await create(client, patient())
    response = await client.get(f"/Patient/{created['id']}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    media = response.headers["content-type"]
    parsed = xml_to_resource(response.content) if "xml" in media else response.json()
    assert parsed == created
    # XML is named explicitly (q=0.9) in the browser header; wildcards alone get JSON.
    assert ("xml" in media) == ("application/xml" in accept)


async def test_accept_quality_values_are_honoured(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    xml_first = "application/fhir+json;q=0.5, application/fhir+xml"
    assert (await client.get(url, headers={"Accept": xml_first})).headers[
        "content-type"].startswith(FHIR_XML)
    json_only = "application/fhir+xml;q=0, application/fhir+json"
    assert (await client.get(url, headers={"Accept": json_only})).headers[
        "content-type"].startswith("application/fhir+json")


# --- _pretty --------------------------------------------------------------------------------------


async def test_pretty_json_is_indented(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    plain = await client.get(url)
    pretty = await client.get(url, params={"_pretty": "true"})
    assert pretty.status_code == 200
    assert b"\n" not in plain.content.strip()
    lines = pretty.text.splitlines()
    assert len(lines) > 5
    assert any(line.startswith("  ") for line in lines)
    assert pretty.json() == plain.json() == created
    assert (await client.get(url, params={"_pretty": "false"})).json() == created


async def test_pretty_xml_is_indented(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    plain = await client.get(url, params={"_format": "xml"})
    pretty = await client.get(url, params={"_format": "xml", "_pretty": "true"})
    assert pretty.status_code == 200
    assert len(pretty.text.splitlines()) > len(plain.text.splitlines())
    assert any(line.startswith("  <") for line in pretty.text.splitlines())
    assert xml_to_resource(pretty.content) == xml_to_resource(plain.content) == created


async def test_pretty_applies_to_bundles_and_outcomes(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    history = await client.get(f"/Patient/{created['id']}/_history", params={"_pretty": "true"})
    assert len(history.text.splitlines()) > 5
    assert history.json()["entry"][0]["resource"] == created
    missing = await client.get("/Patient/nobody", params={"_pretty": "true"})
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


# --- _summary and _elements -----------------------------------------------------------------------


def expected_subset(resource: dict[str, Any], keep: set[str]) -> set[str]:
    wanted = keep | mandatory_elements(resource["resourceType"]) | ALWAYS_KEPT
    return {k for k in resource if k in wanted}


async def test_summary_true_keeps_summary_and_mandatory_elements(
    client: httpx.AsyncClient,
) -> None:
    for resource in (rich_patient(), observation()):
        created = await create(client, resource)
        type_ = resource["resourceType"]
        expected = expected_subset(created, set(summary_elements(type_)))
        assert expected < set(created), "the sample must have non-summary elements"
        for path in (f"/{type_}/{created['id']}", f"/{type_}/{created['id']}/_history/1"):
            response = await client.get(path, params={"_summary": "true"})
            assert response.status_code == 200, response.text
            summary = response.json()
            assert set(summary) == expected
            assert all(summary[k] == created[k] for k in expected - {"meta"})
            assert is_subsetted(summary)
            assert summary["meta"]["versionId"] == created["meta"]["versionId"]


async def test_summary_in_xml(client: httpx.AsyncClient) -> None:
    created = await create(client, rich_patient())
    response = await client.get(
        f"/Patient/{created['id']}", params={"_summary": "true", "_format": "xml"}
    )
    assert response.status_code == 200
    summary = xml_to_resource(response.content)
    assert set(summary) == expected_subset(created, set(summary_elements("Patient")))
    assert is_subsetted(summary)


async def test_summary_text(client: httpx.AsyncClient) -> None:
    created = await create(client, observation())
    response = await client.get(f"/Observation/{created['id']}", params={"_summary": "text"})
    assert response.status_code == 200
    subset = response.json()
    assert set(subset) == expected_subset(created, {"text"})
    assert subset["text"] == created["text"]
    assert {"status", "code"} <= set(subset)  # mandatory
    assert is_subsetted(subset)


async def test_summary_data(client: httpx.AsyncClient) -> None:
    created = await create(client, observation())
    response = await client.get(f"/Observation/{created['id']}", params={"_summary": "data"})
    assert response.status_code == 200
    subset = response.json()
    assert set(subset) == set(created) - {"text"}
    assert content(subset) == {k: v for k, v in content(created).items() if k != "text"}
    assert is_subsetted(subset)


async def test_summary_false_is_everything(client: httpx.AsyncClient) -> None:
    created = await create(client, rich_patient())
    response = await client.get(f"/Patient/{created['id']}", params={"_summary": "false"})
    assert response.json() == created
    assert not is_subsetted(response.json())


async def test_elements(client: httpx.AsyncClient) -> None:
    created = await create(client, rich_patient())
    response = await client.get(f"/Patient/{created['id']}", params={"_elements": "name,gender"})
    assert response.status_code == 200
    subset = response.json()
    assert set(subset) == expected_subset(created, {"name", "gender"})
    assert (subset["name"], subset["gender"]) == (created["name"], created["gender"])
    assert is_subsetted(subset)
    obs = await create(client, observation())
    response = await client.get(f"/Observation/{obs['id']}", params={"_elements": "value"})
    subset = response.json()
    # `value` names the choice element; mandatory status and code stay.
    assert set(subset) == ALWAYS_KEPT | {"valueQuantity", "status", "code"}


async def test_subset_does_not_change_the_stored_resource(client: httpx.AsyncClient) -> None:
    created = await create(client, rich_patient())
    url = f"/Patient/{created['id']}"
    await client.get(url, params={"_summary": "true"})
    await client.get(url, params={"_elements": "gender"})
    assert (await client.get(url)).json() == created
    assert len((await client.get(f"{url}/_history")).json()["entry"]) == 1


@pytest.mark.parametrize("value", ["yes", "TRUE", "summary", ""])
async def test_invalid_summary_is_400(client: httpx.AsyncClient, value: str) -> None:
    created = await create(client, patient())
    response = await client.get(f"/Patient/{created['id']}?_summary={value}")
    if value == "":
        # An empty parameter is no parameter.
        assert response.status_code == 200
        return
    body = outcome(response, 400)
    assert any("_summary" in e for i in body["issue"] for e in i.get("expression", []))


# --- not acceptable -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["foo", "html", "text/plain", "application/pdf"])
async def test_unknown_format_is_406(client: httpx.AsyncClient, fmt: str) -> None:
    created = await create(client, patient())
    outcome(await client.get(f"/Patient/{created['id']}", params={"_format": fmt}), 406)
    outcome(await client.get("/metadata", params={"_format": fmt}), 406)


@pytest.mark.parametrize("accept", ["text/plain", "image/png, text/html", "application/pdf"])
async def test_unacceptable_accept_is_406_outcome(client: httpx.AsyncClient, accept: str) -> None:
    created = await create(client, patient())
    body = outcome(await client.get(f"/Patient/{created['id']}", headers={"Accept": accept}), 406)
    assert body["issue"][0]["code"] == "not-supported"


async def test_406_leaves_nothing_written(client: httpx.AsyncClient) -> None:
    """A 406 must not hide a write: either refuse before writing, or answer 201 in JSON."""
    response = await client.post(
        "/Patient", json=patient(), headers={**FHIR_JSON, "Accept": "text/plain"}
    )
    history = await data_history(client)
    if response.status_code == 406:
        assert history == [], "a 406 must not leave a resource behind"
    else:
        assert response.status_code == 201
        assert len(history) == 1


# --- errors in XML --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params"),
    [({"Accept": FHIR_XML}, {}), ({}, {"_format": "xml"})],
    ids=["accept", "format"],
)
async def test_errors_in_xml_when_client_asked_for_xml(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    failures = [
        (await client.get("/Patient/nobody", headers=headers, params=params), 404),
        (await client.get("/Nope/1", headers=headers, params=params), 404),
        (await client.post("/Patient", content=b"{", params=params,
                           headers={**headers, **FHIR_JSON}), 400),
        (await client.post("/Patient", json=patient(foo=1), params=params,
                           headers={**headers, **FHIR_JSON}), 422),
        (await client.post("/Patient", content=b"x", params=params,
                           headers={**headers, "Content-Type": "text/plain"}), 415),
        (await client.delete("/Patient", headers=headers, params=params), 405),
    ]
    for response, status in failures:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith(FHIR_XML), response.text
        body = xml_to_resource(response.content)
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["severity"] == "error"
        for marker in TRACEBACK_MARKERS:
            assert marker not in response.text


async def test_xml_unknown_element_reports_expression(client: httpx.AsyncClient) -> None:
    body = PATIENT_XML.replace("<active value=\"true\"/>", "<foo value=\"1\"/>").encode()
    response = await client.post("/Patient", content=body, headers={"Content-Type": FHIR_XML})
    assert response.status_code in (400, 422)
    result = outcome(response, response.status_code)
    assert [e for i in result["issue"] for e in i.get("expression", [])] == ["Patient.foo"]


@pytest.mark.parametrize(
    "replacement", ['<foo value="1"/>', '<active value="yes"/>'], ids=["unknown", "type"]
)
async def test_invalid_xml_resource_is_422_like_json(
    client: httpx.AsyncClient, replacement: str
) -> None:
    body = PATIENT_XML.replace('<active value="true"/>', replacement).encode()
    response = await client.post("/Patient", content=body, headers={"Content-Type": FHIR_XML})
    outcome(response, 422)


@pytest.mark.parametrize(
    "body",
    [b"<Patient", b"<Patient xmlns='http://hl7.org/fhir'><active value='true'/>",
     b"<Patient/>", b'<Patient xmlns="urn:other"/>', b"not xml at all", b""],
    ids=["unclosed", "truncated", "no-namespace", "wrong-namespace", "text", "empty"],
)
async def test_malformed_xml_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/Patient", content=body, headers={"Content-Type": FHIR_XML})
    outcome(response, 400)
    assert await data_history(client) == []


async def test_xml_external_entities_are_not_resolved(client: httpx.AsyncClient) -> None:
    body = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Patient>"""
    response = await client.post("/Patient", content=body, headers={"Content-Type": FHIR_XML})
    assert "root:" not in response.text
    if response.status_code == 201:
        assert "root:" not in str(response.json().get("name"))
    else:
        outcome(response, response.status_code)
