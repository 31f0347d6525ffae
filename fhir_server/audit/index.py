"""The search index of an AuditEvent this server built, without evaluating FHIRPath.

Every request writes an event, so indexing it is on every request's path. The generic indexer
(search/indexer.py) evaluates each parameter's expression and extracts entries from the result:
about 60 µs an event. Events built by `events.py` have a known shape, and most of their values
repeat from one event to the next (the agent, the interaction, the outcome), so here each
standard parameter reads its elements directly and the entries of repeating values are
remembered: about a tenth of that. Entries come from the same type extractors, so they are the
generic indexer's (tests/audit/test_event_index.py compares the two on every kind of event).

Events a client posts keep the generic indexer, and so does every event once a custom
SearchParameter changes AuditEvent's parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from fhir_server.search import types
from fhir_server.search.indexer import index_resource
from fhir_server.search.model import DateEntry, Entry, ResourceIndex
from fhir_server.search.registry import Registry

Resource = dict[str, Any]
REMEMBERED_SHARED = 1024
"""How many combinations of caller and interaction `EventIndexer` remembers the index of."""
Values = Iterator[tuple[Any, str]]
"""(JSON value, FHIR type) pairs, as a parameter's expression would yield them."""


def _agents(event: Resource) -> list[Resource]:
    return [a for a in event.get("agent") or () if isinstance(a, dict)]


def _whats(event: Resource) -> Values:
    for entity in event.get("entity") or ():
        if isinstance(entity, dict) and isinstance(what := entity.get("what"), dict):
            yield what, "Reference"


def _whos(event: Resource) -> Values:
    for agent in _agents(event):
        if isinstance(who := agent.get("who"), dict):
            yield who, "Reference"


def _patients(event: Resource) -> Values:
    # `who.where(resolve() is Patient) | what.where(resolve() is Patient)`: a union, so a
    # Reference named twice counts once.
    seen: list[Resource] = []
    for value, fhir_type in (*_whos(event), *_whats(event)):
        if _points_at_patient(value) and value not in seen:
            seen.append(value)
            yield value, fhir_type


def _points_at_patient(reference: Resource) -> bool:
    literal = reference.get("reference")
    return isinstance(literal, str) and _is_patient(literal)


def _is_patient(literal: str) -> bool:
    if literal.startswith("#"):
        return False  # events built here never hold contained resources
    literal = literal.split("/_history/", 1)[0]
    parts = literal.rsplit("/", 2)
    return len(parts) >= 2 and parts[-2] == "Patient"


def _network(event: Resource) -> Values:
    for agent in _agents(event):
        network = agent.get("network")
        if isinstance(network, dict) and "address" in network:
            yield network["address"], "string"


def _agent_field(name: str, fhir_type: str) -> Callable[[Resource], Values]:
    def values(event: Resource) -> Values:
        for agent in _agents(event):
            if name in agent:
                yield agent[name], fhir_type

    return values


def _field(name: str, fhir_type: str) -> Callable[[Resource], Values]:
    def values(event: Resource) -> Values:
        value = event.get(name)
        for item in value if isinstance(value, list) else (value,) if value is not None else ():
            yield item, fhir_type

    return values


def _last_updated(event: Resource) -> Values:
    meta = event.get("meta")
    if isinstance(meta, dict) and "lastUpdated" in meta:
        yield meta["lastUpdated"], "instant"


_PATHS: dict[str, tuple[str, Callable[[Resource], Values]]] = {
    "_lastUpdated": ("Resource.meta.lastUpdated", _last_updated),
    "action": ("AuditEvent.action", _field("action", "code")),
    "address": ("AuditEvent.agent.network.address", _network),
    "agent": ("AuditEvent.agent.who", _whos),
    "agent-name": ("AuditEvent.agent.name", _agent_field("name", "string")),
    "altid": ("AuditEvent.agent.altId", _agent_field("altId", "string")),
    "date": ("AuditEvent.recorded", _field("recorded", "instant")),
    "entity": ("AuditEvent.entity.what", _whats),
    "outcome": ("AuditEvent.outcome", _field("outcome", "code")),
    "patient": (
        "AuditEvent.agent.who.where(resolve() is Patient) | "
        "AuditEvent.entity.what.where(resolve() is Patient)",
        _patients,
    ),
    "subtype": ("AuditEvent.subtype", _field("subtype", "Coding")),
    "type": ("AuditEvent.type", _field("type", "Coding")),
}
"""Each standard parameter of AuditEvent (registry.AUDIT_EVENT_PARAMS but `_id`, which is never
indexed): its R4 expression, and the elements it selects."""
_SHARED = ("agent", "type", "subtype", "action", "outcome")
"""The elements most events repeat from the one before (same caller, same interaction)."""
_OF_SHARED = ("action", "address", "agent", "agent-name", "altid", "outcome", "subtype", "type")
"""The parameters that read nothing but `_SHARED` elements: indexed once for all the events
that share them."""
_OWN = tuple(code for code in _PATHS if code not in _OF_SHARED)


@functools.lru_cache(maxsize=4096)
def _repeated(param_type: str, key: Any, fhir_type: str) -> tuple[Entry, ...]:
    value = dict(key) if isinstance(key, tuple) else key
    return tuple(types.extract(param_type, value, fhir_type))


