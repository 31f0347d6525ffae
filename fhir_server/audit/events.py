"""AuditEvent documents for the REST interactions, in the style of IHE Basic Audit Log Patterns.

One event per interaction: `type` rest, `subtype` the interaction (restful-interaction codes),
`action` C/R/U/D/E, `outcome` 0/4/8 with a description, the requesting `agent` (who, roles,
network address; "anonymous" until someone authenticates), this server as `source`, and as
`entity` the resource with its version, the query of a search, and every Patient whose record
the interaction touched, so "all access to this patient's record" is one search
(`AuditEvent?patient=Patient/1`).
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.search import types
from fhir_server.search.fhirpath import Evaluator, compile_expression
from fhir_server.search.model import ReferenceEntry, ResourceIndex
from fhir_server.search.registry import Registry, patient_compartment
from fhir_server.store.base import Version

Resource = dict[str, Any]

INTERACTION = "http://hl7.org/fhir/restful-interaction"
EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "search-type": "E",
    "search-system": "E",
    "batch": "E",
    "transaction": "E",
    "operation": "E",
}
QUERIED = frozenset((
    "search-type", "search-system", "history-instance", "history-type", "history-system",
    "operation",
))
"""Interactions whose record names the request itself (path and query) as a Query entity."""
WRITE_SUBTYPES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# Codings without displays: an event is written for every request, and every byte of it is
# stored, hashed and indexed; the codes say it all.
PERSON = {"system": ENTITY_TYPE, "code": "1"}
SYSTEM_OBJECT = {"system": ENTITY_TYPE, "code": "2"}
PATIENT_ROLE = {"system": OBJECT_ROLE, "code": "1"}
RESOURCE_ROLE = {"system": OBJECT_ROLE, "code": "4"}
_QUERY_ROLE = {"system": OBJECT_ROLE, "code": "24"}
_SOURCE_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}
_REQUESTOR = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP"}]
}
MAX_DESCRIPTION = 2000
_BREAK_GLASS = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}


@dataclass(frozen=True, slots=True)
class Agent:
    """Who asked: a user or client (anonymous until authentication exists), from where."""

    name: str = "anonymous"
    login: str | None = None
    """User name or client id (AuditEvent.agent.altId)."""
    reference: str | None = None
    """The Practitioner/Patient/... resource the user is, when known."""
    roles: tuple[str, ...] = ()
    address: str | None = None
    break_glass: str | None = None
    """The reason a practitioner gave for emergency access beyond their care relationships."""

    def to_json(self) -> Resource:
        agent: Resource = {"type": _REQUESTOR}
        if self.roles:
            agent["role"] = [{"text": role} for role in self.roles]
        who: Resource = {"display": self.name}
        if self.reference:
            who["reference"] = self.reference
        agent["who"] = who
        if self.login:
            agent["altId"] = self.login
        agent["name"] = self.name
        agent["requestor"] = True
        if self.address:
            agent["network"] = {"address": self.address, "type": "2"}
        if self.break_glass:
            agent["purposeOfUse"] = [{"coding": [_BREAK_GLASS], "text": self.break_glass}]
        return agent


def request_subtype(method: str, parts: Sequence[str]) -> str:
    """The interaction a request is, from its method and the path below the base (for bundle
    entries and requests no route took)."""
    method, n = method.upper(), len(parts)
    if any(p.startswith("$") for p in parts):
        return "operation"
    if method in ("GET", "HEAD") or (method == "POST" and parts and parts[-1] == "_search"):
        if parts == ["metadata"]:
            return "capabilities"
        if parts and parts[-1] == "_history":
            return ("history-system", "history-type", "history-instance")[min(n, 3) - 1]
        if n == 4 and parts[2] == "_history":
            return "vread"
        if n == 2 and parts[1] != "_search":
            return "read"
        return "search-system" if n == 0 or parts == ["_search"] else "search-type"
    if method == "POST":
        return "batch" if n == 0 else "create"
    return WRITE_SUBTYPES.get(method, "operation")


def outcome_code(status: int) -> str:
    """0 success, 4 minor failure (the client's: 4xx), 8 serious failure (the server's: 5xx)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def resource_entity(v: Version) -> Resource:
    patient = v.type == "Patient"
    return {
        "what": {"reference": f"{v.type}/{v.id}/_history/{v.version}"},
        "type": PERSON if patient else SYSTEM_OBJECT,
        "role": PATIENT_ROLE if patient else RESOURCE_ROLE,
    }


def patient_entity(reference: str) -> Resource:
    return {"what": {"reference": reference}, "type": PERSON, "role": PATIENT_ROLE}


