"""Slicing: discriminators value, pattern, type, profile, exists; rules closed, open, openAtEnd;
ordered slices."""

from __future__ import annotations

import pytest

from fhir_server.validation.profiles import ProfileValidator
from tests.validation.fixtures.profile_helpers import (
    EX,
    FIXTURES,
    StubTerminology,
    errors,
    observation,
    patient,
)

OBS = EX + "test-observation"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return ProfileValidator.load(FIXTURES, StubTerminology())


def texts(issues):
    return [i.diagnostics for i in errors(issues)]


def component(code, **value):
    return {"code": {"coding": [{"system": LOINC, "code": code}]}, **value}


SYSTOLIC = component(
    "8480-6", valueQuantity={"value": 1, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
)


def test_conforming_observation(validator):
    assert validator.validate(observation(), [OBS]) == []


def test_value_discriminator_open(validator):
    # Patient.identifier sliced by system value, open: other systems are fine
    assert errors(validator.validate(patient(), [EX + "test-patient"])) == []
    extra = patient(
        identifier=[
            {"system": "http://example.org/mrn", "value": "1"},
            {"system": "http://other", "value": "2"},
        ]
    )
    assert errors(validator.validate(extra, [EX + "test-patient"])) == []


def test_pattern_discriminator_closed_and_slice_children(validator):
    missing = observation(component=[component("8462-4")])
    assert any(
        "slice 'systolic': minimum required = 1" in t
        for t in texts(validator.validate(missing, [OBS]))
    )
    stranger = observation(component=[SYSTOLIC, component("0000-0")])
    assert any("does not match any slice" in t for t in texts(validator.validate(stranger, [OBS])))
    # a child of a slice (systolic.valueQuantity.code fixed mm[Hg])
    wrong_unit = observation(
        component=[
            component(
                "8480-6",
                valueQuantity={"value": 1, "system": "http://unitsofmeasure.org", "code": "kPa"},
            )
        ]
    )
    issues = errors(validator.validate(wrong_unit, [OBS]))
    assert ("Observation.component[0].valueQuantity.code",) in [i.expression for i in issues]
    no_value = observation(component=[component("8480-6")])
    assert any("component[0].value" in t for t in texts(validator.validate(no_value, [OBS])))


def test_ordered_slices(validator):
    swapped = observation(component=[component("8462-4"), SYSTOLIC])
    assert any("out of order" in t for t in texts(validator.validate(swapped, [OBS])))


def test_type_discriminator(validator):
    assert any(
        "does not match any slice" in t
        for t in texts(validator.validate(observation(valueQuantity=None, valueString="x"), [OBS]))
    )
    no_unit = observation(valueQuantity={"value": 1})
    assert ("Observation.valueQuantity.unit",) in [
        i.expression for i in errors(validator.validate(no_unit, [OBS]))
    ]


def test_profile_discriminator(validator):
    size = {"url": EX + "ext-size", "valueInteger": 3}
    ok = observation(extension=[{"url": EX + "ext-colour", "valueString": "r"}, size])
    assert errors(validator.validate(ok, [OBS])) == []
    no_colour = observation(extension=[size])
    assert any(
        "slice 'colour': minimum required = 1" in t
        for t in texts(validator.validate(no_colour, [OBS]))
    )
    bad_size = observation(
        extension=[
            {"url": EX + "ext-colour", "valueString": "r"},
            {"url": EX + "ext-size", "valueString": "3"},
        ]
    )
    assert any("does not match any slice" in t for t in texts(validator.validate(bad_size, [OBS])))


def test_exists_discriminator(validator):
    two_lows = observation(referenceRange=[{"low": {"value": 1}}, {"low": {"value": 2}}])
    assert any(
        "slice 'withLow': maximum allowed = 1" in t
        for t in texts(validator.validate(two_lows, [OBS]))
    )
    high_only = observation(referenceRange=[{"high": {"value": 1}}])
    assert ("Observation.referenceRange[0].text",) in [
        i.expression for i in errors(validator.validate(high_only, [OBS]))
    ]


def test_open_at_end(validator):
    late = observation(
        identifier=[
            {"system": "http://example.org/other", "value": "2"},
            {"system": "http://example.org/main", "value": "1"},
        ]
    )
    assert any("openAtEnd" in t for t in texts(validator.validate(late, [OBS])))