@functools.lru_cache(maxsize=4)
def _instant(param_type: str, value: Any) -> tuple[Entry, ...]:
    # A new moment every event, but the same one twice: recorded is lastUpdated (chain.seal).
    return tuple(types.extract(param_type, value, "instant"))


def _entries(param_type: str, value: Any, fhir_type: str) -> list[Entry]:
    if fhir_type == "instant":
        return list(_instant(param_type, value))
    if isinstance(value, dict):
        try:
            key: Any = tuple(value.items())
            hash(key)
        except TypeError:  # nested lists or objects (an identifier's period, ...)
            return types.extract(param_type, value, fhir_type)
        return list(_repeated(param_type, key, fhir_type))
    return list(_repeated(param_type, value, fhir_type))


class EventIndexer:
    """Indexes the AuditEvents this server builds, for the registry's current parameters."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._checked: tuple[int, bool] | None = None
        self._common: dict[tuple[bytes, ...], ResourceIndex] = {}
        """The index of `_OF_SHARED`, by the JSON of the `_SHARED` elements it was read from."""

    def _standard(self) -> bool:
        """Whether AuditEvent has exactly the standard parameters (no custom one)."""
        params = self._registry.params("AuditEvent")
        if self._checked is None or self._checked[0] != id(params):
            indexed = {c: p for c, p in params.items() if c != "_id"}
            standard = indexed.keys() == _PATHS.keys() and all(
                p.expression == _PATHS[c][0] and p.type != "composite" for c, p in indexed.items()
            )
            self._checked = (id(params), standard)
            self._common.clear()
        return self._checked[1]

    def __call__(self, event: Resource) -> ResourceIndex:
        if not self._standard():
            return index_resource(event, self._registry)
        shared = tuple(orjson.dumps(event.get(name)) for name in _SHARED)
        common = self._common.get(shared)
        if common is None:
            common = self._common[shared] = self._index(event, _OF_SHARED)
            if len(self._common) > REMEMBERED_SHARED:
                del self._common[next(iter(self._common))]
        own = self._own(event)
        # Fresh lists: an index is the caller's to change.
        entries = {code: list(found) for code, found in common.entries.items()}
        return ResourceIndex(entries | own.entries, common.sort | own.sort)

    def _index(self, event: Resource, codes: tuple[str, ...]) -> ResourceIndex:
        params = self._registry.params("AuditEvent")
        entries: dict[str, Any] = {}
        sort: dict[str, Any] = {}
        for code in codes:
            param = params[code]
            found: list[Entry] = []
            for value, fhir_type in _PATHS[code][1](event):
                found += _entries(param.type, value, fhir_type)
            if not found:
                continue
            if len(found) > 1:
                found = list(dict.fromkeys(found))
            entries[code] = found
            if types.sortable(param.type) and param.sortable:
                sort[code] = _date_sort_key(found) if param.type == "date" else (
                    types.sort_key(param.type, found, False),
                    types.sort_key(param.type, found, True),
                )
        return ResourceIndex(entries, sort)

    def _own(self, event: Resource) -> ResourceIndex:
        """`_index(event, _OWN)` for the shapes events.py builds, from the entries remembered
        for each reference and instant (a new instant every event, but a popular record's
        reference again and again); any other shape takes the general path."""
        whats = _literals(event.get("entity") or (), "what", ("reference",))
        whos = _literals(event.get("agent") or (), "who", ("display", "reference"))
        instant = (event.get("meta") or {}).get("lastUpdated")
        if whats is None or whos is None or not isinstance(instant, str):
            return self._index(event, _OWN)
        entries: dict[str, Any] = {}
        sort: dict[str, Any] = {}
        for code, moment in (("_lastUpdated", instant), ("date", event.get("recorded"))):
            if isinstance(moment, str):
                entries[code] = found = list(_instant("date", moment))
                sort[code] = _date_sort_key(found)
        for code, literals in (
            ("entity", whats), ("patient", [r for r in (*whos, *whats) if _is_patient(r)])
        ):
            found = [entry for literal in literals for entry in _reference(literal)]
            if found:
                entries[code] = list(dict.fromkeys(found)) if len(found) > 1 else found
        return ResourceIndex(entries, sort)


def _literals(items: Any, key: str, allowed: tuple[str, ...]) -> list[str] | None:
    """The literal references of `item[key]` for each item, or None when one of them holds
    more than `allowed` (an identifier, say: the general path extracts that)."""
    found = []
    for item in items:
        value = item.get(key)
        if value is None:
            continue
        literal = value.get("reference")
        if not isinstance(literal, str) or any(k not in allowed for k in value):
            if literal is None and all(k in allowed for k in value):
                continue  # a display alone: nothing to index
            return None
        found.append(literal)
    return found


@functools.lru_cache(maxsize=65536)
def _reference(literal: str) -> tuple[Entry, ...]:
    return tuple(types.extract("reference", {"reference": literal}, "Reference"))


def _date_sort_key(found: list[Entry]) -> tuple[Any, Any]:
    if len(found) == 1 and isinstance(entry := found[0], DateEntry):
        return entry.start, entry.end  # the earliest start ascending, the latest end descending
    return types.sort_key("date", found, False), types.sort_key("date", found, True)
