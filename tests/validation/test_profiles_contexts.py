"""Extension contexts of type `fhirpath` and `extension` (and `element` as before): a conforming
and a misplaced use of each, through the validator and through the API on both engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.config import Settings
from fhir_server.errors import Issue
from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.profiles.contexts import element_context_ok
from tests.conftest import settings_for
from tests.validation.fixtures.profile_helpers import EX, NARRATIVE, errors

FHIR_JSON = {"Content-Type": "application/fhir+json"}
SD = "http://hl7.org/fhir/StructureDefinition/"
PHONE_NOTE = EX + "ext-phone-note"  # fhirpath: on phone numbers only
BIRTH_NOTE = EX + "ext-birth-note"  # fhirpath: on Patient.birthDate (a primitive)
ORG_NOTE = EX + "ext-org-note"  # fhirpath, on an Organization's telecom (contained too)
PARENT = EX + "ext-parent"  # a complex extension
PART = EX + "ext-part"  # extension: directly inside ext-parent
VALUE_NOTE = EX + "ext-value-note"  # extension: on ext-parent's value (url#path)
OPAQUE = EX + "ext-opaque"  # fhirpath that no evaluator understands
QTY_NOTE = EX + "ext-qty-note"  # fhirpath: a bare datatype name
UNIT_NOTE = EX + "ext-unit-note"  # fhirpath: a path led by a datatype, on a primitive
CTX_PATIENT = EX + "ctx-patient"


def extension_sd(url: str, contexts: list[tuple[str, str]], value: str | None) -> dict[str, Any]:
    elements: list[dict[str, Any]] = [
        {"id": "Extension", "path": "Extension"},
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
    ]
    if value is None:  # complex: sub-extensions (and the extensions of other definitions)
        elements.append({"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"})
    else:
        elements.append(
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "type": [{"code": value}]}
        )
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": url.rsplit("/", 1)[1].replace("-", ""),
        "status": "draft",
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": t, "expression": e} for t, e in contexts],
        "type": "Extension",
        "baseDefinition": SD + "Extension",
        "derivation": "constraint",
        "differential": {"element": elements},
    }


DEFINITIONS = [
    extension_sd(PHONE_NOTE, [("fhirpath", "Patient.telecom.where(system = 'phone')")], "string"),
    extension_sd(BIRTH_NOTE, [("fhirpath", "Patient.birthDate")], "string"),
    extension_sd(
        ORG_NOTE, [("element", "Practitioner"), ("fhirpath", "Organization.telecom")], "string"
    ),
    extension_sd(PARENT, [("element", "Patient")], "Coding"),  # a value or sub-extensions
    extension_sd(PART, [("extension", PARENT)], "string"),
    extension_sd(VALUE_NOTE, [("extension", PARENT + "#Extension.value[x]")], "string"),
    extension_sd(OPAQUE, [("fhirpath", "Patient.telecom.frobnicate()")], "string"),
    extension_sd(QTY_NOTE, [("fhirpath", "Quantity")], "string"),
    extension_sd(UNIT_NOTE, [("fhirpath", "Quantity.unit")], "string"),
    {
        "resourceType": "StructureDefinition",
        "url": CTX_PATIENT,
        "name": "CtxPatient",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": SD + "Patient",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient", "path": "Patient"}]},
    },
]


def write_definitions(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for sd in DEFINITIONS:
        (directory / f"{sd['name']}.json").write_text(json.dumps(sd))
    return directory


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> ProfileValidator:
    return ProfileValidator.load(write_definitions(tmp_path_factory.mktemp("contexts")))


def note(url: str, text: str = "x") -> dict[str, Any]:
    return {"url": url, "valueString": text}


def patient(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "ctx",
        "meta": {"profile": [CTX_PATIENT]},
        "text": NARRATIVE,
        "telecom": [{"system": "email", "value": "a@b.c"}, {"system": "phone", "value": "555"}],
        "birthDate": "1970-01-01",
        "gender": "female",
    }
    resource.update(changes)
    return resource


def context_errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in errors(issues) if i.code == "extension"]


def with_phone_note(index: int) -> dict[str, Any]:
    resource = patient()
    resource["telecom"][index]["extension"] = [note(PHONE_NOTE)]
    return resource


# -- fhirpath ------------------------------------------------------------------------------------


def test_fhirpath_context_selects_the_element(validator):
    assert validator.validate(with_phone_note(1)) == []


def test_fhirpath_context_does_not_select_the_element(validator):
    issues = context_errors(validator.validate(with_phone_note(0)))
    assert len(issues) == 1
    issue = issues[0]
    assert issue.expression == ("Patient.telecom[0].extension[0]",)
    text = issue.diagnostics
    assert PHONE_NOTE in text
    assert "fhirpath Patient.telecom.where(system = 'phone')" in text
    assert "Patient.telecom[0]" in text
    # on the resource itself: not selected either
    on_root = validator.validate(patient(extension=[note(PHONE_NOTE)]))
    assert [i.expression for i in context_errors(on_root)] == [("Patient.extension[0]",)]


def test_fhirpath_context_on_a_primitive(validator):
    good = patient(_birthDate={"extension": [note(BIRTH_NOTE)]})
    assert validator.validate(good) == []
    bad = patient(_gender={"extension": [note(BIRTH_NOTE)]})
    issues = context_errors(validator.validate(bad))
    assert [i.expression for i in issues] == [("Patient.gender.extension[0]",)]
    # a primitive with only its extensions (no value) is the element too
    valueless = patient(birthDate=None, _birthDate={"extension": [note(BIRTH_NOTE)]})
    del valueless["birthDate"]
    assert validator.validate(valueless) == []


def test_fhirpath_context_in_a_contained_resource(validator):
    organization = {
        "resourceType": "Organization",
        "id": "org",
        "text": NARRATIVE,
        "name": "Org",
        "telecom": [{"system": "phone", "value": "1", "extension": [note(ORG_NOTE)]}],
    }
    good = patient(contained=[organization], managingOrganization={"reference": "#org"})
    assert validator.validate(good) == []
    bad = patient(
        contained=[organization],
        managingOrganization={"reference": "#org"},
        extension=[note(ORG_NOTE)],
    )
    issues = context_errors(validator.validate(bad))
    assert [i.expression for i in issues] == [("Patient.extension[0]",)]
    assert "element Practitioner, fhirpath Organization.telecom" in issues[0].diagnostics


def test_element_and_fhirpath_contexts_together(validator):
    practitioner = {
        "resourceType": "Practitioner",
        "id": "pr",
        "text": NARRATIVE,
        "extension": [note(ORG_NOTE)],
    }
    assert validator.validate(practitioner) == []


def test_fhirpath_context_led_by_a_datatype(validator):
    def observation(quantity: dict[str, Any], code: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "text": NARRATIVE,
            "status": "final",
            "code": code,
            "valueQuantity": quantity,
        }

    code = {"text": "weight"}
    good = observation({"value": 1, "extension": [note(QTY_NOTE)]}, code)
    assert validator.validate(good) == []
    bad = observation({"value": 1}, {**code, "extension": [note(QTY_NOTE)]})
    assert [i.expression for i in context_errors(validator.validate(bad))] == [
        ("Observation.code.extension[0]",)
    ]
    on_unit = observation({"unit": "kg", "_unit": {"extension": [note(UNIT_NOTE)]}}, code)
    assert validator.validate(on_unit) == []
    on_value = observation({"value": 1, "_value": {"extension": [note(UNIT_NOTE)]}}, code)
    assert [i.expression for i in context_errors(validator.validate(on_value))] == [
        ("Observation.valueQuantity.value.extension[0]",)
    ]


def test_fhirpath_context_that_cannot_be_evaluated_is_not_an_error(validator):
    issues = validator.validate(with_phone_note(0) | {"extension": [note(OPAQUE)]})
    mine = [i for i in issues if OPAQUE in i.diagnostics]
    assert [i.severity for i in mine] == ["information"]
    assert "cannot check" in mine[0].diagnostics
    # not "not-supported": FHIR_SERVER_UNKNOWN_PROFILE=error turns those into errors
    assert mine[0].code == "informational"


# -- extension -----------------------------------------------------------------------------------


def parent(*inner: dict[str, Any], **value: Any) -> dict[str, Any]:
    """An ext-parent with sub-extensions, or with a value (ext-1: not both)."""
    if inner:
        return {"url": PARENT, "extension": list(inner)}
    return {"url": PARENT, "valueCoding": {"code": "c"}, **value}


def test_extension_context_inside_the_named_extension(validator):
    assert validator.validate(patient(extension=[parent(note(PART))])) == []


def test_extension_context_elsewhere(validator):
    on_patient = context_errors(validator.validate(patient(extension=[note(PART)])))
    assert [i.expression for i in on_patient] == [("Patient.extension[0]",)]
    assert f"extension {PARENT}" in on_patient[0].diagnostics
    # inside another extension (a standard one, whose context allows Patient)
    other = {"url": SD + "patient-nationality", "extension": [note(PART)]}
    inside_other = context_errors(validator.validate(patient(extension=[other])))
    assert [i.expression for i in inside_other] == [("Patient.extension[0].extension[0]",)]


def test_extension_context_with_a_path(validator):
    on_value = parent(valueCoding={"code": "c", "extension": [note(VALUE_NOTE)]})
    assert validator.validate(patient(extension=[on_value])) == []
    # on the named extension itself, not on its value
    misplaced = context_errors(validator.validate(patient(extension=[parent(note(VALUE_NOTE))])))
    assert [i.expression for i in misplaced] == [("Patient.extension[0].extension[0]",)]
    assert PARENT + "#Extension.value[x]" in misplaced[0].diagnostics


def test_element_context_with_a_profile_element_id():
    contexts = (("element", "http://example.org/sd/p#Patient.identifier:mrn"),)
    assert element_context_ok(contexts, "Patient.identifier", "Identifier")
    assert not element_context_ok(contexts, "Patient.name", "HumanName")


# -- through the API, both engines ---------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, profiles_dir=write_definitions(tmp_path / "profiles"))


async def test_misplaced_extension_on_write(client: httpx.AsyncClient) -> None:
    good = with_phone_note(1)
    response = await client.put("/Patient/ctx", json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    bad = with_phone_note(0)
    response = await client.put("/Patient/ctx", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    found = [i for i in response.json()["issue"] if i["severity"] == "error"]
    assert [i["expression"] for i in found] == [["Patient.telecom[0].extension[0]"]]
    assert PHONE_NOTE in found[0]["diagnostics"]
    # nothing was written: the stored version is still the conforming one
    stored = (await client.get("/Patient/ctx")).json()
    assert stored["telecom"][1]["extension"][0]["url"] == PHONE_NOTE


async def test_extension_context_on_write_and_validate(client: httpx.AsyncClient) -> None:
    good = patient(id="ctx2", extension=[parent(note(PART))])
    response = await client.put("/Patient/ctx2", json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    bad = patient(id="ctx2", extension=[note(PART)])
    response = await client.put("/Patient/ctx2", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    outcome = (await client.post("/Patient/$validate", json=bad, headers=FHIR_JSON)).json()
    found = [i for i in outcome["issue"] if i["severity"] == "error"]
    assert [i["expression"] for i in found] == [["Patient.extension[0]"]]
    assert PART in found[0]["diagnostics"] and f"extension {PARENT}" in found[0]["diagnostics"]
