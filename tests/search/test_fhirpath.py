"""Compiled search expressions: the same values as fhirpathpy, with the right FHIR types.

fhirpathpy is the reference for every parameter of every resource type in the fixtures below and
in the Synthea samples (when /work/shared is present). Its expression is rewritten only where it
cannot evaluate the R4 text as meant (see `reference_expression`).
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import orjson
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_server.search.fhirpath import Value, compile_expression
from fhir_server.search.registry import Registry, SearchParam, _load_params, default_registry

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "synthea-r4"

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "bp",
    "meta": {
        "lastUpdated": "2024-01-02T03:04:05.678Z",
        "tag": [{"system": "http://example.org/tags", "code": "t1"}],
        "profile": ["http://hl7.org/fhir/StructureDefinition/bp"],
    },
    "status": "final",
    "category": [{"coding": [{"system": "http://x/cat", "code": "vital-signs"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
    "subject": {"reference": "Patient/p1"},
    "encounter": {"reference": "http://other.org/fhir/Encounter/e1/_history/2"},
    "performer": [
        {"reference": "Practitioner/dr"},
        {"reference": "#org"},
        {"display": "someone"},
    ],
    "contained": [{"resourceType": "Organization", "id": "org", "name": "Lab"}],
    "effectivePeriod": {"start": "2024-01-01", "end": "2024-01-02"},
    "valueQuantity": {"value": 1.50, "unit": "mg", "system": "http://unitsofmeasure.org"},
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "valueCodeableConcept": {"text": "high"},
        },
    ],
}
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "name": [{"family": "Ćosić", "given": ["Ana", "Marija"]}, {"text": "Ana C."}],
    "telecom": [
        {"system": "phone", "value": "555-1234"},
        {"system": "email", "value": "ana@example.org"},
    ],
    "gender": "female",
    "birthDate": "1970-05-06",
    "deceasedDateTime": "2020-01-01T10:00:00+01:00",
    "address": [{"city": "Zagreb", "postalCode": "10000", "country": "HR"}],
    "generalPractitioner": [{"reference": "Practitioner/dr"}],
    "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}],
}
ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "urn:uuid:4a1f"},
    "participant": [
        {"individual": {"reference": "Practitioner/dr"}},
        {"individual": {"reference": "RelatedPerson/rp"}},
    ],
    "period": {"start": "2024-01-01T10:00:00Z"},
    "length": {"value": 30, "unit": "min"},
}
CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {"text": "Asthma"},
    "onsetAge": {"value": 12, "unit": "a"},
    "abatementString": "in adulthood",
    "recordedDate": "2020-02-03",
}
CONCEPT_MAP: dict[str, Any] = {
    "resourceType": "ConceptMap",
    "id": "cm",
    "url": "http://example.org/cm",
    "status": "active",
    "sourceCanonical": "http://example.org/vs1",
    "targetUri": "http://example.org/vs2",
    "useContext": [
        {
            "code": {"code": "focus"},
            "valueCodeableConcept": {"coding": [{"code": "x"}]},
        },
        {"code": {"code": "age"}, "valueRange": {"low": {"value": 1}, "high": {"value": 5}}},
    ],
}
GROUP: dict[str, Any] = {
    "resourceType": "Group",
    "id": "g",
    "type": "person",
    "actual": True,
    "characteristic": [
        {"code": {"text": "smoker"}, "valueBoolean": True, "exclude": False},
        {"code": {"text": "sex"}, "valueCodeableConcept": {"text": "f"}, "exclude": False},
    ],
}
BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "id": "doc",
    "type": "document",
    "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3151bd"},
    "timestamp": "2024-01-01T00:00:00Z",
    "entry": [
        {"resource": {"resourceType": "Composition", "id": "comp", "status": "final"}},
        {"resource": PATIENT},
    ],
}
MOLECULAR_SEQUENCE: dict[str, Any] = {
    "resourceType": "MolecularSequence",
    "id": "ms",
    "type": "dna",
    "coordinateSystem": 0,
    "referenceSeq": {
        "chromosome": {"coding": [{"code": "1"}]},
        "referenceSeqId": {"coding": [{"code": "NC_000001.11"}]},
        "windowStart": 100,
        "windowEnd": 200,
    },
    "variant": [{"start": 120, "end": 121}, {"start": 150, "end": 152}],
}
FIXTURES = [
    OBSERVATION,
    PATIENT,
    ENCOUNTER,
    CONDITION,
    CONCEPT_MAP,
    GROUP,
    BUNDLE,
    MOLECULAR_SEQUENCE,
]

RESOLVE = re.compile(r"\.where\(resolve\(\) is (\w+)\)")


def reference_expression(expression: str, resource_type: str) -> str:
    """The expression as fhirpathpy can evaluate it with the meaning R4 gives it:
    - `.where(resolve() is T)` is dropped: fhirpathpy has no resolve() (checked separately);
    - `(x as T)` and `x.as(T)` become `x.where($this is T)`: fhirpathpy wants a single item
      before `as`, while the R4 expressions apply it to collections (useContext.value, ...), and
      its ofType() accepts subtypes (a canonical as a uri) only some of the time;
    - `DateTime` becomes `dateTime`: fhirpathpy does not take a FHIR dateTime for a
      System.DateTime, which Observation-code-value-date relies on;
    - a leading Resource./DomainResource. becomes the resource type, which fhirpathpy does not
      recognise as a kind of Resource.
    """
    expression = RESOLVE.sub("", expression)
    expression = re.sub(r"\(([\w.]+) as (\w+)\)", r"\1.where($this is \2)", expression)
    expression = re.sub(r"\.as\((\w+)\)", r".where($this is \1)", expression)
    expression = expression.replace("is DateTime)", "is dateTime)")
    return re.sub(r"(^|\| |\()(?:Resource|DomainResource)\.", rf"\g<1>{resource_type}.", expression)


def plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


_reference_cache: dict[str, Any] = {}


def reference_values(
    expression: str, node: dict[str, Any], element_path: str | None, root: dict[str, Any]
) -> list[tuple[Any, str | None]]:
    """fhirpathpy's values with the type it knows for each (None when it does not say)."""
    fn = _reference_cache.get(expression)
    if fn is None:
        fn = fhirpathpy.compile(expression, models["r4"], options={"returnRawData": True})
        _reference_cache[expression] = fn
    focus = node if element_path is None else ResourceNode.create_node(node, element_path)
    out = []
    for item in fn(focus, {"resource": root}):
        if not isinstance(item, ResourceNode):
            out.append((plain(item), None))
        elif item.data is not None:
            path = item.path
            type_ = None if path is None else path.removeprefix("System.")
            out.append(
                (plain(item.data), {"String": "string", "Boolean": "boolean"}.get(type_, type_))
            )
    return out


