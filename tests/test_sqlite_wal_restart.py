"""The SQLite engine keeps its WAL short under a steady stream of commits (store/sqlite.py,
`_Checkpointer`, `_restart_wal`). SQLite rewinds the WAL only when a write finds it completely
checkpointed, which a background checkpoint racing the writer never achieves; the WAL then grew
until the writer's own automatic checkpoint copied 64 MB inside a commit and held every write
up for 100-200 ms. (SQLite only: MongoDB has no WAL of ours.)"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fhir_server.search.model import EMPTY_INDEX
from fhir_server.store import sqlite
from fhir_server.store.base import Version
from fhir_server.store.sqlite import SqliteStore

PADDING = "x" * 3000  # a page or so per resource, so each commit adds a few frames


def _patient(n: int) -> Version:
    body = f'{{"resourceType":"Patient","id":"p{n}","text":"{PADDING}"}}'.encode()
    return Version("Patient", f"p{n}", 1, "2026-01-01T00:00:00.000000Z", "POST", body)


async def _write(store: SqliteStore, n: int) -> None:
    async with store.transaction() as tx:
        await tx.put(_patient(n), EMPTY_INDEX)


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now: `mxFrame` of the wal-index header in the -shm file
    (sqlite.org/walformat.html), read without a connection, which could change it."""
    shm = path.with_name(path.name + "-shm").read_bytes()
    return int(struct.unpack_from("=I", shm, 16)[0])


@pytest.fixture
async def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SqliteStore]:
    """A store whose WAL is checkpointed only by what a test does or reports: neither the
    writer's backstop nor the row count may checkpoint behind its back."""
    monkeypatch.setattr(sqlite, "WRITER_PRAGMAS", ("PRAGMA wal_autocheckpoint=0",))
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY_ROWS", 10**9)
    store = SqliteStore(tmp_path / "fhir.sqlite")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("reported", [True, False], ids=["reported", "control"])
async def test_a_commit_during_the_background_checkpoint_does_not_keep_the_wal_growing(
    store: SqliteStore, reported: bool
) -> None:
    """The control leaves out the background checkpoint's report: every frame stays."""
    path = store.path
    for n in range(50):
        await _write(store, n)
    grown = _wal_frames(path)
    assert grown > 50
    # The background checkpoint copies everything committed so far while a transaction,
    # begun before, commits after it: the WAL is never fully copied when a write starts.
    async with store.transaction() as tx:
        await tx.put(_patient(50), EMPTY_INDEX)
        side = sqlite3.connect(path, isolation_level=None)
        assert side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone() == (0, grown, grown)
        side.close()
        checkpointer = store._checkpointer
        assert checkpointer is not None
        if reported:
            checkpointer.finished.set()
    await _write(store, 51)
    if reported:
        # The store restarted the WAL after that commit: the last write is all there is in it.
        assert _wal_frames(path) <= grown / 50
    else:
        assert _wal_frames(path) > grown


async def test_steady_commits_keep_the_wal_short_without_the_writers_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, with the real checkpoint thread: commits one after another, the thread asked
    for a checkpoint every few of them, the WAL is rewound again and again."""
    monkeypatch.setattr(sqlite, "WRITER_PRAGMAS", ("PRAGMA wal_autocheckpoint=0",))
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY_ROWS", 20)
    path = tmp_path / "fhir.sqlite"
    store = SqliteStore(path)
    await store.open()
    try:
        await _write(store, 0)
        before = _wal_frames(path)
        await _write(store, 1)
        one_write = _wal_frames(path) - before
        for n in range(2, 600):
            await _write(store, n)
            if n % 10 == 0:
                await asyncio.sleep(0.001)  # the checkpoint thread gets the GIL now and then
        # The WAL file keeps its largest size; without restarts it would hold all 600 writes
        # (measured: 6,500 frames; with them 550-860).
        frames = path.with_name(path.name + "-wal").stat().st_size // (4096 + 24)
        assert frames < 600 * one_write / 3
    finally:
        await store.close()


async def test_after_a_large_commit_the_restart_waits_for_another_catch_up(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge chunk or a bundle commits thousands of frames, which the restart would copy
    with every write waiting (50-80 ms at 100,000 resources): the background copies them
    first, and a later small commit restarts the WAL."""
    restarts: list[sqlite3.Connection] = []
    restart_wal = sqlite._restart_wal

    def counted(conn: sqlite3.Connection) -> None:
        restarts.append(conn)
        restart_wal(conn)

    monkeypatch.setattr(sqlite, "_restart_wal", counted)
    for n in range(50):
        await _write(store, n)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.finished.set()  # a catch-up has just finished
    with monkeypatch.context() as large:
        large.setattr(sqlite, "THREAD_COMMIT_ROWS", 1)  # every commit counts as large
        await _write(store, 50)
    assert restarts == []
    for _ in range(500):  # the catch-up asked for instead
        if checkpointer.finished.is_set():
            break
        await asyncio.sleep(0.01)
    assert checkpointer.finished.is_set()
    await _write(store, 51)
    assert len(restarts) == 1
