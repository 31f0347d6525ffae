"""The five typical searches use indexes, according to each engine's own query planner.

A few hundred resources (patients with observations, encounters, conditions and medication
requests) are written through the interactions, as the REST API and the loader write them, so
the index tables are filled by the real indexer. Each typical search is parsed by the real parser
and handed to the engine's `explain`:

- SQLite (`EXPLAIN QUERY PLAN`): every table is reached through an index (`SEARCH ... USING
  [COVERING] INDEX`), never `SCAN`; each parameter is answered from its idx_* table by the
  index that starts with (rtype, param, value...) or, for references, (ttype, tid, rtype,
  param); the `resources` table is reached by its primary key (type, id). The statements a
  whole search runs (page, total, _include) are checked the same way.
- MongoDB: the winning plan contains an IXSCAN and no COLLSCAN. Only against a real server
  (FHIR_SERVER_TEST_MONGODB_URL); mongomock has no planner.

The database is never ANALYZEd, so SQLite plans by its fixed heuristics, not by row counts: the
plans seen here on a few hundred resources are the plans a large database gets.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhir_server import interactions
from fhir_server.config import Settings
from fhir_server.context import RequestContext
from fhir_server.search.execute import search as run_search
from fhir_server.search.execute import type_scope
from fhir_server.search.parser import parse_search
from fhir_server.search.registry import Registry, default_registry
from fhir_server.store.base import SearchQuery, Store
from fhir_server.store.sqlite import SqliteStore
from fhir_server.store.sqlite_search import Sql

BASE = "http://plans.test/fhir"
MONGODB_URL = os.environ.get("FHIR_SERVER_TEST_MONGODB_URL")
PATIENTS = 24
FAMILIES = ["Koepp", "Goldner", "Prohaska", "Jacobi", "Schamberger", "Conn", "Armstrong", "Hahn"]
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBSERVATION_CODES = ["8302-2", "29463-7", "39156-5", "8867-4", "72514-3"]
CONDITION_CODES = ["444814009", "162864005", "10509002", "15777000"]
CONDITION_TEXTS = ["Viral sinusitis", "Obesity", "Acute bronchitis", "Prediabetes"]
ELSEWHERE = "https://elsewhere.test/fhir/Practitioner/p1"


# --------------------------------------------------------------------------------------------
# Data: a small clinical population, written through the interactions


def population() -> Iterator[dict[str, Any]]:
    """Practitioners, then per patient: the Patient, observations, encounters, conditions and
    medication requests (~13 resources each). Deterministic ids and values."""
    for n in range(4):
        yield {"resourceType": "Practitioner", "id": f"prac-{n}",
               "name": [{"family": f"Doctor{n}", "given": ["Sam"]}]}
    for p in range(PATIENTS):
        pid = f"pat-{p}"
        subject = {"reference": f"Patient/{pid}"}
        yield {"resourceType": "Patient", "id": pid, "gender": ["male", "female"][p % 2],
               "birthDate": f"{1940 + p}-0{1 + p % 9}-1{p % 10}",
               "name": [{"family": FAMILIES[p % len(FAMILIES)], "given": [f"Given{p}"]}]}
        for e in range(3):
            yield {"resourceType": "Encounter", "id": f"enc-{p}-{e}", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                             "code": "AMB"},
                   "subject": subject,
                   "period": {"start": f"{2012 + 3 * e}-05-0{1 + p % 9}T10:00:00+00:00",
                              "end": f"{2012 + 3 * e}-05-0{1 + p % 9}T10:30:00+00:00"}}
        for o, code in enumerate(OBSERVATION_CODES):
            yield {"resourceType": "Observation", "id": f"obs-{p}-{o}", "status": "final",
                   "code": {"coding": [{"system": LOINC, "code": code}]},
                   "subject": subject, "encounter": {"reference": f"Encounter/enc-{p}-{o % 3}"},
                   "performer": [{"reference": ELSEWHERE}],
                   "effectiveDateTime": f"{2012 + o}-05-01T10:00:00+00:00",
                   "valueQuantity": {"value": 50 + p + o, "unit": "kg",
                                     "system": "http://unitsofmeasure.org", "code": "kg"}}
        for c in range(2):
            code = CONDITION_CODES[(p + c) % len(CONDITION_CODES)]
            yield {"resourceType": "Condition", "id": f"cond-{p}-{c}", "subject": subject,
                   "code": {"coding": [{"system": SNOMED, "code": code}],
                            "text": CONDITION_TEXTS[(p + c) % len(CONDITION_TEXTS)]},
                   "onsetDateTime": f"{2010 + c}-01-01T00:00:00+00:00"}
        for m in range(2):
            yield {"resourceType": "MedicationRequest", "id": f"med-{p}-{m}",
                   "status": "active", "intent": "order", "subject": subject,
                   "medicationCodeableConcept": {"coding": [{
                       "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "310965"}]},
                   "requester": {"reference": f"Practitioner/prac-{(p + m) % 4}"}}
        for a, (subtype, action) in enumerate((("read", "R"), ("search-type", "E"))):
            yield {"resourceType": "AuditEvent",
                   "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                            "code": "rest"},
                   "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                                "code": subtype}],
                   "action": action, "outcome": "0",
                   "recorded": f"{2012 + a}-05-0{1 + p % 9}T10:00:00Z",
                   "agent": [{"who": {"reference": f"Practitioner/prac-{p % 4}"},
                              "name": f"Doctor{p % 4}", "requestor": True,
                              "network": {"address": f"10.0.0.{p}", "type": "2"}}],
                   "source": {"observer": {"display": "plans"}},
                   "entity": [{"what": {"reference": subject["reference"]}}]}


def context(store: Store, registry: Registry) -> RequestContext:
    return RequestContext(store, Settings(seed=False), registry, BASE)


async def fill(store: Store, registry: Registry) -> int:
    ctx = context(store, registry)
    count = 0
    for resource in population():
        if resource["resourceType"] == "AuditEvent":  # append-only: created, never put
            await interactions.create(ctx, "AuditEvent", resource)
        else:
            await interactions.update(ctx, resource["resourceType"], resource["id"], resource)
        count += 1
    return count


@pytest.fixture(scope="module")
def registry() -> Registry:
    return default_registry()


@pytest.fixture(scope="module")
def sqlite_file(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Path:
    """One SQLite database with the population, filled once for the module."""
    path = tmp_path_factory.mktemp("plans") / "fhir.sqlite"

    async def build() -> int:
        store = SqliteStore(path)
        await store.open()
        try:
            return await fill(store, registry)
        finally:
            await store.close()

    assert asyncio.run(build()) > 300
    return path


@pytest.fixture
async def sqlite_store(sqlite_file: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(sqlite_file)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --------------------------------------------------------------------------------------------
# The typical searches


@dataclass(frozen=True)
class Typical:
    name: str
    type: str
    params: list[tuple[str, str]]
    indexes: tuple[str, ...]
    """The index lookups (plan lines on idx_* tables) the plan must contain, as regexes."""


# The typical searches read their index tables' covering indexes only (sqlite_search.py).
REF_BY_TARGET = r"USING COVERING INDEX idx_reference_t \(ttype=\? AND tid=\? AND rtype=\? " \
                r"AND param=\?\)"
TOKEN_BY_CODE = r"USING COVERING INDEX idx_token_q \(rtype=\? AND param=\? AND code=\?"
DATE_RANGE = r"USING (COVERING )?INDEX idx_date_[qh] \(rtype=\? AND param=\? AND (low|high)[<>]"
STRING_PREFIX = r"USING COVERING INDEX idx_string_q \(rtype=\? AND param=\? AND norm>\? " \
                r"AND norm<\?\)"
# A further parameter of an AND is probed per candidate row on its (rtype, rid, param) index.
PROBE = r"USING COVERING INDEX idx_\w+_rp \(rtype=\? AND rid=\? AND param=\?( AND \w+[=<>]\?)*\)"

TYPICAL = [
    Typical("Observation by patient+code", "Observation",
            [("patient", "Patient/pat-3"), ("code", f"{LOINC}|8302-2")],
            (REF_BY_TARGET, PROBE)),
    Typical("Encounter by patient+date", "Encounter",
            [("patient", "pat-3"), ("date", "ge2015-01-01")],
            (REF_BY_TARGET, PROBE)),
    Typical("Condition by code", "Condition",
            [("code", f"{SNOMED}|444814009")],
            (TOKEN_BY_CODE,)),
    Typical("Patient by family+birthdate", "Patient",
            [("family", "Jacobi"), ("birthdate", "1943-04-13")],
            (STRING_PREFIX, PROBE)),
    Typical("MedicationRequest by patient with _include", "MedicationRequest",
            [("patient", "pat-3"), ("_include", "MedicationRequest:requester")],
            (REF_BY_TARGET,)),
]
# Partial indexes and the resources row serve these (the write path skips their other rows).
TYPICAL += [
    Typical("Condition by code text", "Condition", [("code:text", "prediab")],
            (r"USING (COVERING )?INDEX idx_token_t \(rtype=\? AND param=\? AND text>\? "
             r"AND text<\?\)",)),
    Typical("Observation by absolute performer URL", "Observation",
            [("performer", ELSEWHERE)],
            (r"USING (COVERING )?INDEX idx_reference_u \(rtype=\? AND param=\? AND url=\?\)",)),
    Typical("Patient by _lastUpdated", "Patient", [("_lastUpdated", "gt2020-01-01")],
            (r"USING (COVERING )?INDEX resources_by_time \(type=\? AND last_updated>\?\)",)),
]
# AuditEvents' tokens, strings and references are terms in one table (store/sqlite_terms.py).
TERM_EXACT = r"USING PRIMARY KEY \(term=\?\)"
TERM_RANGE = r"USING PRIMARY KEY \(term>\? AND term<\?\)"
TERM_PROBE = r"USING COVERING INDEX audit_terms_by_event \(rid=\? AND term"
TYPICAL += [
    Typical("AuditEvent by patient", "AuditEvent", [("patient", "Patient/pat-3")],
            (TERM_EXACT,)),
    Typical("AuditEvent by patient+action", "AuditEvent",
            [("patient", "Patient/pat-3"), ("action", "R")], (TERM_EXACT, TERM_PROBE)),
    Typical("AuditEvent by agent-name", "AuditEvent", [("agent-name", "doctor2")],
            (TERM_RANGE,)),
    Typical("AuditEvent by entity id", "AuditEvent", [("entity", "pat-3")], (TERM_RANGE,)),
    Typical("AuditEvent by subtype+date", "AuditEvent",
            [("subtype", "read"), ("date", "ge2012-01-01")], (TERM_RANGE,)),
]
IDS = [t.name for t in TYPICAL]

RESOURCES_BY_KEY = re.compile(
    r"^SEARCH r USING (INDEX sqlite_autoindex_resources_1|PRIMARY KEY) \(type=\? AND id=\?\)$"
    r"|^SEARCH r USING INDEX resources_by_time \(type=\? AND last_updated[<>]=?\?\)$"
)


def query(t: Typical, registry: Registry) -> SearchQuery:
    request = parse_search(t.type, t.params, registry, BASE, strict=True)
    assert request.where is not None
    return SearchQuery(t.type, request.where)


def assert_no_scan(plan: list[str], what: str) -> None:
    # A SCAN of a subquery reads rows the subquery produced from its indexes, not a table.
    scans = [line for line in plan
             if line.startswith("SCAN") and not re.fullmatch(r"SCAN \(subquery-\d+\)", line)]
    assert not scans, f"{what} scans a table: {scans}\nplan: {plan}"
    reached = [line for line in plan if line.startswith("SEARCH")]
    assert reached, f"{what}: no SEARCH in the plan: {plan}"
    for line in reached:
        assert " USING " in line, f"{what}: table read without an index: {line}\nplan: {plan}"


# --------------------------------------------------------------------------------------------
# SQLite


@pytest.mark.parametrize("typical", TYPICAL, ids=IDS)
async def test_sqlite_search_uses_indexes(
    sqlite_store: SqliteStore, registry: Registry, typical: Typical
) -> None:
    plan = sqlite_store.explain(query(typical, registry))
    assert_no_scan(plan, typical.name)
    # The resources table: only primary-key lookups (type, id), driven by an index table.
    on_resources = [line for line in plan if re.match(r"^(SCAN|SEARCH) r\b", line)]
    assert on_resources, plan
    for line in on_resources:
        assert RESOURCES_BY_KEY.match(line), f"resources not read by key: {line}\nplan: {plan}"
    # Each parameter: the idx_* table's own (rtype, param, value...) index.
    for pattern in typical.indexes:
        assert any(re.search(pattern, line) for line in plan), (
            f"{typical.name}: no index lookup matching {pattern!r}\nplan: {plan}"
        )
    for line in plan:
        if re.match(r"^SEARCH [xe]\d+ ", line):
            assert re.search(r"USING (COVERING )?INDEX idx_\w+ \(", line), line


async def test_sqlite_probes_a_candidate_before_reading_its_resource_row(
    sqlite_store: SqliteStore, registry: Registry
) -> None:
    """An AND driven by one index table checks the other parameters on the index rows of the
    driver's candidates, inside its sub-select, so only matches reach the resources table (a
    patient's hundreds of Observations, a few with the code)."""
    typical = TYPICAL[0]
    sql = Sql()
    where = sqlite_store._where(typical.type, query(typical, registry).where, sql)
    driver = re.search(r"r\.id IN \(SELECT (x\d+)\.rid FROM idx_reference \1 WHERE (.*)\)$", where)
    assert driver is not None, where
    alias, conditions = driver.groups()
    assert re.search(rf"EXISTS \(SELECT 1 FROM idx_token e\d+ INDEXED BY idx_token_rp "
                     rf"WHERE e\d+\.rtype = \? AND e\d+\.rid = {alias}\.rid ", conditions), where
    assert "r.id" not in conditions, where