def query_entity(query: str) -> Resource:
    return {
        "type": SYSTEM_OBJECT,
        "role": _QUERY_ROLE,
        "description": query[:MAX_DESCRIPTION],
        "query": base64.b64encode(query.encode()).decode(),
    }


def build_event(
    subtype: str,
    agent: Agent,
    source: str,
    status: int,
    description: str | None,
    entities: Iterable[Resource],
) -> Resource:
    """The event, but for `recorded`, which the chain sets when it seals the event."""
    event: Resource = {
        "resourceType": "AuditEvent",
        "type": EVENT_TYPE,
        "subtype": [{"system": INTERACTION, "code": subtype}],
        "action": ACTIONS.get(subtype, "E"),
        "outcome": outcome_code(status),
    }
    if description:
        event["outcomeDesc"] = description[:MAX_DESCRIPTION]
    event["agent"] = [agent.to_json()]
    event["source"] = {"site": source, "observer": {"display": source}, "type": [_SOURCE_TYPE]}
    listed = list(entities)
    if listed:
        event["entity"] = listed
    return event


_DCM = "http://dicom.nema.org/resources/ontology/DCM"
USER_AUTHENTICATION = {"system": _DCM, "code": "110114", "display": "User Authentication"}
SECURITY_EVENT = "https://fhir-server.dev/CodeSystem/security-event"
SECURITY_SUBTYPES = {
    "login": {"system": _DCM, "code": "110122", "display": "Login"},
    "logout": {"system": _DCM, "code": "110123", "display": "Logout"},
    **{code: {"system": SECURITY_EVENT, "code": code} for code in (
        "password-change", "token-issue", "token-refresh", "token-revoke", "account-change",
        "client-change",
    )},
}
"""What an authentication event is: logins (DICOM's codes, as IHE BALP uses them), password
changes, the tokens issued, refreshed and revoked, and changes to accounts and clients."""


def security_event(
    kind: str, agent: Agent, source: str, status: int, description: str | None
) -> Resource:
    event = build_event(kind, agent, source, status, description, ())
    event["type"] = USER_AUTHENTICATION
    event["subtype"] = [SECURITY_SUBTYPES[kind]]
    return event


REMEMBERED_VERSIONS = 65536
"""How many versions' Patients `PatientLinks` remembers (a version never changes, and popular
records are read and found again and again)."""


class PatientLinks:
    """Which Patients a resource belongs to: the R4 Patient compartment's parameters,
    evaluated on the resource (reads) or taken from the index a write has computed anyway."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._evaluators: dict[str, tuple[Evaluator, ...]] = {}
        self._remembered: OrderedDict[tuple[str, str, int, str], list[str]] = OrderedDict()

    def of_index(self, type_: str, id_: str, index: ResourceIndex) -> list[str]:
        if type_ == "Patient":
            return [f"Patient/{id_}"]
        found: list[str] = []
        for code in patient_compartment().get(type_, ()):
            for entry in index.entries.get(code, ()):
                if isinstance(entry, ReferenceEntry) and entry.type == "Patient" and entry.id:
                    found.append(f"Patient/{entry.id}")
        return list(dict.fromkeys(found))

    def of_version(self, v: Version) -> list[str]:
        if v.type == "Patient":
            return [f"Patient/{v.id}"]
        # The instant tells a version apart from one a rolled-back write gave the same number.
        key = (v.type, v.id, v.version, v.last_updated)
        found = self._remembered.get(key)
        if found is None:
            found = self._evaluate(v)
            self._remembered[key] = found
            if len(self._remembered) > REMEMBERED_VERSIONS:
                self._remembered.popitem(last=False)
        else:
            self._remembered.move_to_end(key)
        return list(found)

    def _evaluate(self, v: Version) -> list[str]:
        evaluators = self._for_type(v.type)
        if not evaluators or v.body is None:
            return []
        resource = v.resource()
        found: list[str] = []
        for evaluate in evaluators:
            for value in evaluate(resource):
                for entry in types.extract("reference", value.value, value.type):
                    if isinstance(entry, ReferenceEntry) and entry.type == "Patient" and entry.id:
                        found.append(f"Patient/{entry.id}")
        return list(dict.fromkeys(found))

    def _for_type(self, type_: str) -> tuple[Evaluator, ...]:
        cached = self._evaluators.get(type_)
        if cached is None:
            params = [self._registry.get(type_, c) for c in patient_compartment().get(type_, ())]
            cached = tuple(
                compile_expression(p.expression, type_) for p in params if p and p.expression
            )
            self._evaluators[type_] = cached
        return cached
