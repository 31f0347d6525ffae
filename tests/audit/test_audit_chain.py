"""The audit trail's hash chain: intact after real traffic, and every kind of tampering with
the stored events — editing, deleting, reordering, truncating — is detected, on both engines.
Also: a request whose record cannot be stored is answered 503 and changes nothing, and the
`fhir-server audit verify | export` commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from fhir_server.app import create_app
from fhir_server.audit.chain import CHAIN_URL, verify
from fhir_server.cli import app as cli
from fhir_server.config import Settings
from fhir_server.search.model import ResourceIndex
from fhir_server.store.base import DelegatingStore, StorageError, Store, Transaction, Version
from tests.api.test_bundles import FailingTransaction
from tests.conftest import BASE, audit_events, data_history, drop_store, make_store, settings_for

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@asynccontextmanager
async def served(
    engine: str, tmp_path: Path, wrap: type[DelegatingStore] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Store]]:
    store, handle = await make_store(engine, tmp_path)
    used = wrap(store) if wrap else store
    app = create_app(settings_for(tmp_path), used)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client, store
    await drop_store(handle)


async def traffic(client: httpx.AsyncClient) -> None:
    """A little of everything: writes, reads, a search, a failure."""
    p = (await client.post("/Patient", json={"resourceType": "Patient", "active": True},
                           headers=FHIR_JSON)).json()
    await client.get(f"/Patient/{p['id']}")
    await client.get("/Patient", params={"active": "true"})
    await client.put(f"/Patient/{p['id']}", json={**p, "active": False}, headers=FHIR_JSON)
    await client.get("/Patient/unknown")
    await client.get(f"/Patient/{p['id']}/_history")


# --- tampering, directly in each engine -----------------------------------------------------


async def stored_events(store: Store) -> list[dict[str, Any]]:
    from fhir_server.audit.chain import walk

    return [v.resource() async for v in walk(store)]


async def overwrite(store: Store, id_: str, body: dict[str, Any] | None) -> None:
    """Replace (or, with None, delete) the stored current copy of AuditEvent/id_, bypassing
    the server, as someone with access to the database could."""
    raw = None if body is None else orjson.dumps(body)
    if store.name == "sqlite":
        conn = store._writer  # type: ignore[attr-defined]
        if raw is None:
            conn.execute("DELETE FROM resources WHERE type = 'AuditEvent' AND id = ?", (id_,))
        else:
            conn.execute("UPDATE resources SET body = ? WHERE type = 'AuditEvent' AND id = ?",
                         (raw, id_))
        conn.commit()
        return
    collection = store._db["AuditEvent"]  # type: ignore[attr-defined]
    if raw is None:
        await collection.delete_one({"_id": id_})
    else:
        await collection.update_one({"_id": id_}, {"$set": {"r": raw}})


async def test_chain_is_intact_after_traffic(engine: str, tmp_path: Path) -> None:
    async with served(engine, tmp_path) as (client, store):
        await traffic(client)
        events = await stored_events(store)
        verdict = await verify(store)
        assert verdict.intact, verdict.broken
        assert verdict.checked == len(events) >= 6
        links = [next(e for e in ev["extension"] if e["url"] == CHAIN_URL) for ev in events]
        assert [x["extension"][0]["valueDecimal"] for x in links] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("position", ["first", "middle", "last"])
async def test_an_edited_event_is_detected(engine: str, tmp_path: Path, position: str) -> None:
    async with served(engine, tmp_path) as (client, store):
        await traffic(client)
        events = await stored_events(store)
        index = {"first": 0, "middle": len(events) // 2, "last": len(events) - 1}[position]
        forged = {**events[index], "outcome": "0", "outcomeDesc": "nothing happened"}
        if forged == events[index]:
            forged["action"] = "R" if events[index]["action"] != "R" else "E"
        await overwrite(store, events[index]["id"], forged)
        verdict = await verify(store)
        assert not verdict.intact
        assert verdict.checked == index + 1  # the edited event is found out by its successor
        assert ("chain head" in str(verdict.broken)) == (position == "last")


async def test_a_deleted_event_is_detected(engine: str, tmp_path: Path) -> None:
    async with served(engine, tmp_path) as (client, store):
        await traffic(client)
        events = await stored_events(store)
        await overwrite(store, events[2]["id"], None)
        verdict = await verify(store)
        assert not verdict.intact and verdict.checked == 2
        assert "sequence 4 where 3 was expected" in str(verdict.broken)


async def test_a_removed_tail_is_detected(engine: str, tmp_path: Path) -> None:
    async with served(engine, tmp_path) as (client, store):
        await traffic(client)
        events = await stored_events(store)
        await overwrite(store, events[-1]["id"], None)
        verdict = await verify(store)
        assert not verdict.intact and verdict.checked == len(events) - 1
        assert "removed" in str(verdict.broken)


async def test_reordered_events_are_detected(engine: str, tmp_path: Path) -> None:
    async with served(engine, tmp_path) as (client, store):
        await traffic(client)
        events = await stored_events(store)
        first, second = events[1], events[2]
        # Swap their places in the chain: each takes the other's time and chain link.
        swapped = [
            {**first, "meta": second["meta"], "extension": second["extension"]},
            {**second, "meta": first["meta"], "extension": first["extension"]},
        ]
        await overwrite(store, first["id"], swapped[0])
        await overwrite(store, second["id"], swapped[1])
        verdict = await verify(store)
        assert not verdict.intact and verdict.checked == 1


async def test_swapped_bodies_are_detected(engine: str, tmp_path: Path) -> None:
    async with served(engine, tmp_path) as (client, store):
        await traffic(client)
        events = await stored_events(store)
        await overwrite(store, events[1]["id"], events[3])
        await overwrite(store, events[3]["id"], events[1])
        verdict = await verify(store)
        assert not verdict.intact and verdict.checked == 1


# --- a record that cannot be stored ---------------------------------------------------------


class AuditFailingStore(DelegatingStore):
    """Once `armed`, every put of an AuditEvent fails: the audit trail cannot be written."""

    armed = False

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        async with self.inner.transaction() as inner:
            yield RefusingTransaction(self, inner)


class RefusingTransaction(FailingTransaction):
    def __init__(self, store: AuditFailingStore, tx: Transaction) -> None:
        self._store, self._tx = store, tx  # type: ignore[assignment]

    async def put(self, version: Version, index: ResourceIndex | None = None) -> None:
        if version.type == "AuditEvent" and self._store.armed:  # type: ignore[attr-defined]
            raise StorageError("injected: the audit store is full")
        await self._tx.put(version, index)


async def test_unrecordable_requests_get_503_and_change_nothing(
    engine: str, tmp_path: Path
) -> None:
    async with served(engine, tmp_path, AuditFailingStore) as (client, _):
        await client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"},
                         headers=FHIR_JSON)
        AuditFailingStore.armed = True
        try:
            await refused_while_unrecordable(client)
        finally:
            AuditFailingStore.armed = False
        history = await data_history(client)
        assert [e["fullUrl"].rsplit("/", 1)[1] for e in history] == ["p1"]


async def refused_while_unrecordable(client: httpx.AsyncClient) -> None:
    read = await client.get("/Patient/p1")
    assert read.status_code == 503, read.text
    assert read.json()["resourceType"] == "OperationOutcome"
    assert "audit" in read.text and '"id":"p1"' not in read.text
    created = await client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert created.status_code == 503, created.text
    search = await client.get("/Patient")
    assert search.status_code == 503


# --- command line ---------------------------------------------------------------------------


async def recorded_traffic(data_dir: Path) -> list[dict[str, Any]]:
    app = create_app(Settings(data_dir=data_dir, seed=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            await traffic(client)
            return await audit_events(client)


async def forge(data_dir: Path, event: dict[str, Any]) -> None:
    app = create_app(Settings(data_dir=data_dir, seed=False))
    async with app.router.lifespan_context(app):
        await overwrite(app.state.store, event["id"], event)


def test_cli_verify_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MONGODB_URL", "DATA_DIR", "SEED"):
        monkeypatch.delenv(f"FHIR_SERVER_{name}", raising=False)
    data_dir = tmp_path / "data"
    events = asyncio.run(recorded_traffic(data_dir))
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", "--data-dir", str(data_dir)])
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output
    out = tmp_path / "audit.ndjson"
    exported = runner.invoke(cli, ["audit", "export", "--data-dir", str(data_dir), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # Every event, in chain order (the search above was recorded after it answered).
    assert [e["id"] for e in lines[: len(events)]] == [e["id"] for e in events]
    assert len(lines) == len(events) + 1
    since = lines[3]["meta"]["lastUpdated"]
    later = runner.invoke(cli, ["audit", "export", "--data-dir", str(data_dir), "-o", str(out),
                                "--since", since])
    assert later.exit_code == 0, later.output
    assert [orjson.loads(x)["id"] for x in out.read_bytes().splitlines()] == [
        e["id"] for e in lines[3:]
    ]
    asyncio.run(forge(data_dir, {**lines[1], "outcome": "8"}))
    broken = runner.invoke(cli, ["audit", "verify", "--data-dir", str(data_dir)])
    assert broken.exit_code == 1, broken.output
    assert "broken" in broken.output
