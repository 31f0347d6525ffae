"""Embedded SQLite engine: one database file, WAL mode, real transactions.

Calls run directly on the event-loop thread: each statement takes microseconds, and a thread
hand-off would cost more than the work. Writes go through one writer connection guarded by an
asyncio lock (SQLite allows one writer at a time anyway; `BEGIN IMMEDIATE` plus a busy timeout
serialises us with other processes such as the CLI). Reads use the writer connection when no
transaction holds it (its page cache survives its own commits) and a separate connection while
one does, so they never see another request's uncommitted transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from fhir_server.search.model import EMPTY_INDEX, Predicate, ResourceIndex
from fhir_server.store.base import (
    APPEND_ONLY_TYPES,
    HistoryQuery,
    Match,
    SearchQuery,
    StorageError,
    Store,
    Transaction,
    Version,
    VersionConflict,
)
from fhir_server.store.sqlite_search import (
    INDEX_SCHEMA,
    INDEX_TABLES,
    Sql,
    index_only_count,
    index_rows,
    insert_sql,
    keyset_condition,
    render,
    sort_expression,
)
from fhir_server.store.sqlite_terms import (
    MERGE_CHUNK_EVENTS,
    MERGE_CHUNK_ROWS,
    MERGE_CHUNK_TERMS,
    MERGE_EVENTS,
    MERGE_STAGED,
    MOVE_TO_TERMS,
    STAGED,
    TERM_TYPE,
    reads_terms,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    last_updated TEXT NOT NULL, method TEXT NOT NULL, body BLOB,
    PRIMARY KEY (type, id)
);
CREATE INDEX IF NOT EXISTS resources_by_time ON resources (type, last_updated);
CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    last_updated TEXT NOT NULL, method TEXT NOT NULL, body BLOB,
    PRIMARY KEY (type, id, version)
);
CREATE INDEX IF NOT EXISTS history_by_time ON history (last_updated, type, id);
CREATE INDEX IF NOT EXISTS history_by_type_time ON history (type, last_updated, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

COLUMNS = "type, id, version, last_updated, method, body"
COLUMNS_R = "r.type, r.id, r.version, r.last_updated, r.method, r.body"
T = TypeVar("T")
log = logging.getLogger("fhir_server.store.sqlite")


def _version(row: tuple[Any, ...]) -> Version:
    return Version(row[0], row[1], row[2], row[3], row[4], row[5])


def _guard(call: Callable[[], T]) -> T:
    """Run one SQLite call, turning engine failures into StorageError."""
    try:
        return call()
    except sqlite3.Error as exc:
        raise StorageError(f"SQLite: {exc}") from exc


BUSY_TIMEOUT_MS = 10_000


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


# The writer's page cache (KiB, negative per SQLite's convention): an ingest touches many index
# pages per transaction, and a larger cache keeps them resident. Checkpoints (copying the WAL
# back into the database, with its fsyncs) run on a thread of their own (`_Checkpointer`), so a
# commit does not wait for them, and the store then restarts the WAL (`_restart_wal`); the
# writer's automatic checkpoint stays as a backstop for a WAL that was not restarted (64 MB).
WRITER_PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA wal_autocheckpoint=16384")
CHECKPOINT_EVERY_ROWS = 4000
"""Rows written (resources, history, index) after which a background checkpoint is asked for.
Less often is cheaper (a checkpoint copies each page once however often it was rewritten:
every 12,000 rows cut its cost from 24 to 13 µs an audited read), but a lone event's commit
writes ~10 pages for ~16 rows, so the WAL of one-at-a-time requests grows fast: at 50,000 rows
it reached the writer's own 64 MB checkpoint and stalled a search for a second, and at 12,000
the search benchmark's p99 reached 0.19-0.73 s at 100k resources (at 4,000: at most 43 ms)."""


RESTART_WAIT_MS = 100
"""How long restarting the WAL may wait for readers of older snapshots (another process's
long query) before it gives up until the next checkpoint; writes wait meanwhile."""


