"""The narrow storage interface both engines implement.

Engines know nothing of FHIR semantics: they keep versions of JSON documents keyed by
(type, id, version), the current copy of each, and a history ordered by time. The interaction
layer decides version numbers and timestamps; an engine only guarantees that a version is
written atomically with the current copy, and that `put` fails with `VersionConflict` when
another writer got there first (compare-and-set on the version number).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_server.search.model import Predicate, ResourceIndex, SortKey, SortValue


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a resource, or the tombstone a delete leaves (`body is None`).

    `last_updated` is a FHIR instant in UTC with a fixed width
    (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), so comparing the strings compares the times. `body` is the
    serialized resource with `meta.versionId`/`meta.lastUpdated` already set, so reads can send
    it as it is, without parsing.
    """

    type: str
    id: str
    version: int
    last_updated: str
    method: str
    body: bytes | None

    @property
    def deleted(self) -> bool:
        return self.body is None

    def resource(self) -> dict[str, Any]:
        if self.body is None:
            raise ValueError(f"{self.type}/{self.id} version {self.version} is a deletion")
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Keyset position in a history listing: everything strictly older than this entry."""

    last_updated: str
    type: str
    id: str

    def encode(self) -> str:
        return f"{self.last_updated}|{self.type}|{self.id}"

    @classmethod
    def decode(cls, text: str) -> HistoryCursor:
        parts = text.split("|")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"not a history cursor: {text!r}")
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which versions a history listing returns, newest first.

    - `type`/`id` narrow to a type or an instance (None: system level).
    - `since`: versions with last_updated >= since.
    - `at`: (start, end) — versions that were the current, non-deleted version at some moment
      in [start, end): those written inside the window plus, per resource, the one current at
      `start` (the latest written at or before it). Deletion tombstones are left out.
    - `after`: keyset cursor; only entries that sort after it (older than it).
    - `limit`: page size.

    Order: last_updated descending, then type and id descending (unique, so paging is stable).
    """

    type: str | None = None
    id: str | None = None
    since: str | None = None
    at: tuple[str, str] | None = None
    after: HistoryCursor | None = None
    limit: int = 50


APPEND_ONLY_TYPES = frozenset({"AuditEvent"})
"""Types whose resources are created once and never updated or deleted (the interactions refuse
it), so an engine may keep their only version without a separate history copy."""


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Current, non-deleted resources of one type matching `where`, in `sort` order then by id.

    `after` is a keyset position (the sort values and the id of the last resource of the
    previous page): only resources after it are returned, so pages neither skip nor repeat
    while other writes happen. A missing sort value sorts first ascending, last descending.
    With `backwards`, the `limit` resources just before `after` are returned instead (still in
    sort order): the previous page.
    """

    type: str
    where: Predicate | None = None
    sort: tuple[SortKey, ...] = ()
    limit: int = 50
    after: tuple[SortValue, ...] | None = None
    backwards: bool = False

    def directions(self) -> list[bool]:
        """Per sort key, whether to scan it descending (flipped when going backwards); the id
        tie-break scans descending exactly when going backwards."""
        return [k.descending != self.backwards for k in self.sort]


@dataclass(frozen=True, slots=True)
class Match:
    version: Version
    position: tuple[SortValue, ...]
    """The keyset position of this resource: its sort values, then its id."""


class VersionConflict(Exception):
    """`put` found a current version other than the one the new version follows."""

    def __init__(self, type_: str, id_: str, found: int) -> None:
        super().__init__(f"{type_}/{id_}: current version is {found}")
        self.found = found


class StorageError(Exception):
    """The engine failed (I/O, lost connection, ...). Nothing of the failed write remains."""


class LockTimeout(StorageError):
    """`Transaction.lock` waited its bounded time and another transaction still holds the lock."""


class Transaction(ABC):
    """Writes that commit together. Reads through it see its own uncommitted writes."""

    @abstractmethod
    async def current(self, type_: str, id_: str) -> Version | None:
        """The current version (a tombstone if deleted), or None if the resource never existed."""

    @abstractmethod
    async def put(self, version: Version, index: ResourceIndex | None = None) -> None:
        """Store `version` as the new current version and append it to the history, replacing
        the resource's search index with `index` (a deletion has none).

        The current version must be `version.version - 1` (0: the resource does not exist yet);
        otherwise raise VersionConflict and write nothing.
        """

    async def insert(self, new: list[tuple[Version, ResourceIndex]]) -> None:
        """`put` for many resources that cannot exist yet (each at version 1, with a fresh
        id), which an engine may write in bulk. Raises VersionConflict if one does exist."""
        for version, index in new:
            await self.put(version, index)

    @abstractmethod
    async def search(self, query: SearchQuery) -> list[Match]:
        """`Store.search`, seeing this transaction's own writes (conditional interactions,
        conditional references and searches inside a transaction bundle)."""

    @abstractmethod
    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        """`Store.count`, seeing this transaction's own writes."""

    @abstractmethod
    async def get_setting(self, key: str) -> Any:
        """`Store.get_setting`, seeing this transaction's own writes."""

    @abstractmethod
    async def swap_setting(self, key: str, expected: Any, value: Any) -> None:
        """Set `key` to `value` if its value is `expected` now (None: it has none yet; a
        `value` of None removes it); otherwise raise VersionConflict and change nothing. The
        audit trail advances the head of its hash chain this way, so two transactions never
        extend it from the same event.
        """

    async def lock(self, key: str) -> None:
        """Hold an exclusive lock named `key` until the transaction ends (commit or rollback).

        Conditional interactions lock their criteria (`Type?normalised-query`) before they
        search, so two of them with the same criteria cannot both see "no match" and both
        create. Engines whose transactions are already serialised (SQLite: one writer holds
        the write lock for the whole block) need do nothing. Raises StorageError when the
        lock cannot be had in bounded time.
        """
        return None


