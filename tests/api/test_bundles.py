"""Batch and transaction Bundles over `POST /fhir`, on both engines.

Transactions: processing order, fullUrl (urn:uuid / urn:oid) resolution and reference
rewriting everywhere, conditional references, If-Match per entry, duplicate targets,
all-or-nothing under injected storage failures at every position, response fields per Prefer,
size limits, a 10,000-entry transaction and every shared Synthea bundle. Batches: independent
entries. Other Bundle types: stored through `/fhir/Bundle`, refused by `/fhir`.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.app import create_app
from fhir_server.search.model import Predicate, ResourceIndex
from fhir_server.store.base import (
    DelegatingStore,
    Match,
    SearchQuery,
    StorageError,
    Store,
    Transaction,
    Version,
)
from tests.conftest import (
    BASE,
    audit_events,
    data_history,
    drop_store,
    make_store,
    settings_for,
)

FHIR_JSON = {"Content-Type": "application/fhir+json"}
SYNTHEA = Path(__file__).resolve().parents[3] / "shared" / "samples" / "synthea-r4"
SYSTEM = "urn:oid:1.2.3"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient(family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


def tx(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"],
                                         **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def put(resource: dict[str, Any], url: str | None = None, **request: Any) -> dict[str, Any]:
    url = url or f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url, **request}}


def request(method: str, url: str, **more: Any) -> dict[str, Any]:
    return {"request": {"method": method, "url": url, **more}}


async def send(client: httpx.AsyncClient, bundle: dict[str, Any], **headers: str) -> httpx.Response:
    return await client.post("", json=bundle, headers={**FHIR_JSON, **headers})


async def ok(
    client: httpx.AsyncClient, bundle: dict[str, Any], **headers: str
) -> list[dict[str, Any]]:
    response = await send(client, bundle, **headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == f"{bundle['type']}-response"
    return body["entry"]


async def read(client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    response = await client.get(f"/{ref}")
    assert response.status_code == 200, response.text
    return response.json()


def ref_of(entry: dict[str, Any]) -> str:
    type_, id_ = entry["response"]["location"].split("/")[:2]
    return f"{type_}/{id_}"


# --- transaction: references ---------------------------------------------------------------


async def test_urn_references_rewritten_everywhere(client: httpx.AsyncClient) -> None:
    p_urn, o_urn, org_oid = urn(), urn(), "urn:oid:1.2.840.99.1"
    organization = {"resourceType": "Organization", "name": "Clinic"}
    pat = patient(managingOrganization={"reference": org_oid})
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": p_urn, "display": "the patient"},
        "performer": [{"reference": org_oid}],
        "hasMember": [{"reference": "#inner"}],
        "extension": [
            {"url": "http://example.org/ext-ref", "valueReference": {"reference": p_urn}},
            {"url": "http://example.org/ext-uri", "valueUri": p_urn},
            {"url": "http://example.org/nested", "extension": [
                {"url": "deep", "valueReference": {"reference": org_oid}},
            ]},
        ],
        "contained": [{
            "resourceType": "Observation", "id": "inner", "status": "final",
            "code": {"text": "inner"}, "subject": {"reference": p_urn},
        }],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": o_urn}],
        "text": {"status": "generated",
                 "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{p_urn}">p</a></div>'},
    }
    entries = await ok(client, tx(
        post(observation, o_urn), post(pat, p_urn), post(organization, org_oid),
    ))
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * 3
    obs_ref, pat_ref, org_ref = (ref_of(e) for e in entries)
    stored = await read(client, obs_ref)
    assert stored["subject"]["reference"] == pat_ref
    assert stored["performer"][0]["reference"] == org_ref
    assert stored["hasMember"][0]["reference"] == "#inner"
    assert stored["extension"][0]["valueReference"]["reference"] == pat_ref
    assert stored["extension"][1]["valueUri"] == pat_ref
    assert stored["extension"][2]["extension"][0]["valueReference"]["reference"] == org_ref
    assert stored["contained"][0]["subject"]["reference"] == pat_ref
    assert stored["identifier"][0]["value"] == o_urn  # an identifier, not a reference
    assert pat_ref in stored["text"]["div"]
    assert (await read(client, pat_ref))["managingOrganization"]["reference"] == org_ref
    # The references are searchable by the server ids.
    found = await client.get("/Observation", params={"subject": pat_ref})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [obs_ref.split("/")[1]]


async def test_unknown_urn_reference_fails(client: httpx.AsyncClient) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": urn()}}
    response = await send(client, tx(post(patient()), post(obs)))
    assert response.status_code == 400
    assert "Bundle.entry[1]" in response.text
    assert (await client.get("/Patient")).json().get("total") == 0


async def test_conditional_references(client: httpx.AsyncClient) -> None:
    for value, family in (("one", "A"), ("two", "B"), ("two", "C")):
        ident = [{"system": SYSTEM, "value": value}]
        await client.post("/Patient", json=patient(family, identifier=ident), headers=FHIR_JSON)
    one = (await client.get("/Patient", params={"identifier": f"{SYSTEM}|one"})).json()
    one_id = one["entry"][0]["resource"]["id"]

    def obs(criteria: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": f"Patient?{criteria}"}}

    entries = await ok(client, tx(post(obs(f"identifier={SYSTEM}|one"))))
    assert (await read(client, ref_of(entries[0])))["subject"]["reference"] == f"Patient/{one_id}"
    for criteria in (f"identifier={SYSTEM}|none", f"identifier={SYSTEM}|two"):
        response = await send(client, tx(post(patient("New")), post(obs(criteria))))
        assert response.status_code == 412, response.text
        assert "Bundle.entry[1]" in response.text
    assert (await client.get("/Patient", params={"family": "New"})).json()["total"] == 0


# --- transaction: order, preconditions, duplicates ----------------------------------------


async def test_processing_order(client: httpx.AsyncClient) -> None:
    await client.put("/Patient/old", json=patient("Old", id="old"), headers=FHIR_JSON)
    await client.put("/Patient/kept", json=patient("Kept", id="kept"), headers=FHIR_JSON)
    p = urn()
    bundle = tx(
        request("GET", "Patient?family=Old"),       # GETs run last: the delete is done
        request("GET", "Patient/a"),                # ... and PUT Patient/a too
        put(patient("A", id="a", link=[{"other": {"reference": p}, "type": "seealso"}])),
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.name"},
            {"name": "value", "valueHumanName": {"family": "Patched"}}]}]},
         "request": {"method": "PATCH", "url": "Patient/kept"}},
        post(patient("Posted"), p),
        request("DELETE", "Patient/old"),
    )
    entries = await ok(client, bundle)
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == [
        "200 OK", "200 OK", "201 Created", "200 OK", "201 Created", "204 No Content"
    ]
    assert entries[0]["resource"]["type"] == "searchset"
    assert entries[0]["resource"].get("entry", []) == []
    assert entries[1]["resource"]["name"] == [{"family": "A"}]
    assert entries[1]["resource"]["link"][0]["other"]["reference"] == ref_of(entries[4])
    times = {i: entries[i]["response"]["lastModified"] for i in (2, 3, 4, 5)}
    assert times[5] < times[4] < times[2] < times[3]  # DELETE, POST, PUT, PATCH (in order)
    assert (await read(client, "Patient/kept"))["name"] == [{"family": "Patched"}]


async def test_if_match_per_entry(client: httpx.AsyncClient) -> None:
    await client.put("/Patient/m", json=patient("M", id="m"), headers=FHIR_JSON)
    await client.put("/Patient/m", json=patient("M2", id="m"), headers=FHIR_JSON)
    stale = await send(client, tx(post(patient("X")), put(patient("M3", id="m"), ifMatch='W/"1"')))
    assert stale.status_code == 412
    assert "Bundle.entry[1]" in stale.text
    assert (await read(client, "Patient/m"))["meta"]["versionId"] == "2"
    assert (await client.get("/Patient", params={"family": "X"})).json()["total"] == 0
    entries = await ok(client, tx(put(patient("M3", id="m"), ifMatch='W/"2"'),
                                  request("DELETE", "Patient/gone", ifMatch='W/"0"')))
    assert entries[0]["response"]["etag"] == 'W/"3"'


async def test_duplicate_targets_are_400(client: httpx.AsyncClient) -> None:
    ident = [{"system": SYSTEM, "value": "d"}]
    await client.put("/Patient/d", json=patient("D", id="d", identifier=ident), headers=FHIR_JSON)
    for bundle in (
        tx(put(patient("E", id="d")), request("DELETE", "Patient/d")),
        tx(put(patient("E", id="d")), put(patient("F", id="d"))),
        tx(post(patient("P"), "urn:uuid:1"), post(patient("Q"), "urn:uuid:1")),
        # A conditional target that resolves to the same resource as another entry's.
        tx(put(patient("E", identifier=ident), f"Patient?identifier={SYSTEM}|d"),
           request("DELETE", "Patient/d")),
    ):
        response = await send(client, bundle)
        assert response.status_code == 400, response.text
        assert "Bundle.entry[1]" in response.text
    assert (await client.get("/Patient", params={"family": "P,Q,E,F"})).json()["total"] == 0
    assert (await read(client, "Patient/d"))["meta"]["versionId"] == "1"


async def test_invalid_entry_fails_whole_transaction(client: httpx.AsyncClient) -> None:
    bad = patient("Bad", birthDate="not a date")
    response = await send(client, tx(post(patient("Good")), post(bad, "urn:uuid:bad")))
    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert "Bundle.entry[1] (urn:uuid:bad)" in issue["diagnostics"]
    assert issue["expression"][0].startswith("Bundle.entry[1].resource.birthDate")
    assert (await client.get("/Patient")).json()["total"] == 0


async def test_entry_errors_name_the_entry(client: httpx.AsyncClient) -> None:
    cases = [
        (request("GET", "Patient/missing"), 404),
        (request("PATCH", "Patient/missing"), 400),
        ({"request": {"method": "FROB", "url": "Patient"}}, 400),
        (request("POST", "Nope"), 404),
    ]
    for entry, status in cases:
        response = await send(client, tx(post(patient()), entry))
        assert response.status_code == status, response.text
        assert "Bundle.entry[1]" in response.text
    assert (await client.get("/Patient")).json()["total"] == 0


# --- transaction: storage failures at every position ---------------------------------------


class FailingTransaction(Transaction):
    def __init__(self, store: FailingStore, tx: Transaction) -> None:
        self._store, self._tx = store, tx

    async def current(self, type_: str, id_: str) -> Version | None:
        return await self._tx.current(type_, id_)

    async def put(self, version: Version, index: ResourceIndex | None = None) -> None:
        self._store.puts += 1
        if self._store.puts == self._store.fail_at:
            raise StorageError(f"injected failure at put {self._store.puts}")
        await self._tx.put(version, index)

    async def search(self, query: SearchQuery) -> list[Match]:
        return await self._tx.search(query)

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        return await self._tx.count(type_, where, limit)

    async def lock(self, key: str) -> None:
        await self._tx.lock(key)

    async def get_setting(self, key: str) -> Any:
        return await self._tx.get_setting(key)

    async def swap_setting(self, key: str, expected: Any, value: Any) -> None:
        await self._tx.swap_setting(key, expected, value)


class FailingStore(DelegatingStore):
    """Delegates to a real store; the `fail_at`-th put (counting from 1) raises StorageError."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._store = store
        self.puts = 0
        self.fail_at = 0

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        async with self._store.transaction() as inner:
            yield FailingTransaction(self, inner)