def _restart_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint what the background checkpoint left (the frames committed while it ran) and
    make the next write start the WAL from its beginning.

    Under continuous commits a passive checkpoint never catches up with the writer, and SQLite
    rewinds the WAL only when a write finds it fully copied. The WAL then grew until the
    writer's own automatic checkpoint copied and fsynced 64 MB inside a commit (100-200 ms
    with every write waiting). Here the caller holds the write lock, and the few frames left
    and their fsyncs take 1-30 ms (1-20 at 20,000 resources, up to 30 at 100,000), once
    every `CHECKPOINT_EVERY_ROWS` rows, on a worker thread so that reads go on meanwhile."""
    try:
        conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
        try:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error:
        pass  # busy: the next checkpoint tries again (the commit before it stands either way)


CATCH_UP_FRAMES = 64
CATCH_UP_PASSES = 5


def _catch_up(conn: sqlite3.Connection) -> bool:
    """Passive checkpoints until one leaves fewer than `CATCH_UP_FRAMES` frames behind it (or
    `CATCH_UP_PASSES` were made), so that `_restart_wal`, which holds up writes for about
    11 µs a frame, has little left. Each pass copies what was committed up to its start, so
    the frames written during a pass of 5,000 (~50 ms) are copied by the next, shorter one.
    False when another checkpoint was running."""
    copied = 0
    for _ in range(CATCH_UP_PASSES):
        busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:
            return False
        if frames < copied + CATCH_UP_FRAMES:  # few new frames, or the WAL was restarted
            break
        copied = frames
    return True


class _Checkpointer:
    """Runs passive checkpoints (`_catch_up`) on its own connection and thread when asked.

    SQLite releases the GIL while it works, so the copy and its fsyncs overlap the next
    request; a passive checkpoint never blocks the writer or the readers. `finished` is set
    after each catch-up, for the store to restart the WAL.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self.finished = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = _connect(self._path)
                    caught_up = _catch_up(conn)
                except sqlite3.Error:
                    continue  # failing: the writer's automatic checkpoint remains
                if caught_up:
                    # Requests made meanwhile are served: the passes went on until caught up.
                    # Left pending, the next pass would collide with the store's restart (only
                    # one checkpoint runs at a time). `close()` sets `_stopping` before it
                    # wakes the thread, so clearing here cannot lose its wake-up.
                    self._wake.clear()
                    if self._stopping:
                        return
                    self.finished.set()
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()


