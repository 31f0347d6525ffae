"""An async stand-in for pymongo's AsyncMongoClient, on mongomock, for the subset MongoStore uses.

It answers `hello` as a standalone server, so MongoStore runs its undo-log path (mongomock has
no transactions). mongomock raises pymongo's own error classes whenever pymongo is importable,
as it always is here, so the engine sees the DuplicateKeyError production raises. Every call
yields to the event loop first, as a network round trip would, so concurrent tasks interleave
between calls the way they do against a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import mongomock

COLLECTION_METHODS = frozenset(
    {
        "aggregate",
        "count_documents",
        "create_index",
        "delete_many",
        "delete_one",
        "find_one",
        "find_one_and_replace",
        "insert_many",
        "insert_one",
        "replace_one",
        "update_one",
    }
)
STANDALONE_HELLO = {"isWritablePrimary": True, "maxWireVersion": 21, "ok": 1.0}


class AsyncMockCursor:
    """A find or aggregate cursor: chainable like pymongo's, consumed asynchronously."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def sort(self, *args: Any, **kwargs: Any) -> AsyncMockCursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> AsyncMockCursor:
        self._cursor = self._cursor.limit(n)
        return self

    def skip(self, n: int) -> AsyncMockCursor:
        self._cursor = self._cursor.skip(n)
        return self

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        docs = list(self._cursor)
        return docs if length is None else docs[:length]

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        for doc in await self.to_list(None):
            yield doc


class AsyncMockCollection:
    def __init__(self, collection: mongomock.Collection) -> None:
        self._collection = collection

    def find(self, *args: Any, session: object = None, **kwargs: Any) -> AsyncMockCursor:
        return AsyncMockCursor(self._collection.find(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        if name not in COLLECTION_METHODS:
            raise AttributeError(name)
        method = getattr(self._collection, name)

        async def call(*args: Any, session: object = None, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            result = method(*args, **kwargs)
            return AsyncMockCursor(result) if name == "aggregate" else result

        return call


class AsyncMockDatabase:
    def __init__(self, database: mongomock.Database) -> None:
        self._database = database

    def __getitem__(self, name: str) -> AsyncMockCollection:
        return AsyncMockCollection(self._database[name])

    async def command(self, name: str) -> dict[str, Any]:
        if name != "hello":
            raise NotImplementedError(f"mock command {name!r}")
        return dict(STANDALONE_HELLO)


class AsyncMockSession:
    """A session without transactions, like one on a standalone server."""

    async def __aenter__(self) -> AsyncMockSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class AsyncMongoMockClient:
    def __init__(self) -> None:
        self._client = mongomock.MongoClient()

    def __getitem__(self, name: str) -> AsyncMockDatabase:
        return AsyncMockDatabase(self._client[name])

    @property
    def admin(self) -> AsyncMockDatabase:
        return self["admin"]

    def start_session(self) -> AsyncMockSession:
        return AsyncMockSession()

    async def close(self) -> None:
        self._client.close()
