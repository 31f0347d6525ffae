"""Consistency checks for the seed dataset in ``seed_data/``.

The seed data is a set of FHIR R4 transaction Bundles that are loaded in file-name order.
These tests need no running server: they check bundle structure, validate every resource
with the fhir.resources R4B models, verify referential integrity and load order, and check
the content promised in ``seed_data/README.md`` (computed from the data itself).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

SEED_DIR = Path(__file__).resolve().parent.parent / "seed_data"

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
LITERAL_REF_RE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
CYRILLIC_RE = re.compile(r"[\u0400-\u04FF]")
ICD10_CODE_RE = re.compile(r"[A-Z][0-9]{2}(\.[0-9]{1,2})?")

BASE_URL = "https://ehealth.example.org/fhir"
SID = f"{BASE_URL}/sid"
NATIONAL_ID = f"{SID}/national-id"
ORGANIZATION_ID = f"{SID}/organization-id"
PRACTITIONER_LICENCE = f"{SID}/practitioner-licence"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

Resource = dict[str, Any]


@dataclass(frozen=True)
class Loaded:
    """One resource of the seed data with its position in the load order."""

    file: str
    file_index: int
    entry_index: int
    entry: dict[str, Any]

    @property
    def resource(self) -> Resource:
        return self.entry["resource"]

    @property
    def key(self) -> str:
        return f"{self.resource['resourceType']}/{self.resource['id']}"


def seed_files() -> list[Path]:
    return sorted(SEED_DIR.glob("*.json"), key=lambda p: p.name)


@cache
def bundles() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((path.name, json.loads(path.read_text(encoding="utf-8"))) for path in seed_files())


@cache
def loaded() -> tuple[Loaded, ...]:
    items: list[Loaded] = []
    for file_index, (name, bundle) in enumerate(bundles()):
        for entry_index, entry in enumerate(bundle.get("entry", [])):
            items.append(Loaded(name, file_index, entry_index, entry))
    return tuple(items)


def resources(resource_type: str | None = None) -> list[Resource]:
    return [
        item.resource
        for item in loaded()
        if resource_type is None or item.resource["resourceType"] == resource_type
    ]


@cache
def by_key() -> dict[str, Resource]:
    return {item.key: item.resource for item in loaded()}


def iter_references(node: Any) -> Iterator[str]:
    """Yield every ``reference`` string found anywhere in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from iter_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_references(value)


def codings(concept: dict[str, Any] | None, system: str) -> list[dict[str, Any]]:
    if not concept:
        return []
    return [c for c in concept.get("coding", []) if c.get("system") == system]


def has_category(resource: Resource, system: str, code: str) -> bool:
    return any(
        codings(cat, system) and codings(cat, system)[0].get("code") == code
        for cat in resource.get("category", [])
    )


def is_lab_observation(resource: Resource) -> bool:
    return resource["resourceType"] == "Observation" and has_category(
        resource, OBS_CATEGORY, "laboratory"
    )


def name_text(name: dict[str, Any]) -> str:
    return " ".join([name.get("family", ""), *name.get("given", [])])


def resolve(reference: dict[str, Any]) -> Resource:
    return by_key()[reference["reference"]]


# ------------------------------------------------------------------ files and bundles


def test_seed_files_present() -> None:
    names = [p.name for p in seed_files()]
    assert len(names) >= 4
    assert (SEED_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", seed_files(), ids=lambda p: p.name)
def test_file_is_pretty_printed_utf8(path: Path) -> None:
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "no UTF-8 BOM"
    text = raw.decode("utf-8")
    assert "\n  " in text, "JSON should be pretty-printed"
    assert text.endswith("\n")


@pytest.mark.parametrize("name", [name for name, _ in bundles()])
def test_bundle_is_transaction_with_put_entries(name: str) -> None:
    bundle = dict(bundles())[name]
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    assert bundle["entry"], "bundle must not be empty"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        url = f"{resource['resourceType']}/{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": url}
        assert entry["fullUrl"] in (url, f"{BASE_URL}/{url}")
    get_fhir_model_class("Bundle").model_validate(bundle)


def test_total_resource_count_in_range() -> None:
    assert 80 <= len(loaded()) <= 150


def test_server_managed_meta_not_set() -> None:
    for resource in resources():
        meta = resource.get("meta", {})
        assert "versionId" not in meta, resource["id"]
        assert "lastUpdated" not in meta, resource["id"]


# ------------------------------------------------------------------ model validation


@pytest.mark.parametrize("item", loaded(), ids=lambda item: item.key)
def test_resource_validates_with_r4b_model(item: Loaded) -> None:
    resource = item.resource
    model = get_fhir_model_class(resource["resourceType"])
    parsed = model.model_validate(resource)
    assert parsed.id == resource["id"]


