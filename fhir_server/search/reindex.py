"""Custom search parameters: SearchParameter resources become searchable after `$reindex`.

`$reindex` on a type reads the SearchParameter resources stored for that type, makes every new
write index them at once (the indexing registry), backfills the index of every existing
resource of the type, and only then switches them on for searching (the search registry), so a
search never sees a half-built index. The set of active custom parameters is kept in the store,
so they stay switched on after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fhir_server import errors
from fhir_server.context import RequestContext
from fhir_server.search.indexer import index_resource
from fhir_server.search.model import TokenMatch
from fhir_server.search.registry import Registry, SearchParam
from fhir_server.store.base import SearchQuery, StorageError, Store

ACTIVE_SETTING = "active-search-parameters"
"""Store setting: ids of the SearchParameter resources switched on by a completed reindex."""
PAGE = 500


@dataclass(frozen=True, slots=True)
class ReindexResult:
    resource_type: str
    reindexed: int
    activated: tuple[str, ...]
    """Codes of the custom parameters now searchable on the type."""


async def _custom(store: Store, resource_type: str) -> list[tuple[str, list[SearchParam]]]:
    """(SearchParameter id, its parameters for `resource_type`) of every active one stored."""
    query = SearchQuery("SearchParameter", TokenMatch("base", code=resource_type), limit=1000)
    found = []
    for match in await store.search(query):
        resource = match.version.resource()
        if resource.get("status") == "retired":
            continue
        try:
            params = Registry.from_search_parameter(resource)
        except ValueError as exc:
            raise errors.bad_request(f"SearchParameter/{match.version.id}: {exc}") from None
        found.append((match.version.id, [p for p in params if p.base == resource_type]))
    return found


async def reindex(
    ctx: RequestContext, indexing: Registry, resource_type: str,
    progress: Callable[[int], None] | None = None,
) -> ReindexResult:
    try:
        custom = await _custom(ctx.store, resource_type)
        params = [p for _, ps in custom for p in ps]
        for param in params:
            indexing.add(param)  # writes from now on index the new parameters
        count = 0
        after = None
        while page := await ctx.store.search(SearchQuery(resource_type, None, limit=PAGE,
                                                         after=after)):
            for match in page:
                index = index_resource(match.version.resource(), indexing)
                await ctx.store.replace_index(match.version, index)
                count += 1
            if progress is not None:
                progress(count)
            after = page[-1].position
        for param in params:
            ctx.registry.add(param)
        active = set(await ctx.store.get_setting(ACTIVE_SETTING) or [])
        await ctx.store.put_setting(ACTIVE_SETTING, sorted(active | {i for i, _ in custom}))
    except StorageError as exc:
        raise errors.unavailable(f"Storage failed during reindex: {exc}") from None
    return ReindexResult(resource_type, count, tuple(sorted({p.code for p in params})))


async def load_active(store: Store, registries: tuple[Registry, ...]) -> None:
    """At start-up: switch on the custom parameters a completed reindex activated."""
    ids = await store.get_setting(ACTIVE_SETTING) or []
    for version in await store.read_many([("SearchParameter", i) for i in ids]):
        try:
            params = Registry.from_search_parameter(version.resource())
        except ValueError:
            continue  # changed into something unusable since; a new reindex reports it
        for registry in registries:
            for param in params:
                registry.add(param)
