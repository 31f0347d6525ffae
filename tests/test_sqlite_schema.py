"""A database created by an earlier release opens with today's indexes: an index whose
definition changed (sqlite_search.INDEX_SCHEMA) is rebuilt when the store opens, and what it
indexes is found as before. (SQLite only: the MongoDB engine creates its indexes by name.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fhir_server.search.indexer import index_resource
from fhir_server.search.model import TokenMatch
from fhir_server.search.registry import default_registry
from fhir_server.store.base import SearchQuery, Version
from fhir_server.store.sqlite import SqliteStore

BODY = b'{"resourceType":"Patient","id":"a","gender":"female"}'
OLD_TOKEN_INDEX = "CREATE INDEX idx_token_q ON idx_token (rtype, param, code, system)"


def _index_sql(path: Path, name: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
        ).fetchone()[0])
    finally:
        conn.close()


async def test_an_index_of_an_earlier_definition_is_rebuilt_at_open(tmp_path: Path) -> None:
    path = tmp_path / "fhir.sqlite"
    store = SqliteStore(path)
    await store.open()
    patient = Version("Patient", "a", 1, "2026-01-01T00:00:00.000000Z", "POST", BODY)
    async with store.transaction() as tx:
        await tx.put(patient, index_resource(patient.resource(), default_registry()))
    await store.close()
    current = _index_sql(path, "idx_token_q")
    conn = sqlite3.connect(path)
    conn.executescript(f"DROP INDEX idx_token_q; {OLD_TOKEN_INDEX};")
    conn.close()

    store = SqliteStore(path)
    await store.open()
    try:
        assert _index_sql(path, "idx_token_q") == current != OLD_TOKEN_INDEX
        found = await store.search(
            SearchQuery("Patient", TokenMatch("gender", code="female"), (), 10, None))
        assert [m.version.id for m in found] == ["a"]
    finally:
        await store.close()