class SqliteTransaction(Transaction):
    """One write transaction. Index rows are buffered per table and inserted with one
    `executemany` per table when anything reads the index tables (a search or count in the
    transaction, an index replacement) and before the commit."""

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self._pending: dict[str, list[tuple[Any, ...]]] = {}
        self.rows = 0
        """Rows this transaction writes (resources, history, index entries), about."""

    def flush(self) -> None:
        """Insert the buffered index rows (raises sqlite3.Error)."""
        pending, self._pending = self._pending, {}
        for table, rows in pending.items():
            self._conn.executemany(insert_sql(table, len(rows[0])), rows)

    async def search(self, query: SearchQuery) -> list[Match]:
        # The writer connection sees this transaction's writes; the store's write lock, held
        # for the whole block, serialises the search with every other writer.
        _guard(self.flush)
        text, params = self._store._page_sql(query)
        self._merge_if_read(text)
        return self._store._search(self._conn, query, text, params)

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        _guard(self.flush)
        text, params = self._store._count_sql(type_, where, limit)
        self._merge_if_read(text)
        return self._store._count(self._conn, text, params)

    def _merge_if_read(self, sql: str) -> None:
        if reads_terms(sql):
            _guard(lambda: _merge_staged(self._conn))

    async def current(self, type_: str, id_: str) -> Version | None:
        if "resources" in self._pending:
            _guard(self.flush)
        row = _guard(
            lambda: self._conn.execute(
                f"SELECT {COLUMNS} FROM resources WHERE type = ? AND id = ?", (type_, id_)
            ).fetchone()
        )
        return _version(row) if row else None

    async def put(self, version: Version, index: ResourceIndex | None = None) -> None:
        _guard(lambda: self._put(version, index or EMPTY_INDEX))

    async def insert(self, new: list[tuple[Version, ResourceIndex]]) -> None:
        _guard(lambda: self._insert(new))

    def _insert(self, new: list[tuple[Version, ResourceIndex]]) -> None:
        # Buffered like index rows: written at the commit (off the event loop); an id that is
        # taken after all fails the commit with VersionConflict.
        rows = [(v.type, v.id, v.version, v.last_updated, v.method, v.body) for v, _ in new]
        self._pending.setdefault("resources", []).extend(rows)
        if versioned := [row for row in rows if row[0] not in APPEND_ONLY_TYPES]:
            self._pending.setdefault("history", []).extend(versioned)
        for v, index in new:
            self._count_rows(v, index)
            write_index(self._conn, v.type, v.id, index, replace=False, into=self._pending)

    def _count_rows(self, v: Version, index: ResourceIndex) -> None:
        rows = 2 + len(index.entries) + len(index.sort)
        self.rows += rows
        self._store._rows_written += rows
        if v.type == TERM_TYPE:
            self._store._staged_events += 1

    async def get_setting(self, key: str) -> Any:
        sql = "SELECT value FROM settings WHERE key = ?"
        row = _guard(lambda: self._conn.execute(sql, (key,)).fetchone())
        return orjson.loads(row[0]) if row else None

    async def swap_setting(self, key: str, expected: Any, value: Any) -> None:
        # The write lock serialises transactions, so reading then writing is a compare-and-set.
        found = await self.get_setting(key)
        if found != expected:
            raise VersionConflict("settings", key, 0)
        if value is None:
            _guard(lambda: self._conn.execute("DELETE FROM settings WHERE key = ?", (key,)))
            return
        _guard(lambda: self._conn.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, orjson.dumps(value))
        ))

    def _put(self, v: Version, index: ResourceIndex) -> None:
        if "resources" in self._pending:
            self.flush()  # the compare-and-set below must see buffered inserts
        row = self._conn.execute(
            "SELECT version FROM resources WHERE type = ? AND id = ?", (v.type, v.id)
        ).fetchone()
        found = row[0] if row else 0
        if found != v.version - 1:
            raise VersionConflict(v.type, v.id, found)
        values = (v.type, v.id, v.version, v.last_updated, v.method, v.body)
        self._conn.execute(
            f"INSERT OR REPLACE INTO resources ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", values
        )
        if v.type not in APPEND_ONLY_TYPES:
            self._conn.execute(
                f"INSERT INTO history ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", values
            )
        self._count_rows(v, index)
        if found:
            self.flush()  # the buffered rows may include this resource's previous index
        write_index(self._conn, v.type, v.id, index, replace=bool(found), into=self._pending)


def write_index(
    conn: sqlite3.Connection,
    type_: str,
    id_: str,
    index: ResourceIndex,
    replace: bool,
    into: dict[str, list[tuple[Any, ...]]] | None = None,
) -> None:
    """Replace (or write) the index rows of type_/id_; with `into`, the rows are added to that
    buffer (table -> rows) for the caller to insert later instead of being inserted now."""
    if replace:
        for table in (*INDEX_TABLES, "sort_keys"):
            conn.execute(f"DELETE FROM {table} WHERE rtype = ? AND rid = ?", (type_, id_))
        if type_ == TERM_TYPE:
            conn.execute("DELETE FROM audit_terms WHERE rid = ?", (id_,))
            conn.execute(f"DELETE FROM {STAGED} WHERE rid = ?", (id_,))
    rows: dict[str, list[tuple[Any, ...]]] = {} if into is None else into
    for table, row in index_rows(type_, id_, index):
        table_rows = rows.get(table)
        if table_rows is None:
            rows[table] = [row]
        else:
            table_rows.append(row)
    if into is None:
        for table, table_rows in rows.items():
            conn.executemany(insert_sql(table, len(table_rows[0])), table_rows)


def _versions_of(type_: str) -> str:
    """The table holding every version of type_'s resources."""
    return "resources" if type_ in APPEND_ONLY_TYPES else "history"