def check_values(mine: list[Value], theirs: list[tuple[Any, str | None]], context: str) -> None:
    assert [v.value for v in mine] == [value for value, _ in theirs], context
    for value, (_, their_type) in zip(mine, theirs, strict=True):
        if their_type is not None:
            assert value.type == their_type, (context, value)


def check_resource(resource: dict[str, Any]) -> int:
    """Compare every parameter of the resource's type (and composite components); the number of
    values compared."""
    resource_type = resource["resourceType"]
    compared = 0
    for code, param in default_registry().params(resource_type).items():
        context = f"{resource_type}.{code}: {param.expression}"
        stripped = RESOLVE.sub("", param.expression)
        mine = compile_expression(stripped, resource_type)(resource)
        theirs = reference_values(
            reference_expression(param.expression, resource_type), resource, None, resource
        )
        check_values(mine, theirs, context)
        compared += len(mine)
        check_resolve(param, resource, mine)
        for element in compile_expression(param.expression, resource_type)(resource):
            for component_code, component in param.components:
                mine = compile_expression(component, element.type)(element.value, resource)
                theirs = reference_values(
                    reference_expression(component, resource_type),
                    element.value,
                    None if element.type == resource_type else element.type,
                    resource,
                )
                check_values(mine, theirs, f"{context} / {component_code}: {component}")
                compared += len(mine)
    return compared


