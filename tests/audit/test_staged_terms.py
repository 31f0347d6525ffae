"""The SQLite engine stages AuditEvent terms (store/sqlite_terms.py): a commit appends each
event's terms as one row, and they are merged into `audit_terms` in batches. A search must
never miss a committed event for that: staged terms are merged before any query that reads
terms, whichever process staged them, and in the background once enough are staged."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from fhir_server.app import create_app
from fhir_server.search.indexer import index_resource
from fhir_server.search.registry import default_registry
from fhir_server.store import sqlite as sqlite_store
from fhir_server.store.sqlite import SqliteStore
from tests.conftest import BASE, settings_for


@asynccontextmanager
async def _server(path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, SqliteStore]]:
    store = SqliteStore(path / "fhir.sqlite")
    app = create_app(settings_for(path), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http, store


def _staged(path: Path) -> int:
    conn = sqlite3.connect(path / "fhir.sqlite")
    try:
        return int(conn.execute("SELECT count(*) FROM audit_terms_staged").fetchone()[0])
    finally:
        conn.close()


async def _audited_patient(http: httpx.AsyncClient, reads: int) -> str:
    patient = (await http.post("/Patient", json={"resourceType": "Patient"})).json()
    for _ in range(reads):
        assert (await http.get(f"/Patient/{patient['id']}")).status_code == 200
    return f"Patient/{patient['id']}"


async def _events(http: httpx.AsyncClient, **params: str) -> list[dict]:
    bundle = (await http.get("/AuditEvent", params={**params, "_count": "500"})).json()
    return [e["resource"] for e in bundle.get("entry", [])]


async def test_a_search_merges_the_staged_terms_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "MERGE_CHUNK_EVENTS", 2)  # several chunks
    async with _server(tmp_path) as (http, _store):
        patient = await _audited_patient(http, reads=3)
        assert _staged(tmp_path) >= 4, "the events' terms were not staged"
        found = await _events(http, patient=patient)
        assert _staged(tmp_path) == 1  # the search's own record, stored after it ran
        subtypes = sorted(e["subtype"][0]["code"] for e in found)
        assert subtypes == ["create", "read", "read", "read"]
        # A count reads terms too.
        count = (await http.get("/AuditEvent", params={
            "patient": patient, "_summary": "count"})).json()
        assert count["total"] == 5  # the search above is about the patient as well


async def test_terms_another_process_staged_are_found(tmp_path: Path) -> None:
    """A second store on the same file (the CLI beside the server) whose staged terms are
    never merged by itself, as if it stopped before merging."""
    async with _server(tmp_path) as (http, _store):
        other = SqliteStore(tmp_path / "fhir.sqlite")
        app = create_app(settings_for(tmp_path), other)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as elsewhere:
                patient = await _audited_patient(elsewhere, reads=2)
                assert _staged(tmp_path) >= 3
                found = await _events(http, patient=patient)
        assert sorted(e["subtype"][0]["code"] for e in found) == ["create", "read", "read"]


async def test_staged_terms_are_merged_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "MERGE_EVENTS", 5)
    monkeypatch.setattr(sqlite_store, "MERGE_CHUNK_EVENTS", 2)
    async with _server(tmp_path) as (http, store):
        await _audited_patient(http, reads=6)
        if store._merging is not None:
            await store._merging
        # 7 events, no search: a merge took at least the first 5.
        assert _staged(tmp_path) <= 2


async def test_a_closed_database_holds_no_staged_terms(tmp_path: Path) -> None:
    async with _server(tmp_path) as (http, _store):
        await _audited_patient(http, reads=2)
        assert _staged(tmp_path) > 0
    assert _staged(tmp_path) == 0


async def test_replacing_a_staged_events_index_replaces_its_terms(tmp_path: Path) -> None:
    async with _server(tmp_path) as (http, store):
        await http.get("/Patient/missing")
        conn = sqlite3.connect(tmp_path / "fhir.sqlite")
        (rid,) = conn.execute("SELECT rid FROM audit_terms_staged").fetchone()
        conn.close()
        version = await store.read("AuditEvent", rid)
        assert version is not None
        changed = index_resource({**version.resource(), "outcome": "8"}, default_registry())
        assert await store.replace_index(version, changed)
        for outcome, expected in (("4", False), ("8", True)):
            found = await _events(http, outcome=outcome, _id=rid)
            assert bool(found) is expected, outcome


async def _merge_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: int
) -> list[list[int]]:
    """The events each chunk of each merge took (one list per merge), over `reads` audited
    reads and the store's close."""
    runs: list[list[int]] = []
    merge_chunk = sqlite_store._merge_chunk

    def recorded(conn: sqlite3.Connection) -> bool:
        staged = f"SELECT count(*) FROM {sqlite_store.STAGED}"
        before = conn.execute(staged).fetchone()[0]
        cut = merge_chunk(conn)
        runs[-1].append(before - conn.execute(staged).fetchone()[0])
        return cut

    monkeypatch.setattr(sqlite_store, "_merge_chunk", recorded)
    async with _server(tmp_path) as (http, store):
        merge = store._merge

        async def run() -> None:
            runs.append([])
            await merge()

        monkeypatch.setattr(store, "_merge", run)
        await _audited_patient(http, reads=reads)
        if store._merging is not None:
            await store._merging
    return runs


async def test_a_merge_stops_once_it_has_caught_up_with_the_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events staged while a merge runs wait for the next one: chasing them, the merge took a
    chunk of one or two events after every request (3-4 ms each)."""
    monkeypatch.setattr(sqlite_store, "MERGE_EVENTS", 5)
    monkeypatch.setattr(sqlite_store, "MERGE_CHUNK_EVENTS", 3)
    runs = await _merge_runs(tmp_path, monkeypatch, reads=40)
    assert len(runs) >= 5  # the background merges and the one at close
    for chunks in runs:
        # Full chunks, then one that is not: the merge ends there.
        assert all(merged == 3 for merged in chunks[:-1]), runs
        assert chunks[-1] < 3, runs


async def test_a_merge_chunk_holds_a_bounded_number_of_terms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search's event names a Patient per match: chunks are cut by terms as well as events,
    and hold one event at least however many terms it has."""
    monkeypatch.setattr(sqlite_store, "MERGE_EVENTS", 8)
    monkeypatch.setattr(sqlite_store, "MERGE_CHUNK_EVENTS", 4)
    monkeypatch.setattr(sqlite_store, "MERGE_CHUNK_TERMS", 1)  # fewer than any event has
    runs = await _merge_runs(tmp_path, monkeypatch, reads=20)
    merged = [n for chunks in runs for n in chunks]
    assert sum(merged) >= 20
    assert set(merged) <= {0, 1}, runs
