"""The append-only hash chain the AuditEvents form, and its verification.

Each stored AuditEvent carries, in the `audit-chain` extension, its place in the chain
(`sequence`, from 1) and the SHA-256 of its predecessor's canonical JSON (`previous`; the first
event's predecessor is 64 zeros). The canonical JSON of an event is the stored resource with its
keys sorted, serialised compactly. The head of the chain (last sequence, its hash, its
lastUpdated) is a setting advanced by compare-and-set in the same transaction as the events, so
two writers never extend the chain from the same event, and an event removed from the end is
noticed too. Events are sealed in order of `meta.lastUpdated`, which is strictly increasing
along the chain, so a walk by `_lastUpdated` visits them in chain order.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from fhir_server.fhirtime import clock
from fhir_server.search.indexer import index_resource
from fhir_server.search.model import Predicate, SortKey
from fhir_server.search.registry import Registry
from fhir_server.store.base import SearchQuery, Store, Transaction, Version

if TYPE_CHECKING:
    from fhir_server.audit.index import EventIndexer

Resource = dict[str, Any]

CHAIN_URL = "https://fhir-server.dev/StructureDefinition/audit-chain"
HEAD_KEY = "audit.head"
GENESIS = "0" * 64
PAGE = 500


def canonical(resource: Resource) -> bytes:
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def chain_hash(resource: Resource) -> str:
    return hashlib.sha256(canonical(resource)).hexdigest()


def _chain_extension(sequence: int, previous: str) -> Resource:
    return {
        "url": CHAIN_URL,
        "extension": [
            {"url": "sequence", "valueDecimal": sequence},
            {"url": "previous", "valueString": previous},
        ],
    }


_PLACED = frozenset(("resourceType", "id", "meta", "extension"))


def _is_link(extension: Any) -> bool:
    return isinstance(extension, dict) and extension.get("url") == CHAIN_URL


def chain_link(resource: Resource) -> tuple[int, str] | None:
    """(sequence, previous hash) from an event's chain extension, or None without one."""
    for ext in resource.get("extension") or ():
        if _is_link(ext):
            parts = {e.get("url"): e for e in ext.get("extension") or () if isinstance(e, dict)}
            sequence = parts.get("sequence", {}).get("valueDecimal")
            previous = parts.get("previous", {}).get("valueString")
            if isinstance(sequence, int) and isinstance(previous, str):
                return sequence, previous
    return None


class Unsealed(NamedTuple):
    """An event waiting to be sealed into the chain."""

    event: Resource
    ours: bool
    """Built by this server (`events.py`): indexed directly, without FHIRPath
    (`audit/index.py`); a client's event is indexed by its parameters' expressions."""


async def seal(
    tx: Transaction, events: list[Unsealed], registry: Registry, indexer: EventIndexer
) -> list[Version]:
    """Append `events` (each with its id) to the chain inside `tx`: set their meta and chain
    extension, store them with their search index, and advance the head. Raises
    VersionConflict when another transaction advanced the head first (nothing is kept then:
    the caller's transaction rolls back and may retry)."""
    head = await tx.get_setting(HEAD_KEY)
    sequence, previous, at = (head["seq"], head["hash"], head["at"]) if head else (0, GENESIS, None)
    versions, indexed = [], []
    for event, ours in events:
        sequence += 1
        # Stamped here, in chain order, so a walk by `_lastUpdated` is a walk along the chain.
        at = clock.next(at)
        # A client's own chain extension is replaced: only the server places events.
        others = [e for e in event.get("extension") or () if not _is_link(e)]
        meta = {**(event.get("meta") or {}), "versionId": "1", "lastUpdated": at}
        rest = {k: v for k, v in event.items() if k not in _PLACED}
        if ours:
            # Recorded when it entered the chain: at its lastUpdated, which is how the SQLite
            # engine searches it without index rows of its own (store/sqlite_terms.py).
            rest["recorded"] = at
        stored = {
            "resourceType": "AuditEvent",
            "id": event["id"],
            "meta": meta,
            "extension": [*others, _chain_extension(sequence, previous)],
            **rest,
        }
        previous = chain_hash(stored)
        version = Version("AuditEvent", stored["id"], 1, at, "POST", orjson.dumps(stored))
        indexed.append((version, indexer(stored) if ours else index_resource(stored, registry)))
        versions.append(version)
    await tx.insert(indexed)
    await tx.swap_setting(HEAD_KEY, head, {"seq": sequence, "hash": previous, "at": at})
    return versions


async def walk(store: Store, where: Predicate | None = None) -> AsyncIterator[Version]:
    """Every stored AuditEvent (matching `where`), oldest first: in chain order."""
    after = None
    while True:
        query = SearchQuery("AuditEvent", where, (SortKey("_lastUpdated"),), PAGE, after)
        page = await store.search(query)
        for match in page:
            yield match.version
        if len(page) < PAGE:
            return
        after = page[-1].position


@dataclass(frozen=True, slots=True)
class Verdict:
    checked: int
    broken: str | None = None
    """What is wrong at the first broken link; None when the chain is intact."""

    @property
    def intact(self) -> bool:
        return self.broken is None


async def verify(store: Store) -> Verdict:
    """Walk the chain from its first event and report the first link that does not hold."""
    expected_sequence, expected_previous, checked = 1, GENESIS, 0
    async for v in walk(store):
        where = f"AuditEvent/{v.id}"
        try:
            resource = v.resource()
        except (ValueError, orjson.JSONDecodeError):
            return Verdict(checked, f"{where}: the stored event is not valid JSON")
        link = chain_link(resource)
        if link is None:
            return Verdict(checked, f"{where}: the event has no chain link (sequence, previous)")
        sequence, previous = link
        if resource.get("id") != v.id:
            found = resource.get("id")
            return Verdict(checked, f"{where}: the stored event says its id is {found!r}")
        if sequence != expected_sequence:
            what = "missing" if sequence > expected_sequence else "out of order"
            return Verdict(
                checked,
                f"{where}: has sequence {sequence} where {expected_sequence} was expected "
                f"(an event is {what})",
            )
        if previous != expected_previous:
            return Verdict(
                checked,
                f"{where} (sequence {sequence}): the previous event's hash does not match; "
                f"event {sequence - 1} was altered, replaced or removed",
            )
        expected_previous = chain_hash(resource)
        expected_sequence += 1
        checked += 1
    head = await store.get_setting(HEAD_KEY)
    last = (head or {}).get("seq", 0)
    if last != checked:
        return Verdict(
            checked, f"the chain head says {last} events were written, {checked} are stored "
            f"(events after sequence {checked} were removed)"
        )
    if head and head.get("hash") != expected_previous:
        return Verdict(
            checked, f"the last event (sequence {checked}) does not match the chain head"
        )
    return Verdict(checked)