def referenced_type(value: Value, resource: dict[str, Any]) -> str | None:
    reference = value.value.get("reference", "")
    if reference.startswith("#"):
        contained = {r["id"]: r["resourceType"] for r in resource.get("contained", ())}
        return contained.get(reference[1:])
    match = re.search(r"(?:^|/)([A-Z][A-Za-z]+)/[^/]+(?:/_history/[^/]+)?$", reference)
    return match.group(1) if match else None


def check_resolve(param: SearchParam, resource: dict[str, Any], unfiltered: list[Value]) -> None:
    """`x.where(resolve() is T)` keeps the references of `x` that point at a T."""
    match = re.fullmatch(r"[\w.]+\.where\(resolve\(\) is (\w+)\)", param.expression)
    if match is None:
        return
    evaluate = compile_expression(param.expression, resource["resourceType"])
    kept = [v for v in unfiltered if referenced_type(v, resource) == match.group(1)]
    assert evaluate(resource) == kept, param.expression


def load_samples() -> list[dict[str, Any]]:
    """The resources of the Synthea transaction bundles, with their urn:uuid references
    rewritten to Type/id as the transaction would before indexing."""
    resources = []
    for path in sorted(SAMPLES.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        ids = {
            entry["fullUrl"]: f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
            for entry in bundle["entry"]
            if "fullUrl" in entry
        }
        raw = orjson.dumps([entry["resource"] for entry in bundle["entry"]]).decode()
        for full_url, literal in ids.items():
            raw = raw.replace(f'"{full_url}"', f'"{literal}"')
        resources.extend(orjson.loads(raw))
    return resources


@pytest.mark.parametrize("resource", FIXTURES, ids=lambda r: r["resourceType"])
def test_every_parameter_matches_fhirpathpy_on_fixtures(resource: dict[str, Any]) -> None:
    assert check_resource(resource) > 0


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="Synthea samples not available")
def test_every_parameter_matches_fhirpathpy_on_synthea() -> None:
    resources = load_samples()
    assert len({r["resourceType"] for r in resources}) >= 10
    assert sum(check_resource(resource) for resource in resources) > 10_000


def test_every_r4_expression_compiles_without_fallback() -> None:
    """Every standard expression, and every composite component for each element type its
    composite yields, is in the compiled subset and names elements that exist."""
    from fhir_server.search import fhirpath

    def compile_strictly(expression: str, types: frozenset[str] | None) -> frozenset[str] | None:
        _, result_types = fhirpath._compile(fhirpath.parse(expression), types)
        return result_types

    # Every definition, including those a type does not offer (most of AuditEvent's).
    registry = Registry(p for p in _load_params() if p.base != "AuditEvent")
    audit_event = [p for p in _load_params() if p.base == "AuditEvent"]
    seen = set()
    for resource_type in sorted(fhirpath.R4_RESOURCE_TYPES):
        for param in [*registry.params(resource_type).values(), *audit_event]:
            if (param.url, param.base) in seen:
                continue
            seen.add((param.url, param.base))
            generic = param.base in fhirpath.GENERIC_TYPES
            element_types = compile_strictly(
                param.expression, None if generic else frozenset((param.base,))
            )
            for _, component in param.components:
                assert element_types, param.url
                for element_type in element_types:
                    compile_strictly(component, frozenset((element_type,)))
    assert len(seen) == 1_706  # (definition, base) pairs of the 1,375 indexable definitions


def values(expression: str, resource: dict[str, Any]) -> list[tuple[Any, str]]:
    return [
        (v.value, v.type)
        for v in compile_expression(expression, resource["resourceType"])(resource)
    ]


