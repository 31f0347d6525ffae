"""Recording AuditEvents: in the transaction of the change they describe, or on their own.

- A write notes its event in the request's `AuditScope`; `transaction(ctx)` seals the noted
  events into the chain inside the same storage transaction, just before it commits, so a
  change never exists without its record (and a rolled-back change leaves none).
- Everything else (reads, searches, history, operations, refusals and failures) is recorded by
  `AuditScope.finish` before the response is sent. Those records are group-committed: the
  flusher lets requests already under way add theirs first, and events that arrive while a
  commit is running wait for the next one, so a busy server writes many events per
  transaction, while each request still waits until its own event is stored. A
  record that cannot be stored fails the request with 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhir_server import errors
from fhir_server.audit import chain
from fhir_server.audit.chain import Unsealed
from fhir_server.audit.events import (
    RESOURCE_ROLE,
    SYSTEM_OBJECT,
    WRITE_SUBTYPES,
    Agent,
    PatientLinks,
    build_event,
    patient_entity,
    query_entity,
    resource_entity,
    security_event,
)
from fhir_server.audit.index import EventIndexer
from fhir_server.ids import new_id
from fhir_server.search.model import ResourceIndex
from fhir_server.search.registry import Registry
from fhir_server.store.base import StorageError, Store, Transaction, Version, VersionConflict

if TYPE_CHECKING:
    from fhir_server.context import RequestContext

log = logging.getLogger("fhir_server.audit")
Resource = dict[str, Any]
SEAL_ATTEMPTS = 100
GATHER_PATIENCE = 1
"""Event-loop turns without a new event after which a batch is committed."""
GATHER_TURNS = 16
"""At most this many turns of gathering before a commit."""


def unrecorded(exc: StorageError) -> errors.FhirError:
    return errors.unavailable(
        f"The audit record of this request could not be stored, so it was not answered: {exc}"
    )


class AuditTrail:
    """The server's audit log: builds events and appends them to the chain."""

    def __init__(
        self, store: Store, registry: Registry, source: str = "fhir-server", enabled: bool = True
    ) -> None:
        self.store = store
        self.registry = registry
        self.source = source
        self.enabled = enabled
        """Whether interactions are recorded (AuditEvents that clients create are chained
        either way)."""
        self.patients = PatientLinks(registry)
        self.indexer = EventIndexer(registry)
        self._queue: list[tuple[Unsealed, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Seals of this process take turns, so they never race each other for the head (only
        # other processes can, and the head's compare-and-set catches them).
        self._sealing = asyncio.Lock()

    def scope(self, agent: Agent) -> AuditScope:
        return AuditScope(self, agent)

    async def seal(self, tx: Transaction, events: list[Unsealed]) -> list[Version]:
        async with self._sealing:
            return await chain.seal(tx, events, self.registry, self.indexer)

    async def record_security(
        self, kind: str, agent: Agent, status: int, description: str | None = None
    ) -> None:
        """Record an authentication event (`events.SECURITY_SUBTYPES`); 503 if it cannot be
        stored, exactly as for an interaction."""
        if not self.enabled:
            return
        event = security_event(kind, agent, self.source, status, description)
        event["id"] = new_id()
        try:
            await self.record(event)
        except StorageError as exc:
            raise unrecorded(exc) from None

    async def record(self, event: Resource) -> None:
        """Store `event` in a transaction of its own (shared with whatever else is waiting);
        returns once it is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((Unsealed(event, ours=True), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                await self._gather()
                batch, self._queue = self._queue, []
                failure: Exception | None = None
                try:
                    await self._commit([event for event, _ in batch])
                except (StorageError, VersionConflict) as exc:
                    log.error("audit events could not be stored: %s", exc)
                    failure = exc
                for _, future in batch:
                    if future.done():
                        continue  # its request went away; the event is stored regardless
                    if failure is None:
                        future.set_result(None)
                    else:
                        future.set_exception(StorageError(str(failure)))
        finally:
            self._flusher = None

    async def _gather(self) -> None:
        """Let the requests already under way reach their record before committing: a commit
        costs the pages it writes (one per index it touches) more than the events in them.
        One idle turn is patience enough: longer waits put every connection into the same
        batch, and then they all wait for its commit together while the event loop idles
        (the SQLite engine commits a large batch on a worker thread). An idle server loses an
        event-loop turn or two, microseconds."""
        seen, idle = len(self._queue), 0
        for _ in range(GATHER_TURNS):
            await asyncio.sleep(0)
            idle = idle + 1 if len(self._queue) == seen else 0
            seen = len(self._queue)
            if idle >= GATHER_PATIENCE:
                return

    async def _commit(self, events: list[Unsealed]) -> None:
        for _ in range(SEAL_ATTEMPTS):
            try:
                async with self.store.transaction() as tx:
                    await self.seal(tx, events)
                return
            except VersionConflict:
                continue  # another process extended the chain first: seal again on its head
        raise StorageError("the audit chain is being extended by too many writers at once")


@dataclass(slots=True)
class AuditScope:
    """What one interaction (a REST request, or one entry of a bundle) has to say."""

    trail: AuditTrail
    agent: Agent
    pending: list[Unsealed] = field(default_factory=list)
    """Events to seal in the storage transaction now open (shared with the entries of a
    transaction bundle)."""
    subtype: str | None = None
    """The interaction, when the handler knows better than its route (batch/transaction)."""
    query: str | None = None
    noted: bool = False
    """This interaction's event is in `pending`."""
    recorded: bool = False
    """This interaction's event is committed."""
    sealed: dict[str, Version] = field(default_factory=dict)
    """AuditEvents created through the API, as sealed, by id."""
    _entities: list[Resource] = field(default_factory=list)
    _patients: dict[str, None] = field(default_factory=dict)

    def entry(self, shared: bool) -> AuditScope:
        """The scope of one bundle entry; `shared`: its events join this scope's transaction."""
        return AuditScope(
            self.trail, self.agent, self.pending if shared else [], sealed=self.sealed
        )

    def saw(self, v: Version) -> None:
        """The interaction returned or acted on this version."""
        if not self.trail.enabled:
            return
        self._entities.append(resource_entity(v))
        for patient in self.trail.patients.of_version(v):
            self._patients.setdefault(patient)

    def target(self, reference: str) -> None:
        """The resource the request names (`Type/id`), for a record that has no version of
        it to name (a refused or failed request)."""
        if not self._entities:
            self._entities.append(
                {"what": {"reference": reference}, "type": SYSTEM_OBJECT, "role": RESOURCE_ROLE}
            )

    def disclosed(self, versions: Iterable[Version]) -> None:
        """The interaction returned these (search, history): their Patients are recorded."""
        if not self.trail.enabled:
            return
        of_version = self.trail.patients.of_version
        for v in versions:
            for patient in of_version(v):
                self._patients.setdefault(patient)

    def wrote(self, v: Version, index: ResourceIndex | None, before: Version | None) -> None:
        """A write stored `v` (with `index`; a deletion has none, `before` is what it
        removed): its event joins the open transaction."""
        if not self.trail.enabled:
            return
        patients = self.trail.patients
        if index is not None:
            found = patients.of_index(v.type, v.id, index)
        else:
            found = patients.of_version(before) if before is not None else []
        for patient in found:
            self._patients.setdefault(patient)
        self._entities.append(resource_entity(v))
        self.pending.append(Unsealed(self.event(WRITE_SUBTYPES[v.method], 200), ours=True))
        self.noted = True

    def event(self, subtype: str, status: int, description: str | None = None) -> Resource:
        entities = list(self._entities)
        if self.query is not None:
            entities.append(query_entity(self.query))
        mentioned = {e["what"]["reference"] for e in entities if "what" in e}
        entities += [patient_entity(p) for p in self._patients if p not in mentioned]
        event = build_event(subtype, self.agent, self.trail.source, status, description, entities)
        event["id"] = new_id()
        return event

    async def finish(
        self, subtype: str, status: int, description: str | None = None,
        tx: Transaction | None = None,
    ) -> None:
        """Record this interaction unless a write already did: into `tx` when given (sealed at
        its commit), else on its own before returning (503 when it cannot be stored)."""
        if self.noted or self.recorded or not self.trail.enabled or subtype == "capabilities":
            return
        event = self.event(self.subtype or subtype, status, description)
        if tx is not None:
            self.pending.append(Unsealed(event, ours=True))
            self.noted = True
            return
        try:
            await self.trail.record(event)
        except StorageError as exc:
            raise unrecorded(exc) from None
        self.recorded = True


@asynccontextmanager
async def transaction(ctx: RequestContext) -> AsyncIterator[Transaction]:
    """`ctx.store.transaction()` that seals the AuditEvents noted in it into the chain right
    before it commits. A rolled-back attempt takes its noted events with it."""
    scope = ctx.audit
    if scope is None:
        async with ctx.store.transaction() as tx:
            yield tx
        return
    mark, noted = len(scope.pending), scope.noted
    try:
        async with ctx.store.transaction() as tx:
            yield tx
            if scope.pending:
                for v in await scope.trail.seal(tx, scope.pending):
                    scope.sealed[v.id] = v
    except BaseException:
        del scope.pending[mark:]
        scope.noted = noted
        raise
    scope.pending.clear()
    if scope.noted:
        scope.recorded = True
