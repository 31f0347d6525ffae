"""Embedded SQLite engine: one database file, WAL mode, real transactions.

Calls run directly on the event-loop thread: each statement takes microseconds, and a thread
hand-off would cost more than the work. Writes go through one writer connection guarded by an
asyncio lock (SQLite allows one writer at a time anyway; `BEGIN IMMEDIATE` plus a busy timeout
serialises us with other processes such as the CLI). Reads use a separate connection, so they
never see another request's uncommitted transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from fhir_server.search.model import EMPTY_INDEX, Predicate, ResourceIndex
from fhir_server.store.base import (
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
    index_rows,
    insert_sql,
    keyset_condition,
    render,
    sort_expression,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    last_updated TEXT NOT NULL, method TEXT NOT NULL, body BLOB,
    PRIMARY KEY (type, id)
);
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


def _version(row: tuple[Any, ...]) -> Version:
    return Version(row[0], row[1], row[2], row[3], row[4], row[5])


def _guard(call: Callable[[], T]) -> T:
    """Run one SQLite call, turning engine failures into StorageError."""
    try:
        return call()
    except sqlite3.Error as exc:
        raise StorageError(f"SQLite: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SqliteTransaction(Transaction):
    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

    async def search(self, query: SearchQuery) -> list[Match]:
        # The writer connection sees this transaction's writes; the store's write lock, held
        # for the whole block, serialises the search with every other writer.
        return self._store._search(self._conn, query)

    async def count(self, type_: str, where: Predicate | None) -> int:
        return self._store._count(self._conn, type_, where)

    async def current(self, type_: str, id_: str) -> Version | None:
        row = _guard(
            lambda: self._conn.execute(
                f"SELECT {COLUMNS} FROM resources WHERE type = ? AND id = ?", (type_, id_)
            ).fetchone()
        )
        return _version(row) if row else None

    async def put(self, version: Version, index: ResourceIndex | None = None) -> None:
        _guard(lambda: self._put(version, index or EMPTY_INDEX))

    def _put(self, v: Version, index: ResourceIndex) -> None:
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
        self._conn.execute(f"INSERT INTO history ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", values)
        write_index(self._conn, v.type, v.id, index, replace=bool(found))


def write_index(
    conn: sqlite3.Connection, type_: str, id_: str, index: ResourceIndex, replace: bool
) -> None:
    if replace:
        for table in (*INDEX_TABLES, "sort_keys"):
            conn.execute(f"DELETE FROM {table} WHERE rtype = ? AND rid = ?", (type_, id_))
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for table, row in index_rows(type_, id_, index):
        rows.setdefault(table, []).append(row)
    for table, table_rows in rows.items():
        conn.executemany(insert_sql(table, len(table_rows[0])), table_rows)


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _guard(lambda: _connect(self.path))
        _guard(lambda: self._writer.executescript(SCHEMA + INDEX_SCHEMA))  # type: ignore[union-attr]
        self._reader = _guard(lambda: _connect(self.path))

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    @property
    def _read_conn(self) -> sqlite3.Connection:
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
            f"SELECT {COLUMNS} FROM history WHERE type = ? AND id = ? AND version = ?",
            (type_, id_, version),
        )
        return _version(rows[0]) if rows else None

    async def history(self, query: HistoryQuery) -> list[Version]:
        where: list[str] = []
        params: list[Any] = []
        if query.type is not None:
            where.append("h.type = ?")
            params.append(query.type)
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
                "h.body IS NOT NULL AND h.last_updated < ? AND (h.last_updated >= ? OR "
                "h.version = (SELECT max(p.version) FROM history p "
                "WHERE p.type = h.type AND p.id = h.id AND p.last_updated <= ?))"
            )
            params += [end, start, start]
        if query.after is not None:
            c = query.after
            where.append("(h.last_updated, h.type, h.id) < (?, ?, ?)")
            params += [c.last_updated, c.type, c.id]
        sql = f"SELECT {', '.join('h.' + c for c in COLUMNS.split(', '))} FROM history h"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY h.last_updated DESC, h.type DESC, h.id DESC LIMIT ?"
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

    async def search(self, query: SearchQuery) -> list[Match]:
        return self._search(self._read_conn, query)

    def _search(self, conn: sqlite3.Connection, query: SearchQuery) -> list[Match]:
        descending = query.directions()
        sql = Sql()
        keys = [f"{sort_expression(key, sql)} AS k{i}" for i, key in enumerate(query.sort)]
        columns = ", ".join([COLUMNS_R, *keys])
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
        rows = self._fetch(text, tuple(sql.params), conn)
        if query.backwards:
            rows.reverse()
        return [Match(_version(row), (*row[6:], row[1])) for row in rows]

    async def count(self, type_: str, where: Predicate | None) -> int:
        return self._count(self._read_conn, type_, where)

    def _count(self, conn: sqlite3.Connection, type_: str, where: Predicate | None) -> int:
        sql = Sql()
        condition = self._where(type_, where, sql)
        rows = self._fetch(
            f"SELECT count(*) FROM resources r WHERE {condition}", tuple(sql.params), conn
        )
        return int(rows[0][0])

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

    async def is_empty(self) -> bool:
        return not self._fetch("SELECT 1 FROM history LIMIT 1", ())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageError("SQLite store is not open")
            _guard(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield SqliteTransaction(self, conn)
            except BaseException:
                _guard(lambda: conn.execute("ROLLBACK"))
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StorageError(f"SQLite commit failed: {exc}") from exc
