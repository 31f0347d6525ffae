"""Search over real Synthea patients (skipped when /work/shared's samples are absent).

Synthea writes transaction bundles whose entries reference each other by `urn:uuid:` full URLs.
Transactions are not implemented yet, so the loader here rewrites each `urn:uuid:X` to the
resource `Type/X` (giving each resource the id X) and PUTs resources one by one. Expected
results are computed from the bundles' content.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import ENGINES
from tests.search.conftest import BIG, Loaded, load, open_client, search_ids
from tests.search.fixtures import oracle as o

pytestmark = pytest.mark.asyncio(loop_scope="module")

SAMPLES = Path("/work/shared/samples/synthea-r4")
BUNDLES = ["Liz_Conn", "Tony_Beer", "Hassan_Jacobi"]
TYPES = ("Patient", "Encounter", "Observation", "Condition", "MedicationRequest",
         "Organization", "Practitioner")
"""The types loaded (claims and the like add nothing these searches need)."""

Resource = dict[str, Any]


def bundle_files() -> list[Path]:
    if not SAMPLES.is_dir():
        return []
    return [f for name in BUNDLES for f in sorted(SAMPLES.glob(f"{name}_*.json"))]


if not bundle_files():
    pytest.skip("Synthea samples not present", allow_module_level=True)


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    if isinstance(value, str) and value in ids:
        return ids[value]
    return value


def synthea_resources() -> list[Resource]:
    """Resources of the chosen bundles with urn:uuid references rewritten to `Type/id`."""
    resources: list[Resource] = []
    for path in bundle_files():
        bundle = json.loads(path.read_text())
        chosen = [e for e in bundle["entry"] if e["resource"]["resourceType"] in TYPES]
        ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['fullUrl'][9:]}"
               for e in chosen if e.get("fullUrl", "").startswith("urn:uuid:")}
        for entry in chosen:
            resource = _rewrite(entry["resource"], ids)
            resource["id"] = ids[entry["fullUrl"]].split("/", 1)[1]
            resources.append(resource)
    return resources


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def synthea(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Loaded]:
    engine: str = request.param
    async with open_client(engine, tmp_path_factory.mktemp(f"synthea-{engine}")) as http:
        yield await load(http, engine, synthea_resources())


def subject_id(r: Resource) -> str | None:
    target = o.reference_target(r.get("subject"), "")
    return target[1] if target and target[0] == "Patient" else None


def first_code(d: Loaded, resource_type: str, patient: str | None = None) -> str:
    """The most frequent code among a type's resources (of one patient if given)."""
    counts: dict[str, int] = {}
    for r in d.of_type(resource_type):
        if patient is None or subject_id(r) == patient:
            for system, code, _ in o.codings(r.get("code")):
                if system and code:
                    counts[f"{system}|{code}"] = counts.get(f"{system}|{code}", 0) + 1
    return max(sorted(counts), key=lambda k: counts[k])


async def test_all_loaded(synthea: Loaded) -> None:
    for t in ("Patient", "Encounter", "Observation", "Condition"):
        assert synthea.of_type(t)
        got = await search_ids(synthea.client, f"/{t}", [("_count", BIG)])
        assert set(got) == synthea.ids(t, lambda r: True)


async def test_observations_of_patient_by_code(synthea: Loaded) -> None:
    for patient in synthea.of_type("Patient"):
        pid = patient["id"]
        code = first_code(synthea, "Observation", pid)
        got = await search_ids(synthea.client, "/Observation",
                               [("patient", pid), ("code", code), ("_count", "7")])
        expected = synthea.ids("Observation", lambda r, pid=pid, code=code: subject_id(r) == pid
                               and o.token_match(code, o.codings(r["code"])))
        assert expected and sorted(got) == sorted(expected), (pid, code)


async def test_encounters_of_patient_by_date(synthea: Loaded) -> None:
    for patient in synthea.of_type("Patient"):
        pid = patient["id"]
        starts = sorted(e["period"]["start"] for e in synthea.of_type("Encounter")
                        if subject_id(e) == pid)
        middle_year = starts[len(starts) // 2][:4]
        for value in (f"ge{middle_year}", f"lt{middle_year}", middle_year, f"sa{middle_year}"):
            got = await search_ids(synthea.client, "/Encounter",
                                   [("patient", f"Patient/{pid}"), ("date", value),
                                    ("_count", BIG)])
            expected = synthea.ids("Encounter", lambda r, v=value, pid=pid: subject_id(r) == pid
                                   and o.date_match(v, o.date_ranges(r.get("period"))))
            assert sorted(got) == sorted(expected), (pid, value)


async def test_conditions_by_code(synthea: Loaded) -> None:
    codes = {f"{s}|{c}" for r in synthea.of_type("Condition")
             for s, c, _ in o.codings(r["code"]) if s and c}
    assert codes
    for code in sorted(codes):
        got = await search_ids(synthea.client, "/Condition", [("code", code)])
        expected = synthea.ids("Condition",
                               lambda r, code=code: o.token_match(code, o.codings(r["code"])))
        assert sorted(got) == sorted(expected), code
        bare = code.split("|")[1]
        got = await search_ids(synthea.client, "/Condition", [("code", bare)])
        assert sorted(got) == sorted(expected), bare


async def test_patient_by_family_and_birthdate(synthea: Loaded) -> None:
    for patient in synthea.of_type("Patient"):
        family = patient["name"][0]["family"]
        birth = patient["birthDate"]
        for params in ([("family", family[:4].lower())],
                       [("family", family), ("birthdate", birth)],
                       [("family", family), ("birthdate", f"gt{birth}")],
                       [("birthdate", f"le{birth[:7]}")]):
            got = await search_ids(synthea.client, "/Patient", params)
            expected = synthea.ids("Patient", lambda r, params=params: all(
                o.string_match(v, o.names(r, ["family"])) if k == "family"
                else o.date_match(v, o.date_ranges(r.get("birthDate"))) for k, v in params))
            assert sorted(got) == sorted(expected), params
            if len(params) == 2 and not params[1][1].startswith("gt"):
                assert patient["id"] in expected


async def test_observation_values_and_chain(synthea: Loaded) -> None:
    loinc_weight = "http://loinc.org|29463-7"
    for value in ("gt70", "le70|http://unitsofmeasure.org|kg", "ap60"):
        got = await search_ids(synthea.client, "/Observation",
                               [("code", loinc_weight), ("value-quantity", value),
                                ("_count", BIG)])
        expected = synthea.ids("Observation", lambda r, v=value: o.token_match(
            loinc_weight, o.codings(r["code"])) and o.quantity_match(
            v, o.quantities(r.get("valueQuantity"))))
        assert sorted(got) == sorted(expected), value
    patient = synthea.of_type("Patient")[0]
    given = patient["name"][0]["given"][0]
    got = await search_ids(synthea.client, "/Condition",
                           [("subject:Patient.given", given), ("_count", BIG)])
    expected = synthea.ids("Condition", lambda r: any(
        o.string_match(given, o.names(p, ["given"])) for p in synthea.of_type("Patient")
        if subject_id(r) == p["id"]))
    assert expected and sorted(got) == sorted(expected)


async def test_patient_compartment_everything(synthea: Loaded) -> None:
    patient = synthea.of_type("Patient")[-1]
    got = await search_ids(synthea.client, f"/Patient/{patient['id']}/Encounter",
                           [("_count", "5")])
    assert sorted(got) == sorted(synthea.ids("Encounter",
                                             lambda r: subject_id(r) == patient["id"]))