@pytest.mark.parametrize("typical", TYPICAL, ids=IDS)
async def test_sqlite_whole_search_uses_indexes(
    sqlite_store: SqliteStore, registry: Registry, typical: Typical
) -> None:
    """Every statement a whole search runs (page with ORDER BY/LIMIT, total, _include) is
    explained: `explain()` shows only the WHERE clause, the page query wraps it."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    fetch = sqlite_store._fetch

    def recording(sql: str, params: tuple[Any, ...], *rest: Any) -> list[tuple[Any, ...]]:
        statements.append((sql, params))
        return fetch(sql, params, *rest)

    sqlite_store._fetch = recording  # type: ignore[method-assign]
    try:
        bundle = await run_search(
            context(sqlite_store, registry), type_scope(typical.type), typical.params, True
        )
        # A search counts only when the first page does not hold every match: count here.
        await sqlite_store.count(typical.type, query(typical, registry).where)
    finally:
        del sqlite_store._fetch
    assert bundle["total"] >= 1, f"{typical.name} finds nothing: the data does not fit it"
    if typical.type == "MedicationRequest":
        modes = [e["search"]["mode"] for e in bundle["entry"]]
        assert "include" in modes, "the _include added nothing"
    assert len(statements) >= 2  # the page and the count at least
    for sql, params in statements:
        plan = sqlite_store._fetch("EXPLAIN QUERY PLAN " + sql, params)
        details = [str(row[-1]) for row in plan]
        assert_no_scan(details, f"{typical.name}: {sql[:120]}...")


DATE_ONLY = [
    Typical("Encounter by date ge", "Encounter", [("date", "ge2015-01-01")], (DATE_RANGE,)),
    Typical("Patient by birthdate eq", "Patient", [("birthdate", "1943-04-13")], (DATE_RANGE,)),
]


@pytest.mark.parametrize("typical", [*TYPICAL, *DATE_ONLY],
                         ids=[t.name for t in (*TYPICAL, *DATE_ONLY)])
async def test_sqlite_date_ranges_are_bounded(
    sqlite_store: SqliteStore, registry: Registry, typical: Typical
) -> None:
    """Stricter than 'uses an index': no date index read that starts at the beginning of the
    index (an upper bound only), i.e. at the far side of what the search asks for."""
    plan = sqlite_store.explain(query(typical, registry))
    open_ended = [line for line in plan
                  if re.search(r"INDEX idx_date_\w+ \(rtype=\? AND param=\? AND \w+<\?\)", line)]
    assert not open_ended, f"date index read from its start: {open_ended}\nplan: {plan}"


# --------------------------------------------------------------------------------------------
# MongoDB (a real server only)


def stages(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if isinstance(plan.get("stage"), str):
            yield plan["stage"]
        for value in plan.values():
            yield from stages(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from stages(value)


@pytest.fixture(scope="module")
def mongo_db_name() -> str:
    return f"fhir_plans_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def mongo_store(registry: Registry, mongo_db_name: str) -> AsyncIterator[Store]:
    if not MONGODB_URL:
        pytest.skip("needs a real MongoDB: set FHIR_SERVER_TEST_MONGODB_URL (mongomock has no "
                    "query planner)")
    from pymongo import AsyncMongoClient

    from fhir_server.store.mongo import MongoStore

    client: AsyncMongoClient[Any] = AsyncMongoClient(MONGODB_URL)
    store = MongoStore(client, mongo_db_name)
    await store.open()
    try:
        await fill(store, registry)
        yield store
    finally:
        await store.close()
        await client.drop_database(mongo_db_name)
        await client.close()


@pytest.mark.parametrize("typical", TYPICAL, ids=IDS)
async def test_mongo_search_uses_indexes(
    mongo_store: Store, registry: Registry, typical: Typical
) -> None:
    from fhir_server.store.mongo import MongoStore

    assert isinstance(mongo_store, MongoStore)
    explained = await mongo_store.explain(query(typical, registry))
    winning = explained["queryPlanner"]["winningPlan"]
    found = list(stages(winning))
    assert "IXSCAN" in found, f"{typical.name}: no index scan in {winning}"
    assert "COLLSCAN" not in found, f"{typical.name}: collection scan in {winning}"
