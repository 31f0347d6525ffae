"""MongoDB engine on PyMongo's async client.

Layout: the current copy of each resource lives in a collection named after its type,
`{_id: id, v, lu, m, r, _k, _r, _c, _s}`; every version goes to the `history` collection,
`{_id: "Type/id/v", t, i, v, lu, m, r}`. `r` is the serialized body as BSON binary: decoding a
BSON document and re-serializing it with orjson costs about 7x more than decoding the binary
(16 µs against 2 µs for a median Synthea resource), and raw JSON is smaller than the same
resource as BSON. The resource is never stored as a BSON document: search runs on the index
fields (`_k`, `_r`, `_c`, `_s`, see mongo_search.py) computed at write time. Tombstones have
`r` null and no index.

Atomicity: on a replica set or mongos, a transaction block is a multi-document transaction. A
standalone server has none, so the block keeps an undo log instead and, when it fails, restores
the previous current copies and deletes the history entries it wrote, newest first. Without a
server transaction other requests can see a block's writes before it ends.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import orjson
from bson.errors import BSONError
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from fhir_server.search.model import EMPTY_INDEX, Predicate, ResourceIndex
from fhir_server.store.base import (
    HistoryCursor,
    HistoryQuery,
    LockTimeout,
    Match,
    SearchQuery,
    StorageError,
    Store,
    Transaction,
    Version,
    VersionConflict,
)
from fhir_server.store.mongo_search import (
    INDEX_SPECS,
    field_value,
    index_fields,
    keyset_filter,
    render,
    sort_field,
)

log = logging.getLogger(__name__)

HISTORY = "history"
SETTINGS = "settings"
# Inclusion projection, so search data added to current documents later is never fetched.
READ_FIELDS = {"v": 1, "lu": 1, "m": 1, "r": 1}
# (t, i, v) serves vread and instance history; (lu, t, i) system history and `at` windows;
# (t, lu, i) type history.
HISTORY_INDEXES = [(("t", "i", "v"), True), (("lu", "t", "i"), False), (("t", "lu", "i"), False)]
NEWEST_FIRST = [("lu", -1), ("t", -1), ("i", -1)]
WRITE_CONFLICT = 112
LOCKS = "locks"
LOCK_WAIT = 10.0
"""Seconds `lock` waits for a lock another transaction holds before giving up."""
LOCK_STALE = 60.0
"""A lock older than this was left by a process that died inside a transaction: it is broken."""
Doc = dict[str, Any]


@contextmanager
def _guard(action: str) -> Iterator[None]:
    """Report driver and encoding failures as StorageError, naming what was being done."""
    try:
        yield
    except (PyMongoError, BSONError, OverflowError) as exc:
        raise StorageError(f"MongoDB: {action} failed: {exc}") from exc


def _current_doc(v: Version, index: ResourceIndex) -> Doc:
    return {
        "_id": v.id,
        "v": v.version,
        "lu": v.last_updated,
        "m": v.method,
        "r": v.body,
        **index_fields(index),
    }


def _history_doc(v: Version) -> Doc:
    return {
        "_id": f"{v.type}/{v.id}/{v.version}",
        "t": v.type,
        "i": v.id,
        "v": v.version,
        "lu": v.last_updated,
        "m": v.method,
        "r": v.body,
    }


def _from_current(type_: str, d: Doc) -> Version:
    return Version(type_, d["_id"], d["v"], d["lu"], d["m"], d["r"])


def _from_history(d: Doc) -> Version:
    return Version(d["t"], d["i"], d["v"], d["lu"], d["m"], d["r"])


def _all(conditions: list[Doc]) -> Doc:
    if not conditions:
        return {}
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _scope(q: HistoryQuery) -> list[Doc]:
    return [{k: val} for k, val in (("t", q.type), ("i", q.id)) if val is not None]


def _older_than(c: HistoryCursor) -> Doc:
    # The plain `lu <= ...` bound lets the planner scan the time index from the cursor on.
    return {
        "$and": [
            {"lu": {"$lte": c.last_updated}},
            {
                "$or": [
                    {"lu": {"$lt": c.last_updated}},
                    {"lu": c.last_updated, "t": {"$lt": c.type}},
                    {"lu": c.last_updated, "t": c.type, "i": {"$lt": c.id}},
                ]
            },
        ]
    }


def _bounds(q: HistoryQuery) -> list[Doc]:
    conditions = []
    if q.since is not None:
        conditions.append({"lu": {"$gte": q.since}})
    if q.after is not None:
        conditions.append(_older_than(q.after))
    return conditions


def _newest_first(d: Doc) -> tuple[str, str, str]:
    return d["lu"], d["t"], d["i"]


@dataclass(slots=True)
class _Undo:
    """How to take back one put when no server transaction does it for us."""

    collection: Any
    type: str
    id: str
    version: int
    previous: Doc | None
    history_id: str | None = None

    async def run(self, history: Any) -> None:
        mine = {"_id": self.id, "v": self.version}
        if self.previous is None:
            restored = (await self.collection.delete_one(mine)).deleted_count
        else:
            restored = (await self.collection.replace_one(mine, self.previous)).matched_count
        if not restored:
            # Another writer already built on this version; removing it from history would
            # leave a gap in theirs, so it stays.
            log.warning("%s/%s/%d superseded before rollback", self.type, self.id, self.version)
            return
        if self.history_id is not None:
            await history.delete_one({"_id": self.history_id})


@dataclass(slots=True)
class _SettingUndo:
    """How to take back one swap_setting when no server transaction does it for us."""

    settings: Any
    id: str
    previous: bytes | None
    value: bytes | None
    """None: the swap removed the setting."""
    type: str = "settings"
    version: int = 0

    async def run(self, history: Any) -> None:
        if self.value is None:
            if self.previous is not None:
                await self.settings.insert_one({"_id": self.id, "value": self.previous})
            return
        mine = {"_id": self.id, "value": self.value}
        if self.previous is None:
            await self.settings.delete_one(mine)
        else:
            await self.settings.update_one(mine, {"$set": {"value": self.previous}})


class MongoTransaction(Transaction):
    def __init__(self, store: MongoStore, session: Any, *, server_side: bool) -> None:
        self._db = store._db
        self._history = store._history
        self._ensure_indexes = store.ensure_indexes
        self._store = store
        self._session = session
        self._undo: list[_Undo | _SettingUndo] | None = None if server_side else []
        self._locks: list[str] = []

    async def search(self, query: SearchQuery) -> list[Match]:
        return await self._store._search(query, self._session)

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        return await self._store._count(type_, where, self._session, limit)

    async def lock(self, key: str) -> None:
        """A document `{_id: key}` in `locks`, inserted outside any server transaction so
        other transactions see it at once; its unique _id makes the insert the lock."""
        if key in self._locks:
            return
        locks = self._db[LOCKS]
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.001
        while True:
            now = time.time()
            try:
                await locks.insert_one({"_id": key, "at": now})
                self._locks.append(key)
                return
            except DuplicateKeyError:
                with _guard(f"break stale lock {key}"):
                    await locks.delete_one({"_id": key, "at": {"$lt": now - LOCK_STALE}})
            except (PyMongoError, BSONError) as exc:
                raise StorageError(f"MongoDB: lock {key} failed: {exc}") from exc
            if time.monotonic() > deadline:
                raise LockTimeout(f"{key} is locked by another transaction; retry")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def release(self) -> None:
        if not self._locks:
            return
        try:
            await self._db[LOCKS].delete_many({"_id": {"$in": self._locks}})
        except PyMongoError as exc:
            # The block's outcome stands; the locks expire after LOCK_STALE seconds.
            log.warning("could not release locks %s: %s", self._locks, exc)
        self._locks = []

    async def current(self, type_: str, id_: str) -> Version | None:
        with _guard(f"read {type_}/{id_}"):
            d = await self._db[type_].find_one({"_id": id_}, READ_FIELDS, session=self._session)
        return None if d is None else _from_current(type_, d)

    async def put(self, version: Version, index: ResourceIndex | None = None) -> None:
        collection = self._db[version.type]
        with _guard(f"write {version.type}/{version.id}/{version.version}"):
            await self._ensure_indexes(version.type)
            previous = await self._swap_current(collection, version, index or EMPTY_INDEX)
            step = None
            if self._undo is not None:
                step = _Undo(collection, version.type, version.id, version.version, previous)
                self._undo.append(step)
            await self._append_history(version, step)

    async def get_setting(self, key: str) -> Any:
        with _guard(f"read setting {key}"):
            doc = await self._db[SETTINGS].find_one({"_id": key}, session=self._session)
        return None if doc is None else orjson.loads(doc["value"])

    async def swap_setting(self, key: str, expected: Any, value: Any) -> None:
        settings = self._db[SETTINGS]
        previous = None if expected is None else orjson.dumps(expected)
        new = None if value is None else orjson.dumps(value)
        with _guard(f"write setting {key}"):
            try:
                if value is None and previous is None:
                    found = await settings.find_one({"_id": key}, session=self._session)
                    swapped = found is None
                elif value is None:
                    result = await settings.delete_one(
                        {"_id": key, "value": previous}, session=self._session
                    )
                    swapped = result.deleted_count > 0
                elif previous is None:
                    await settings.insert_one({"_id": key, "value": new}, session=self._session)
                    swapped = True
                else:
                    result = await settings.update_one(
                        {"_id": key, "value": previous}, {"$set": {"value": new}},
                        session=self._session,
                    )
                    swapped = result.matched_count > 0
            except OperationFailure as exc:
                if not isinstance(exc, DuplicateKeyError) and exc.code != WRITE_CONFLICT:
                    raise
                swapped = False
        if not swapped:
            raise VersionConflict("settings", key, 0)
        if self._undo is not None:
            self._undo.append(_SettingUndo(settings, key, previous, new))

    async def _swap_current(self, collection: Any, v: Version, index: ResourceIndex) -> Doc | None:
        """Compare-and-set the current copy; return what it replaced when the undo log needs it.

        Losing the race raises VersionConflict without failing a server transaction where
        possible, so a caller may catch it and go on, as it can on SQLite.
        """
        session = self._session
        try:
            previous, stored = await self._compare_and_set(collection, v, index)
        except OperationFailure as exc:
            if not isinstance(exc, DuplicateKeyError) and exc.code != WRITE_CONFLICT:
                raise
            # Lost to a concurrent writer; a server transaction is aborted by now.
            previous, stored, session = None, False, None
        if not stored:
            await self._conflict(v, session)
        return previous

    async def _compare_and_set(
        self, collection: Any, v: Version, index: ResourceIndex
    ) -> tuple[Doc | None, bool]:
        doc = _current_doc(v, index)
        if v.version == 1:
            # An upsert that finds the document reports it, where an insert would fail.
            del doc["_id"]
            result = await collection.update_one(
                {"_id": v.id}, {"$setOnInsert": doc}, upsert=True, session=self._session
            )
            return None, result.upserted_id is not None
        expected = {"_id": v.id, "v": v.version - 1}
        if self._undo is None:
            result = await collection.replace_one(expected, doc, session=self._session)
            return None, result.matched_count > 0
        previous = await collection.find_one_and_replace(
            expected, doc, return_document=ReturnDocument.BEFORE, session=self._session
        )
        return previous, previous is not None

    async def _conflict(self, v: Version, session: Any) -> NoReturn:
        d = await self._db[v.type].find_one({"_id": v.id}, {"v": 1}, session=session)
        raise VersionConflict(v.type, v.id, 0 if d is None else d["v"])

    async def _append_history(self, v: Version, step: _Undo | None) -> None:
        doc = _history_doc(v)
        if step is not None:
            # Set before the insert: after a lost reply the entry may exist, and it is ours.
            step.history_id = doc["_id"]
        try:
            await self._history.insert_one(doc, session=self._session)
        except DuplicateKeyError as exc:
            if step is not None:
                step.history_id = None
            raise StorageError(f"MongoDB: history already holds {doc['_id']}") from exc

    async def rollback(self) -> None:
        if self._undo is None:
            with _guard("abort transaction"):
                await self._session.abort_transaction()
            return
        failures = []
        for step in reversed(self._undo):
            try:
                await step.run(self._history)
            except PyMongoError as exc:
                failures.append(f"{step.type}/{step.id}/{step.version}: {exc}")
        if failures:
            raise StorageError("MongoDB: rollback incomplete: " + "; ".join(failures))

    async def commit(self) -> None:
        if self._undo is None:
            with _guard("commit transaction"):
                await self._session.commit_transaction()


class MongoStore(Store):
    name = "mongo"

    def __init__(self, client: Any, db_name: str, *, transactions: bool | None = None) -> None:
        """`client` stays the caller's to close; `transactions=None` asks the server in open()."""
        self._client = client
        self._db = client[db_name]
        self._history = self._db[HISTORY]
        self._transactions = transactions
        self._owns_client = False
        self._indexed: set[str] = set()

    @classmethod
    def from_url(cls, url: str, db_name: str) -> MongoStore:
        store = cls(AsyncMongoClient(url, appname="fhir-server"), db_name)
        store._owns_client = True
        return store

    async def open(self) -> None:
        with _guard("open"):
            if self._transactions is None:
                hello = await self._client.admin.command("hello")
                self._transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
            for fields, unique in HISTORY_INDEXES:
                await self._history.create_index([(f, ASCENDING) for f in fields], unique=unique)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()

    async def ensure_indexes(self, type_: str) -> None:
        """Create a type collection's search indexes the first time this process uses it."""
        if type_ in self._indexed:
            return
        collection = self._db[type_]
        for spec in INDEX_SPECS:
            await collection.create_index(spec)
        self._indexed.add(type_)

    async def read(self, type_: str, id_: str) -> Version | None:
        with _guard(f"read {type_}/{id_}"):
            d = await self._db[type_].find_one({"_id": id_}, READ_FIELDS)
        return None if d is None else _from_current(type_, d)

    async def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        by_type: dict[str, list[str]] = {}
        for type_, id_ in refs:
            by_type.setdefault(type_, []).append(id_)
        found: list[Version] = []
        with _guard("read resources"):
            for type_, ids in by_type.items():
                cursor = self._db[type_].find(
                    {"_id": {"$in": ids}, "r": {"$ne": None}}, READ_FIELDS
                )
                found += [_from_current(type_, d) for d in await cursor.to_list(None)]
        return found

    async def _find(
        self, type_: str, filter_: Doc, projection: Doc, session: Any = None
    ) -> list[Doc]:
        cursor = self._db[type_].find(filter_, projection or {"_id": 1}, session=session)
        return await cursor.to_list(None)

    async def _filter(self, type_: str, where: Predicate | None, session: Any = None) -> Doc:
        live: Doc = {"r": {"$ne": None}}
        if where is None:
            return live
        return {"$and": [live, await render(where, type_, partial(self._find, session=session))]}

    async def search(self, query: SearchQuery) -> list[Match]:
        return await self._search(query, None)

    async def _search(self, query: SearchQuery, session: Any) -> list[Match]:
        if query.limit < 1:
            return []
        descending = query.directions()
        fields = [sort_field(k) for k in query.sort]
        order = [(f, -1 if d else 1) for f, d in zip(fields, descending, strict=True)]
        order.append(("_id", -1 if query.backwards else 1))
        with _guard(f"search {query.type}"):
            filter_ = await self._filter(query.type, query.where, session)
            if query.after is not None:
                keyset = keyset_filter(fields, descending, query.after, query.backwards)
                filter_ = {"$and": [filter_, keyset]}
            projection = {**READ_FIELDS, **{f: 1 for f in fields if f not in ("_id", "lu")}}
            cursor = self._db[query.type].find(filter_, projection, session=session).sort(order)
            docs = await cursor.limit(query.limit).to_list(None)
        if query.backwards:
            docs.reverse()
        return [
            Match(_from_current(query.type, d), (*(field_value(d, f) for f in fields), d["_id"]))
            for d in docs
        ]

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        return await self._count(type_, where, None, limit)

    async def _count(
        self, type_: str, where: Predicate | None, session: Any, limit: int | None = None
    ) -> int:
        bounded = {} if limit is None else {"limit": limit}
        with _guard(f"count {type_}"):
            filter_ = await self._filter(type_, where, session)
            return await self._db[type_].count_documents(filter_, session=session, **bounded)

    async def explain(self, query: SearchQuery) -> Doc:
        """MongoDB's plan for a search (tests assert index use against a real server)."""
        filter_ = await self._filter(query.type, query.where)
        return await self._db.command("explain", {"find": query.type, "filter": filter_})

    async def vread(self, type_: str, id_: str, version: int) -> Version | None:
        with _guard(f"read {type_}/{id_}/{version}"):
            d = await self._history.find_one({"_id": f"{type_}/{id_}/{version}"})
        return None if d is None else _from_history(d)

    async def history(self, query: HistoryQuery) -> list[Version]:
        if query.limit < 1:
            return []  # MongoDB reads a limit of 0 as "no limit"
        with _guard("history"):
            if query.at is None:
                filter_ = _all(_scope(query) + _bounds(query))
                docs = await self._newest(filter_, query.limit)
            else:
                docs = await self._history_at(query, *query.at)
        return [_from_history(d) for d in docs]

    async def _newest(self, filter_: Doc, limit: int) -> list[Doc]:
        cursor = self._history.find(filter_).sort(NEWEST_FIRST).limit(limit)
        return await cursor.to_list(None)

    async def _history_at(self, q: HistoryQuery, start: str, end: str) -> list[Doc]:
        """Versions written in [start, end) merged with each resource's version as of start."""
        alive = {"r": {"$ne": None}}
        # A version written exactly at start is the one current at start: _as_of returns it.
        inside = {"lu": {"$gt": start, "$lt": end}}
        written = await self._newest(_all([*_scope(q), *_bounds(q), inside, alive]), q.limit)
        as_of_start = await self._as_of(q, start, alive)
        merged = heapq.merge(written, as_of_start, key=_newest_first, reverse=True)
        return list(merged)[: q.limit]

    async def _as_of(self, q: HistoryQuery, start: str, alive: Doc) -> list[Doc]:
        # since/after/tombstone filters apply only after picking each resource's latest
        # version at or before start, or an older version would stand in for a filtered one.
        pipeline: list[Doc] = [
            {"$match": _all([*_scope(q), {"lu": {"$lte": start}}])},
            {"$sort": {"t": -1, "i": -1, "v": -1}},
            {"$group": {"_id": {"t": "$t", "i": "$i"}, "d": {"$first": "$$ROOT"}}},
            {"$replaceRoot": {"newRoot": "$d"}},
            {"$match": _all([*_bounds(q), alive])},
            {"$sort": dict(NEWEST_FIRST)},
            {"$limit": q.limit},
        ]
        cursor = await self._history.aggregate(pipeline)
        return await cursor.to_list(None)

    async def replace_index(self, version: Version, index: ResourceIndex) -> bool:
        with _guard(f"reindex {version.type}/{version.id}"):
            await self.ensure_indexes(version.type)
            current = {"_id": version.id, "v": version.version, "r": {"$ne": None}}
            result = await self._db[version.type].update_one(
                current, {"$set": index_fields(index)}
            )
        return result.matched_count > 0

    async def get_setting(self, key: str) -> Any:
        with _guard(f"read setting {key}"):
            doc = await self._db[SETTINGS].find_one({"_id": key})
        return None if doc is None else orjson.loads(doc["value"])

    async def put_setting(self, key: str, value: Any) -> None:
        with _guard(f"write setting {key}"):
            await self._db[SETTINGS].replace_one(
                {"_id": key}, {"value": orjson.dumps(value)}, upsert=True
            )

    async def list_settings(self, prefix: str) -> dict[str, Any]:
        # A range on _id (its index), not a regex: the prefix is taken literally.
        query = {"_id": {"$gte": prefix, "$lt": prefix + "\U0010ffff"}}
        with _guard("list settings"):
            docs = await self._db[SETTINGS].find(query).sort("_id", 1).to_list(None)
        return {doc["_id"]: orjson.loads(doc["value"]) for doc in docs}

    async def is_empty(self) -> bool:
        with _guard("check for data"):
            return await self._history.find_one({}, {"_id": 1}) is None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        server_side = bool(self._transactions)
        with _guard("start session"):
            session = self._client.start_session()
        async with session:
            tx = MongoTransaction(self, session, server_side=server_side)
            if server_side:
                with _guard("start transaction"):
                    await session.start_transaction()
            try:
                try:
                    yield tx
                except BaseException:
                    await tx.rollback()
                    raise
                await tx.commit()
            finally:
                await tx.release()
