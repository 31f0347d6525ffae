"""The SQLite engine commits a large transaction on a worker thread (store/sqlite.py,
THREAD_COMMIT_ROWS). Its writer connection is shared by every transaction, so a caller that is
cancelled while its commit runs must still wait for that commit before the connection is
released: the next transaction never starts inside an unfinished one, and the cancelled one is
either wholly stored or not at all. (SQLite only: the MongoDB engine has no such thread.)"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from fhir_server.search.model import EMPTY_INDEX
from fhir_server.store import sqlite
from fhir_server.store.base import Version
from fhir_server.store.sqlite import SqliteStore


def _patients(prefix: str, count: int) -> list[tuple[Version, object]]:
    return [
        (Version("Patient", f"{prefix}{n}", 1, "2026-01-01T00:00:00.000000Z", "POST",
                 b'{"resourceType":"Patient"}'), EMPTY_INDEX)
        for n in range(count)
    ]


async def test_a_cancelled_large_commit_finishes_before_the_next_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "fhir.sqlite")
    await store.open()
    started, threads = threading.Event(), set()
    commit = sqlite._commit

    def slow_commit(conn: object, tx: object) -> None:
        threads.add(threading.get_ident())
        started.set()
        time.sleep(0.3)  # the commit is under way when the caller is cancelled
        commit(conn, tx)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite, "_commit", slow_commit)
    many = sqlite.THREAD_COMMIT_ROWS  # two rows each (current + history): a threaded commit

    async def write() -> None:
        async with store.transaction() as tx:
            await tx.insert(_patients("big", many))  # type: ignore[arg-type]

    try:
        task = asyncio.create_task(write())
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert threading.get_ident() not in threads, "the large commit ran on the event loop"
        # The connection is free and consistent: the next transaction begins and commits.
        async with store.transaction() as tx:
            await tx.insert(_patients("small", 1))  # type: ignore[arg-type]
        assert await store.read("Patient", "small0") is not None
        stored = [await store.read("Patient", f"big{n}") for n in (0, many - 1)]
        assert all(v is not None for v in stored), "the commit under way was not completed"
    finally:
        await store.close()
