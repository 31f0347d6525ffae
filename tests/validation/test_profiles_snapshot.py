"""Snapshot generation from differentials, against the base and against a profile."""

from __future__ import annotations

import pytest

from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.profiles.snapshot import SnapshotError, generate_snapshot
from tests.validation.fixtures.profile_helpers import EX, FIXTURES


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return ProfileValidator.load(FIXTURES)


def by_id(validator, url):
    sd = validator.structure_definition(url)
    assert sd is not None
    return {e["id"]: e for e in sd["snapshot"]["element"]}


def test_snapshot_against_base(validator):
    elements = by_id(validator, EX + "test-patient")
    assert elements["Patient.identifier"]["min"] == 1
    assert elements["Patient.identifier"]["slicing"]["rules"] == "open"
    assert elements["Patient.identifier:mrn"]["sliceName"] == "mrn"
    assert elements["Patient.identifier:mrn.system"]["fixedUri"] == "http://example.org/mrn"
    # the slice's children come from the Identifier datatype
    assert "Patient.identifier:mrn.period" in elements
    # a child of a datatype the base does not expand
    assert elements["Patient.name.family"]["min"] == 1
    # untouched base elements are kept, with the base constraints
    assert any(c["key"] == "pat-1" for c in elements["Patient.contact"]["constraint"])
    # profile constraints are added to the base ones
    keys = [c["key"] for c in elements["Patient"]["constraint"]]
    assert "tp-1" in keys and "dom-2" in keys
    order = list(elements)
    assert order.index("Patient.identifier") < order.index("Patient.identifier:mrn")
    assert order.index("Patient.identifier:mrn.assigner") < order.index("Patient.active")


def test_snapshot_against_a_profile(validator):
    elements = by_id(validator, EX + "test-patient-derived")
    # inherited from test-patient
    assert elements["Patient.active"]["fixedBoolean"] is True
    assert elements["Patient.identifier:mrn.system"]["fixedUri"] == "http://example.org/mrn"
    # new slice, built from ids missing in the differential (path + sliceName)
    assert elements["Patient.identifier:ssn"]["max"] == "1"
    assert elements["Patient.identifier:ssn.system"]["fixedUri"] == "http://example.org/ssn"
    # a slice's child tightened
    assert elements["Patient.identifier:mrn.value"]["maxLength"] == 5
    order = list(elements)
    assert order.index("Patient.identifier:mrn.assigner") < order.index("Patient.identifier:ssn")


def test_renamed_choice_and_extension_profile(validator):
    size = by_id(validator, EX + "ext-size")
    assert [t["code"] for t in size["Extension.value[x]"]["type"]] == ["integer"]
    assert size["Extension.value[x]"]["min"] == 1
    obs = by_id(validator, EX + "test-observation")
    systolic = obs["Observation.component:systolic.value[x]"]
    assert [t["code"] for t in systolic["type"]] == ["Quantity"]
    assert obs["Observation.component:systolic.value[x].code"]["fixedCode"] == "mm[Hg]"
    assert obs["Observation.value[x]:valueQuantity.unit"]["min"] == 1


def test_unknown_base_and_unplaceable_element():
    def resolve(url):
        return None

    sd = {"url": "x", "baseDefinition": "http://nowhere", "differential": {"element": []}}
    with pytest.raises(SnapshotError):
        generate_snapshot(sd, resolve)
    v = ProfileValidator.load(None)
    base = v.structure_definition("http://hl7.org/fhir/StructureDefinition/Patient")
    sd = {
        "url": "y",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "differential": {"element": [{"id": "Patient.nope.deeper", "path": "Patient.nope.deeper"}]},
    }
    with pytest.raises(SnapshotError):
        generate_snapshot(sd, lambda url: base)
