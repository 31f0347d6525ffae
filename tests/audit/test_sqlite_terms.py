"""The SQLite engine's compact AuditEvent index (store/sqlite_terms.py): a database written
before it existed (AuditEvents indexed in the generic tables) moves its events into terms when
opened, and searches answer as before; a reindex replaces an event's terms."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import orjson

from fhir_server.app import create_app
from fhir_server.search.indexer import index_resource
from fhir_server.search.model import CompositeEntry
from fhir_server.search.registry import default_registry
from fhir_server.store.sqlite import SqliteStore
from fhir_server.store.sqlite_search import _TABLES, _entry_values, insert_sql
from tests.conftest import BASE, settings_for

SEARCHES = (
    {"action": "R"},
    {"subtype": "http://hl7.org/fhir/restful-interaction|create"},
    {"outcome": "4"},
    {"agent-name": "anon"},
    {"address:exact": "127.0.0.1"},
    {"date": "ge2000-01-01"},
    {"_sort": "-date"},
)


async def _answers(http: httpx.AsyncClient, patient: str, cut: str) -> dict[str, list[str]]:
    """The AuditEvents each search finds among those stored up to `cut` (each search is
    recorded too)."""
    answers = {}
    for params in (*SEARCHES, {"patient": patient}, {"entity": patient}):
        query = {**params, "_count": "500", "_lastUpdated": f"le{cut}"}
        bundle = (await http.get("/AuditEvent", params=query)).json()
        ids = [e["resource"]["id"] for e in bundle.get("entry", [])]
        answers[str(params)] = ids if "_sort" in params else sorted(ids)
    return answers


async def _server(path: Path) -> tuple[object, SqliteStore]:
    store = SqliteStore(path / "fhir.sqlite")
    return create_app(settings_for(path), store), store


def _as_before_terms(db: Path) -> int:
    """Rewrite the database as the engine wrote it before `audit_terms`: every AuditEvent's
    entries in the generic index tables. Returns how many events there are."""
    registry = default_registry()
    conn = sqlite3.connect(db, isolation_level=None)
    events = conn.execute("SELECT id, body FROM resources WHERE type = 'AuditEvent'").fetchall()
    conn.execute("BEGIN")
    conn.execute("DROP TABLE audit_terms")
    conn.execute("DROP TABLE audit_terms_staged")
    conn.execute("DELETE FROM idx_date WHERE rtype = 'AuditEvent'")
    conn.execute("DELETE FROM sort_keys WHERE rtype = 'AuditEvent'")
    for id_, body in events:
        index = index_resource(orjson.loads(body), registry)
        for param, entries in index.entries.items():
            if param == "_lastUpdated":
                continue
            for entry in entries:
                assert not isinstance(entry, CompositeEntry)
                table = _TABLES[type(entry)][0]
                row = ("AuditEvent", id_, param, None, *_entry_values(entry))
                conn.execute(insert_sql(table, len(row)), row)
        for param, (asc, desc) in index.sort.items():
            if param != "_lastUpdated":
                conn.execute("INSERT INTO sort_keys VALUES (?, ?, ?, ?, ?)",
                             ("AuditEvent", id_, param, asc, desc))
    conn.execute("COMMIT")
    conn.close()
    return len(events)


async def test_an_older_database_moves_its_audit_index_into_terms(tmp_path: Path) -> None:
    app, _store = await _server(tmp_path)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            patient = (await http.post("/Patient", json={"resourceType": "Patient"})).json()
            reference = f"Patient/{patient['id']}"
            await http.get(f"/{reference}")
            await http.get("/Patient/missing")
            await http.post("/Patient", json={"resourceType": "Patient", "gender": "x"})
            last = (await http.get("/AuditEvent", params={"_sort": "-_lastUpdated"})).json()
            cut = last["entry"][0]["resource"]["meta"]["lastUpdated"]
            before = await _answers(http, reference, cut)
    assert all(before.values()), before

    events = _as_before_terms(tmp_path / "fhir.sqlite")
    assert events >= 6
    conn = sqlite3.connect(tmp_path / "fhir.sqlite")
    generic = conn.execute(
        "SELECT count(*) FROM idx_token WHERE rtype = 'AuditEvent'").fetchone()[0]
    conn.close()
    assert generic > 0, "the older layout was not written"

    app, _store = await _server(tmp_path)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            after = await _answers(http, reference, cut)
    assert after == before
    conn = sqlite3.connect(tmp_path / "fhir.sqlite")
    left = [conn.execute(f"SELECT count(*) FROM {t} WHERE rtype = 'AuditEvent'").fetchone()[0]
            for t in ("idx_token", "idx_string", "idx_reference")]
    conn.close()
    assert left == [0, 0, 0]


async def test_replacing_an_events_index_replaces_its_terms(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fhir.sqlite")
    app = create_app(settings_for(tmp_path), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            await http.get("/Patient/missing")
            found = (await http.get("/AuditEvent", params={"outcome": "4"})).json()
            event = found["entry"][0]["resource"]
            version = await store.read("AuditEvent", event["id"])
            assert version is not None
            changed = index_resource({**event, "outcome": "8"}, default_registry())
            assert await store.replace_index(version, changed)
            for outcome, expected in (("4", False), ("8", True)):
                bundle = (await http.get("/AuditEvent", params={
                    "outcome": outcome, "_id": event["id"]})).json()
                assert bool(bundle.get("entry")) is expected, outcome
