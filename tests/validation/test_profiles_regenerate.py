"""Snapshot regeneration: US Core 5.0.1 without its snapshots gives the same issues.

The US Core file in ../shared ships snapshots only, so each profile's differential is derived
from its snapshot (the elements that differ from what the base — or, inside slices and datatypes,
the sliced element or the datatype's definition — already says), the snapshot is dropped, and
`snapshot.py` regenerates it when the validator first needs the profile. us-core-blood-pressure's
base (us-core-vital-signs) is not in the file: its differential is taken against R4 Observation,
which it is then based on. Both validators must then report the same issues — for the Synthea
samples (when present) and for small US Core resources made here — and have the same compiled
elements. Without ../shared, the same round trip runs on the local fixture profiles and the
national-core profiles.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.config import PROJECT_ROOT
from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.profiles.generate import compact_element
from tests.validation.fixtures.profile_helpers import (
    EX,
    FIXTURES,
    StubTerminology,
    errors,
    observation,
    patient,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
US_CORE = SHARED / "fhir-r4" / "uscore-v5.0.1-structuredefinitions.json"
SYNTHEA = SHARED / "samples" / "synthea-r4"
US = "http://hl7.org/fhir/us/core/StructureDefinition/"
FHIR_SD = "http://hl7.org/fhir/StructureDefinition/"
NATIONAL_CORE = PROJECT_ROOT / "profiles" / "national-core"
needs_us_core = pytest.mark.skipif(not US_CORE.exists(), reason="US Core not available")

Element = dict[str, Any]
COMPARED = ("min", "max", "maxLength", "type", "binding", "slicing", "contentReference")


# -- deriving a differential from a snapshot ---------------------------------------------------


def essentials(element: Element) -> Element:
    """What validation reads of an element (the form of the committed base definitions)."""
    out = compact_element(element)
    out.pop("id", None)
    out.pop("path", None)
    out.pop("sliceName", None)
    if "constraint" in out:
        out["constraint"] = sorted(c["key"] for c in out["constraint"])
    return out


def _unsliced(element_id: str) -> str:
    return ".".join(part.split(":", 1)[0] for part in element_id.split("."))


def derive_differential(
    snapshot: list[Element], base: list[Element], resolve: Callable[[str], dict[str, Any] | None]
) -> list[Element]:
    """The elements of `snapshot` that say more than what the generator starts from — the base
    element with the same id; for a slice's descendant, the sliced element's; for a child of an
    element the base does not expand, its datatype's (or type profile's) definition — in what
    validation reads or in mustSupport (as an implementation guide's differential does)."""
    by_id = {e["id"]: e for e in snapshot}
    base_by_id = {e.get("id", e["path"]): e for e in base}
    differential: list[Element] = []
    for element in snapshot:
        element_id = element["id"]
        reference = base_by_id.get(element_id)
        if reference is None and ":" in element_id.rsplit(".", 1)[-1]:
            reference = None  # a new slice: always stated
        elif reference is None:
            reference = by_id.get(_unsliced(element_id)) if ":" in element_id else None
            if reference is None:
                reference = _from_type(element_id, by_id, resolve)
        if reference is None:
            differential.append(_stated(element, None))
            continue
        if (
            essentials(element) != essentials(reference)
            or element.get("mustSupport", False) != reference.get("mustSupport", False)
            or element_id == snapshot[0]["id"]
        ):
            differential.append(_stated(element, reference))
    return differential


def _from_type(
    element_id: str, by_id: dict[str, Element], resolve: Callable[[str], dict[str, Any] | None]
) -> Element | None:
    parent_id, _, name = element_id.rpartition(".")
    parent = by_id.get(parent_id)
    if parent is None or len(parent.get("type", ())) != 1:
        return None
    kind = parent["type"][0]
    url = (kind.get("profile") or [None])[0] or FHIR_SD + kind["code"]
    sd = resolve(url)
    if sd is None:
        return None
    elements = sd["snapshot"]["element"]
    root = elements[0].get("id", elements[0]["path"])
    return next((e for e in elements if e.get("id", e["path"]) == f"{root}.{name}"), None)


def _stated(element: Element, reference: Element | None) -> Element:
    """The differential form of a snapshot element: id, path, sliceName, and what changed."""
    out: Element = {"id": element["id"], "path": element["path"]}
    if "sliceName" in element:
        out["sliceName"] = element["sliceName"]
    if element.get("mustSupport"):
        out["mustSupport"] = True
    compact = compact_element(element)
    base = compact_element(reference) if reference is not None else {}
    for key, value in compact.items():
        if key in ("id", "path", "sliceName", "constraint"):
            continue
        if base.get(key) != value:
            out[key] = value
    known = {c["key"] for c in base.get("constraint", ())}
    added = [c for c in compact.get("constraint", ()) if c["key"] not in known]
    if added:
        out["constraint"] = added
    for key in [k for k in base if k.startswith(("fixed", "pattern")) and k not in compact]:
        raise AssertionError(f"{element['id']}: drops {key}, which a differential cannot say")
    return out


def without_snapshots(
    definitions: list[dict[str, Any]], reference: ProfileValidator
) -> list[dict[str, Any]]:
    """The definitions with derived differentials and no snapshots."""
    urls = {sd["url"] for sd in definitions}
    shipped = {sd["url"]: sd for sd in definitions}

    def resolve(url: str) -> dict[str, Any] | None:
        return shipped.get(url) or reference.structure_definition(url)

    out = []
    for sd in definitions:
        base_url = sd["baseDefinition"]
        if base_url not in urls and reference.structure_definition(base_url) is None:
            base_url = FHIR_SD + sd["type"]  # the nearest base available
        base = resolve(base_url)
        assert base is not None, base_url
        differential = derive_differential(
            sd["snapshot"]["element"], base["snapshot"]["element"], resolve
        )
        stripped = {k: v for k, v in sd.items() if k not in ("snapshot", "differential")}
        stripped["baseDefinition"] = base_url
        stripped["differential"] = {"element": differential}
        out.append(stripped)
    return out


def bundle_dir(directory: Path, definitions: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    entries = [{"resource": sd} for sd in definitions]
    (directory / "definitions.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})
    )
    return directory


def issues_of(validator: ProfileValidator, resource: dict[str, Any], profiles: list[str]):
    return [
        (i.severity, i.code, i.expression, i.diagnostics)
        for i in validator.validate(resource, profiles)
    ]


def compiled_elements(validator: ProfileValidator, url: str) -> dict[str, Element]:
    sd = validator.structure_definition(url)
    assert sd is not None, url
    return {e["id"]: essentials(e) for e in sd["snapshot"]["element"]}


def differences(a: dict[str, Element], b: dict[str, Element]) -> list[str]:
    found = [f"only shipped: {i}" for i in a if i not in b]
    found += [f"only regenerated: {i}" for i in b if i not in a]
    for element_id in a.keys() & b.keys():
        for key in sorted(a[element_id].keys() | b[element_id].keys()):
            if a[element_id].get(key) != b[element_id].get(key):
                found.append(
                    f"{element_id}.{key}: {a[element_id].get(key)} != {b[element_id].get(key)}"
                )
    return found


# -- US Core ------------------------------------------------------------------------------------


def us_core_profile_for(resource: dict[str, Any]) -> list[str]:
    kind = resource["resourceType"]
    if kind == "Observation":
        codes = {c.get("code") for c in resource.get("code", {}).get("coding", [])}
        return [US + "us-core-blood-pressure"] if codes & {"85354-9", "55284-4"} else []
    return {
        "Patient": [US + "us-core-patient"],
        "MedicationRequest": [US + "us-core-medicationrequest"],
        "Device": [US + "us-core-implantable-device"],
    }.get(kind, [])


class Pair:
    """The same definitions twice: with their shipped snapshots, and with derived differentials
    only (snapshots regenerated by snapshot.py)."""

    def __init__(self, definitions: list[dict[str, Any]], directory: Path) -> None:
        self.definitions = definitions
        self.shipped = ProfileValidator.load(
            bundle_dir(directory / "shipped", definitions), StubTerminology()
        )
        self.stripped = without_snapshots(definitions, self.shipped)
        self.regenerated = ProfileValidator.load(
            bundle_dir(directory / "regenerated", self.stripped), StubTerminology()
        )

    def same_issues(self, resource: dict[str, Any], profiles: list[str]) -> list[Any]:
        shipped = issues_of(self.shipped, resource, profiles)
        assert issues_of(self.regenerated, resource, profiles) == shipped, resource.get("id")
        return shipped


@pytest.fixture(scope="module")
def us_core(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    if not US_CORE.exists():
        pytest.skip("US Core not available")
    return Pair(json.loads(US_CORE.read_text()), tmp_path_factory.mktemp("uscore-regen"))


@needs_us_core
def test_us_core_is_regenerated_from_differentials(us_core):
    assert len(us_core.stripped) == len(us_core.definitions) == 8
    for sd in us_core.stripped:
        assert "snapshot" not in sd
        assert 2 < len(sd["differential"]["element"]) < 40, sd["url"]
    pressure = next(sd for sd in us_core.stripped if sd["url"].endswith("blood-pressure"))
    assert pressure["baseDefinition"] == FHIR_SD + "Observation"
    identity = next(sd for sd in us_core.stripped if sd["url"].endswith("genderIdentity"))
    assert identity["baseDefinition"] == FHIR_SD + "patient-genderIdentity"
    for sd in us_core.definitions:
        shipped = us_core.shipped.structure_definition(sd["url"])
        regenerated = us_core.regenerated.structure_definition(sd["url"])
        assert shipped is not None and regenerated is not None
        assert [e["id"] for e in regenerated["snapshot"]["element"]] == [
            e["id"] for e in shipped["snapshot"]["element"]
        ], sd["url"]
        assert (
            differences(
                compiled_elements(us_core.shipped, sd["url"]),
                compiled_elements(us_core.regenerated, sd["url"]),
            )
            == []
        ), sd["url"]
    assert us_core.regenerated.notes == []


@needs_us_core
@pytest.mark.skipif(not SYNTHEA.exists(), reason="Synthea samples not available")
def test_us_core_synthea_same_issues(us_core):
    resources = []
    for path in sorted(SYNTHEA.glob("*.json")):
        resources += [e["resource"] for e in orjson.loads(path.read_bytes())["entry"]]
    checked = 0
    for resource in resources:
        profiles = us_core_profile_for(resource)
        if profiles:
            us_core.same_issues(resource, profiles)
            checked += 1
    assert checked > 50


def us_patient(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "us1",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        "extension": [
            {
                "url": US + "us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                        "code": "2106-3", "display": "White"},
                    },
                    {"url": "text", "valueString": "White"},
                ],
            },
            {"url": US + "us-core-birthsex", "valueCode": "F"},
        ],
        "identifier": [{"system": "http://hospital.example.org", "value": "1032702"}],
        "name": [{"family": "Shaw", "given": ["Amy"]}],
        "telecom": [{"system": "phone", "value": "555-555-5555", "use": "home"}],
        "gender": "female",
        "birthDate": "1987-02-20",
    }  # fmt: skip
    resource.update(copy.deepcopy(changes))
    return {k: v for k, v in resource.items() if v is not None}


def us_pressure(**changes: Any) -> dict[str, Any]:
    loinc = "http://loinc.org"

    def component(code: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": loinc, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg",
                              "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        }  # fmt: skip

    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "bp1",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                            "observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
        "subject": {"reference": "Patient/us1"},
        "effectiveDateTime": "2023-05-01T10:00:00Z",
        "component": [component("8480-6", 120), component("8462-4", 80)],
    }  # fmt: skip
    resource.update(copy.deepcopy(changes))
    return {k: v for k, v in resource.items() if v is not None}


def us_medication_request(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/"
                                                            "umls/rxnorm", "code": "1049221"}]},
        "subject": {"reference": "Patient/us1"},
        "authoredOn": "2023-05-01",
        "requester": {"reference": "Practitioner/pr1"},
    }  # fmt: skip
    resource.update(copy.deepcopy(changes))
    return {k: v for k, v in resource.items() if v is not None}


