"""The national-core implementation guide in profiles/: well-formed, self-consistent, and every
seed_data resource conforms to it, checked from the files (not with the profile validator):
required elements present, identifier slices filled with the fixed system, patterns met,
FHIRPath invariants true, and every coding in a bound element valid in the IG's ValueSets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from fhir_server.validation.terminology import Terminology

ROOT = Path(__file__).resolve().parents[2]
IG_DIR = ROOT / "profiles" / "national-core"
SEED_DIR = ROOT / "seed_data"
CANONICAL = "https://ehealth.example.org/fhir/"
SD_BASE = CANONICAL + "StructureDefinition/"

PROFILED_TYPES = {
    "Patient": "national-patient",
    "Practitioner": "national-practitioner",
    "Organization": "national-organization",
    "Encounter": "national-encounter",
    "Condition": "national-condition",
    "MedicationRequest": "national-medicationrequest",
    "Observation": "national-lab-observation",
    "DiagnosticReport": "national-lab-report",
}


def _ig() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text("utf-8"))
        for p in sorted(IG_DIR.glob("*.json"))
        if p.name != "package.json"
    ]


IG = _ig()
PROFILES = {r["id"]: r for r in IG if r["resourceType"] == "StructureDefinition"}
TERMINOLOGY = Terminology.load(IG)


def _seed() -> list[dict[str, Any]]:
    out = []
    for path in sorted(SEED_DIR.glob("*.json")):
        out += [e["resource"] for e in json.loads(path.read_text("utf-8"))["entry"]]
    return out


SEED = _seed()


def profile_for(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The national-core profile a seed resource is checked against (lab Observations only)."""
    name = PROFILED_TYPES.get(resource["resourceType"])
    if name == "national-lab-observation" and not any(
        c.get("code") == "laboratory"
        for cat in resource.get("category", ())
        for c in cat.get("coding", ())
    ):
        return None
    return PROFILES[name] if name else None


# ---- walking resources along element paths (enough for the differentials of this IG)


def _children(node: Any, name: str) -> Iterator[Any]:
    if not isinstance(node, dict):
        return
    keys = [k for k in node if k.startswith(name[:-3])] if name.endswith("[x]") else [name]
    for key in keys:
        value = node.get(key)
        if isinstance(value, list):
            yield from value
        elif value is not None:
            yield value


def nodes(
    resource: dict[str, Any], element: dict[str, Any], slices: dict[str, str]
) -> Iterator[Any]:
    """Values at the element's path; within an identifier slice, only that slice's members."""
    parts = element["id"].split(".")[1:]
    current: list[Any] = [resource]
    for part in parts:
        name, _, slice_name = part.partition(":")
        nxt = [c for n in current for c in _children(n, name)]
        if slice_name and f"{name}:{slice_name}" in slices:
            system = slices[f"{name}:{slice_name}"]
            nxt = [n for n in nxt if isinstance(n, dict) and n.get("system") == system]
        current = nxt
    yield from current


def identifier_slices(sd: dict[str, Any]) -> dict[str, str]:
    out = {}
    for element in sd["differential"]["element"]:
        if "fixedUri" in element and element["id"].endswith(".system") and ":" in element["id"]:
            owner = element["id"].rsplit(".", 1)[0].split(".", 1)[1]
            out[owner] = element["fixedUri"]
    return out


