"""Evidence that the R4 checks alone — the JSON-shape walk over the R4 definitions (1) and the
base definitions' rules (3) — refuse everything the `fhir.resources` R4B models (2) refuse, so
the write path can do without (2).

The cases:
- valid: the fixtures carried here (tests/validation/fixtures/equivalence.json: rich resources
  of 31 types with nested backbone elements, contained and nested resources, extensions,
  primitive extensions, every primitive type, 7 of the 18 types R4B does not model), a minimal
  resource of each of the 147 types, the seed data, the XML round-trip fixtures and, when
  ../shared is present, every Synthea resource;
- invalid (mostly): deterministic mutations of all of those (tests/validation/fixtures/
  mutations.py, seeded RNG) — wrong JSON types, malformed primitives of every type, unknown
  elements, nulls and empties, wrong cardinality, two types of a choice element or a type it
  does not allow, missing required elements, bad `_name` companions and extensions, contained
  resources of every type, bad codes for required bindings, malformed references and ids.

The oracle (2) is pydantic as the write path ran it: `model_validate` of the R4B model of the
resource. On the 18 types without a model it judges what it can type: every primitive value
with its fhir.resources primitive type, every datatype value with its R4B model, every nested
resource of a modelled type with its model.

For every case that (2) refuses, (1)+(3) must refuse too, unless the refusal is one where the
R4B model departs from R4 — each such kind is named in `R4B_DEPARTURES`, decided from the R4
definitions, never from the case: an R4 element R4B does not have, an element R4B requires and
R4 does not, a resource type R4B does not model, a uuid that is not version 4.
"""

from __future__ import annotations

import copy
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

from fhir_server.config import PROJECT_ROOT
from fhir_server.definitions import (
    MODELLED_RESOURCE_TYPES,
    R4_RESOURCE_TYPES,
    Kind,
)
from fhir_server.errors import FhirError
from fhir_server.validation.base_rules import check_base_rules
from fhir_server.validation.json_shape import check_json_shape
from fhir_server.validation.structure import validate_structure
from tests.validation.fixtures.minimal import minimal_valid
from tests.validation.fixtures.mutations import properties, variants

HERE = Path(__file__).parent
SAMPLES = PROJECT_ROOT.parent / "shared" / "samples" / "synthea-r4"
UNMODELLED = R4_RESOURCE_TYPES - MODELLED_RESOURCE_TYPES


# --- the verdicts ----------------------------------------------------------------------------


def r4_rejects(resource: dict[str, Any]) -> bool:
    """(1)+(3): the shape walk, then the base rules' errors."""
    if check_json_shape(resource):
        return True
    return any(i.severity in ("error", "fatal") for i in check_base_rules(resource))


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # pydantic's error type, or "exception"
    loc: tuple[str | int, ...]  # JSON path from the resource root
    message: str


def pydantic_findings(resource: dict[str, Any]) -> list[Finding]:
    """(2)'s refusals of `resource` (empty: it accepts)."""
    out: list[Finding] = []
    _judge_resource(copy.deepcopy(resource), (), out)
    return out


def _judge_resource(resource: Any, loc: tuple[str | int, ...], out: list[Finding]) -> None:
    type_ = resource.get("resourceType") if isinstance(resource, dict) else None
    if type_ in MODELLED_RESOURCE_TYPES or type_ not in R4_RESOURCE_TYPES:
        _model_validate(get_fhir_model_class, type_ or "Resource", resource, loc, out)
    else:  # no R4B model: judge what pydantic can type inside it
        _judge_object(resource, type_, loc, out)


def _model_validate(find: Any, name: str, value: Any, loc: tuple[str | int, ...],
                    out: list[Finding]) -> None:
    try:
        find(name).model_validate(value)
    except ValidationError as exc:
        out += [Finding(e["type"], (*loc, *e["loc"]), e["msg"]) for e in exc.errors()]
    except Exception as exc:
        out.append(Finding("exception", loc, f"{type(exc).__name__}: {exc}"))


def _judge_object(obj: dict[str, Any], type_name: str, loc: tuple[str | int, ...],
                  out: list[Finding]) -> None:
    props = properties(type_name)
    for key, value in obj.items():
        prop = props.get(key.removeprefix("_"))
        if prop is None or key == "resourceType":
            continue
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            where = (*loc, key) if index is None else (*loc, key, index)
            if item is None:
                continue
            if key.startswith("_"):
                _model_validate(get_fhir_model_class, "FHIRPrimitiveExtension", item, where, out)
            elif prop.kind is Kind.RESOURCE:
                _judge_resource(item, where, out)
            elif prop.kind is not Kind.COMPLEX:
                try:
                    _primitive(prop.type).validate_python(item)
                except ValidationError as exc:
                    out += [Finding(e["type"], where, e["msg"]) for e in exc.errors()]
            elif _datatype_model(prop.type) is not None:
                _model_validate(_datatype_model, prop.type, item, where, out)
            elif isinstance(item, dict):  # a backbone element of a type R4B lacks
                _judge_object(item, prop.type, where, out)


