"""Profile validation, rule by rule: a conforming and a violating resource for each."""

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

PATIENT = EX + "test-patient"


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return ProfileValidator.load(FIXTURES, StubTerminology())


def codes(issues):
    return [(i.severity, i.code, i.expression[0] if i.expression else "") for i in issues]


def test_conforming_patient_has_no_issues(validator):
    assert validator.validate(patient(), [PATIENT]) == []


def test_knows(validator):
    assert validator.knows(PATIENT)
    assert validator.knows(PATIENT + "|1.0")
    assert validator.knows("http://hl7.org/fhir/StructureDefinition/Patient")
    assert not validator.knows(EX + "logical")  # logical models are ignored
    assert not validator.knows(EX + "nope")


def test_min_cardinality_at_top_and_nested(validator):
    issues = validator.validate(patient(birthDate=None, name=[{"given": ["J"]}]), [PATIENT])
    assert ("error", "required", "Patient.birthDate") in codes(issues)
    assert ("error", "required", "Patient.name[0].family") in codes(issues)
    text = next(i.diagnostics for i in issues if i.expression == ("Patient.birthDate",))
    assert PATIENT in text and "element Patient.birthDate" in text


def test_max_cardinality(validator):
    issues = validator.validate(patient(gender=None), [PATIENT])
    assert ("error", "required", "Patient.gender") in codes(issues)
    many = patient(extension=[{"url": EX + "ext-colour", "valueString": "a"}] * 2)
    issues = errors(validator.validate(many, [PATIENT]))
    assert any("maximum allowed = 1" in i.diagnostics for i in issues)


def test_slice_cardinality(validator):
    issues = validator.validate(patient(identifier=[{"system": "x", "value": "1"}]), [PATIENT])
    assert any("slice 'mrn': minimum required = 1" in i.diagnostics for i in errors(issues))


def test_choice_type_not_allowed(validator):
    issues = validator.validate(patient(deceasedDateTime="2020-01-01"), [PATIENT])
    assert ("error", "structure", "Patient.deceasedDateTime") in codes(issues)
    assert errors(validator.validate(patient(deceasedBoolean=False), [PATIENT])) == []


def test_fixed_value(validator):
    issues = validator.validate(patient(active=False), [PATIENT])
    assert ("error", "value", "Patient.active") in codes(issues)
    mrn = patient(identifier=[{"system": "http://example.org/mrn"}])
    assert ("error", "required", "Patient.identifier[0].value") in codes(
        validator.validate(mrn, [PATIENT])
    )


def test_pattern_value(validator):
    bad = patient(communication=[{"language": {"coding": [{"system": "x", "code": "en"}]}}])
    assert ("error", "value", "Patient.communication[0].language") in codes(
        validator.validate(bad, [PATIENT])
    )


def test_max_length(validator):
    long = patient(identifier=[{"system": "http://example.org/mrn", "value": "12345678901"}])
    assert ("error", "too-long", "Patient.identifier[0].value") in codes(
        validator.validate(long, [PATIENT])
    )


def test_required_binding(validator):
    issues = validator.validate(patient(gender="other"), [PATIENT])
    assert ("error", "code-invalid", "Patient.gender") in codes(issues)


def test_extensible_binding_is_a_warning(validator):
    bad = patient(maritalStatus={"coding": [{"system": "http://example.org/ms", "code": "X"}]})
    assert ("warning", "code-invalid", "Patient.maritalStatus") in codes(
        validator.validate(bad, [PATIENT])
    )


def test_unknown_value_set_is_reported_not_guessed():
    class Unknown(StubTerminology):
        def validate_code(self, valueset_url, system, code, display=None):
            return super().validate_code("unknown", system, code, display)

    validator = ProfileValidator.load(FIXTURES, Unknown())
    issues = validator.validate(patient(), [PATIENT])
    assert ("warning", "not-found", "Patient.gender") in codes(issues)
    assert ("information", "not-found", "Patient.maritalStatus") in codes(issues)
    assert not errors(issues)


def test_terminology_failure_does_not_crash():
    class Broken(StubTerminology):
        def validate_code(self, *args, **kwargs):
            raise RuntimeError("down")

    validator = ProfileValidator.load(FIXTURES, Broken())
    assert not errors(validator.validate(patient(), [PATIENT]))


def test_no_terminology_skips_bindings():
    validator = ProfileValidator.load(FIXTURES)
    assert validator.validate(patient(gender="other"), [PATIENT]) == []


def test_reference_target_type(validator):
    bad = patient(managingOrganization={"reference": "Patient/x"})
    assert ("error", "structure", "Patient.managingOrganization.reference") in codes(
        validator.validate(bad, [PATIENT])
    )
    # Unknown targets (urn:uuid) are not guessed.
    uuid = patient(managingOrganization={"reference": "urn:uuid:1234"})
    assert validator.validate(uuid, [PATIENT]) == []
    # The base definition checks reference types too (Patient.generalPractitioner).
    gp = patient(generalPractitioner=[{"reference": "Observation/1"}])
    assert ("error", "structure", "Patient.generalPractitioner[0].reference") in codes(
        validator.validate(gp)
    )