def _history_arm(
    table: str, query: HistoryQuery, params: list[Any], types: frozenset[str] = frozenset(),
    exclude: frozenset[str] = frozenset(),
) -> str:
    """SELECT of the versions in `table` that `query` lists (narrowed to `types`, without
    `exclude`, when given)."""
    where: list[str] = []
    if query.type is not None:
        where.append("h.type = ?")
        params.append(query.type)
    for names, op in ((types, "IN"), (exclude, "NOT IN")):
        if names:
            where.append(f"h.type {op} ({', '.join('?' * len(names))})")
            params += sorted(names)
    if query.id is not None:
        where.append("h.id = ?")
        params.append(query.id)
    if query.since is not None:
        where.append("h.last_updated >= ?")
        params.append(query.since)
    if query.at is not None:
        start, end = query.at
        # Written inside the window, or the version that was current when it opened.
        where.append(
            f"h.body IS NOT NULL AND h.last_updated < ? AND (h.last_updated >= ? OR "
            f"h.version = (SELECT max(p.version) FROM {table} p "
            "WHERE p.type = h.type AND p.id = h.id AND p.last_updated <= ?))"
        )
        params += [end, start, start]
    if query.after is not None:
        c = query.after
        where.append("(h.last_updated, h.type, h.id) < (?, ?, ?)")
        params += [c.last_updated, c.type, c.id]
    sql = f"SELECT {', '.join('h.' + c for c in COLUMNS.split(', '))} FROM {table} h"
    return sql + (" WHERE " + " AND ".join(where) if where else "")


THREAD_COMMIT_ROWS = 64
"""A commit writing at least this many rows (resources and index entries, counted as
`SqliteTransaction.rows`: a group of audit events, a bundle) runs on a worker thread:
sqlite3 releases the GIL while it inserts and writes the WAL, so the event loop goes on
serving requests meanwhile."""