US_FIXTURES = [
    ("patient", us_patient, "us-core-patient", {"gender": None, "identifier": [{"value": "1"}]}),
    ("patient", us_patient, "us-core-patient",
     {"extension": [{"url": US + "us-core-birthsex", "valueCode": "F"},
                    {"url": US + "us-core-birthsex", "valueString": "F"}]}),
    ("pressure", us_pressure, "us-core-blood-pressure",
     {"component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                     "valueQuantity": {"value": 120, "unit": "mmHg"}}], "subject": None}),
    ("pressure", us_pressure, "us-core-blood-pressure", {"category": None,
                                                         "effectiveDateTime": "2023"}),
    ("medication", us_medication_request, "us-core-medicationrequest",
     {"requester": None, "medicationCodeableConcept": None}),
]  # fmt: skip


@needs_us_core
@pytest.mark.parametrize(("kind", "make", "profile", "breakage"), US_FIXTURES)
def test_us_core_fixtures_same_issues(us_core, kind, make, profile, breakage):
    good = us_core.same_issues(make(), [US + profile])
    assert [i for i in good if i[0] in ("error", "fatal")] == [], kind
    bad = us_core.same_issues(make(**breakage), [US + profile])
    assert [i for i in bad if i[0] in ("error", "fatal")], kind


# -- without ../shared: the local profiles, round trip -----------------------------------------


def round_trip(folder: Path, directory: Path) -> Pair:
    """The folder's profiles (differentials) with generated snapshots, then the same again from
    differentials derived from those snapshots."""
    original = ProfileValidator.load(folder, StubTerminology())
    definitions = []
    for url in sorted(original.local_urls):
        sd = original.structure_definition(url)
        if "|" not in url and sd is not None:
            definitions.append(sd)
    return Pair(definitions, directory)


def test_round_trip_on_local_fixtures(tmp_path):
    pair = round_trip(FIXTURES, tmp_path)
    assert len(pair.definitions) >= 5
    for sd in pair.definitions:
        assert (
            differences(
                compiled_elements(pair.shipped, sd["url"]),
                compiled_elements(pair.regenerated, sd["url"]),
            )
            == []
        ), sd["url"]
    samples = [
        (patient(), [EX + "test-patient"]),
        (patient(active=False, identifier=[{"system": "x", "value": "1"}]), [EX + "test-patient"]),
        (patient(telecom=[{"value": "1"}]), [EX + "test-patient-derived"]),
        (observation(), [EX + "test-observation"]),
        (observation(component=[], valueQuantity={"value": 1}), [EX + "test-observation"]),
    ]
    found = [pair.same_issues(resource, profiles) for resource, profiles in samples]
    assert found[0] == [] and found[3] == []
    assert all(any(i[0] == "error" for i in issues) for issues in (found[1], found[2], found[4]))


def test_round_trip_on_national_core(tmp_path):
    pair = round_trip(NATIONAL_CORE, tmp_path)
    assert len(pair.definitions) == 8
    for sd in pair.definitions:
        assert (
            differences(
                compiled_elements(pair.shipped, sd["url"]),
                compiled_elements(pair.regenerated, sd["url"]),
            )
            == []
        ), sd["url"]
    checked = broken_with_errors = 0
    for path in sorted((PROJECT_ROOT / "seed_data").glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            for sd in pair.definitions:
                if sd["type"] != resource["resourceType"]:
                    continue
                pair.same_issues(resource, [sd["url"]])
                broken = {k: v for k, v in resource.items() if k not in ("identifier", "code")}
                issues = pair.same_issues(broken, [sd["url"]])
                checked += 1
                broken_with_errors += any(i[0] == "error" for i in issues)
    assert checked > 20 and broken_with_errors > 10


# -- snapshot.py: a differential that restates part of slicing / binding ------------------------


def test_partial_slicing_and_binding_keep_the_rest():
    validator = ProfileValidator.load(FIXTURES, StubTerminology())
    derived = {
        "resourceType": "StructureDefinition",
        "url": EX + "closed-derived",
        "name": "ClosedDerived",
        "kind": "resource",
        "type": "Patient",
        "baseDefinition": EX + "test-patient",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Patient", "path": "Patient"},
            {"id": "Patient.identifier", "path": "Patient.identifier",
             "slicing": {"rules": "closed"}},
            {"id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
             "binding": {"strength": "required"}},
        ]},
    }  # fmt: skip
    validator.registry.add(derived)
    validator = ProfileValidator(validator.registry, StubTerminology())
    sd = validator.structure_definition(EX + "closed-derived")
    assert sd is not None
    elements = {e["id"]: e for e in sd["snapshot"]["element"]}
    assert elements["Patient.identifier"]["slicing"] == {
        "discriminator": [{"type": "value", "path": "system"}],
        "rules": "closed",
    }
    assert elements["Patient.maritalStatus"]["binding"] == {
        "strength": "required",
        "valueSet": "http://example.org/fhir/ValueSet/test-marital",
    }
    # closed now: the ssn identifier (unsliced content in test-patient) matches no slice
    issues = errors(validator.validate(patient(), [EX + "closed-derived"]))
    assert [i.expression for i in issues] == [("Patient.identifier[1]",)]
    unmarried = patient(
        maritalStatus={"coding": [{"system": "http://example.org/ms", "code": "W"}]}
    )
    assert any(i.code == "code-invalid" for i in errors(
        validator.validate(unmarried, [EX + "closed-derived"])))  # fmt: skip
