"""The base definitions' rules on every write, whatever profile it claims (or none): FHIRPath
invariants with their severities (errors refuse the write with a 422 naming the invariant and
its expression, warnings do not), ele-1 / ext-1 / dom-3 / txt-1 / txt-2 natively, required
bindings where the code system is available locally, for all 147 R4 types (the 18 without an
R4B model included).

Through the API on both engines: a conforming and a violating fixture per family of rule.
Offline: the compiled FHIRPath evaluator against fhirpathpy, the "elements absent" shortcut,
the seed data and every Synthea sample (errors none, warnings dom-6 only).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fhirpathpy.engine.nodes import ResourceNode

from fhir_server.config import PROJECT_ROOT
from fhir_server.definitions import MODELLED_RESOURCE_TYPES, R4_RESOURCE_TYPES, type_definition
from fhir_server.errors import FhirError
from fhir_server.validation import base_rules
from fhir_server.validation.fhirpath import values
from fhir_server.validation.fhirpath.compiler import Env, compile_expression, names
from fhir_server.validation.profiles import compiler as fhirpathpy_compiler
from fhir_server.validation.structure import validate_structure
from tests.api.test_crud import FHIR_JSON
from tests.validation.fixtures.minimal import minimal_valid

SAMPLES = PROJECT_ROOT.parent / "shared" / "samples" / "synthea-r4"
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
UNMODELLED = sorted(R4_RESOURCE_TYPES - MODELLED_RESOURCE_TYPES)
LOINC = "http://loinc.org"
XHTML = "http://www.w3.org/1999/xhtml"

# --- fixtures: (id, conforming, violating, invariant key, expression) ----------------------

PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Petrova"}]}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {
                "value": 120,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }
    ],
}
ORGANIZATION = {"resourceType": "Organization", "id": "org1", "name": "Clinic"}
COMPOSITION = {
    "resourceType": "Composition",
    "status": "final",
    "type": {"text": "Note"},
    "date": "2024-01-01",
    "author": [{"display": "Dr X"}],
    "title": "Note",
}
DOCUMENT = {
    "resourceType": "Bundle",
    "id": "doc1",
    "type": "document",
    "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0"},
    "timestamp": "2024-01-01T00:00:00Z",
}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body.update(copy.deepcopy(changes))
    return body


CASES: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    # ele-1: every element has a value or children other than its id.
    (
        "ele-1",
        _with(PATIENT, name=[{"id": "n1", "family": "Petrova"}]),
        _with(PATIENT, name=[{"id": "n1"}]),
        "ele-1",
        "Patient.name[0]",
    ),
    # A backbone-element invariant of a resource.
    (
        "pat-1",
        _with(PATIENT, contact=[{"gender": "female", "name": {"family": "Petrov"}}]),
        _with(PATIENT, contact=[{"gender": "female"}]),
        "pat-1",
        "Patient.contact[0]",
    ),
    # Resource-level invariants.
    (
        "obs-7",
        OBSERVATION,
        _with(
            OBSERVATION,
            valueString="120/80",
            component=[
                {"code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "valueString": "x"}
            ],
        ),
        "obs-7",
        "Observation",
    ),
    (
        "obs-6",
        _with(OBSERVATION, valueString="high"),
        _with(OBSERVATION, valueString="high", dataAbsentReason={"text": "lost"}),
        "obs-6",
        "Observation",
    ),
    # A datatype invariant wherever the datatype occurs.
    (
        "per-1",
        _with(
            PATIENT,
            name=[
                {"family": "P", "period": {"start": "2020-01-01", "end": "2020-01-01T10:00:00Z"}}
            ],
        ),
        _with(
            PATIENT,
            name=[
                {
                    "family": "P",
                    "period": {"start": "2021-01-01", "end": "2020-12-31T10:00:00+01:00"},
                }
            ],
        ),
        "per-1",
        "Patient.name[0].period",
    ),
    # ext-1, and the SimpleQuantity profile the definitions put on referenceRange.low.
    (
        "ext-1",
        _with(PATIENT, extension=[{"url": "http://example.org/x", "valueString": "y"}]),
        _with(PATIENT, extension=[{"url": "http://example.org/x"}]),
        "ext-1",
        "Patient.extension[0]",
    ),
    (
        "sqty-1",
        _with(OBSERVATION, referenceRange=[{"low": {"value": 90}}]),
        _with(OBSERVATION, referenceRange=[{"low": {"value": 90, "comparator": "<"}}]),
        "sqty-1",
        "Observation.referenceRange[0].low",
    ),
    # A Bundle stored as a resource: bdl-11 types the first entry's resource at run time.
    (
        "bdl-11",
        {
            **DOCUMENT,
            "entry": [
                {"fullUrl": "urn:uuid:1", "resource": COMPOSITION},
                {"fullUrl": "urn:uuid:2", "resource": PATIENT},
            ],
        },
        {
            **DOCUMENT,
            "entry": [
                {"fullUrl": "urn:uuid:2", "resource": PATIENT},
                {"fullUrl": "urn:uuid:1", "resource": COMPOSITION},
            ],
        },
        "bdl-11",
        "Bundle",
    ),
    # txt-1 / txt-2, `htmlChecks()` on the narrative, natively.
    (
        "txt-1",
        _with(PATIENT, text={"status": "generated", "div": f'<div xmlns="{XHTML}"><b>P</b></div>'}),
        _with(
            PATIENT, text={"status": "generated", "div": f'<div xmlns="{XHTML}"><script/>P</div>'}
        ),
        "txt-1",
        "Patient.text.div",
    ),
    (
        "txt-2",
        _with(PATIENT, text={"status": "generated", "div": f'<div xmlns="{XHTML}">P</div>'}),
        _with(PATIENT, text={"status": "generated", "div": f'<div xmlns="{XHTML}"> <p/> </div>'}),
        "txt-2",
        "Patient.text.div",
    ),
    # dom-*: contained resources.
    (
        "dom-3",
        _with(PATIENT, contained=[ORGANIZATION], managingOrganization={"reference": "#org1"}),
        _with(PATIENT, contained=[ORGANIZATION]),
        "dom-3",
        "Patient",
    ),
    (
        "dom-2",
        _with(PATIENT, contained=[ORGANIZATION], managingOrganization={"reference": "#org1"}),
        _with(
            PATIENT,
            contained=[
                _with(
                    ORGANIZATION,
                    contained=[_with(ORGANIZATION, id="o2")],
                    partOf={"reference": "#o2"},
                )
            ],
            managingOrganization={"reference": "#org1"},
        ),
        "dom-2",
        "Patient",
    ),
    (
        "ref-1",
        _with(PATIENT, contained=[ORGANIZATION], managingOrganization={"reference": "#org1"}),
        _with(
            PATIENT,
            contained=[ORGANIZATION],
            managingOrganization={"reference": "#org2"},
            generalPractitioner=[{"reference": "#org1"}],
        ),
        "ref-1",
        "Patient.managingOrganization",
    ),
    # Required bindings: a code, a CodeableConcept of a local code system.
    (
        "binding-code",
        _with(PATIENT, gender="female"),
        _with(PATIENT, gender="femme"),
        "administrative-gender",
        "Patient.gender",
    ),
    (
        "binding-concept",
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
        },
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "cured",
                    }
                ]
            },
        },
        "condition-clinical",
        "Condition.clinicalStatus",
    ),
    # The model-less types (no fhir.resources R4B model): the base rules apply to them too.
    (
        "model-less per-1",
        {
            "resourceType": "MedicinalProductAuthorization",
            "id": "mpa1",
            "validityPeriod": {"start": "2020-01-01", "end": "2025-12-31"},
        },
        {
            "resourceType": "MedicinalProductAuthorization",
            "id": "mpa1",
            "validityPeriod": {"start": "2026-01-01", "end": "2025-12-31"},
        },
        "per-1",
        "MedicinalProductAuthorization.validityPeriod",
    ),
    (
        "model-less dom-3",
        {
            "resourceType": "SubstanceProtein",
            "id": "sp1",
            "numberOfSubunits": 2,
            "contained": [ORGANIZATION],
            "extension": [
                {"url": "http://example.org/maker", "valueReference": {"reference": "#org1"}}
            ],
        },
        {
            "resourceType": "SubstanceProtein",
            "id": "sp1",
            "numberOfSubunits": 2,
            "contained": [ORGANIZATION],
        },
        "dom-3",
        "SubstanceProtein",
    ),
]
IDS = [case[0] for case in CASES]


def _url(body: dict[str, Any]) -> str:
    return f"/{body['resourceType']}/{body['id']}"


def _issues(response: httpx.Response) -> list[dict[str, Any]]:
    return list(response.json()["issue"])


def _has(issues: list[dict[str, Any]], key: str, expression: str) -> bool:
    return any(
        i["severity"] == "error" and key in i["diagnostics"] and expression in i["expression"]
        for i in issues
    )


# --- through the API, both engines ---------------------------------------------------------


@pytest.mark.parametrize(
    ("good", "bad", "key", "expression"), [case[1:] for case in CASES], ids=IDS
)
async def test_update_conforming_201_violating_422(
    client: httpx.AsyncClient,
    good: dict[str, Any],
    bad: dict[str, Any],
    key: str,
    expression: str,
) -> None:
    response = await client.put(_url(bad), json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    assert _has(_issues(response), key, expression), response.text
    assert (await client.get(_url(bad))).status_code == 404
    response = await client.put(_url(good), json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("good", "bad", "key", "expression"),
    [CASES[1][1:], CASES[-1][1:]],
    ids=[CASES[1][0], CASES[-1][0]],
)
async def test_create_conforming_201_violating_422(
    client: httpx.AsyncClient,
    good: dict[str, Any],
    bad: dict[str, Any],
    key: str,
    expression: str,
) -> None:
    response = await client.post(f"/{bad['resourceType']}", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    assert _has(_issues(response), key, expression)
    response = await client.post(f"/{good['resourceType']}", json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


async def test_warnings_do_not_refuse(client: httpx.AsyncClient) -> None:
    """dom-6 (no narrative: Synthea has none) and the name rules of the knowledge resources
    (ees-0, also on a model-less type) are warnings: the write goes through."""
    body = {
        "resourceType": "EffectEvidenceSynthesis",
        "id": "ees1",
        "name": "not a name!",
        "status": "draft",
        "population": {"reference": "Group/g"},
        "exposure": {"reference": "EvidenceVariable/e"},
        "exposureAlternative": {"reference": "EvidenceVariable/a"},
        "outcome": {"reference": "EvidenceVariable/o"},
    }
    issues = base_rules.check_base_rules(body)
    assert {(i.severity, _key(i.diagnostics)) for i in issues} == {
        ("warning", "ees-0"),
        ("warning", "dom-6"),
    }
    response = await client.put("/EffectEvidenceSynthesis/ees1", json=body, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


async def test_warnings_are_listed_with_the_errors(client: httpx.AsyncClient) -> None:
    bad = _with(PATIENT, contact=[{"gender": "female"}])
    issues = _issues(await client.put("/Patient/p1", json=bad, headers=FHIR_JSON))
    assert {(i["severity"], _key(i["diagnostics"])) for i in issues} == {
        ("error", "pat-1"),
        ("warning", "dom-6"),
    }
    assert all(i["code"] == "invariant" for i in issues)


async def test_validate_operation_lists_each_issue_once(client: httpx.AsyncClient) -> None:
    """$validate runs the write-time checks and the profile validator's base walk: both word an
    issue identically, so it is listed once."""
    bad = _with(PATIENT, contact=[{"gender": "female"}])
    response = await client.post("/Patient/$validate", json=bad, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    keys = [_key(i["diagnostics"]) for i in _issues(response) if i["code"] == "invariant"]
    assert keys.count("pat-1") == 1 and keys.count("dom-6") == 1


async def test_unknown_code_system_is_never_an_error(client: httpx.AsyncClient) -> None:
    body = {
        "resourceType": "Condition",
        "id": "c2",
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://example.org/local", "code": "x"}]},
    }
    response = await client.put("/Condition/c2", json=body, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


async def test_patch_result_is_checked(client: httpx.AsyncClient) -> None:
    assert (await client.put("/Patient/p1", json=PATIENT, headers=FHIR_JSON)).status_code == 201
    patch = [{"op": "add", "path": "/contact", "value": [{"gender": "male"}]}]
    response = await client.patch("/Patient/p1", content=orjson.dumps(patch), headers=JSON_PATCH)
    assert response.status_code == 422, response.text
    assert _has(_issues(response), "pat-1", "Patient.contact[0]")
    assert (await client.get("/Patient/p1")).json()["meta"]["versionId"] == "1"


async def test_transaction_entry_is_checked(client: httpx.AsyncClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": PATIENT, "request": {"method": "PUT", "url": "Patient/p1"}},
            {"resource": CASES[2][2], "request": {"method": "PUT", "url": "Observation/o1"}},
        ],
    }
    response = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    text = response.text
    assert "obs-7" in text and "Bundle.entry[1]" in text
    assert (await client.get("/Patient/p1")).status_code == 404


async def test_resources_inside_a_stored_bundle_are_checked(client: httpx.AsyncClient) -> None:
    """A document/collection Bundle is a resource: its entries' resources are walked too,
    with bdl-* on the Bundle itself."""
    good = {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "collection",
        "entry": [{"fullUrl": "http://example.org/Patient/p1", "resource": PATIENT}],
    }
    assert (await client.put("/Bundle/b1", json=good, headers=FHIR_JSON)).status_code == 201
    bad = _with(
        good,
        entry=[
            {
                "fullUrl": "http://example.org/Patient/p1",
                "resource": _with(PATIENT, contact=[{"gender": "male"}]),
            }
        ],
        total=1,
    )
    issues = _issues(await client.put("/Bundle/b1", json=bad, headers=FHIR_JSON))
    assert _has(issues, "pat-1", "Bundle.entry[0].resource.contact[0]")
    assert _has(issues, "bdl-1", "Bundle")


# --- offline: every type, the evaluator, the data ------------------------------------------


def _key(diagnostics: str) -> str:
    m = re.search(r"constraint (\S+) failed", diagnostics)
    return m.group(1) if m else "binding"


def _base_invariants() -> list[tuple[str, str, str]]:
    """(focus type, key, expression) of every invariant in the base definitions."""
    found = []
    for type_name, sd in base_rules._definitions().items():
        for element in sd["snapshot"]["element"]:
            path = element["path"]
            if path == type_name or base_rules._is_type(path):
                focus = path
            else:
                focus = next((t["code"] for t in element.get("type", ())), path)
            for c in element.get("constraint", ()):
                if c.get("expression") and c["key"] not in base_rules.NATIVE:
                    found.append((focus, c["key"], c["expression"]))
    return found


def test_every_type_is_planned_and_every_invariant_compiles() -> None:
    for type_name in sorted(R4_RESOURCE_TYPES):
        base_rules.check_base_rules({"resourceType": type_name})
    uncompiled = set()
    invariants = _base_invariants()
    assert len({key for _, key, _ in invariants}) > 230
    for type_name, key, expression in invariants:
        try:
            compile_expression(expression, type_name)
        except Exception:
            uncompiled.add(key)
    # resolve(): skipped, never an issue (htmlChecks() of txt-1 / txt-2 is native).
    assert uncompiled == {"ctm-1"}


def _objects(obj: dict[str, Any], type_name: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    plan = base_rules._PLANS.get(type_name) or base_rules._plan(type_name)
    out.append((type_name, obj))
    for key, value in obj.items():
        child = plan.children.get(key)
        if child is None or child[1] == base_rules._COMPANION:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                is_resource = child[1] == base_rules._RESOURCE
                _objects(item, item["resourceType"] if is_resource else child[0], out)


def _rules(type_name: str) -> list[tuple[str, str]]:
    sd = base_rules._definitions().get(type_name.split(".")[0])
    element = (
        next((e for e in sd["snapshot"]["element"] if e["path"] == type_name), None) if sd else None
    )
    return [
        (c["key"], c["expression"])
        for c in (element or {}).get("constraint", ())
        if c.get("expression") and c["key"] not in base_rules.NATIVE
    ]


def _corpus() -> list[dict[str, Any]]:
    found = [case[i] for case in CASES for i in (1, 2)]
    found += [minimal_valid(t) for t in sorted(R4_RESOURCE_TYPES)]
    for path in sorted((PROJECT_ROOT / "seed_data").glob("*.json")):
        found += [e["resource"] for e in orjson.loads(path.read_bytes())["entry"]]
    if SAMPLES.is_dir():
        for path in sorted(SAMPLES.glob("*.json"))[:3]:
            found += [e["resource"] for e in orjson.loads(path.read_bytes())["entry"]]
    return found


def test_compiled_evaluator_agrees_with_fhirpathpy_and_absent_elements_shortcut() -> None:
    """On every invariant of every element of the fixtures, the seed data and some Synthea:
    the compiled evaluator's verdict is fhirpathpy's (where fhirpathpy can evaluate it), and
    when none of the elements an invariant names is present its result is the one computed
    once on an empty element."""
    compared = shortcut = 0
    for resource in _corpus():
        objects: list[tuple[str, dict[str, Any]]] = []
        _objects(resource, resource["resourceType"], objects)
        for type_name, obj in objects:
            for key, expression in _rules(type_name):
                try:
                    fn = compile_expression(expression, type_name)
                except Exception:
                    continue
                env = Env(resource, resource, obj)
                mine = fn([obj], env)
                ok = not (len(mine) == 1 and mine[0] is False)
                reference = fhirpathpy_compiler.compile_expression(key, expression)
                data = obj if "resourceType" in obj else ResourceNode.create_node(obj, type_name)
                try:
                    theirs = reference(data, {"resource": resource, "rootResource": resource})
                except Exception:
                    continue  # rng-2: fhirpathpy cannot compare Quantities
                assert ok == (not (len(theirs) == 1 and theirs[0] is False)), (key, obj)
                compared += 1
                found = names(expression, type_name)
                if found is None:
                    continue
                props = type_definition(type_name).properties.values()
                keys = {p.name for p in props if p.element.removesuffix("[x]") in found}
                if obj.keys().isdisjoint(keys | {"_" + k for k in keys}):
                    assert mine == fn([{}], Env({}, {}, {})), (key, obj)
                    shortcut += 1
    assert compared > 1000 and shortcut > 500


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("2020", "2020-01", None),
        ("2020-03", "2020-02-17T13:41:47-05:00", 1),
        ("2020-02-17", "2020-02-17T13:41:47-05:00", None),
        ("2019-02-17T23:00:00-05:00", "2019-02-18T01:00:00Z", 1),
        ("2019-02-17T13:26:47.5Z", "2019-02-17T13:26:47Z", 1),
        ("10:00:00", "09:59", 1),
        (1, 2.5, -1),
        ("abc", "abd", -1),
        ({"value": 1, "system": "s", "code": "mg"}, {"value": 2, "system": "s", "code": "mg"}, -1),
        ({"value": 1, "system": "s", "code": "g"}, {"value": 2, "system": "s", "code": "mg"}, None),
    ],
)
def test_comparison(a: Any, b: Any, expected: int | None) -> None:
    assert values.compare(a, b) == expected


@pytest.mark.parametrize(
    ("expression", "focus", "expected"),
    [
        ("answer is Boolean", {"answerBoolean": True}, [True]),
        ("answer is Boolean", {"answerString": "x"}, [False]),
        ("(answer as string) = 'x'", {"answerString": "x"}, [True]),
        (
            "operator.exists()",
            {"_operator": {"extension": [{"url": "u", "valueString": "v"}]}},
            [True],
        ),
        (
            "operator.hasValue()",
            {"_operator": {"extension": [{"url": "u", "valueString": "v"}]}},
            [False],
        ),
        ("question.matches('^[a-z]+$') and question.startsWith('ab')", {"question": "abc"}, [True]),
        ("{}.exists() or (question | question).count() = 1", {"question": "q"}, [True]),
        ("iif(question = 'a', 1, 2) + 3 > 4", {"question": "b"}, [True]),
        ("%resource.entry.resource.is(Patient)", {}, [True]),
        ("%resource.entry.resource.ofType(Composition).exists()", {}, [False]),
    ],
)
def test_evaluator(expression: str, focus: dict[str, Any], expected: list[Any]) -> None:
    fn = compile_expression(expression, "Questionnaire.item.enableWhen")
    bundle = {"resourceType": "Bundle", "entry": [{"resource": PATIENT}]}
    assert fn([focus], Env(bundle, bundle)) == expected


def test_every_type_has_a_minimal_valid_resource() -> None:
    """All 147 types pass the write-time checks with what the definitions make mandatory (codes
    from their required value sets, and the few elements resource invariants ask for)."""
    for type_name in sorted(R4_RESOURCE_TYPES):
        validate_structure(minimal_valid(type_name))


@pytest.mark.parametrize("type_name", UNMODELLED)
async def test_model_less_types_are_stored_and_checked(
    client: httpx.AsyncClient, type_name: str
) -> None:
    """The 18 types without an R4B model: a valid one is stored, one breaking a base rule
    (here a contained resource nothing refers to, dom-3) is refused."""
    good = {**minimal_valid(type_name), "id": "m1"}
    response = await client.put(f"/{type_name}/m1", json=good, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    bad = {**good, "contained": [ORGANIZATION]}
    response = await client.put(f"/{type_name}/m1", json=bad, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    assert _has(_issues(response), "dom-3", type_name)


def _write_time_issues(resource: dict[str, Any]) -> Counter[tuple[str, str]]:
    try:
        validate_structure(copy.deepcopy(resource))
    except FhirError as exc:
        pytest.fail(f"{resource['resourceType']}/{resource.get('id')}: {exc.issues}")
    return Counter((i.severity, _key(i.diagnostics)) for i in base_rules.check_base_rules(resource))


def test_seed_data_has_no_errors() -> None:
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted((PROJECT_ROOT / "seed_data").glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            found += _write_time_issues(entry["resource"])
    assert set(found) == {("warning", "dom-6")}


def test_synthea_has_no_errors() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"no Synthea samples at {SAMPLES}")
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(Path(SAMPLES).glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            found += _write_time_issues(entry["resource"])
    assert set(found) == {("warning", "dom-6")}  # no narrative in Synthea