def test_narratives_are_xhtml_divs() -> None:
    for resource in resources():
        div = resource.get("text", {}).get("div")
        if div is not None:
            assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">'), resource["id"]
            assert div.endswith("</div>")


# ------------------------------------------------------------------ ids and references


def test_ids_are_valid_and_unique_per_type() -> None:
    seen = Counter(item.key for item in loaded())
    duplicates = [key for key, count in seen.items() if count > 1]
    assert not duplicates, f"duplicate ids: {duplicates}"
    for item in loaded():
        assert ID_RE.fullmatch(item.resource["id"]), item.key


def test_references_are_relative_and_resolve_in_load_order() -> None:
    position = {item.key: item for item in loaded()}
    checked = 0
    for item in loaded():
        for ref in iter_references(item.resource):
            checked += 1
            match = LITERAL_REF_RE.fullmatch(ref)
            assert match, f"{item.key}: not a relative literal reference: {ref!r}"
            target = position.get(ref)
            assert target is not None, f"{item.key}: dangling reference {ref}"
            assert target.file_index <= item.file_index, (
                f"{item.key} in {item.file} references {ref} from later file {target.file}"
            )
    assert checked > 100


def test_references_within_a_bundle_point_backwards() -> None:
    """Stricter than transaction semantics require: lets a naive sequential loader work."""
    position = {item.key: item for item in loaded()}
    for item in loaded():
        for ref in iter_references(item.resource):
            target = position[ref]
            if target.file_index == item.file_index:
                assert target.entry_index < item.entry_index, f"{item.key} -> {ref}"


def test_clinical_resources_are_consistent_about_the_patient() -> None:
    clinical = ("Encounter", "Condition", "Observation", "DiagnosticReport", "MedicationRequest")
    for resource in resources():
        if resource["resourceType"] not in clinical:
            continue
        subject = resource["subject"]["reference"]
        assert subject.startswith("Patient/"), resource["id"]
        if "encounter" in resource:
            encounter = resolve(resource["encounter"])
            assert encounter["subject"]["reference"] == subject, resource["id"]
        for field in ("reasonReference", "result"):
            for ref in resource.get(field, []):
                assert resolve(ref)["subject"]["reference"] == subject, resource["id"]


# ------------------------------------------------------------------ organizations / people


def test_two_organizations_with_identifiers() -> None:
    orgs = resources("Organization")
    assert len(orgs) == 2
    for org in orgs:
        assert any(i["system"] == ORGANIZATION_ID and i["value"] for i in org["identifier"])
        assert org["type"] and org["telecom"] and org["address"] and org["name"]


def test_four_practitioners_each_with_a_role() -> None:
    practitioners = resources("Practitioner")
    roles = resources("PractitionerRole")
    assert len(practitioners) == 4
    roles_per_practitioner = Counter(role["practitioner"]["reference"] for role in roles)
    for practitioner in practitioners:
        key = f"Practitioner/{practitioner['id']}"
        assert roles_per_practitioner[key] == 1, key
        assert any(
            i["system"] == PRACTITIONER_LICENCE and i["value"] for i in practitioner["identifier"]
        )
        assert practitioner["name"][0]["family"]
        assert all(q["code"]["coding"] for q in practitioner["qualification"])
    for role in roles:
        assert role["organization"]["reference"].startswith("Organization/")
        assert role["code"] and role["specialty"]


def test_ten_patients_with_national_identifier() -> None:
    patients = resources("Patient")
    assert len(patients) == 10
    for patient in patients:
        national = [i for i in patient["identifier"] if i["system"] == NATIONAL_ID]
        assert len(national) == 1, patient["id"]
        assert national[0]["value"]
        assert codings(national[0]["type"], V2_0203)[0]["code"] == "NI"
        official = [n for n in patient["name"] if n.get("use") == "official"]
        assert official and official[0]["family"] and official[0]["given"]
        assert patient["gender"] in {"male", "female", "other", "unknown"}
        assert patient["birthDate"]
        assert patient["managingOrganization"]["reference"].startswith("Organization/")
        assert all(
            gp["reference"].startswith("Practitioner/") for gp in patient["generalPractitioner"]
        )


def test_patient_names_mix_cyrillic_and_latin() -> None:
    names = [name_text(p["name"][0]) for p in resources("Patient")]
    cyrillic = [n for n in names if CYRILLIC_RE.search(n)]
    assert len(cyrillic) >= 3
    assert len(names) - len(cyrillic) >= 3


def test_patients_vary_in_gender_and_age() -> None:
    patients = resources("Patient")
    assert {p["gender"] for p in patients} >= {"male", "female"}
    birth_years = [int(p["birthDate"][:4]) for p in patients]
    assert min(birth_years) < 1950 and max(birth_years) > 2010
    assert any("deceasedDateTime" in p or p.get("deceasedBoolean") for p in patients)