def test_profile_invariants_with_severity(validator):
    issues = validator.validate(patient(name=[{"family": "Doe"}], telecom=None), [PATIENT])
    assert ("error", "invariant", "Patient") in codes(issues)
    assert ("warning", "invariant", "Patient") in codes(issues)
    assert any("tp-1" in i.diagnostics for i in issues)


def test_base_invariants(validator):
    # ele-1 (native), pat-1 (fhirpathpy), ext-1 (native), dom-3 (native)
    empty = patient(name=[{}])
    assert any("ele-1" in i.diagnostics for i in errors(validator.validate(empty)))
    contact = patient(contact=[{"gender": "male"}])
    assert any("pat-1" in i.diagnostics for i in errors(validator.validate(contact)))
    both = patient(
        extension=[
            {
                "url": EX + "ext-colour",
                "valueString": "a",
                "extension": [{"url": "x", "valueString": "b"}],
            }
        ]
    )
    assert any("ext-1" in i.diagnostics for i in errors(validator.validate(both)))
    orphan = patient(contained=[{"resourceType": "Organization", "id": "org", "name": "x"}])
    assert any("dom-3" in i.diagnostics for i in errors(validator.validate(orphan)))
    referenced = patient(
        contained=[{"resourceType": "Organization", "id": "org", "name": "x"}],
        managingOrganization={"reference": "#org"},
    )
    assert errors(validator.validate(referenced)) == []
    # dom-6 (a warning) when there is no narrative
    assert any("dom-6" in i.diagnostics for i in validator.validate(patient(text=None)))


def test_invariants_inside_datatypes_and_contained(validator):
    bad_period = patient(name=[{"family": "x", "period": {"start": "2020", "end": "2019"}}])
    assert any("per-1" in i.diagnostics for i in errors(validator.validate(bad_period)))


def test_extensions(validator):
    unknown = patient(extension=[{"url": "http://example.org/unknown", "valueString": "x"}])
    assert ("warning", "extension", "Patient.extension[0]") in codes(validator.validate(unknown))
    modifier = patient(modifierExtension=[{"url": "http://example.org/unknown", "valueCode": "x"}])
    assert ("error", "extension", "Patient.modifierExtension[0]") in codes(
        validator.validate(modifier)
    )
    wrong_type = patient(extension=[{"url": EX + "ext-colour", "valueInteger": 1}])
    assert ("error", "structure", "Patient.extension[0].valueInteger") in codes(
        validator.validate(wrong_type)
    )
    too_long = patient(extension=[{"url": EX + "ext-colour", "valueString": "x" * 21}])
    assert ("error", "too-long", "Patient.extension[0].valueString") in codes(
        validator.validate(too_long)
    )
    # ext-size is only allowed on Observation
    context = patient(extension=[{"url": EX + "ext-size", "valueInteger": 1}])
    assert ("error", "extension", "Patient.extension[0]") in codes(validator.validate(context))
    # standard extensions are known (from the base definitions) and their context checked
    birth_place = patient(
        extension=[
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Paris"},
            }
        ]
    )
    assert validator.validate(birth_place) == []
    on_primitive = patient(
        _birthDate={
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1970-01-01T10:00:00Z",
                }
            ]
        }
    )
    assert validator.validate(on_primitive) == []


def test_meta_profile_and_unknown_profiles(validator):
    bad = patient(active=False, meta={"profile": [PATIENT]})
    assert ("error", "value", "Patient.active") in codes(validator.validate(bad))
    unknown = patient(meta={"profile": [EX + "nope"]})
    assert codes(validator.validate(unknown)) == [("warning", "not-supported", "Patient")]
    mismatch = validator.validate(observation(), [PATIENT])
    assert [i.code for i in mismatch] == ["invalid"]


def test_derived_profile(validator):
    derived = EX + "test-patient-derived"
    assert validator.validate(patient(), [derived]) == []
    issues = validator.validate(patient(telecom=[{"value": "1"}]), [derived])
    assert ("error", "required", "Patient.telecom[0].system") in codes(issues)
    # inherited from the base profile
    assert ("error", "value", "Patient.active") in codes(
        validator.validate(patient(active=False), [derived])
    )
    # tightened: maxLength 10 -> 5
    long = patient(
        identifier=[
            {"system": "http://example.org/mrn", "value": "123456"},
            {"system": "http://example.org/ssn"},
        ]
    )
    assert ("error", "too-long", "Patient.identifier[0].value") in codes(
        validator.validate(long, [derived])
    )


def test_unknown_resource_type_and_garbage(validator):
    assert validator.validate({"resourceType": "Nope"})[0].code == "not-supported"
    assert validator.validate({})[0].code == "structure"
    weird = patient(name="not a list", identifier=[None, 3], extension=[{"url": 5}])
    validator.validate(weird, [PATIENT])  # must not raise
