"""The generated search parameter registry, custom parameters and the Patient compartment."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import orjson
import pytest

from fhir_server.definitions import R4_RESOURCE_TYPES
from fhir_server.search.fhirpath import Value, compile_expression
from fhir_server.search.generate import (
    COMPARTMENT_FILE,
    DEFAULT_SOURCE,
    PARAMETERS_FILE,
    build_compartment,
    build_parameters,
    expression_for_base,
    search_parameters,
    split_union,
)
from fhir_server.search.registry import (
    AUDIT_EVENT_PARAMS,
    Registry,
    SearchParam,
    default_registry,
    patient_compartment,
)

SOURCE_AVAILABLE = (DEFAULT_SOURCE / "search-parameters.json").is_file()
needs_source = pytest.mark.skipif(not SOURCE_AVAILABLE, reason="FHIR R4 definitions not available")

# The R4 SearchParameter bundle by type (1,378 in all).
R4_COUNTS = {
    "token": 539,
    "reference": 472,
    "string": 133,
    "date": 109,
    "composite": 46,
    "uri": 45,
    "quantity": 27,
    "number": 6,
    "special": 1,
}
GENERIC_CODES = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"}


def committed() -> dict[str, Any]:
    return orjson.loads(PARAMETERS_FILE.read_bytes())


def test_every_r4_definition_is_accounted_for() -> None:
    data = committed()
    counts = Counter(p["type"] for p in data["parameters"])
    counts.update(p["type"] for p in data["excluded"])
    assert counts == R4_COUNTS
    assert sum(counts.values()) == 1_378
    # only the parameters without an expression are left out
    assert {(p["code"], p["reason"]) for p in data["excluded"]} == {
        ("_text", "no expression"),
        ("_content", "no expression"),
        ("_query", "no expression"),
    }


@needs_source
def test_generated_files_are_current_and_match_the_source() -> None:
    resources = search_parameters(DEFAULT_SOURCE)
    assert Counter(r["type"] for r in resources) == R4_COUNTS
    assert build_parameters(resources) == committed()
    assert build_compartment(DEFAULT_SOURCE) == orjson.loads(COMPARTMENT_FILE.read_bytes())


@needs_source
def test_each_type_has_its_parameters_from_the_source() -> None:
    resources = search_parameters(DEFAULT_SOURCE)
    expected: Counter[str] = Counter()
    generic = 0
    for resource in resources:
        if not resource.get("expression"):
            continue
        for base in resource["base"]:
            if base == "Resource":
                generic += 1
            else:
                expected[base] += 1
    assert generic == len(GENERIC_CODES)
    registry = default_registry()
    for resource_type in R4_RESOURCE_TYPES:
        params = registry.params(resource_type)
        if resource_type == "AuditEvent":  # offers a chosen few (see AUDIT_EVENT_PARAMS)
            assert set(params) == AUDIT_EVENT_PARAMS
        else:
            assert len(params) == expected[resource_type] + generic, resource_type
        for code, param in params.items():
            assert param.code == code
            assert param.base in (resource_type, "Resource")


def test_audit_events_sort_by_time_only() -> None:
    registry = default_registry()
    sortable = {c for c, p in registry.params("AuditEvent").items() if p.sortable}
    assert sortable == {"date", "_lastUpdated"}
    assert all(p.sortable for p in registry.params("Observation").values())


def test_generic_parameters_apply_to_every_type() -> None:
    registry = default_registry()
    for resource_type in ("Patient", "Bundle", "Binary", "Observation"):
        params = registry.params(resource_type)
        assert set(params) >= GENERIC_CODES
        assert "_text" not in params and "_content" not in params
    tag = registry.get("Bundle", "_tag")
    assert tag == SearchParam(
        code="_tag",
        type="token",
        base="Resource",
        expression="Resource.meta.tag",
        url="http://hl7.org/fhir/SearchParameter/Resource-tag",
    )
    assert registry.params("NoSuchType") == {}
    assert registry.get("NoSuchType", "_id") is None


def test_known_parameters_have_their_per_base_expression() -> None:
    registry = default_registry()
    code = registry.get("Observation", "code")
    assert code is not None
    assert (code.type, code.expression) == ("token", "Observation.code")

    subject = registry.get("Observation", "subject")
    assert subject is not None and subject.type == "reference"
    assert subject.expression == "Observation.subject"
    assert {"Patient", "Group", "Device", "Location"} == set(subject.targets)

    patient = registry.get("Observation", "patient")
    assert patient is not None
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient",)
    # the same clinical-patient definition, split per base
    allergy = registry.get("AllergyIntolerance", "patient")
    assert allergy is not None and allergy.expression == "AllergyIntolerance.patient"
    assert allergy.url == patient.url

    name = registry.get("Patient", "name")
    assert name is not None
    assert (name.type, name.expression) == ("string", "Patient.name")

    composite = registry.get("Observation", "code-value-quantity")
    assert composite is not None and composite.type == "composite"
    assert composite.expression == "Observation"
    assert composite.components == (("code", "code"), ("value-quantity", "value.as(Quantity)"))
    combo = registry.get("Observation", "combo-code-value-quantity")
    assert combo is not None and combo.expression == "Observation | Observation.component"
    assert combo.components == (
        ("combo-code", "code"),
        ("combo-value-quantity", "value.as(Quantity)"),
    )

    date = registry.get("Encounter", "date")
    assert date is not None
    assert (date.type, date.expression) == ("date", "Encounter.period")
    # `(X as T)` terms stay whole
    value_quantity = registry.get("Observation", "value-quantity")
    assert value_quantity is not None
    assert (
        value_quantity.expression
        == "(Observation.value as Quantity) | (Observation.value as SampledData)"
    )
    # relative terms are anchored to the base
    insurance = registry.get("InsurancePlan", "name")
    assert insurance is not None
    assert insurance.expression == "InsurancePlan.name | InsurancePlan.alias"


def test_union_split_and_per_base_selection() -> None:
    expression = (
        "Account.subject.where(resolve() is Patient) | (Condition.onset as Age)"
        " | Observation.component.where(code.text = 'a|b').value | name"
    )
    assert split_union(expression) == [
        "Account.subject.where(resolve() is Patient)",
        "(Condition.onset as Age)",
        "Observation.component.where(code.text = 'a|b').value",
        "name",
    ]
    assert expression_for_base(expression, "Condition") == (
        "(Condition.onset as Age) | Condition.name"
    )
    assert expression_for_base("Resource.id | Patient.id", "Patient") == "Resource.id | Patient.id"
    with pytest.raises(ValueError, match="no term"):
        expression_for_base("Account.subject", "Patient")


def custom(**overrides: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "SearchParameter",
        "url": "http://example.org/SearchParameter/eye-colour",
        "name": "EyeColour",
        "status": "active",
        "code": "eye-colour",
        "base": ["Patient", "Person"],
        "type": "token",
        "expression": "Patient.extension.where(url='http://example.org/eye').value"
        " | Person.extension.where(url='http://example.org/eye').value",
    }
    resource.update(overrides)
    return resource


def test_custom_search_parameter_round_trip() -> None:
    params = Registry.from_search_parameter(custom())
    assert [p.base for p in params] == ["Patient", "Person"]
    assert params[0].code == "eye-colour" and params[0].type == "token"
    registry = Registry(default_registry().params("Patient").values())
    before = registry.params("Patient")
    for param in params:
        registry.add(param)
    # readers holding the old mapping keep a consistent view; new readers see the parameter
    assert "eye-colour" not in before
    assert registry.get("Patient", "eye-colour") == params[0]
    assert registry.get("Person", "eye-colour") == params[1]
    assert registry.get("Patient", "name") is not None
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": "http://example.org/eye", "valueCode": "green"}],
    }
    evaluate = compile_expression(registry.get("Patient", "eye-colour").expression, "Patient")
    assert evaluate(patient) == [Value("green", "code")]


def test_custom_generic_parameter_applies_to_every_type() -> None:
    (param,) = Registry.from_search_parameter(
        custom(base=["Resource"], code="_implicit", type="uri", expression="Resource.implicitRules")
    )
    registry = Registry()
    registry.add(param)
    assert all(registry.get(t, "_implicit") == param for t in R4_RESOURCE_TYPES)
    (narrative,) = Registry.from_search_parameter(
        custom(base=["DomainResource"], code="_status", type="token", expression="text.status")
    )
    registry.add(narrative)
    assert registry.get("Patient", "_status") == narrative
    assert registry.get("Bundle", "_status") is None  # a Bundle is not a DomainResource


def test_custom_composite_resolves_its_components() -> None:
    resource = custom(
        code="code-value-string-2",
        base=["Observation"],
        type="composite",
        expression="Observation.component",
        component=[
            {
                "definition": "http://hl7.org/fhir/SearchParameter/Observation-component-code",
                "expression": "code",
            },
            {
                "definition": "http://hl7.org/fhir/SearchParameter/Observation-value-string",
                "expression": "value.as(string)",
            },
        ],
    )
    (param,) = Registry.from_search_parameter(resource)
    assert param.components == (("component-code", "code"), ("value-string", "value.as(string)"))
    codes = {"http://example.org/a": "a", "http://example.org/b": "b"}
    resource["component"][0]["definition"] = "http://example.org/a"
    resource["component"][1]["definition"] = "http://example.org/b"
    (param,) = Registry.from_search_parameter(resource, component_codes=codes)
    assert [code for code, _ in param.components] == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resourceType": "Patient"}, "not a SearchParameter"),
        ({"url": None}, "url is required"),
        ({"code": ""}, "code is required"),
        ({"type": "fuzzy"}, "unknown type 'fuzzy'"),
        ({"base": []}, "base is required"),
        ({"base": ["Patient", "Pateint"]}, "unknown resource type"),
        ({"expression": None}, "an expression is needed"),
        ({"expression": "Patient.eyes"}, "no element 'eyes'"),
        ({"expression": "Patient.name.("}, "invalid FHIRPath"),
        ({"type": "composite"}, "needs components"),
        (
            {"type": "composite", "component": [{"definition": "http://x", "expression": "a"}]},
            "unknown component definition http://x",
        ),
    ],
)
def test_unusable_search_parameters_are_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Registry.from_search_parameter(custom(**overrides))


def test_concurrent_adds_lose_nothing() -> None:
    registry = Registry()
    params = [
        SearchParam(
            code=f"p{i}", type="string", base="Patient", expression="Patient.name", url=f"u{i}"
        )
        for i in range(200)
    ]
    threads = [
        threading.Thread(target=lambda chunk=params[i::4]: [registry.add(p) for p in chunk])
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry.params("Patient")) == 200


def test_patient_compartment() -> None:
    compartment = patient_compartment()
    assert compartment["Observation"] == ("subject", "performer")
    assert compartment["Patient"] == ("link",)
    assert compartment["Encounter"] == ("subject",)
    assert "Organization" not in compartment
    registry = default_registry()
    for resource_type, codes in compartment.items():
        for code in codes:
            # every linking parameter is a known reference parameter
            param = registry.get(resource_type, code)
            assert param is not None, (resource_type, code)
            assert param.type == "reference"


@needs_source
def test_patient_compartment_matches_the_source() -> None:
    source = orjson.loads((DEFAULT_SOURCE / "compartmentdefinition-patient.json").read_bytes())
    expected = {r["code"]: tuple(r["param"]) for r in source["resource"] if r.get("param")}
    assert dict(patient_compartment()) == expected
