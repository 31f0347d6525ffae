"""$validate and the terminology operations over HTTP, on both engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
from typer.testing import CliRunner

from fhir_server.cli import app as cli
from fhir_server.validation.conformance import NATIONAL_CORE_REQUIRED
from tests.api.test_crud import FHIR_JSON
from tests.validation.test_conformance_api import seed_resource, without_national_id

GENDER = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"


def errors_of(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    assert outcome["resourceType"] == "OperationOutcome"
    return [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]


async def test_validate_a_resource_and_a_profile(client: httpx.AsyncClient) -> None:
    good = seed_resource("Patient", "pat-ivanova-maria")
    response = await client.post("/Patient/$validate", json=good, headers=FHIR_JSON)
    assert response.status_code == 200
    assert errors_of(response.json()) == []
    broken = {**good, "birthDate": "not a date", "foo": 1}
    found = errors_of((await client.post("/Patient/$validate", json=broken,
                                         headers=FHIR_JSON)).json())
    assert {e for i in found for e in i.get("expression", [])} >= {"Patient.foo",
                                                                      "Patient.birthDate"}
    bad = without_national_id(seed_resource("Patient", "pat-petrov-georgi"))
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": bad},
        {"name": "profile", "valueUri": NATIONAL_CORE_REQUIRED["Patient"]}]}
    response = await client.post("/Patient/$validate", json=params, headers=FHIR_JSON)
    assert response.status_code == 200
    assert errors_of(response.json())
    # $validate writes nothing.
    assert (await client.get("/Patient/pat-petrov-georgi")).status_code == 404


async def test_validate_a_stored_resource(client: httpx.AsyncClient) -> None:
    patient = seed_resource("Patient", "pat-smith-john")
    await client.put("/Patient/pat-smith-john", json=patient, headers=FHIR_JSON)
    response = await client.post("/Patient/pat-smith-john/$validate")
    assert response.status_code == 200
    assert errors_of(response.json()) == []
    assert (await client.post("/Patient/nobody/$validate")).status_code == 404


async def test_expand_and_validate_code(client: httpx.AsyncClient) -> None:
    expansion = (await client.get("/ValueSet/$expand", params={"url": GENDER})).json()
    codes = {c["code"] for c in expansion["expansion"]["contains"]}
    assert codes == {"male", "female", "other", "unknown"}
    filtered = (await client.get("/ValueSet/$expand", params={"url": GENDER,
                                                               "filter": "fem"})).json()
    assert [c["code"] for c in filtered["expansion"]["contains"]] == ["female"]
    for code, ok in (("male", True), ("martian", False)):
        result = (await client.get("/ValueSet/$validate-code", params={
            "url": GENDER, "system": GENDER_SYSTEM, "code": code})).json()
        assert result["parameter"][0] == {"name": "result", "valueBoolean": ok}
    assert (await client.get("/ValueSet/$expand",
                             params={"url": "http://example.org/none"})).status_code == 400


async def test_stored_valueset_and_lookup(client: httpx.AsyncClient) -> None:
    vs = {"resourceType": "ValueSet", "id": "colours", "status": "active",
          "url": "http://example.org/vs/colours",
          "compose": {"include": [{"system": "http://example.org/cs/colours",
                                   "concept": [{"code": "red"}, {"code": "blue"}]}]}}
    await client.put("/ValueSet/colours", json=vs, headers=FHIR_JSON)
    expansion = (await client.get("/ValueSet/colours/$expand")).json()
    assert {c["code"] for c in expansion["expansion"]["contains"]} == {"red", "blue"}
    lookup = (await client.get("/CodeSystem/$lookup", params={
        "system": GENDER_SYSTEM, "code": "female"})).json()
    names = {p["name"]: p for p in lookup["parameter"]}
    assert names["display"]["valueString"] == "Female"
    assert (await client.get("/CodeSystem/$lookup", params={
        "system": GENDER_SYSTEM, "code": "nope"})).status_code == 404
    in_system = (await client.get("/CodeSystem/$validate-code", params={
        "url": GENDER_SYSTEM, "code": "other"})).json()
    assert in_system["parameter"][0]["valueBoolean"] is True


def test_cli_validate(tmp_path: Path) -> None:
    good = seed_resource("Patient", "pat-ivanova-maria")
    bad = without_national_id(seed_resource("Patient", "pat-petrov-georgi"))
    (tmp_path / "good.json").write_bytes(orjson.dumps(good))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "good.json"), "--profile",
                                      NATIONAL_CORE_REQUIRED["Patient"]])
    assert result.exit_code == 0, result.output
    (tmp_path / "bad.json").write_bytes(orjson.dumps(bad))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path), "--profile",
                                      NATIONAL_CORE_REQUIRED["Patient"]])
    assert result.exit_code == 1
    assert "invalid" in result.output and "bad.json" in result.output