@cache
def _primitive(type_code: str) -> TypeAdapter[Any]:
    name = type_code[0].upper() + type_code[1:] + "Type"
    return TypeAdapter(getattr(fhirtypes, name))


@cache
def _datatype_model(type_name: str) -> Any:
    if "." in type_name:
        return None
    try:
        return get_fhir_model_class(type_name)
    except (KeyError, ValueError):  # not an R4B datatype (SubstanceAmount, ...)
        return None


# --- where R4B departs from R4 ---------------------------------------------------------------


def _r4_type_at(resource: dict[str, Any], loc: tuple[str | int, ...]) -> tuple[str, Any] | None:
    """The R4 type and JSON value at a pydantic location, following the R4 definitions."""
    value: Any = resource
    type_name = resource.get("resourceType", "")
    for part in loc:
        if isinstance(part, int):
            if not isinstance(value, list) or part >= len(value):
                return None
            value = value[part]
            continue
        if not isinstance(value, dict) or part not in value:
            return None
        prop = properties(type_name).get(part.removeprefix("_"))
        if prop is None:
            return None
        value = value[part]
        if part.startswith("_"):
            type_name = "Element"
        elif prop.kind is Kind.RESOURCE:
            item = value[0] if isinstance(value, list) and value else value
            type_name = item.get("resourceType", "") if isinstance(item, dict) else ""
        else:
            type_name = prop.type
    return type_name, value


def departure(resource: dict[str, Any], finding: Finding) -> str | None:
    """The R4B departure from R4 that explains a refusal (1)+(3) do not share, if any."""
    loc = tuple(p for p in finding.loc if p != "resource_type")
    if finding.kind == "exception" and finding.message.startswith("KeyError"):
        missing = finding.message.split("'")[1].removeprefix("R4.").removesuffix("Type")
        if missing in UNMODELLED:
            return "a nested resource of an R4 type R4B does not model"
    if finding.kind == "uuid_version":
        return "a uuid of another version than 4 (R4's uuid is any RFC 4122 uuid)"
    if finding.kind == "extra_forbidden":
        found = _r4_type_at(resource, loc[:-1])
        key = str(loc[-1])
        prop = properties(found[0]).get(key.removeprefix("_")) if found else None
        if prop is not None and (not key.startswith("_") or (
                prop.kind not in (Kind.COMPLEX, Kind.RESOURCE) and not prop.xml_attr)):
            return "an R4 element the R4B model does not have"
    if finding.kind in ("missing", "model_field_validation.missing"):
        found = _r4_type_at(resource, loc[:-1])
        prop = properties(found[0]).get(str(loc[-1])) if found else None
        if found is not None and (prop is None or not prop.mandatory):
            return "an element R4B requires and R4 does not"
    if finding.kind == "value_error" and "Expect any of field value" in finding.message:
        found = _r4_type_at(resource, loc)
        names = finding.message.split("[", 1)[1]
        first = names.split("'")[1]
        prop = properties(found[0]).get(first) if found else None
        if prop is not None and not prop.mandatory:
            return "a choice element R4B requires and R4 does not"
    return None


# --- the cases -------------------------------------------------------------------------------