def test_choice_elements_are_typed_by_their_suffix() -> None:
    assert values("Observation.effective", OBSERVATION) == [
        ({"start": "2024-01-01", "end": "2024-01-02"}, "Period")
    ]
    assert values("Patient.deceased", PATIENT) == [("2020-01-01T10:00:00+01:00", "dateTime")]
    assert values("Condition.onset", CONDITION) == [({"value": 12, "unit": "a"}, "Age")]
    assert values("Observation.component.value", OBSERVATION) == [
        ({"value": 120, "unit": "mm[Hg]"}, "Quantity"),
        ({"text": "high"}, "CodeableConcept"),
    ]


def test_type_filters_honour_specialisations() -> None:
    age = ({"value": 12, "unit": "a"}, "Age")
    assert values("Condition.onset.as(Age)", CONDITION) == [age]
    assert values("Condition.onset.as(Quantity)", CONDITION) == [age]
    assert values("(Condition.onset as Range)", CONDITION) == []
    assert values("Condition.abatement.ofType(string)", CONDITION) == [("in adulthood", "string")]
    assert values("(ConceptMap.source as uri)", CONCEPT_MAP) == [
        ("http://example.org/vs1", "canonical")
    ]
    assert values("Patient.gender.as(string)", PATIENT) == [("female", "code")]
    assert values("Observation.status is code", OBSERVATION) == [(True, "boolean")]
    assert values("(Observation.value as Quantity).value", OBSERVATION) == [(1.5, "decimal")]


def test_primitives_carry_their_definition_types() -> None:
    assert values("Patient.birthDate | Patient.active", PATIENT) == [
        ("1970-05-06", "date"),
        (True, "boolean"),
    ]
    assert values("Resource.meta.lastUpdated", OBSERVATION) == [
        ("2024-01-02T03:04:05.678Z", "instant")
    ]
    assert values("Patient.name.given", PATIENT) == [("Ana", "string"), ("Marija", "string")]


def test_resolve_is_keeps_references_to_that_type() -> None:
    performer = "Observation.performer.where(resolve() is {})"
    assert values(performer.format("Practitioner"), OBSERVATION) == [
        ({"reference": "Practitioner/dr"}, "Reference")
    ]
    # `#org` names a contained Organization; a display-only reference resolves to nothing
    assert values(performer.format("Organization"), OBSERVATION) == [
        ({"reference": "#org"}, "Reference")
    ]
    assert values(performer.format("Resource"), OBSERVATION) == [
        ({"reference": "Practitioner/dr"}, "Reference"),
        ({"reference": "#org"}, "Reference"),
    ]
    # absolute URL with a version
    assert len(values("Observation.encounter.where(resolve() is Encounter)", OBSERVATION)) == 1
    # urn:uuid references say nothing of their type
    assert values("Encounter.subject.where(resolve() is Patient)", ENCOUNTER) == []
    assert values(
        "Encounter.participant.individual.where(resolve() is Practitioner)", ENCOUNTER
    ) == [({"reference": "Practitioner/dr"}, "Reference")]


def test_where_literal_and_exists() -> None:
    assert values("Patient.telecom.where(system='email')", PATIENT) == [
        ({"system": "email", "value": "ana@example.org"}, "ContactPoint")
    ]
    deceased = "Patient.deceased.exists() and Patient.deceased != false"
    assert values(deceased, PATIENT) == [(True, "boolean")]
    assert values(deceased, {"resourceType": "Patient"}) == [(False, "boolean")]
    assert values(deceased, {"resourceType": "Patient", "deceasedBoolean": False}) == [
        (False, "boolean")
    ]
    # criteria that are not a single primitive take the general route
    systolic = "Observation.component.where(code.coding.code = '8480-6').value"
    assert values(systolic, OBSERVATION) == [({"value": 120, "unit": "mm[Hg]"}, "Quantity")]