@asynccontextmanager
async def app_client(
    engine: str, tmp_path: Path, wrap: bool = False, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    store, handle = await make_store(engine, tmp_path)
    used: Store = FailingStore(store) if wrap else store
    app = create_app(settings_for(tmp_path, **overrides), used)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=120) as http:
            yield http, used
    await drop_store(handle)


async def test_storage_failure_at_every_position_leaves_nothing(
    engine: str, tmp_path: Path
) -> None:
    async with app_client(engine, tmp_path, wrap=True) as (client, store):
        await client.put("/Patient/existing", json=patient("Before", id="existing"),
                         headers=FHIR_JSON)
        await client.put("/Patient/doomed", json=patient("Doomed", id="doomed"), headers=FHIR_JSON)
        p = urn()
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
               "subject": {"reference": p}}
        bundle = tx(
            post(patient("New", identifier=[{"system": SYSTEM, "value": "new"}]), p),
            post(obs),
            put(patient("After", id="existing")),
            put(patient("Created", id="created")),
            request("DELETE", "Patient/doomed"),
            post(dict(obs, status="amended")),
        )
        before = await data_history(client)
        events_before = await audit_events(client)
        writes = len(bundle["entry"])
        # Each entry's data write, then (sealed at commit) each entry's AuditEvent and the
        # bundle's: a failure at any of them leaves nothing.
        for k in range(1, 2 * writes + 2):
            store.puts, store.fail_at = 0, k
            response = await send(client, orjson.loads(orjson.dumps(bundle)))
            assert response.status_code == 503, (k, response.text)
            assert "injected failure" in response.text and "nothing was written" in response.text
            assert ("Bundle.entry[" in response.text) == (k <= writes)
            assert await data_history(client) == before, k
            # The only new records: the failed transaction's own, and this test's reads.
            new = (await audit_events(client))[len(events_before):]
            assert [e["outcome"] for e in new if e["subtype"][0]["code"] == "transaction"] == ["8"]
            events_before += new
            assert (await read(client, "Patient/existing"))["name"] == [{"family": "Before"}]
            assert (await client.get("/Patient/created")).status_code == 404
            assert (await read(client, "Patient/doomed"))["meta"]["versionId"] == "1"
            assert (await client.get("/Observation")).json()["total"] == 0
            assert (await client.get("/Patient", params={"identifier": f"{SYSTEM}|new"})
                    ).json()["total"] == 0
            assert (await client.get("/Patient/_history")).json() == (
                await client.get("/Patient/_history")).json()
        store.fail_at = 0
        entries = await ok(client, bundle)
        assert len(entries) == writes