def _bundle_resources(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")):
        body = orjson.loads(path.read_bytes())
        found += [e["resource"] for e in body.get("entry", ())] if "entry" in body else [body]
    return found


def fixtures() -> list[tuple[str, dict[str, Any]]]:
    """The valid resources carried in the repository, with a name each."""
    rich = orjson.loads((HERE / "fixtures" / "equivalence.json").read_bytes())
    out = [(f"rich {r['resourceType']}", r) for r in rich]
    out += [(f"minimal {t}", minimal_valid(t)) for t in sorted(R4_RESOURCE_TYPES)]
    out += [(f"seed {i} {r['resourceType']}", r)
            for i, r in enumerate(_bundle_resources(PROJECT_ROOT / "seed_data"))]
    xml = PROJECT_ROOT / "tests" / "fixtures" / "xml"
    for path in sorted(xml.glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        if not r4_rejects(resource):  # (some are made to exercise the XML form, not validity)
            out.append((f"xml {path.stem}", resource))
    return out


def synthea() -> list[dict[str, Any]]:
    if not SAMPLES.is_dir():
        pytest.skip(f"no Synthea samples at {SAMPLES}")
    return _bundle_resources(SAMPLES)


def mutated(named: list[tuple[str, dict[str, Any]]], per: dict[str, int]
            ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Mutations of each named resource; how many by the first word of its name."""
    for name, resource in named:
        count = per.get(name.split()[0], per.get("*", 0))
        seed = zlib.crc32(name.encode())
        for label, variant in variants(resource, count, seed):
            yield f"{name} / {label}", variant


@dataclass
class Tally:
    cases: int = 0
    pydantic_refused: int = 0
    both_refused: int = 0
    r4_only: int = 0
    departures: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    by_mutation: Counter[str] = field(default_factory=Counter)  # (2) refused, per mutation
    unexplained: list[tuple[str, list[Finding]]] = field(default_factory=list)

    def summary(self) -> str:
        unmodelled = sum(n for t, n in self.by_type.items() if t in UNMODELLED)
        return (f"{self.cases} cases of {len(self.by_type)} types ({unmodelled} of types R4B "
                f"does not model); (2) refused {self.pydantic_refused}, (1)+(3) too "
                f"{self.both_refused}, R4B departures {dict(self.departures)}; (1)+(3) alone "
                f"refused {self.r4_only}; (2) refused per mutation {dict(self.by_mutation)}")


def compare(cases: Iterator[tuple[str, dict[str, Any]]]) -> Tally:
    tally = Tally()
    for name, resource in cases:
        tally.cases += 1
        tally.by_type[str(resource.get("resourceType"))] += 1
        findings = pydantic_findings(resource)
        refused = r4_rejects(resource)
        if findings:
            tally.pydantic_refused += 1
            tally.by_mutation[name.partition(" / ")[2].partition(":")[0] or "none"] += 1
            if refused:
                tally.both_refused += 1
                continue
            reasons = [departure(resource, f) for f in findings]
            if None in reasons:
                tally.unexplained.append(
                    (name, [f for f, r in zip(findings, reasons, strict=True) if r is None]))
            else:
                tally.departures.update(r for r in set(reasons) if r is not None)
        elif refused:
            tally.r4_only += 1
    return tally


def _report(tally: Tally) -> str:
    lines = [f"{len(tally.unexplained)} refusals of (2) that (1)+(3) do not share:"]
    for name, findings in tally.unexplained[:40]:
        lines.append(f"  {name}")
        lines += [f"      {f.kind} at {'.'.join(map(str, f.loc))}: {f.message[:100]}"
                  for f in findings[:3]]
    return "\n".join(lines)


# --- tests -----------------------------------------------------------------------------------


def test_fixtures_are_valid_for_both() -> None:
    named = fixtures()
    assert len(named) > 250
    assert len({r["resourceType"] for _, r in named}) == len(R4_RESOURCE_TYPES)
    for name, resource in named:
        assert not r4_rejects(resource), name
        findings = pydantic_findings(resource)
        assert all(departure(resource, f) for f in findings), (name, findings)


def test_r4_checks_refuse_what_pydantic_refuses_on_fixture_mutations() -> None:
    tally = compare(mutated(fixtures(), {"rich": 150, "xml": 60, "minimal": 20, "seed": 8}))
    print(f"\nfixture mutations: {tally.summary()}")
    assert not tally.unexplained, _report(tally)
    assert tally.cases > 8000
    assert len(tally.by_type) == len(R4_RESOURCE_TYPES)
    assert tally.pydantic_refused > 5000
    assert sum(n for t, n in tally.by_type.items() if t in UNMODELLED) > 1000


def test_r4_checks_refuse_what_pydantic_refuses_on_synthea() -> None:
    resources = synthea()
    assert len(resources) > 1000
    tally = compare(iter((f"synthea {i}", r) for i, r in enumerate(resources)))
    assert tally.pydantic_refused == tally.r4_only == 0, _report(tally)
    named = [(f"synthea {i} {r['resourceType']}", r) for i, r in enumerate(resources)]
    tally = compare(mutated(named, {"*": 2}))
    print(f"\nSynthea mutations: {tally.summary()}")
    assert not tally.unexplained, _report(tally)
    assert tally.pydantic_refused > 1000


def test_validate_structure_is_the_r4_checks() -> None:
    """The write path's verdict is (1)+(3)'s, on a sample of the cases."""
    for name, resource in list(mutated(fixtures(), {"rich": 20, "minimal": 2}))[::3]:
        try:
            validate_structure(copy.deepcopy(resource))
            refused = False
        except FhirError:
            refused = True
        assert refused == r4_rejects(resource), name


# --- the gaps the comparison found, closed in json_shape --------------------------------------

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
EXT = {"url": "http://example.org/e", "valueString": "x"}


@pytest.mark.parametrize(("resource", "expression"), [
    ({**OBS, "valueInteger": 2**31}, "Observation.valueInteger"),
    ({**OBS, "valueInteger": -(2**31) - 1}, "Observation.valueInteger"),
    ({"resourceType": "Patient", "telecom": [{"value": "1", "rank": 0}]},
     "Patient.telecom[0].rank"),
    ({"resourceType": "Patient", "photo": [{"size": -1}]}, "Patient.photo[0].size"),
    ({"resourceType": "Parameters", "parameter": [{"name": "x", "valueDecimal": float("inf")}]},
     "Parameters.parameter[0].valueDecimal"),
    ({"resourceType": "Patient", "birthDate": "2023-02-29"}, "Patient.birthDate"),
    ({"resourceType": "Patient", "birthDate": "1900-02-29"}, "Patient.birthDate"),
    ({**OBS, "effectiveDateTime": "2024-04-31T10:00:00Z"}, "Observation.effectiveDateTime"),
    ({**OBS, "issued": "2023-02-30T23:59:60Z"}, "Observation.issued"),
    ({"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": "abc"}]},
     "Patient.photo[0].data"),
    ({"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": "=AAA"}]},
     "Patient.photo[0].data"),
    ({**OBS, "valueString": "x", "valueBoolean": True}, "Observation.valueBoolean"),
    ({"resourceType": "Patient", "extension": [{**EXT, "valueCode": "y"}]},
     "Patient.extension[0].valueCode"),
    ({"resourceType": "Patient", "name": [{"family": "x"}], "_name": [{"id": "n"}]},
     "Patient._name"),
    ({"resourceType": "Patient", "name": [{"given": ["a"], "_given": {"id": "g"}}]},
     "Patient.name[0]._given"),
    ({"resourceType": "Patient", "active": True, "_active": [{"extension": [EXT]}]},
     "Patient._active"),
    ({"resourceType": "Patient", "active": True, "_active": {"extension": [{"valueString": "x"}]}},
     "Patient._active.extension[0].url"),
    ({"resourceType": "Patient", "active": True, "_active": {"bogus": 1}}, "Patient._active.bogus"),
    ({"resourceType": "Patient", "active": True,
      "_active": {"extension": [{"url": "http://x", "valueDate": "2020-13"}]}},
     "Patient._active.extension[0].valueDate"),
    ({"resourceType": "Patient", "name": [{"resourceType": "HumanName", "family": "x"}]},
     "Patient.name[0].resourceType"),
    ({"resourceType": "Patient", "id": "a_b"}, "Patient.id"),
    ({"resourceType": "Patient", "id": "x" * 65}, "Patient.id"),
    ({"resourceType": "Patient", "contained": [{"resourceType": "Basic", "id": "a b",
                                                "code": {"text": "x"}}]},
     "Patient.contained[0].id"),
    ({"resourceType": "Patient", "name": [{"id": "n", "_id": {"extension": [EXT]}}]},
     "Patient.name[0]._id"),
    ({"resourceType": "SubstanceProtein", "numberOfSubunits": 2**31},
     "SubstanceProtein.numberOfSubunits"),
    ({"resourceType": "MedicinalProduct", "name": [{"productName": "A"}],
      "specialDesignation": [{"date": "2023-02-29T00:00:00Z"}]},
     "MedicinalProduct.specialDesignation[0].date"),
])
def test_gap_closed(resource: dict[str, Any], expression: str) -> None:
    found = [e for i in check_json_shape(resource) for e in i.expression]
    assert expression in found
    with pytest.raises(FhirError):
        validate_structure(copy.deepcopy(resource))


@pytest.mark.parametrize("resource", [
    # R4 content the R4B models refuse (what the write path used to refuse with them)
    {"resourceType": "Parameters",
     "parameter": [{"name": "u", "valueUuid": "urn:uuid:6b1b1b1b-1b1b-1b1b-8b1b-1b1b1b1b1b1b"}]},
    {"resourceType": "Patient", "managingOrganization": {"reference": "#mp"},
     "contained": [{"resourceType": "MedicinalProduct", "id": "mp",
                    "name": [{"productName": "Aspirin"}]}]},
    # valid edge values
    {**OBS, "issued": "2016-12-31T23:59:60Z", "effectiveDateTime": "2024-02-29T00:00:00+14:00",
     "valueInteger": -(2**31)},
    {"resourceType": "Patient", "birthDate": "2000-02-29",
     "photo": [{"contentType": "image/png", "data": "ab/+ AA==\n"}]},
])
def test_r4_content_r4b_refuses_is_accepted(resource: dict[str, Any]) -> None:
    validate_structure(copy.deepcopy(resource))
