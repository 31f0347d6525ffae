"""The SQLite engine reads on its writer connection whenever no transaction holds it (its page
cache survives its own commits, a second connection's does not: store/sqlite.py,
`_read_conn`). Reads must still never see a transaction that has not committed, whether its
statements run on the event loop or its commit on a worker thread. (SQLite only: a MongoDB
standalone has no isolation to test.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from fhir_server.search.indexer import index_resource
from fhir_server.search.model import EMPTY_INDEX, TokenMatch
from fhir_server.search.registry import default_registry
from fhir_server.store import sqlite
from fhir_server.store.base import SearchQuery, Version
from fhir_server.store.sqlite import SqliteStore

BODY = b'{"resourceType":"Patient","id":"a","gender":"female"}'


def _patient(id_: str) -> Version:
    body = BODY.replace(b'"a"', f'"{id_}"'.encode())
    return Version("Patient", id_, 1, "2026-01-01T00:00:00.000000Z", "POST", body)


def _female() -> SearchQuery:
    return SearchQuery("Patient", TokenMatch("gender", code="female"), (), 100, None)


async def _seen(store: SqliteStore) -> tuple[bool, int, list[str]]:
    found = [m.version.id for m in await store.search(_female())]
    return await store.read("Patient", "a") is not None, await store.count(
        "Patient", _female().where), found


async def test_reads_beside_an_open_transaction_do_not_see_its_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fhir.sqlite")
    await store.open()
    try:
        index = index_resource(_patient("a").resource(), default_registry())
        async with store.transaction() as tx:
            await tx.put(_patient("a"), index)
            assert await _seen(store) == (False, 0, [])
        assert await _seen(store) == (True, 1, ["a"])
    finally:
        await store.close()


async def test_reads_while_a_commit_runs_on_its_thread_see_what_was_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "fhir.sqlite")
    await store.open()
    committing, release = threading.Event(), threading.Event()
    commit = sqlite._commit

    def held_commit(conn: object, tx: sqlite.SqliteTransaction) -> None:
        tx.flush()  # the rows are in the writer's open transaction, not yet committed
        committing.set()
        release.wait(10)
        commit(conn, tx)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite, "_commit", held_commit)
    try:
        async def write() -> None:
            async with store.transaction() as tx:
                await tx.insert([(_patient(f"p{n}"), EMPTY_INDEX)
                                 for n in range(sqlite.THREAD_COMMIT_ROWS)])

        writing = asyncio.create_task(write())
        while not committing.is_set():
            await asyncio.sleep(0.001)
        assert await store.read("Patient", "p0") is None  # answered at once, from before
        release.set()
        await writing
        assert await store.read("Patient", "p0") is not None
    finally:
        release.set()
        await store.close()