async def _on_thread(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` on a worker thread. It is never abandoned half-way: the caller holds the
    writer connection until it returns, so a cancelled caller still waits for it."""
    task = asyncio.ensure_future(asyncio.to_thread(call, *args))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _drop_changed_indexes(conn: sqlite3.Connection, schema: str) -> None:
    """Drop every index whose definition in `schema` has changed since the database was
    created, for the schema script to build it anew: indexes are derived data, and a new
    release may widen one (a covering index) or change its columns."""
    for name, definition in re.findall(r"CREATE INDEX IF NOT EXISTS (\w+) (ON [^;]+);", schema):
        row = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
        ).fetchone()
        if row is not None and row[0] != f"CREATE INDEX {name} {definition}":
            log.warning("rebuilding SQLite index %s (its definition changed)", name)
            conn.execute(f"DROP INDEX {name}")


def _merge_staged(conn: sqlite3.Connection, last: int | None = None) -> None:
    """Move the staged AuditEvent terms up to rowid `last` (all by default) into
    `audit_terms` (sqlite_terms.py), inside the transaction open on `conn`."""
    if last is None:
        last = conn.execute(f"SELECT max(rowid) FROM {STAGED}").fetchone()[0]
        if last is None:
            return
    for statement in MERGE_STAGED:
        conn.execute(statement, (last,))


def _chunk_end(conn: sqlite3.Connection) -> tuple[int | None, bool]:
    """The last rowid of the next chunk of staged events (None when nothing is staged), and
    whether a limit cut it short (more may be staged after it)."""
    rows = conn.execute(MERGE_CHUNK_ROWS, (MERGE_CHUNK_EVENTS,)).fetchall()
    terms = 0
    for rowid, count in rows:
        terms += count
        if terms >= MERGE_CHUNK_TERMS:
            return rowid, True
    return (rows[-1][0] if rows else None), len(rows) == MERGE_CHUNK_EVENTS


def _merge_chunk(conn: sqlite3.Connection) -> bool:
    """Merge the next chunk of staged events in a transaction of its own; whether a limit cut
    it short (more may be staged after it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        last, cut = _chunk_end(conn)
        if last is not None:
            _merge_staged(conn, last)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return cut


def _commit(conn: sqlite3.Connection, tx: SqliteTransaction) -> None:
    try:
        tx.flush()
        conn.execute("COMMIT")
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        raise VersionConflict("resources", str(exc), 0) from exc  # an id already taken
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        raise StorageError(f"SQLite commit failed: {exc}") from exc
    except BaseException:
        conn.execute("ROLLBACK")  # the connection must never stay inside a transaction
        raise


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._checkpointer: _Checkpointer | None = None
        self._rows_written = 0
        self._staged_events = 0
        """AuditEvents this process has staged since its last merge (sqlite_terms.py)."""
        self._merging: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _guard(lambda: _connect(self.path))
        for pragma in WRITER_PRAGMAS:
            _guard(lambda pragma=pragma: self._writer.execute(pragma))  # type: ignore[union-attr]
        writer = self._writer
        had_terms = bool(_guard(lambda: writer.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'audit_terms'").fetchall()))
        _guard(lambda: _drop_changed_indexes(writer, SCHEMA + INDEX_SCHEMA))
        _guard(lambda: writer.executescript(SCHEMA + INDEX_SCHEMA))
        if not had_terms:
            _guard(lambda: writer.executescript(
                "BEGIN IMMEDIATE;\n" + ";\n".join(MOVE_TO_TERMS) + ";\nCOMMIT;"))
        self._reader = _guard(lambda: _connect(self.path))
        self._checkpointer = _Checkpointer(self.path)

    async def close(self) -> None:
        if self._merging is not None:
            await self._merging
        if self._writer is not None:
            # What is still staged is merged now (a database at rest holds no staged terms).
            await self._merge()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    @property
    def _read_conn(self) -> sqlite3.Connection:
        # In WAL mode a connection empties its page cache whenever the database changed since
        # its last read, and every request commits an AuditEvent: a reader beside the writer
        # would start every query cold. The writer's cache survives its own commits, so reads
        # take the writer whenever no transaction holds it (the write lock is held from BEGIN
        # to COMMIT, also while a commit runs on a worker thread), and the reader otherwise.
        if self._writer is not None and not self._write_lock.locked():
            return self._writer
        if self._reader is None:
            raise StorageError("SQLite store is not open")
        return self._reader

    def _fetch(
        self, sql: str, params: tuple[Any, ...], conn: sqlite3.Connection | None = None
    ) -> list[tuple[Any, ...]]:
        use = conn or self._read_conn
        return _guard(lambda: use.execute(sql, params).fetchall())

    async def read(self, type_: str, id_: str) -> Version | None:
        rows = self._fetch(
            f"SELECT {COLUMNS} FROM resources WHERE type = ? AND id = ?", (type_, id_)
        )
        return _version(rows[0]) if rows else None

    async def vread(self, type_: str, id_: str, version: int) -> Version | None:
        rows = self._fetch(
            f"SELECT {COLUMNS} FROM {_versions_of(type_)} WHERE type = ? AND id = ? "
            "AND version = ?",
            (type_, id_, version),
        )
        return _version(rows[0]) if rows else None

    async def history(self, query: HistoryQuery) -> list[Version]:
        params: list[Any] = []
        if query.type is not None:
            sql = _history_arm(_versions_of(query.type), query, params)
        else:
            # The append-only types' versions live in `resources` alone.
            # (A database written before append-only types left history may still hold copies
            # of theirs there: those are not listed twice.)
            sql = (_history_arm("history", query, params, exclude=APPEND_ONLY_TYPES)
                   + " UNION ALL " + _history_arm("resources", query, params, APPEND_ONLY_TYPES))
        sql += " ORDER BY 4 DESC, 1 DESC, 2 DESC LIMIT ?"  # last_updated, type, id
        params.append(query.limit)
        return [_version(row) for row in self._fetch(sql, tuple(params))]

    async def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        found: list[Version] = []
        # Bounded batches keep the statement under SQLite's variable limit.
        for start in range(0, len(refs), 400):
            batch = refs[start : start + 400]
            pairs = " OR ".join("(type = ? AND id = ?)" for _ in batch)
            params = tuple(value for ref in batch for value in ref)
            rows = self._fetch(
                f"SELECT {COLUMNS} FROM resources WHERE body IS NOT NULL AND ({pairs})", params
            )
            found += [_version(row) for row in rows]
        return found

    def _where(self, type_: str, where: Predicate | None, sql: Sql) -> str:
        sql.params.append(type_)
        condition = "r.type = ? AND r.body IS NOT NULL"
        if where is not None:
            condition += " AND " + render(where, "r", type_, sql)
        return condition

    async def _merge(self) -> None:
        """Merge every staged AuditEvent term, a chunk a transaction (on a worker thread: a
        merge is one long statement in SQLite), letting queued writes in between chunks.

        It stops at the first chunk that no limit cut short: everything staged before then
        is merged. Events staged meanwhile wait for the next merge; chasing them, a chunk of
        one or two events after every request, cost each request 3-4 ms of merging."""
        self._staged_events = 0
        while True:
            async with self._write_lock:
                conn = self._writer
                if conn is None:
                    raise StorageError("SQLite store is not open")
                written = conn.total_changes
                cut = await _on_thread(_guard, lambda conn=conn: _merge_chunk(conn))
                self._rows_written += conn.total_changes - written
                await self._after_commit(conn, small=False)
                if not cut:
                    return

    async def _after_commit(self, conn: sqlite3.Connection, small: bool) -> None:
        """With the write lock still held: restart the WAL after a finished background
        checkpoint, and ask for the next one once enough rows were written.

        The restart copies under the lock what was committed since the catch-up, so it waits
        for a `small` commit (fewer than `THREAD_COMMIT_ROWS` rows): a merge chunk or a bundle
        writes thousands of frames (at 100,000 resources a restart right after a merge chunk
        took 50-80 ms), which another catch-up copies first. During a long merge the WAL can
        still reach the writer's own checkpoint (restarting anyway after 12,000 rows, tried,
        made the restarts themselves 60-75 ms)."""
        checkpointer = self._checkpointer
        if checkpointer is None:
            return
        if checkpointer.finished.is_set():
            # Cleared first: a checkpoint requested below must not be mistaken for this one.
            checkpointer.finished.clear()
            if small:
                await _on_thread(_restart_wal, conn)
            else:
                checkpointer.request()
        if self._rows_written >= CHECKPOINT_EVERY_ROWS:
            self._rows_written = 0
            checkpointer.request()

    async def _merge_if_read(self, sql: str) -> None:
        """Before a query that reads `audit_terms`: merge what is staged (by any process)."""
        if not reads_terms(sql):
            return
        # max(rowid) is one step down the table's B-tree (and None when nothing is staged).
        conn = self._read_conn
        staged = _guard(lambda: conn.execute(f"SELECT max(rowid) FROM {STAGED}").fetchall())
        if staged[0][0] is not None:
            await self._merge()

    async def _merge_in_background(self) -> None:
        try:
            await self._merge()
        except StorageError as exc:
            log.warning("staged AuditEvent terms not merged yet: %s", exc)
        finally:
            self._merging = None

    async def search(self, query: SearchQuery) -> list[Match]:
        text, params = self._page_sql(query)
        await self._merge_if_read(text)
        return self._search(self._read_conn, query, text, params)

    def _page_sql(self, query: SearchQuery) -> tuple[str, list[Any]]:
        """The query for the page's ids and sort keys (the first of `_search`'s two steps)."""
        descending = query.directions()
        sql = Sql()
        keys = [
            f"{sort_expression(key, query.type, sql)} AS k{i}" for i, key in enumerate(query.sort)
        ]
        columns = ", ".join(["r.id", *keys])
        where = self._where(query.type, query.where, sql)
        text = f"SELECT * FROM (SELECT {columns} FROM resources r WHERE {where})"
        names = [f"k{i}" for i in range(len(query.sort))]
        if query.after is not None:
            keyset = keyset_condition(names, descending, query.after, query.backwards, sql)
            text += " WHERE " + keyset
        order = [f"{n} DESC" if d else n for n, d in zip(names, descending, strict=True)]
        order.append("id DESC" if query.backwards else "id")
        text += f" ORDER BY {', '.join(order)} LIMIT ?"
        sql.params.append(query.limit)
        return text, sql.params

    def _search(
        self, conn: sqlite3.Connection, query: SearchQuery, text: str, params: list[Any]
    ) -> list[Match]:
        """Two steps: the page's ids and sort keys first (`_page_sql`), then only those
        bodies (sorting a large match set never drags every body along)."""
        page = self._fetch(text, tuple(params), conn)
        if query.backwards:
            page.reverse()
        if not page:
            return []
        marks = ", ".join("?" * len(page))
        bodies = self._fetch(
            f"SELECT {COLUMNS} FROM resources WHERE type = ? AND id IN ({marks})",
            (query.type, *(row[0] for row in page)),
            conn,
        )
        versions = {row[1]: _version(row) for row in bodies}
        return [Match(versions[row[0]], (*row[1:], row[0])) for row in page]

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        text, params = self._count_sql(type_, where, limit)
        await self._merge_if_read(text)
        return self._count(self._read_conn, text, params)

    def _count_sql(
        self, type_: str, where: Predicate | None, limit: int | None = None
    ) -> tuple[str, list[Any]]:
        sql = Sql()
        rows_of = index_only_count(where, type_, sql)
        if rows_of is None:
            rows_of = f"SELECT r.id FROM resources r WHERE {self._where(type_, where, sql)}"
        text = f"SELECT count(*) FROM ({rows_of}"
        if limit is not None:
            text += " LIMIT ?"
            sql.params.append(limit)
        return text + ")", sql.params

    def _count(self, conn: sqlite3.Connection, text: str, params: list[Any]) -> int:
        return int(self._fetch(text, tuple(params), conn)[0][0])

    def explain(self, query: SearchQuery) -> list[str]:
        """SQLite's plan for a search (tests assert it uses indexes)."""
        sql = Sql()
        text = f"SELECT r.id FROM resources r WHERE {self._where(query.type, query.where, sql)}"
        rows = self._fetch("EXPLAIN QUERY PLAN " + text, tuple(sql.params))
        return [str(row[-1]) for row in rows]

    async def replace_index(self, version: Version, index: ResourceIndex) -> bool:
        async with self.transaction() as tx:
            assert isinstance(tx, SqliteTransaction)
            current = await tx.current(version.type, version.id)
            if current is None or current.version != version.version or current.deleted:
                return False
            _guard(lambda: write_index(tx._conn, version.type, version.id, index, replace=True))
        return True

    async def get_setting(self, key: str) -> Any:
        rows = self._fetch("SELECT value FROM settings WHERE key = ?", (key,))
        return orjson.loads(rows[0][0]) if rows else None

    async def put_setting(self, key: str, value: Any) -> None:
        async with self.transaction() as tx:
            assert isinstance(tx, SqliteTransaction)
            _guard(lambda: tx._conn.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                (key, orjson.dumps(value)),
            ))

    async def list_settings(self, prefix: str) -> dict[str, Any]:
        # A range on the primary key; `prefix + U+10FFFF` bounds every key that starts with it.
        rows = self._fetch(
            "SELECT key, value FROM settings WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\U0010ffff"),
        )
        return {key: orjson.loads(value) for key, value in rows}

    async def is_empty(self) -> bool:
        return not self._fetch("SELECT 1 FROM resources LIMIT 1", ())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageError("SQLite store is not open")
            _guard(lambda: conn.execute("BEGIN IMMEDIATE"))
            tx = SqliteTransaction(self, conn)
            try:
                yield tx
            except BaseException:
                _guard(lambda: conn.execute("ROLLBACK"))
                raise
            small = tx.rows < THREAD_COMMIT_ROWS
            if small:
                # On this thread: for a few rows a hop to a worker thread costs more than the
                # work (a sequential client lost ~1 ms a write).
                _commit(conn, tx)
            else:
                await _on_thread(_commit, conn, tx)
            await self._after_commit(conn, small)
            if self._staged_events >= MERGE_EVENTS and self._merging is None:
                self._merging = asyncio.create_task(self._merge_in_background())