# --- batch ---------------------------------------------------------------------------------


async def test_batch_entries_are_independent(client: httpx.AsyncClient) -> None:
    await client.put("/Patient/b", json=patient("B", id="b"), headers=FHIR_JSON)
    bundle = tx(
        post(patient("One")),
        post(patient("Bad", birthDate="nope")),
        request("GET", "Patient/missing"),
        put(patient("B2", id="b"), ifMatch='W/"9"'),
        {"request": {"method": "POST"}},
        request("GET", "Patient/b"),
        request("DELETE", "Patient/b"),
        post(patient("Two", identifier=[{"system": SYSTEM, "value": "2"}]),
             ifNoneExist=f"identifier={SYSTEM}|2"),
        kind="batch",
    )
    entries = await ok(client, bundle)
    statuses = [e["response"]["status"].split()[0] for e in entries]
    assert statuses == ["201", "422", "404", "412", "400", "200", "204", "201"]
    for e in (entries[1], entries[2], entries[3], entries[4]):
        assert e["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[5]["resource"]["name"] == [{"family": "B"}]
    assert (await client.get("/Patient", params={"family": "One"})).json()["total"] == 1
    again = await ok(client, tx(bundle["entry"][7], kind="batch"))
    assert again[0]["response"]["status"] == "200 OK"


async def test_batch_storage_failure_only_fails_its_entry(engine: str, tmp_path: Path) -> None:
    async with app_client(engine, tmp_path, wrap=True) as (client, store):
        # Each entry writes its resource, then its AuditEvent, in one transaction of its own.
        store.puts, store.fail_at = 0, 3
        entries = await ok(client, tx(post(patient("A")), post(patient("B")), post(patient("C")),
                                      kind="batch"))
        assert [e["response"]["status"].split()[0] for e in entries] == ["201", "503", "201"]
        assert (await client.get("/Patient")).json()["total"] == 2
        # A failure to store an entry's AuditEvent takes back its write: no change unrecorded.
        store.puts, store.fail_at = 0, 2
        entries = await ok(client, tx(post(patient("D")), post(patient("E")), kind="batch"))
        assert [e["response"]["status"].split()[0] for e in entries] == ["503", "201"]
        assert (await client.get("/Patient", params={"family": "D"})).json()["total"] == 0


# --- responses -----------------------------------------------------------------------------


async def test_response_fields_per_prefer(client: httpx.AsyncClient) -> None:
    async def entry(prefer: str | None) -> dict[str, Any]:
        headers = {"Prefer": f"return={prefer}"} if prefer else {}
        (e,) = await ok(client, tx(post(patient("R"))), **headers)
        response = e["response"]
        assert response["status"] == "201 Created"
        assert re.fullmatch(r"Patient/[0-9a-f-]{36}/_history/1", response["location"])
        assert response["etag"] == 'W/"1"'
        assert response["lastModified"].endswith("Z")
        assert e["fullUrl"] == f"{BASE}/{ref_of(e)}"
        return e

    default = await entry(None)
    assert default["resource"]["name"] == [{"family": "R"}]
    assert (await entry("representation"))["resource"]["meta"]["versionId"] == "1"
    minimal = await entry("minimal")
    assert "resource" not in minimal and "outcome" not in minimal["response"]
    outcome = await entry("OperationOutcome")
    assert "resource" not in outcome
    assert outcome["response"]["outcome"]["resourceType"] == "OperationOutcome"


async def test_xml_transaction(client: httpx.AsyncClient) -> None:
    from fhir_server.formats.xml import resource_to_xml, xml_to_resource

    body = resource_to_xml(tx(post(patient("Xml"))))
    response = await client.post("", content=body, headers={
        "Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"})
    assert response.status_code == 200, response.text
    result = xml_to_resource(response.content)
    assert result["entry"][0]["response"]["status"] == "201 Created"


# --- other bundle types, limits ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["document", "message", "collection", "searchset"])
async def test_other_bundle_types(client: httpx.AsyncClient, kind: str) -> None:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "entry": [
        {"fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "resource": patient("In")}]}
    if kind == "document":
        bundle["identifier"] = {"system": "urn:ietf:rfc:3986", "value": urn()}
        bundle["timestamp"] = "2024-01-01T00:00:00Z"
    # R4 requires a document to open with a Composition, a message with a MessageHeader.
    first = {"document": {"resourceType": "Composition", "status": "final",
                          "type": {"text": "Note"}, "date": "2024-01-01",
                          "author": [{"display": "Dr X"}], "title": "Note"},
             "message": {"resourceType": "MessageHeader", "eventCoding": {"code": "notify"},
                         "source": {"endpoint": "http://example.org/sender"}}}.get(kind)
    if first is not None:
        bundle["entry"].insert(0, {"fullUrl": urn(), "resource": first})
    refused = await send(client, bundle)
    assert refused.status_code == 400
    text = refused.json()["issue"][0]["diagnostics"]
    assert "batch" in text and "transaction" in text and "/Bundle" in text
    stored = await client.post("/Bundle", json=bundle, headers=FHIR_JSON)
    assert stored.status_code == 201, stored.text
    again = await read(client, f"Bundle/{stored.json()['id']}")
    assert again["type"] == kind and again["entry"] == bundle["entry"]
    assert (await client.get("/Patient")).json()["total"] == 0


async def test_not_a_bundle_is_400(client: httpx.AsyncClient) -> None:
    response = await send(client, patient())
    assert response.status_code == 400


async def test_too_many_entries_is_413(engine: str, tmp_path: Path) -> None:
    async with app_client(engine, tmp_path, max_bundle_entries=3) as (client, _):
        assert (await send(client, tx(*[post(patient()) for _ in range(3)]))).status_code == 200
        for kind in ("transaction", "batch"):
            response = await send(client, tx(*[post(patient()) for _ in range(4)], kind=kind))
            assert response.status_code == 413
        assert (await client.get("/Patient")).json()["total"] == 3


async def test_ten_thousand_entry_transaction(client: httpx.AsyncClient, engine: str) -> None:
    # mongomock is an in-memory Python stand-in, several times slower than SQLite: shrink.
    n = 10_000 if engine == "sqlite" else 2_000
    entries = []
    for i in range(n):
        p = f"urn:uuid:{uuid.UUID(int=i)}"
        entries.append(post(patient(f"F{i}", identifier=[{"system": SYSTEM, "value": str(i)}]), p))
    started = time.perf_counter()
    response = await send(client, tx(*entries), Prefer="return=minimal")
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["entry"]) == n
    # A guard against work that grows with the square of the entries, not a speed figure
    # (bench_ingest measures that): a slow shared host needed 67 s for mongomock's 2,000.
    assert time.perf_counter() - started < 240
    assert (await client.get("/Patient", params={"_summary": "count"})).json()["total"] == n


# --- Synthea -------------------------------------------------------------------------------


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="../shared/samples/synthea-r4 is absent")
async def test_every_synthea_bundle_as_a_transaction(client: httpx.AsyncClient) -> None:
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        response = await client.post("", content=path.read_bytes(), headers={
            **FHIR_JSON, "Prefer": "return=minimal"})
        assert response.status_code == 200, (path.name, response.text[:1000])
        entries = response.json()["entry"]
        assert len(entries) == len(bundle["entry"])
        assert {e["response"]["status"] for e in entries} == {"201 Created"}, path.name
        # Every stored resource: no urn left, and each reference points at a stored resource.
        refs = [ref_of(e) for e in entries]
        for ref in refs[:: max(1, len(refs) // 40)]:
            stored = await client.get(f"/{ref}")
            assert b"urn:uuid:" not in stored.content, (path.name, ref)
            for target in re.findall(rb'"reference":"([A-Za-z]+/[^"]+)"', stored.content):
                assert (await client.get(f"/{target.decode()}")).status_code == 200


async def test_patch_entry_with_binary_json_patch(client: httpx.AsyncClient) -> None:
    await client.put("/Patient/jp", json=patient("Before", id="jp"), headers=FHIR_JSON)
    ops = [{"op": "replace", "path": "/name/0/family", "value": "After"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(orjson.dumps(ops)).decode()}
    entries = await ok(client, tx({"resource": binary,
                                   "request": {"method": "PATCH", "url": "Patient/jp"}}))
    assert entries[0]["response"]["etag"] == 'W/"2"'
    assert (await read(client, "Patient/jp"))["name"] == [{"family": "After"}]


async def test_conditional_entries_in_transaction(client: httpx.AsyncClient) -> None:
    ident = [{"system": SYSTEM, "value": "c"}]
    p = urn()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": p}}
    bundle = tx(post(patient("C", identifier=ident), p, ifNoneExist=f"identifier={SYSTEM}|c"),
                post(obs))
    first = await ok(client, bundle)
    assert first[0]["response"]["status"] == "201 Created"
    second = await ok(client, orjson.loads(orjson.dumps(bundle)))
    assert second[0]["response"]["status"] == "200 OK"
    assert ref_of(second[0]) == ref_of(first[0])
    subject = (await read(client, ref_of(second[1])))["subject"]["reference"]
    assert subject == ref_of(first[0])
    updated = await ok(client, tx(put(patient("C2", identifier=ident),
                                      f"Patient?identifier={SYSTEM}|c")))
    assert updated[0]["response"]["etag"] == 'W/"2"'
    deleted = await ok(client, tx(request("DELETE", f"Patient?identifier={SYSTEM}|c")))
    assert deleted[0]["response"]["status"] == "204 No Content"
    assert (await client.get(f"/{ref_of(first[0])}")).status_code == 410
