"""The direct AuditEvent indexer (audit/index.py) gives exactly what the generic FHIRPath indexer
gives, for every kind of event the server builds and for the events a running server stores;
with a custom AuditEvent parameter it hands over to the generic indexer."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.audit.chain import _chain_extension
from fhir_server.audit.events import (
    ACTIONS,
    SECURITY_SUBTYPES,
    Agent,
    PatientLinks,
    build_event,
    patient_entity,
    query_entity,
    resource_entity,
    security_event,
)
from fhir_server.audit.index import EventIndexer
from fhir_server.fhirtime import clock
from fhir_server.search.indexer import index_resource
from fhir_server.search.registry import Registry, default_registry
from fhir_server.store.base import Version

AGENTS = (
    Agent(),
    Agent(address="192.0.2.1"),
    Agent("Jürgen Фёдоров", "jf", "Practitioner/pr1", ("practitioner",), "2001:db8::1", "BTG"),
    Agent("Pat", "pat", "Patient/p1", ("patient",), "10.0.0.1"),
    Agent("backend", "client-7", None, ("system",), None),
)
ENTITIES: tuple[tuple[dict[str, Any], ...], ...] = (
    (),
    (resource_entity(Version("Patient", "p1", 3, "2026-01-01T00:00:00.000000Z", "PUT", b"{}")),),
    (
        resource_entity(Version("Observation", "o1", 1, "2026-01-01T00:00:00.000000Z", "POST",
                                b"{}")),
        patient_entity("Patient/p1"),
        patient_entity("Patient/p2"),
    ),
    (
        query_entity("/fhir/Observation?subject=Patient/p1&code=1234-5"),
        patient_entity("Patient/p1"),
    ),
)


def _sealed(event: dict[str, Any], n: int) -> dict[str, Any]:
    """The event as the chain stores it: id, meta, chain link and recorded."""
    at = clock.next()
    return {
        "resourceType": "AuditEvent",
        "id": f"e{n}",
        "meta": {"versionId": "1", "lastUpdated": at},
        "extension": [_chain_extension(n, "0" * 64)],
        **{k: v for k, v in event.items() if k != "resourceType"},
        "recorded": at,
    }


def _built() -> list[dict[str, Any]]:
    events = []
    for n, (subtype, agent, entities, status) in enumerate(itertools.product(
        ACTIONS, AGENTS, ENTITIES, (200, 404, 503)
    )):
        description = None if status == 200 else f"failed with {status}"
        events.append(_sealed(
            build_event(subtype, agent, "site-a", status, description, entities), n
        ))
    for n, (kind, agent) in enumerate(itertools.product(SECURITY_SUBTYPES, AGENTS)):
        events.append(_sealed(security_event(kind, agent, "site-a", 401, "no"), n))
    return events


@pytest.fixture(scope="module")
def registry() -> Registry:
    return default_registry()


def test_every_built_event_is_indexed_as_fhirpath_would(registry: Registry) -> None:
    indexer = EventIndexer(registry)
    events = _built()
    assert len(events) == len(ACTIONS) * 5 * 4 * 3 + len(SECURITY_SUBTYPES) * 5
    for event in events:
        assert indexer(event) == index_resource(event, registry), event


def test_repeated_values_give_fresh_lists(registry: Registry) -> None:
    # Entries of repeating values are remembered: changing one index must not change the next.
    indexer = EventIndexer(registry)
    event = _built()[0]
    first = indexer(event)
    first.entries["action"].clear()
    assert indexer(event).entries["action"], "a remembered entry list was shared"


def test_a_custom_audit_parameter_hands_over_to_fhirpath() -> None:
    registry = default_registry()
    indexer = EventIndexer(registry)
    event = _built()[5]
    standard = registry.get("AuditEvent", "outcome")
    assert standard is not None
    registry.add(replace(
        standard, code="site", url="http://example.org/sp/site", base="AuditEvent",
        type="token", expression="AuditEvent.source.site",
    ))
    index = indexer(event)
    assert index.entries["site"], "the custom parameter was not indexed"
    assert index == index_resource(event, registry)


async def test_events_a_server_stores_are_indexed_as_fhirpath_would(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    patient = (await client.post("/Patient", json={
        "resourceType": "Patient", "name": [{"family": "Öberg"}]
    })).json()
    await client.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient['id']}"},
    })
    await client.get(f"/Patient/{patient['id']}")
    await client.get("/Observation", params={"subject": f"Patient/{patient['id']}"})
    await client.get("/Patient/missing")
    await client.post("/Patient", json={"resourceType": "Patient", "gender": "nope"})
    await client.get(f"/Patient/{patient['id']}/_history")
    response = await client.get("/AuditEvent", params={"_count": "100"})
    events = [e["resource"] for e in response.json()["entry"]]
    assert len(events) >= 7
    indexer = EventIndexer(registry)
    for event in events:
        assert indexer(event) == index_resource(event, registry), event


def test_patients_of_a_version_are_remembered_per_version_and_instant(registry: Registry) -> None:
    links = PatientLinks(registry)

    def condition(patient: str, at: str, version: int = 1) -> Version:
        body = {"resourceType": "Condition", "id": "c1", "subject": {"reference": patient}}
        return Version("Condition", "c1", version, at, "PUT", orjson.dumps(body))

    first = condition("Patient/a", "2026-01-01T00:00:00.000001Z")
    assert links.of_version(first) == ["Patient/a"]
    assert links.of_version(first) == ["Patient/a"]
    # The next version, and a version a rolled-back write numbered the same, are their own.
    assert links.of_version(condition("Patient/b", "2026-01-01T00:00:00.000002Z", 2)) == [
        "Patient/b"]
    assert links.of_version(condition("Patient/c", "2026-01-01T00:00:00.000003Z")) == [
        "Patient/c"]
    remembered = links.of_version(first)
    remembered.append("Patient/z")
    assert links.of_version(first) == ["Patient/a"], "the remembered list was handed out"