def test_unions_remove_duplicates() -> None:
    combo = "Observation.code | Observation.component.code"
    assert values(combo, OBSERVATION) == [
        (OBSERVATION["code"], "CodeableConcept"),
        (OBSERVATION["component"][0]["code"], "CodeableConcept"),
        (OBSERVATION["component"][1]["code"], "CodeableConcept"),
    ]
    codes = "Observation.code.coding.code | Observation.component.code.coding.code"
    assert [v for v, _ in values(codes, OBSERVATION)] == ["85354-9", "8480-6"]


def test_relative_component_expressions_and_resource_variable() -> None:
    variant = compile_expression("%resource.referenceSeq.chromosome", "MolecularSequence.variant")
    chromosome = MOLECULAR_SEQUENCE["referenceSeq"]["chromosome"]
    element = MOLECULAR_SEQUENCE["variant"][0]
    assert variant(element, MOLECULAR_SEQUENCE) == [Value(chromosome, "CodeableConcept")]
    start = compile_expression("start", "MolecularSequence.variant")
    assert start(element) == [Value(120, "integer")]
    date = compile_expression("value.as(DateTime) | value.as(Period)", "Observation")
    assert date({"resourceType": "Observation", "valueDateTime": "2024"}) == [
        Value("2024", "dateTime")
    ]


def test_contained_and_bundled_resources_are_typed_at_run_time() -> None:
    assert values("Bundle.entry[0].resource", BUNDLE) == [
        (BUNDLE["entry"][0]["resource"], "Composition")
    ]
    assert values("Bundle.entry.resource.name.family", BUNDLE) == [("Ćosić", "string")]
    assert values("Observation.contained.name", OBSERVATION) == [("Lab", "string")]


def test_generic_expressions_apply_to_any_resource() -> None:
    evaluate = compile_expression("Resource.meta.tag", "Resource")
    assert evaluate(OBSERVATION) == [Value(OBSERVATION["meta"]["tag"][0], "Coding")]
    assert compile_expression("Resource.id", "Patient")(PATIENT) == [Value("p1", "string")]
    # a path for another type yields nothing
    assert compile_expression("Patient.name", "Observation")(OBSERVATION) == []


def test_expressions_outside_the_subset_fall_back_to_fhirpathpy() -> None:
    first = compile_expression("Patient.name.first().given", "Patient")
    assert first(PATIENT) == [Value("Ana", "string"), Value("Marija", "string")]
    # arithmetic: fhirpathpy's Decimal comes back as the float a JSON parser would give
    doubled = compile_expression("Observation.value.ofType(Quantity).value * 2", "Observation")
    assert doubled(OBSERVATION) == [Value(3.0, "decimal")]
    assert type(doubled(OBSERVATION)[0].value) is float
    # values without a model type are typed by shape
    computed = compile_expression("Patient.birthDate.toString() | Patient.active.not()", "Patient")
    assert computed(PATIENT) == [Value("1970-05-06", "date"), Value(False, "boolean")]
    extension = compile_expression(
        "Patient.extension('http://example.org/eye-colour').value", "Patient"
    )
    patient = {
        **PATIENT,
        "extension": [{"url": "http://example.org/eye-colour", "valueString": "green"}],
    }
    assert extension(patient) == [Value("green", "string")]


def test_compiled_evaluators_are_cached() -> None:
    assert compile_expression("Patient.name", "Patient") is compile_expression(
        "Patient.name", "Patient"
    )


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("Patient.nmae", "no element 'nmae'"),
        ("Patient.name.", "unexpected end"),
        ("Patient.name.(given)", "expected a name"),
        ("(Patient.name", "expected ')'"),
        ("Patient.deceased.as(Dateime)", "unknown type"),
        ("Patient.link.other.resolve().name", "resolve()"),
    ],
)
def test_unusable_expressions_are_rejected(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_expression(expression, "Patient")