# ------------------------------------------------------------------ clinical content


def test_encounters() -> None:
    encounters = resources("Encounter")
    assert len(encounters) >= 10
    classes = {e["class"]["code"] for e in encounters if e["class"]["system"] == ACT_CODE}
    assert {"AMB", "IMP"} <= classes
    assert {"finished", "in-progress"} <= {e["status"] for e in encounters}
    for encounter in encounters:
        assert encounter["class"]["system"] == ACT_CODE
        assert encounter["serviceProvider"]["reference"].startswith("Organization/")
        assert encounter["participant"] and encounter["reasonCode"]
        assert encounter["period"]["start"]
    patients_with_encounters = {e["subject"]["reference"] for e in encounters}
    assert patients_with_encounters == {f"Patient/{p['id']}" for p in resources("Patient")}


def test_every_condition_has_icd10_coding() -> None:
    conditions = resources("Condition")
    assert conditions
    for condition in conditions:
        icd = codings(condition["code"], ICD10)
        assert icd, condition["id"]
        assert ICD10_CODE_RE.fullmatch(icd[0]["code"]), condition["id"]
        assert icd[0]["display"]
        assert condition["clinicalStatus"]["coding"] and condition["verificationStatus"]["coding"]
        assert condition["recorder"]["reference"].startswith("Practitioner/")


def test_medication_requests_are_atc_coded_e_prescriptions() -> None:
    requests = resources("MedicationRequest")
    assert requests
    assert {"active", "completed"} <= {r["status"] for r in requests}
    for request in requests:
        atc = codings(request["medicationCodeableConcept"], ATC)
        assert atc and atc[0]["display"], request["id"]
        assert re.fullmatch(r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}", atc[0]["code"])
        assert request["intent"] == "order"
        assert request["requester"]["reference"].startswith("Practitioner/")
        reasons = [resolve(r)["resourceType"] for r in request["reasonReference"]]
        assert reasons and set(reasons) == {"Condition"}
        for dosage in request["dosageInstruction"]:
            assert dosage["text"]
            for dose_and_rate in dosage.get("doseAndRate", []):
                dose_range = dose_and_rate.get("doseRange", {})
                quantities = [dose_and_rate.get("doseQuantity"), *dose_range.values()]
                assert any(quantities), request["id"]
                assert all(q["system"] == UCUM and q["code"] for q in quantities if q)
        assert request["dispenseRequest"]["quantity"]["system"] == UCUM


def test_lab_observations_have_loinc_and_ucum_quantity() -> None:
    labs = [r for r in resources("Observation") if is_lab_observation(r)]
    assert len(labs) >= 20
    for obs in labs:
        assert codings(obs["code"], LOINC), obs["id"]
        quantity = obs["valueQuantity"]
        assert quantity["system"] == UCUM and quantity["code"], obs["id"]
        assert isinstance(quantity["value"], int | float)
        assert obs["status"] == "final"
        assert obs["referenceRange"], obs["id"]
        assert obs["performer"] and obs["effectiveDateTime"] and obs["issued"]


def test_diagnostic_reports_group_lab_observations() -> None:
    reports = resources("DiagnosticReport")
    assert reports
    grouped: set[str] = set()
    for report in reports:
        assert has_category(report, V2_0074, "LAB"), report["id"]
        assert codings(report["code"], LOINC), report["id"]
        assert report["status"] == "final"
        assert report["result"], report["id"]
        for ref in report["result"]:
            assert is_lab_observation(resolve(ref)), f"{report['id']} -> {ref['reference']}"
            grouped.add(ref["reference"])
    lab_keys = {f"Observation/{o['id']}" for o in resources("Observation") if is_lab_observation(o)}
    assert lab_keys == grouped, "every lab Observation belongs to exactly one report"


def test_blood_pressure_observations() -> None:
    panels = [
        o
        for o in resources("Observation")
        if any(c["code"] == "85354-9" for c in codings(o["code"], LOINC))
    ]
    assert len(panels) >= 2
    for obs in panels:
        assert has_category(obs, OBS_CATEGORY, "vital-signs")
        components = {
            codings(c["code"], LOINC)[0]["code"]: c["valueQuantity"] for c in obs["component"]
        }
        assert set(components) == {"8480-6", "8462-4"}
        for quantity in components.values():
            assert quantity["system"] == UCUM and quantity["code"] == "mm[Hg]"


def test_clinical_dates_are_in_2024_to_2026() -> None:
    fields = ("effectiveDateTime", "issued", "authoredOn", "recordedDate")
    for resource in resources():
        values = [resource[f] for f in fields if f in resource]
        if resource["resourceType"] == "Encounter":
            values.append(resource["period"]["start"])
        for value in values:
            assert 2024 <= int(value[:4]) <= 2026, f"{resource['id']}: {value}"