def matches_pattern(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            matches_pattern(value.get(k), v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(
            any(matches_pattern(v, p) for v in value) for p in pattern
        )
    return value == pattern


# ---- the IG files


def test_ig_has_the_profiles_and_terminology() -> None:
    assert set(PROFILES) == set(PROFILED_TYPES.values())
    kinds = {(r["resourceType"], r["id"]) for r in IG}
    assert ("CodeSystem", "atc") in kinds
    assert {r["id"] for r in IG if r["resourceType"] == "ValueSet"} >= {
        "icd10-diagnoses",
        "medication-atc",
        "lab-observation-codes",
        "lab-report-codes",
    }
    package = json.loads((IG_DIR / "package.json").read_text("utf-8"))
    assert package["canonical"] == CANONICAL.rstrip("/")


@pytest.mark.parametrize("resource", IG, ids=lambda r: f"{r['resourceType']}/{r['id']}")
def test_ig_resource_metadata(resource: dict[str, Any]) -> None:
    kind = resource["resourceType"]
    if kind == "CodeSystem":
        assert resource["url"] == "http://www.whocc.no/atc"  # the ATC fragment
        assert resource["content"] == "fragment"
    else:
        assert resource["url"] == f"{CANONICAL}{kind}/{resource['id']}"
    assert resource["status"] == "active" and resource["version"] and resource["name"]


@pytest.mark.parametrize("sd", PROFILES.values(), ids=lambda sd: sd["id"])
def test_structure_definitions_are_differentials_on_r4(sd: dict[str, Any]) -> None:
    assert sd["fhirVersion"] == "4.0.1" and sd["derivation"] == "constraint"
    assert sd["kind"] == "resource" and sd["abstract"] is False
    assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{sd['type']}"
    assert "snapshot" not in sd
    ids = [e["id"] for e in sd["differential"]["element"]]
    assert len(ids) == len(set(ids))
    assert ids[0] == sd["type"]
    for element in sd["differential"]["element"]:
        assert element["path"].split(".")[0] == sd["type"]
        assert element["path"] == ".".join(p.split(":")[0] for p in element["id"].split("."))
        for ref_type in element.get("type", ()):
            for target in ref_type.get("targetProfile", ()):
                assert target.startswith("http://hl7.org/fhir/StructureDefinition/") or (
                    target.removeprefix(SD_BASE) in PROFILES
                )


def test_every_binding_resolves_and_expands() -> None:
    bound = {
        e["binding"]["valueSet"]
        for sd in PROFILES.values()
        for e in sd["differential"]["element"]
        if "binding" in e
    }
    assert bound
    for url in bound:
        assert TERMINOLOGY.has_value_set(url), url
        expansion = TERMINOLOGY.expand(url)["expansion"]
        assert expansion["total"] > 0


def test_atc_value_set_uses_is_a_on_the_local_fragment() -> None:
    url = CANONICAL + "ValueSet/medication-atc"
    codes = {c["code"] for c in TERMINOLOGY.expand(url)["expansion"]["contains"]}
    assert "A10BA02" in codes and "A10BA" not in codes and "A10" not in codes
    assert all(len(c) == 7 for c in codes)
    assert TERMINOLOGY.validate_code(url, "http://www.whocc.no/atc", "C10AA").ok is False
    unknown = TERMINOLOGY.validate_code(url, "http://www.whocc.no/atc", "L01XE01")
    assert unknown.ok is None  # not in the fragment: cannot decide, never guessed


def test_icd10_value_set_is_enumerated_so_unknown_codes_fail() -> None:
    url = CANONICAL + "ValueSet/icd10-diagnoses"
    assert TERMINOLOGY.validate_code(url, "http://hl7.org/fhir/sid/icd-10", "I10").ok is True
    assert TERMINOLOGY.validate_code(url, "http://hl7.org/fhir/sid/icd-10", "XYZ").ok is False


# ---- the seed data against the IG


def test_every_profiled_seed_resource_has_a_profile() -> None:
    checked = [r for r in SEED if profile_for(r)]
    assert len(checked) == 2 + 4 + 10 + 16 + 14 + 16 + 34 + 12


@pytest.mark.parametrize("resource", SEED, ids=lambda r: f"{r['resourceType']}/{r['id']}")
def test_seed_resource_conforms(resource: dict[str, Any]) -> None:
    sd = profile_for(resource)
    if sd is None:
        pytest.skip("no national-core profile for this resource")
    slices = identifier_slices(sd)
    problems: list[str] = []
    for element in sd["differential"]["element"]:
        found = list(nodes(resource, element, slices))
        depth = element["id"].count(".")
        if element.get("min", 0) >= 1 and depth == 1 and not found:
            problems.append(f"{element['id']}: required, missing")
        if depth == 1 and element.get("max") == "1" and len(found) > 1:
            problems.append(f"{element['id']}: more than one")
        if "fixedUri" in element and any(v != element["fixedUri"] for v in found):
            problems.append(f"{element['id']}: not {element['fixedUri']}")
        pattern = element.get("patternCodeableConcept")
        if pattern and ":" in element["id"].rsplit(".", 1)[-1]:
            if not any(matches_pattern(v, pattern) for v in found):
                problems.append(f"{element['id']}: no value matches the pattern")
        elif pattern and not all(matches_pattern(v, pattern) for v in found):
            problems.append(f"{element['id']}: value does not match the pattern")
        for constraint in element.get("constraint", ()):
            fn = fhirpathpy.compile(constraint["expression"], models["r4"], {"returnRawData": True})
            for value in found:
                if fn(value) != [True]:
                    problems.append(f"{element['id']}: {constraint['key']} fails on {value}")
        for ref_type in element.get("type", ()):
            targets = [t.rsplit("/", 1)[-1] for t in ref_type.get("targetProfile", ())]
            allowed = {PROFILES[t]["type"] if t in PROFILES else t for t in targets}
            for value in found:
                if allowed and value["reference"].split("/")[0] not in allowed:
                    problems.append(f"{element['id']}: reference {value['reference']}")
        binding = element.get("binding")
        if binding:
            for value in found:
                codings = value.get("coding", [value]) if isinstance(value, dict) else []
                verdicts = [
                    TERMINOLOGY.validate_code(
                        binding["valueSet"], c.get("system"), c["code"], c.get("display")
                    )
                    for c in codings
                ]
                if not any(v.ok for v in verdicts):
                    problems.append(f"{element['id']}: {[v.message for v in verdicts]}")
                problems += [
                    f"{element['id']}: {v.message}"
                    for v in verdicts
                    if "does not match" in v.message
                ]
    assert not problems, problems


def test_base_r4_required_bindings_hold_for_seed_codes() -> None:
    """Seed codings in the R4 required bindings the IG relies on, against the built-in R4."""
    checks = [
        ("Condition", "clinicalStatus", "http://hl7.org/fhir/ValueSet/condition-clinical"),
        ("Condition", "verificationStatus", "http://hl7.org/fhir/ValueSet/condition-ver-status"),
    ]
    for rtype, element, url in checks:
        for resource in (r for r in SEED if r["resourceType"] == rtype):
            for coding in resource[element]["coding"]:
                verdict = TERMINOLOGY.validate_code(
                    url, coding["system"], coding["code"], coding.get("display")
                )
                assert verdict.ok is True and "does not match" not in verdict.message
    primitives = [
        ("Patient", "gender", "http://hl7.org/fhir/ValueSet/administrative-gender"),
        ("Encounter", "status", "http://hl7.org/fhir/ValueSet/encounter-status"),
        ("Observation", "status", "http://hl7.org/fhir/ValueSet/observation-status"),
        ("DiagnosticReport", "status", "http://hl7.org/fhir/ValueSet/diagnostic-report-status"),
        ("MedicationRequest", "status", "http://hl7.org/fhir/ValueSet/medicationrequest-status"),
        ("MedicationRequest", "intent", "http://hl7.org/fhir/ValueSet/medicationrequest-intent"),
    ]
    for rtype, element, url in primitives:
        for resource in (r for r in SEED if r["resourceType"] == rtype):
            assert TERMINOLOGY.validate_code(url, None, resource[element]).ok is True