class Store(ABC):
    """A storage engine. Open once per process; safe for concurrent use by many requests."""

    name: str

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema / indexes if missing."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def read(self, type_: str, id_: str) -> Version | None:
        """The current version (a tombstone if deleted), or None if it never existed."""

    @abstractmethod
    async def vread(self, type_: str, id_: str, version: int) -> Version | None: ...

    @abstractmethod
    async def history(self, query: HistoryQuery) -> list[Version]: ...

    @abstractmethod
    async def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        """The current, non-deleted versions of the (type, id) pairs that exist, in any order."""

    @abstractmethod
    async def search(self, query: SearchQuery) -> list[Match]: ...

    @abstractmethod
    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        """How many current resources of `type_` match `where`; with `limit`, counting stops
        there (a search's total costs no more than that many index entries)."""

    @abstractmethod
    async def replace_index(self, version: Version, index: ResourceIndex) -> bool:
        """Replace the search index of `version` while it is still the current version (for
        reindexing; no new version). False when another write superseded it meanwhile."""

    @abstractmethod
    async def get_setting(self, key: str) -> Any:
        """A value the server keeps about itself (JSON-compatible), or None."""

    @abstractmethod
    async def put_setting(self, key: str, value: Any) -> None: ...

    @abstractmethod
    async def list_settings(self, prefix: str) -> dict[str, Any]:
        """Every setting whose key starts with `prefix`, by key (accounts, clients, tokens)."""

    @abstractmethod
    async def is_empty(self) -> bool:
        """True when no resource has ever been stored (decides whether to seed)."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """All-or-nothing unit of writes: committed when the block exits normally, rolled back
        (nothing left behind) when it raises. Engine failures surface as StorageError."""


class DelegatingStore(Store):
    """A store that passes everything to `inner`; subclasses override what they change."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.name = inner.name

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def read(self, type_: str, id_: str) -> Version | None:
        return await self.inner.read(type_, id_)

    async def vread(self, type_: str, id_: str, version: int) -> Version | None:
        return await self.inner.vread(type_, id_, version)

    async def history(self, query: HistoryQuery) -> list[Version]:
        return await self.inner.history(query)

    async def read_many(self, refs: list[tuple[str, str]]) -> list[Version]:
        return await self.inner.read_many(refs)

    async def search(self, query: SearchQuery) -> list[Match]:
        return await self.inner.search(query)

    async def count(self, type_: str, where: Predicate | None, limit: int | None = None) -> int:
        return await self.inner.count(type_, where, limit)

    async def replace_index(self, version: Version, index: ResourceIndex) -> bool:
        return await self.inner.replace_index(version, index)

    async def get_setting(self, key: str) -> Any:
        return await self.inner.get_setting(key)

    async def put_setting(self, key: str, value: Any) -> None:
        await self.inner.put_setting(key, value)

    async def list_settings(self, prefix: str) -> dict[str, Any]:
        return await self.inner.list_settings(prefix)

    async def is_empty(self) -> bool:
        return await self.inner.is_empty()

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self.inner.transaction()
