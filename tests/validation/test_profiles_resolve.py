"""resolve() in slicing discriminators: targets found among contained resources (`#id`) and in
the same Bundle (by fullUrl), and "cannot check" — never an error — when the target is not
available. Through the validator and through the API on both engines."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.config import Settings
from fhir_server.errors import Issue
from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.profiles.instance import chain, reference_type, resolve_reference
from tests.conftest import settings_for
from tests.validation.fixtures.profile_helpers import EX, NARRATIVE, errors

FHIR_JSON = {"Content-Type": "application/fhir+json"}
SD = "http://hl7.org/fhir/StructureDefinition/"
LOINC = "http://loinc.org"
FEMALE = EX + "res-female"  # Patient, gender fixed to female
LIST = EX + "res-list"  # List.entry sliced by profile, item.resolve(), closed
TYPED = EX + "res-list-typed"  # List.entry sliced by type, item.reference.resolve(), closed
SYSTOLIC = EX + "res-systolic"  # Observation, code pattern 8480-6
PANEL = EX + "res-panel"  # Observation.hasMember sliced by pattern, resolve().code
BUNDLE = EX + "res-bundle"  # Bundle whose List entry must meet res-list
TWO = EX + "res-list-two"  # res-list wanting two female entries


def profile(url: str, type_: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": url.rsplit("/", 1)[1].replace("-", ""),
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": type_,
        "baseDefinition": SD + type_,
        "derivation": "constraint",
        "differential": {"element": [{"id": type_, "path": type_}, *elements]},
    }


def reference_to(*targets: str) -> list[dict[str, Any]]:
    return [{"code": "Reference", "targetProfile": list(targets)}]


DEFINITIONS = [
    profile(FEMALE, "Patient", [{"id": "Patient.gender", "path": "Patient.gender", "min": 1,
                                 "fixedCode": "female"}]),
    profile(LIST, "List", [
        {"id": "List.entry", "path": "List.entry",
         "slicing": {"discriminator": [{"type": "profile", "path": "item.resolve()"}],
                     "rules": "closed"}},
        {"id": "List.entry:female", "path": "List.entry", "sliceName": "female", "min": 1},
        {"id": "List.entry:female.item", "path": "List.entry.item", "type": reference_to(FEMALE)},
    ]),
    profile(TYPED, "List", [
        {"id": "List.entry", "path": "List.entry",
         "slicing": {"discriminator": [{"type": "type", "path": "item.reference.resolve()"}],
                     "rules": "closed"}},
        {"id": "List.entry:patient", "path": "List.entry", "sliceName": "patient", "min": 1},
        {"id": "List.entry:patient.item", "path": "List.entry.item",
         "type": reference_to(SD + "Patient")},
        {"id": "List.entry:group", "path": "List.entry", "sliceName": "group", "max": "1"},
        {"id": "List.entry:group.item", "path": "List.entry.item",
         "type": reference_to(SD + "Group")},
    ]),
    profile(SYSTOLIC, "Observation", [
        {"id": "Observation.code", "path": "Observation.code",
         "patternCodeableConcept": {"coding": [{"system": LOINC, "code": "8480-6"}]}},
    ]),
    profile(PANEL, "Observation", [
        {"id": "Observation.hasMember", "path": "Observation.hasMember",
         "slicing": {"discriminator": [{"type": "pattern", "path": "resolve().code"}],
                     "rules": "open"}},
        {"id": "Observation.hasMember:systolic", "path": "Observation.hasMember",
         "sliceName": "systolic", "min": 1, "max": "1", "type": reference_to(SYSTOLIC)},
    ]),
    profile(BUNDLE, "Bundle", [
        {"id": "Bundle.entry", "path": "Bundle.entry",
         "slicing": {"discriminator": [{"type": "type", "path": "resource"}], "rules": "open"}},
        {"id": "Bundle.entry:list", "path": "Bundle.entry", "sliceName": "list", "min": 1,
         "max": "1"},
        {"id": "Bundle.entry:list.resource", "path": "Bundle.entry.resource",
         "type": [{"code": "List", "profile": [LIST]}]},
    ]),
]  # fmt: skip


def _two() -> dict[str, Any]:
    sd = copy.deepcopy(DEFINITIONS[1])
    sd["url"], sd["name"] = TWO, "reslisttwo"
    sd["differential"]["element"][2]["min"] = 2
    return sd


DEFINITIONS.append(_two())


def write_definitions(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for sd in DEFINITIONS:
        (directory / f"{sd['name']}.json").write_text(json.dumps(sd))
    return directory


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> ProfileValidator:
    return ProfileValidator.load(write_definitions(tmp_path_factory.mktemp("resolve")))


def person(id_: str, gender: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, "text": NARRATIVE, "gender": gender}


def a_list(*refs: str, contained: list[dict[str, Any]] | None = None, **more: Any) -> dict:
    resource: dict[str, Any] = {
        "resourceType": "List",
        "id": "l1",
        "text": NARRATIVE,
        "status": "current",
        "mode": "working",
        "entry": [{"item": {"reference": ref}} for ref in refs],
        **more,
    }
    if contained:
        resource["contained"] = contained
    return resource


def infos(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "information"]


# -- profile discriminator, item.resolve() ------------------------------------------------------


def test_profile_discriminator_on_contained_targets(validator):
    good = a_list("#f", contained=[person("f", "female")])
    assert validator.validate(good, [LIST]) == []
    bad = a_list("#m", contained=[person("m", "male")])
    texts = [i.diagnostics for i in errors(validator.validate(bad, [LIST]))]
    assert any("slice 'female': minimum required = 1, but only found 0" in t for t in texts)
    assert any(
        t.startswith("List.entry[0]: does not match any slice and the slicing is closed")
        for t in texts
    )


def bundle(*entries: tuple[str, dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "collection",
        "entry": [{"fullUrl": url, "resource": r} for url, r in entries],
        **more,
    }


FEMALE_URN = "urn:uuid:9b3c4e2a-1c4b-4a8e-9d0e-1f2a3b4c5d6e"
MALE_URN = "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
PEOPLE = ((FEMALE_URN, person("f", "female")), (MALE_URN, person("m", "male")))


def test_profile_discriminator_on_bundle_entries(validator):
    good = bundle(("urn:uuid:list", a_list(FEMALE_URN)), *PEOPLE)
    assert validator.validate(good, [BUNDLE]) == []
    bad = bundle(("urn:uuid:list", a_list(MALE_URN)), *PEOPLE)
    found = errors(validator.validate(bad, [BUNDLE]))
    assert {i.expression[0] for i in found} == {
        "Bundle.entry[0].resource.entry",
        "Bundle.entry[0].resource.entry[0]",
    }
    assert all(LIST in i.diagnostics for i in found)
    # relative references resolve against the referring entry's fullUrl, or by type and id
    base = "http://example.org/fhir/"
    relative = bundle(
        (base + "List/l1", a_list("Patient/f")),
        (base + "Patient/f", person("f", "female")),
    )
    assert validator.validate(relative, [BUNDLE]) == []
    by_id = bundle((FEMALE_URN, person("f", "female")), ("urn:uuid:list", a_list("Patient/f")))
    assert validator.validate(by_id, [BUNDLE]) == []


def test_profile_discriminator_target_not_available(validator):
    for ref in ("Patient/elsewhere", "http://other.org/fhir/Patient/1", FEMALE_URN):
        issues = validator.validate(a_list(ref), [LIST])
        assert errors(issues) == [], ref
        notes = [i.diagnostics for i in infos(issues)]
        assert any("cannot check whether it matches slice 'female'" in t for t in notes), ref
        assert any(ref in t and "not available to resolve()" in t for t in notes), ref
        short = "slice 'female': minimum required = 1, found 0; cannot check 1"
        assert any(short in t for t in notes), ref
    # an unavailable target does not hide a slice that is short anyway (2 wanted, 1 unknown)
    texts = [i.diagnostics for i in errors(validator.validate(a_list(FEMALE_URN), [TWO]))]
    assert any("slice 'female': minimum required = 2, but only found 0" in t for t in texts)


def test_unavailable_target_next_to_a_matching_one(validator):
    mixed = a_list("#f", "Patient/elsewhere", contained=[person("f", "female")])
    issues = validator.validate(mixed, [LIST])
    assert errors(issues) == []
    assert [i.expression for i in infos(issues)] == [("List.entry[1]",)]


# -- type discriminator, item.reference.resolve() ------------------------------------------------


def test_type_discriminator(validator):
    group = {"resourceType": "Group", "id": "g", "text": NARRATIVE, "type": "person",
             "actual": True}  # fmt: skip
    good = a_list("#f", "#g", contained=[person("f", "female"), group])
    assert validator.validate(good, [TYPED]) == []
    # without resolving: the reference names its type
    assert validator.validate(a_list("Patient/elsewhere"), [TYPED]) == []
    practitioner = {"resourceType": "Practitioner", "id": "d", "text": NARRATIVE}
    bad = a_list("#d", contained=[practitioner])
    texts = [i.diagnostics for i in errors(validator.validate(bad, [TYPED]))]
    assert any("slice 'patient': minimum required = 1, but only found 0" in t for t in texts)
    assert any("does not match any slice and the slicing is closed" in t for t in texts)
    named = errors(validator.validate(a_list("Device/1"), [TYPED]))
    assert any("does not match any slice" in i.diagnostics for i in named)
    # a urn: that nothing resolves: cannot check, no error
    unknown = validator.validate(a_list(MALE_URN), [TYPED])
    assert errors(unknown) == []
    assert any("cannot check" in i.diagnostics for i in infos(unknown))


# -- pattern discriminator, resolve().code --------------------------------------------------------


def observation(code: str, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "text": NARRATIVE,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        **more,
    }


def test_pattern_discriminator_through_resolve(validator):
    member = observation("8480-6", id="s", valueQuantity={"value": 120})
    good = observation("85354-9", id="p", contained=[member], hasMember=[{"reference": "#s"}])
    assert validator.validate(good, [PANEL]) == []
    other = observation("8462-4", id="s", valueQuantity={"value": 80})
    bad = observation("85354-9", id="p", contained=[other], hasMember=[{"reference": "#s"}])
    texts = [i.diagnostics for i in errors(validator.validate(bad, [PANEL]))]
    assert any("slice 'systolic': minimum required = 1" in t for t in texts)
    far = observation("85354-9", id="p", hasMember=[{"reference": "Observation/s"}])
    issues = validator.validate(far, [PANEL])
    assert errors(issues) == [] and infos(issues)


# -- the pieces -----------------------------------------------------------------------------------


def test_resolve_reference_and_chain():
    root = bundle(("urn:uuid:a", a_list("#x", contained=[person("x", "female")])), *PEOPLE)
    steps = chain(root, "Bundle.entry[0].resource.entry[0].item")
    assert steps is not None
    assert [s.key for s in steps] == [None, "entry", "resource", "entry", "item"]
    assert chain(root, "Bundle.entry[7].resource") is None
    here = "Bundle.entry[0].resource.entry[0].item"
    assert resolve_reference(root, here, "#x") == (
        person("x", "female"),
        "Bundle.entry[0].resource.contained[0]",
    )
    assert resolve_reference(root, here, "#") == (
        root["entry"][0]["resource"],
        "Bundle.entry[0].resource",
    )
    assert resolve_reference(root, here, MALE_URN) == (
        person("m", "male"),
        "Bundle.entry[2].resource",
    )
    assert resolve_reference(root, here, "Patient/zzz") is None
    assert reference_type({"reference": "Patient/1"}) == "Patient"
    assert reference_type({"reference": "http://x.org/fhir/Group/1/_history/2"}) == "Group"
    assert reference_type({"reference": "urn:uuid:1", "type": "Device"}) == "Device"
    assert reference_type({"reference": "#c"}) is None


# -- through the API, both engines ---------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, profiles_dir=write_definitions(tmp_path / "profiles"))


def claiming(resource: dict[str, Any], url: str) -> dict[str, Any]:
    return {**resource, "meta": {"profile": [url]}}


async def test_contained_targets_on_write(client: httpx.AsyncClient) -> None:
    good = claiming(a_list("#f", contained=[person("f", "female")]), LIST)
    response = await client.put("/List/l1", json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    bad = claiming(a_list("#m", contained=[person("m", "male")]), LIST)
    response = await client.put("/List/l1", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    found = [i for i in response.json()["issue"] if i["severity"] == "error"]
    assert {e for i in found for e in i["expression"]} == {"List.entry", "List.entry[0]"}
    # a target the server would have to fetch: stored, with "cannot check" from $validate
    far = claiming(a_list("Patient/elsewhere"), LIST)
    response = await client.put("/List/l1", json=far, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    outcome = (await client.post("/List/$validate", json=far, headers=FHIR_JSON)).json()
    severities = {i["severity"] for i in outcome["issue"]}
    assert "error" not in severities and "information" in severities


async def test_bundle_targets_on_write(client: httpx.AsyncClient) -> None:
    good = claiming(bundle(("urn:uuid:list", a_list(FEMALE_URN)), *PEOPLE), BUNDLE)
    response = await client.put("/Bundle/b1", json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    bad = claiming(bundle(("urn:uuid:list", a_list(MALE_URN)), *PEOPLE), BUNDLE)
    response = await client.put("/Bundle/b1", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    found = [i for i in response.json()["issue"] if i["severity"] == "error"]
    assert "Bundle.entry[0].resource.entry[0]" in {e for i in found for e in i["expression"]}
