"""The storage contract (store/base.py), run on every engine through the `store` fixture.

Mongo-only tests at the end cover what the contract leaves to the engine: the undo log that
stands in for transactions on a standalone server (the path CI runs, as mongomock has no
transactions), engine failures in the middle of a block, and the document layout.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError

from fhir_server.store.base import (
    HistoryCursor,
    HistoryQuery,
    StorageError,
    Store,
    Version,
    VersionConflict,
)
from fhir_server.store.mongo import MongoStore
from tests.mongomock_async import AsyncMongoMockClient

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def ts(n: int) -> str:
    """A fixed-width instant n seconds after the epoch, so string order is time order."""
    return (EPOCH + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ver(type_: str, id_: str, version: int, at: int, *, deleted: bool = False) -> Version:
    if deleted:
        return Version(type_, id_, version, ts(at), "DELETE", None)
    meta = {"versionId": str(version), "lastUpdated": ts(at)}
    body = orjson.dumps({"resourceType": type_, "id": id_, "meta": meta, "n": [version, 1.5]})
    return Version(type_, id_, version, ts(at), "PUT" if version > 1 else "POST", body)


async def put(store: Store, *versions: Version) -> None:
    async with store.transaction() as tx:
        for v in versions:
            await tx.put(v)


async def everything(store: Store) -> list[Version]:
    return await store.history(HistoryQuery(limit=10_000))


def keys(versions: list[Version]) -> list[tuple[str, str, int]]:
    return [(v.type, v.id, v.version) for v in versions]


# --- writes, reads ---------------------------------------------------------------------------


async def test_create_then_read(store: Store) -> None:
    v1 = ver("Patient", "a", 1, 1)
    await put(store, v1)
    assert await store.read("Patient", "a") == v1
    assert await store.vread("Patient", "a", 1) == v1
    read = await store.read("Patient", "a")
    assert read is not None and read.resource()["n"] == [1, 1.5]


async def test_conflicting_create_writes_nothing(store: Store) -> None:
    v1 = ver("Patient", "a", 1, 1)
    await put(store, v1)
    with pytest.raises(VersionConflict) as caught:
        await put(store, ver("Patient", "a", 1, 2))
    assert caught.value.found == 1
    assert await store.read("Patient", "a") == v1
    assert await everything(store) == [v1]


async def test_update_chain(store: Store) -> None:
    chain = [ver("Patient", "a", n, n) for n in (1, 2, 3)]
    for v in chain:
        await put(store, v)
    assert await store.read("Patient", "a") == chain[-1]
    for v in chain:
        assert await store.vread("Patient", "a", v.version) == v


@pytest.mark.parametrize("stale", [1, 2, 4], ids=["older", "same", "skipping"])
async def test_conflicting_update_writes_nothing(store: Store, stale: int) -> None:
    chain = [ver("Patient", "a", 1, 1), ver("Patient", "a", 2, 2)]
    await put(store, *chain)
    with pytest.raises(VersionConflict) as caught:
        await put(store, ver("Patient", "a", stale, 9))
    assert caught.value.found == 2
    assert await store.read("Patient", "a") == chain[1]
    assert await everything(store) == chain[::-1]


async def test_update_of_absent_resource_conflicts(store: Store) -> None:
    with pytest.raises(VersionConflict) as caught:
        await put(store, ver("Patient", "nobody", 2, 1))
    assert caught.value.found == 0
    assert await store.read("Patient", "nobody") is None
    assert await store.is_empty()


async def test_delete_leaves_tombstone_then_recreate(store: Store) -> None:
    tombstone = ver("Patient", "a", 2, 2, deleted=True)
    await put(store, ver("Patient", "a", 1, 1), tombstone)
    current = await store.read("Patient", "a")
    assert current == tombstone
    assert current is not None and current.deleted and current.body is None
    assert await store.vread("Patient", "a", 2) == tombstone
    again = ver("Patient", "a", 3, 3)
    await put(store, again)
    assert await store.read("Patient", "a") == again
    assert keys(await everything(store)) == [("Patient", "a", n) for n in (3, 2, 1)]


async def test_read_and_vread_of_absent(store: Store) -> None:
    await put(store, ver("Patient", "a", 1, 1))
    assert await store.read("Patient", "b") is None
    assert await store.read("Observation", "a") is None
    assert await store.vread("Patient", "a", 2) is None
    assert await store.vread("Patient", "b", 1) is None


async def test_is_empty(store: Store) -> None:
    assert await store.is_empty()
    await put(store, ver("Patient", "a", 1, 1))
    assert not await store.is_empty()


# --- history ---------------------------------------------------------------------------------


@pytest.fixture
async def four(store: Store) -> Store:
    await put(store, ver("Patient", "a", 1, 1))
    await put(store, ver("Patient", "b", 1, 2))
    await put(store, ver("Observation", "x", 1, 3))
    await put(store, ver("Patient", "a", 2, 4))
    return store


async def test_history_levels_newest_first(four: Store) -> None:
    instance = await four.history(HistoryQuery(type="Patient", id="a"))
    assert keys(instance) == [("Patient", "a", 2), ("Patient", "a", 1)]
    by_type = await four.history(HistoryQuery(type="Patient"))
    assert keys(by_type) == [("Patient", "a", 2), ("Patient", "b", 1), ("Patient", "a", 1)]
    system = await four.history(HistoryQuery())
    assert keys(system) == [
        ("Patient", "a", 2),
        ("Observation", "x", 1),
        ("Patient", "b", 1),
        ("Patient", "a", 1),
    ]
    assert system[0] == ver("Patient", "a", 2, 4)


async def test_history_ties_ordered_by_type_then_id_descending(store: Store) -> None:
    await put(store, ver("Patient", "a", 1, 5), ver("Observation", "z", 1, 5))
    await put(store, ver("Patient", "b", 1, 5))
    assert keys(await everything(store)) == [
        ("Patient", "b", 1),
        ("Patient", "a", 1),
        ("Observation", "z", 1),
    ]


async def test_history_since_is_inclusive(four: Store) -> None:
    since = await four.history(HistoryQuery(since=ts(2)))
    assert keys(since) == [("Patient", "a", 2), ("Observation", "x", 1), ("Patient", "b", 1)]
    typed = await four.history(HistoryQuery(type="Patient", since=ts(3)))
    assert keys(typed) == [("Patient", "a", 2)]
    assert await four.history(HistoryQuery(since=ts(5))) == []


async def test_history_limit(four: Store) -> None:
    page = await four.history(HistoryQuery(limit=2))
    assert keys(page) == [("Patient", "a", 2), ("Observation", "x", 1)]
    assert len(await four.history(HistoryQuery(type="Patient", limit=1))) == 1
    assert await four.history(HistoryQuery(limit=0)) == []
    assert await four.history(HistoryQuery(at=(ts(0), ts(9)), limit=0)) == []


@pytest.fixture
async def window(store: Store) -> Store:
    """Resources around the window [ts(10), ts(20)), named after how they relate to it."""
    await put(store, ver("Patient", "gone", 1, 1))
    await put(store, ver("Patient", "gone", 2, 2, deleted=True))
    await put(store, ver("Patient", "changed", 1, 3))
    await put(store, ver("Patient", "changed", 2, 4))
    await put(store, ver("Patient", "dies", 1, 5))
    await put(store, ver("Patient", "dies", 2, 12, deleted=True))
    await put(store, ver("Patient", "start", 1, 10))
    await put(store, ver("Patient", "inside", 1, 11))
    await put(store, ver("Patient", "inside", 2, 13))
    await put(store, ver("Patient", "changed", 3, 15))
    await put(store, ver("Observation", "o", 1, 6))
    await put(store, ver("Patient", "end", 1, 20))
    await put(store, ver("Patient", "dies", 3, 21))
    return store


WINDOW_RESULT = [
    ("Patient", "changed", 3),
    ("Patient", "inside", 2),
    ("Patient", "inside", 1),
    ("Patient", "start", 1),
    ("Observation", "o", 1),
    ("Patient", "dies", 1),
    ("Patient", "changed", 2),
]


async def test_history_at_window(window: Store) -> None:
    # Left out: "gone" (deleted before the window), tombstones, "end" and "dies"/3 (written at
    # or after the end), "changed"/1 (superseded before the start).
    found = await window.history(HistoryQuery(at=(ts(10), ts(20))))
    assert keys(found) == WINDOW_RESULT
    assert all(not v.deleted for v in found)


async def test_history_at_scoped_and_combined(window: Store) -> None:
    typed = await window.history(HistoryQuery(type="Patient", at=(ts(10), ts(20))))
    assert keys(typed) == [k for k in WINDOW_RESULT if k[0] == "Patient"]
    instance = await window.history(HistoryQuery(type="Patient", id="changed", at=(ts(10), ts(20))))
    assert keys(instance) == [("Patient", "changed", 3), ("Patient", "changed", 2)]
    since = await window.history(HistoryQuery(since=ts(5), at=(ts(10), ts(20))))
    # "changed"/2 (ts 4) is the version current at the start but fails `since`; no older
    # version of it may take its place.
    assert keys(since) == [k for k in WINDOW_RESULT if k != ("Patient", "changed", 2)]
    limited = await window.history(HistoryQuery(at=(ts(10), ts(20)), limit=5))
    assert keys(limited) == WINDOW_RESULT[:5]


async def test_history_at_before_anything(window: Store) -> None:
    assert await window.history(HistoryQuery(at=(ts(0), ts(1)))) == []


async def page_through(
    store: Store, query: HistoryQuery, between: Callable[[int], Awaitable[None]]
) -> list[Version]:
    """Every page of `query`, following the cursor, awaiting `between(page_number)` in between."""
    seen: list[Version] = []
    cursor = None
    for page_number in range(100):
        page = await store.history(
            HistoryQuery(query.type, query.id, query.since, query.at, cursor, query.limit)
        )
        seen += page
        if len(page) < query.limit:
            return seen
        last = page[-1]
        # Round-trip the cursor through its text form, as a client's next-page link does.
        cursor = HistoryCursor.decode(HistoryCursor(last.last_updated, last.type, last.id).encode())
        await between(page_number)
    raise AssertionError("paging never ends: the cursor is ignored")


def kind(n: int) -> str:
    return "Patient" if n % 3 else "Observation"


@pytest.fixture
async def many(store: Store) -> Store:
    """Thirty resources over ten instants, so pages split runs of equal timestamps."""
    for n in range(30):
        await put(store, ver(kind(n), f"r{n:02d}", 1, n // 3 + 1))
    return store


async def test_history_paging_under_concurrent_writes(many: Store) -> None:
    before = await everything(many)
    clock = itertools.count(100)

    async def write(page_number: int) -> None:
        await put(many, ver(kind(page_number), f"r{page_number:02d}", 2, next(clock)))
        await put(many, ver("Patient", f"new{page_number}", 1, next(clock)))

    paged = await page_through(many, HistoryQuery(limit=7), write)
    assert paged == before
    assert len(paged) == 30


async def test_history_paging_by_type(many: Store) -> None:
    async def nothing(_: int) -> None:
        return None

    before = await many.history(HistoryQuery(type="Patient", limit=100))
    assert await page_through(many, HistoryQuery(type="Patient", limit=4), nothing) == before
    assert len(before) == 20


async def test_history_paging_through_window(window: Store) -> None:
    async def write(page_number: int) -> None:
        await put(window, ver("Patient", f"late{page_number}", 1, 30 + page_number))

    paged = await page_through(window, HistoryQuery(at=(ts(10), ts(20)), limit=2), write)
    assert keys(paged) == WINDOW_RESULT


# --- transactions ----------------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_transaction_rollback_leaves_nothing(store: Store) -> None:
    await put(store, ver("Patient", "old", 1, 1))
    await put(store, ver("Patient", "gone", 1, 2), ver("Patient", "gone", 2, 3, deleted=True))
    before = await everything(store)
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.put(ver("Patient", "new", 1, 4))
            await tx.put(ver("Patient", "old", 2, 5))
            await tx.put(ver("Patient", "gone", 3, 6))
            raise Boom
    assert await store.read("Patient", "new") is None
    assert await store.read("Patient", "old") == ver("Patient", "old", 1, 1)
    assert await store.read("Patient", "gone") == ver("Patient", "gone", 2, 3, deleted=True)
    assert await store.vread("Patient", "old", 2) is None
    assert await everything(store) == before


async def test_rollback_of_first_writes_leaves_store_empty(store: Store) -> None:
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.put(ver("Patient", "a", 1, 1))
            await tx.put(ver("Patient", "a", 2, 2))
            raise Boom
    assert await store.is_empty()
    assert await store.read("Patient", "a") is None


async def test_transaction_reads_its_own_writes(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.current("Patient", "a") is None
        await tx.put(ver("Patient", "a", 1, 1))
        assert await tx.current("Patient", "a") == ver("Patient", "a", 1, 1)
        await tx.put(ver("Patient", "a", 2, 2, deleted=True))
        assert await tx.current("Patient", "a") == ver("Patient", "a", 2, 2, deleted=True)
    assert await store.read("Patient", "a") == ver("Patient", "a", 2, 2, deleted=True)


async def test_conflict_inside_transaction_can_be_handled(store: Store) -> None:
    await put(store, ver("Patient", "a", 1, 1))
    async with store.transaction() as tx:
        with pytest.raises(VersionConflict):
            await tx.put(ver("Patient", "a", 1, 2))
        await tx.put(ver("Patient", "b", 1, 3))
    assert keys(await everything(store)) == [("Patient", "b", 1), ("Patient", "a", 1)]


async def test_concurrent_puts_make_consecutive_versions(store: Store) -> None:
    await put(store, ver("Patient", "hot", 1, 0))
    clock = itertools.count(1)

    async def bump() -> None:
        while True:
            try:
                async with store.transaction() as tx:
                    current = await tx.current("Patient", "hot")
                    assert current is not None
                    await tx.put(ver("Patient", "hot", current.version + 1, next(clock)))
                return
            except VersionConflict:
                continue

    await asyncio.gather(*(bump() for _ in range(50)))
    found = await store.history(HistoryQuery(type="Patient", id="hot", limit=100))
    assert sorted(v.version for v in found) == list(range(1, 52))
    assert await store.read("Patient", "hot") == found[0]
    assert found[0].version == 51
    for n in range(1, 52):
        assert await store.vread("Patient", "hot", n) is not None


# --- Mongo engine ----------------------------------------------------------------------------


@pytest.fixture
async def undo_store() -> AsyncIterator[MongoStore]:
    """The Mongo engine on its undo-log path, whatever the test server could do."""
    store = MongoStore(AsyncMongoMockClient(), "fhir_test", transactions=False)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def mongo_stores(engine: str, request: pytest.FixtureRequest) -> list[MongoStore]:
    """The Mongo `store` (a real server's transactions when configured) and the undo path."""
    if engine != "mongo":
        pytest.skip("Mongo engine only")
    return [request.getfixturevalue("store"), request.getfixturevalue("undo_store")]


def fail_history_insert(monkeypatch: pytest.MonkeyPatch, store: MongoStore, nth: int) -> None:
    history = store._history
    real = history.insert_one
    calls = itertools.count(1)

    async def insert_one(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == nth:
            raise AutoReconnect("injected connection loss")
        return await real(*args, **kwargs)

    monkeypatch.setattr(history, "insert_one", insert_one)


@pytest.mark.parametrize("nth", [1, 2, 3])
async def test_engine_failure_mid_transaction_leaves_nothing(
    mongo_stores: list[MongoStore], monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    for store in mongo_stores:
        await put(store, ver("Patient", "old", 1, 1))
        before = await everything(store)
        fail_history_insert(monkeypatch, store, nth)
        with pytest.raises(StorageError):
            async with store.transaction() as tx:
                await tx.put(ver("Patient", "new", 1, 2))
                await tx.put(ver("Patient", "old", 2, 3))
                await tx.put(ver("Patient", "new", 2, 4, deleted=True))
        monkeypatch.undo()
        assert await store.read("Patient", "new") is None
        assert await store.read("Patient", "old") == ver("Patient", "old", 1, 1)
        assert await everything(store) == before


async def test_undo_restores_current_documents_exactly(undo_store: MongoStore) -> None:
    await put(undo_store, ver("Patient", "a", 1, 1))
    patients = undo_store._db["Patient"]
    before = await patients.find_one({"_id": "a"})
    with pytest.raises(Boom):
        async with undo_store.transaction() as tx:
            await tx.put(ver("Patient", "a", 2, 2))
            await tx.put(ver("Patient", "a", 3, 3, deleted=True))
            raise Boom
    assert await patients.find_one({"_id": "a"}) == before
    assert before["r"] == ver("Patient", "a", 1, 1).body


async def test_undo_keeps_a_version_another_writer_built_on(undo_store: MongoStore) -> None:
    await put(undo_store, ver("Patient", "a", 1, 1))
    with pytest.raises(Boom):
        async with undo_store.transaction() as tx:
            await tx.put(ver("Patient", "a", 2, 2))
            # Without a server transaction the write is already visible to others.
            await put(undo_store, ver("Patient", "a", 3, 3))
            raise Boom
    assert await undo_store.read("Patient", "a") == ver("Patient", "a", 3, 3)
    assert [v.version for v in await everything(undo_store)] == [3, 2, 1]


async def test_transactions_detected_from_hello() -> None:
    class ReplicaSet(AsyncMongoMockClient):
        @property
        def admin(self) -> Any:
            class Admin:
                async def command(self, name: str) -> dict[str, Any]:
                    return {"setName": "rs0", "ok": 1.0}

            return Admin()

    standalone = MongoStore(AsyncMongoMockClient(), "fhir_test")
    replica_set = MongoStore(ReplicaSet(), "fhir_test")
    await standalone.open()
    await replica_set.open()
    assert standalone._transactions is False
    assert replica_set._transactions is True


async def test_mock_raises_pymongo_duplicate_key() -> None:
    collection = AsyncMongoMockClient()["db"]["c"]
    await collection.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        await collection.insert_one({"_id": 1})


# --------------------------------------------------------------------------------------------
# Settings: compare-and-set, removal, listing by prefix


async def test_settings_swap_remove_and_list_by_prefix(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.swap_setting("auth.account.ana", None, {"role": "admin"})
        await tx.swap_setting("auth.account.bo", None, {"role": "patient"})
        await tx.swap_setting("auth.client.c1", None, {"scopes": "system/*.rs"})
        await tx.swap_setting("auth.account%", None, {"role": "not an account"})
    assert await store.list_settings("auth.account.") == {
        "auth.account.ana": {"role": "admin"}, "auth.account.bo": {"role": "patient"}}
    assert list(await store.list_settings("auth.")) == [
        "auth.account%", "auth.account.ana", "auth.account.bo", "auth.client.c1"]
    assert await store.list_settings("nothing.") == {}

    # A stale expectation changes nothing, whether it sets or removes.
    for value in ({"role": "practitioner"}, None):
        with pytest.raises(VersionConflict):
            async with store.transaction() as tx:
                await tx.swap_setting("auth.account.ana", {"role": "patient"}, value)
    with pytest.raises(VersionConflict):
        async with store.transaction() as tx:
            await tx.swap_setting("auth.account.new", {"role": "admin"}, None)
    assert await store.get_setting("auth.account.ana") == {"role": "admin"}

    async with store.transaction() as tx:
        await tx.swap_setting("auth.account.ana", {"role": "admin"}, None)
        assert await tx.get_setting("auth.account.ana") is None
    assert await store.get_setting("auth.account.ana") is None
    assert list(await store.list_settings("auth.account.")) == ["auth.account.bo"]


async def test_removed_setting_comes_back_when_the_transaction_fails(store: Store) -> None:
    await store.put_setting("auth.refresh.t1", {"sub": "ana"})
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.swap_setting("auth.refresh.t1", {"sub": "ana"}, None)
            raise RuntimeError("the rest of the write failed")
    assert await store.get_setting("auth.refresh.t1") == {"sub": "ana"}


async def test_sqlite_lists_an_append_only_version_once_whatever_history_holds(
    tmp_path: Any,
) -> None:
    """AuditEvents live in `resources` alone; a database written before that also has their
    copies in `history`, and history listings still show each version once."""
    from fhir_server.search.model import EMPTY_INDEX
    from fhir_server.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "old.sqlite")
    await store.open()
    try:
        event = ver("AuditEvent", "e1", 1, 1)
        async with store.transaction() as tx:
            await tx.insert([(event, EMPTY_INDEX)])
            await tx.put(ver("Patient", "p1", 1, 2))
        writer = store._writer
        assert writer is not None
        writer.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)", (
            event.type, event.id, event.version, event.last_updated, event.method, event.body))
        assert keys(await everything(store)) == [("Patient", "p1", 1), ("AuditEvent", "e1", 1)]
        typed = await store.history(HistoryQuery(type="AuditEvent"))
        assert keys(typed) == [("AuditEvent", "e1", 1)]
        assert await store.vread("AuditEvent", "e1", 1) == event
    finally:
        await store.close()
