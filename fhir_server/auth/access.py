"""Who may see and do what: SMART scopes first, then the rules of the caller's role.

Every interaction asks `Access.require(type, perm)`: a 403 when no scope and no role rule allows
that kind of access to the type at all (which reveals nothing about any resource). Then either
`Access.visible(version)` for one resource, where a resource the caller may not see is answered
exactly as one that does not exist (404), or `Access.limit(type)` for a search: a predicate
And-ed into the query, so paging and `_total` count only what the caller may see, and into the
chains and reverse chains inside it (`guard`), and applied to `_include` / `_revinclude` too.

Role rules (a user's token carries its role; a client of SMART Backend Services has none and
is bound by its `system/` scopes alone):
- practitioner: the Patient compartment of patients with an active care relationship (an active
  CareTeam they or their PractitionerRole belong to, `Patient.generalPractitioner`, or an
  Encounter they took part in that is in progress or ended at most `encounter_access_days` ago);
  `X-Break-Glass: reason` lifts that limit for the request (and is audited as such). Directory,
  conformance and shared clinical definitions (Medication, Substance, ...) are readable.
- patient: their own Patient compartment (AuditEvents about them included); they may update
  only telecom, address, name and communication of their own Patient resource.
- admin: directory and conformance resources, nothing clinical.
- auditor: AuditEvents only (read and search).
- insurer: Coverage, Claim and ExplanationOfBenefit of its own payer Organization.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from fhir_server import errors
from fhir_server.audit.events import PatientLinks
from fhir_server.auth.scopes import ScopeSet
from fhir_server.fhirtime import format_instant
from fhir_server.search.model import (
    And,
    Chain,
    Has,
    IdMatch,
    ListMatch,
    Not,
    Or,
    Predicate,
    ReferenceMatch,
)
from fhir_server.search.parser import parse_search
from fhir_server.search.registry import patient_compartment
from fhir_server.search.resolve import resolve
from fhir_server.store.base import SearchQuery, Version

if TYPE_CHECKING:
    from fhir_server.context import RequestContext

DIRECTORY = frozenset((
    "Practitioner", "PractitionerRole", "Organization", "Location", "Endpoint",
    "HealthcareService",
))
CONFORMANCE = frozenset((
    "StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "ConceptMap",
    "NamingSystem", "OperationDefinition", "CapabilityStatement", "CompartmentDefinition",
    "ImplementationGuide", "StructureMap", "TerminologyCapabilities", "GraphDefinition",
    "MessageDefinition",
))
SHARED = frozenset((
    "Medication", "MedicationKnowledge", "Substance", "ActivityDefinition", "PlanDefinition",
    "Questionnaire", "Library", "Measure",
))
"""Clinical definitions that belong to no patient: readable by practitioners and patients."""
READ = frozenset("rs")
PATIENT_AUDIT_CRITERIA = frozenset((
    "_id", "_lastUpdated", "date", "type", "subtype", "action", "outcome", "agent", "agent-name",
    "altid", "address",
))
"""AuditEvent parameters on what a patient's view of an event keeps (see `shown`)."""
PATIENT_EDITABLE = frozenset(("telecom", "address", "name", "communication"))
"""What a patient may change in their own Patient resource."""
_SERVER_META = frozenset(("versionId", "lastUpdated", "source"))
"""What the server itself sets in `meta`: not a change the patient made."""
ROLES = ("practitioner", "patient", "admin", "auditor", "insurer")
_RELATED_LIMIT = 10_000
_ACTIVE_ENCOUNTER = "arrived,triaged,in-progress,onleave,finished"
"""Encounters that give a participant access (a planned one does not, yet)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, as the access token says."""

    subject: str
    """The user name or client id ("anonymous" without authentication)."""
    scopes: ScopeSet | None
    """None: no limits at all (authentication is off)."""
    role: str | None = None
    """A user's role; None for a client acting on its own (SMART Backend Services)."""
    resource: str | None = None
    """fhirUser: the Practitioner/Patient/Organization resource the user is."""
    client_id: str | None = None
    patient: str | None = None
    """The patient in context (launch/patient), an id: what `patient/` scopes are about."""
    break_glass: str | None = None
    """The reason given in X-Break-Glass (practitioners only)."""


ANONYMOUS = Principal("anonymous", None)


@dataclass(frozen=True, slots=True)
class Limit:
    """The part of one resource type a caller may see (absent: all of it)."""

    patients: frozenset[str] | None = None
    """Patient ids: the resource must be in the compartment of one of them."""
    where: Predicate | None = None
    """Any other condition (an insurer's payer, the parameters of SMART v2 scopes)."""

    def __and__(self, other: Limit | None) -> Limit:
        if other is None:
            return self
        patients = (
            other.patients if self.patients is None
            else self.patients if other.patients is None
            else self.patients & other.patients
        )
        wheres = tuple(w for w in (self.where, other.where) if w is not None)
        return Limit(patients, wheres[0] if len(wheres) == 1 else And(wheres) if wheres else None)


NOTHING = Limit(patients=frozenset())
NEVER: Predicate = Or(())


def compartment_of(type_: str, patients: Iterable[str]) -> Predicate:
    """Resources of `type_` in the Patient compartment of any of `patients` (ids)."""
    ids = tuple(sorted(patients))
    if not ids:
        return NEVER
    if type_ == "Patient":
        return IdMatch(ids)
    params = patient_compartment().get(type_, ())
    return Or(tuple(ReferenceMatch(p, "Patient", pid) for p in params for pid in ids))


def _payer_limit(type_: str, organization: str) -> Limit:
    org_type, _, org_id = organization.partition("/")
    payer = ReferenceMatch("payor", org_type, org_id)
    if type_ == "Coverage":
        return Limit(where=payer)
    claim = ReferenceMatch("insurer", org_type, org_id)
    if type_ == "Claim":
        return Limit(where=claim)
    return Limit(where=Or((Chain("coverage", "Coverage", payer), Chain("claim", "Claim", claim))))


def forbidden(principal: Principal, type_: str, perm: str) -> errors.FhirError:
    what = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[perm]
    who = f"role '{principal.role}'" if principal.role else "this client"
    return errors.forbidden(f"Access denied: {who} may not {what} {type_} resources")


@dataclass
class Access:
    """One request's view of what its principal may do (relationships are looked up once)."""

    ctx: RequestContext
    principal: Principal
    _related: frozenset[str] | None = None
    _links: PatientLinks | None = None
    _limits: dict[tuple[str, str], Limit | None] = field(default_factory=dict)

    @property
    def unrestricted(self) -> bool:
        return self.principal.scopes is None

    async def require(self, type_: str, perm: str) -> Limit | None:
        """The limit on `type_` for `perm` (None: all of it); 403 when none of it is allowed."""
        key = (type_, perm)
        if key not in self._limits:
            self._limits[key] = await self._limit(type_, perm)
        limit = self._limits[key]
        if limit is NOTHING:
            raise forbidden(self.principal, type_, perm)
        return limit

    async def limit(self, type_: str, perm: str = "s") -> Limit | None:
        """Like `require`, but a type the caller may not search gives NOTHING, not a 403
        (searches leave out silently what the caller may not see)."""
        try:
            return await self.require(type_, perm)
        except errors.FhirError:
            return NOTHING

    async def _limit(self, type_: str, perm: str) -> Limit | None:
        scoped = await self._scope_limit(type_, perm)
        if scoped is NOTHING:
            return NOTHING
        limit = await self._context_limit(type_, perm)
        return limit if scoped is None or limit is NOTHING else scoped & limit

    async def _scope_limit(self, type_: str, perm: str) -> Limit | None:
        """What SMART v2 scope parameters (`patient/Observation.rs?category=laboratory`) leave
        of the type: resources matching the parameters of some scope that grants `perm` (no
        limit when one of them has none). Such scopes grant reading and searching only: what a
        write would store cannot be checked against search parameters before it is stored."""
        scopes = self.principal.scopes
        granting = scopes.granting(type_, perm) if scopes is not None else []
        if not granting or any(not s.params for s in granting):
            return None
        if perm not in READ:
            return NOTHING
        ctx = self.ctx
        wheres: list[Predicate] = []
        for s in granting:
            try:
                where = parse_search(type_, list(s.params), ctx.registry, ctx.base_url,
                                     True).where
            except errors.FhirError:
                continue  # parameters this server cannot apply grant nothing
            if where is not None and _reaches_other_resources(where):
                continue  # chains, _has, _list: judged on resources the caller may not see
            if where is None:
                return None
            wheres.append(await resolve(ctx, where))
        if not wheres:
            return NOTHING
        return Limit(where=wheres[0] if len(wheres) == 1 else Or(tuple(wheres)))

    async def _context_limit(self, type_: str, perm: str) -> Limit | None:
        p = self.principal
        if p.scopes is None:
            return None
        contexts = p.scopes.contexts(type_, perm)
        if not contexts:
            return NOTHING
        if p.role is None:
            if "system" in contexts:
                return None
            return Limit(patients=frozenset((p.patient,))) if p.patient else NOTHING
        limit = await self._role_limit(type_, perm)
        if limit is NOTHING or contexts & {"user", "system"}:
            return limit
        # Only `patient/` scopes: the patient in context, within what the role allows.
        if p.patient is None:
            return NOTHING
        return Limit(patients=frozenset((p.patient,))) & limit

    async def _role_limit(self, type_: str, perm: str) -> Limit | None:
        p = self.principal
        role = p.role
        in_compartment = type_ == "Patient" or type_ in patient_compartment()
        reading = perm in READ
        if role == "admin":
            return None if type_ in DIRECTORY | CONFORMANCE else NOTHING
        if role == "auditor":
            return None if type_ == "AuditEvent" and reading else NOTHING
        if role == "insurer":
            if not reading or type_ not in ("Coverage", "Claim", "ExplanationOfBenefit"):
                return NOTHING
            return _payer_limit(type_, p.resource) if p.resource else NOTHING
        if type_ in DIRECTORY | CONFORMANCE | SHARED:
            return None if reading else NOTHING
        if role == "patient":
            own = id_of(p.resource, "Patient")
            if own is None or not in_compartment:
                return NOTHING
            if reading or (perm == "u" and type_ == "Patient"):
                return Limit(patients=frozenset((own,)))
            return NOTHING
        if role == "practitioner":
            if not in_compartment or type_ == "AuditEvent":
                return NOTHING
            if p.break_glass:
                return None
            return Limit(patients=await self.related_patients())
        return NOTHING

    # --- one resource

    async def visible(self, v: Version, perm: str = "r") -> bool:
        limit = await self.require(v.type, perm)
        if limit is None:
            return True
        if limit.patients is not None:
            if self._links is None:
                self._links = PatientLinks(self.ctx.registry)
            mine = {f"Patient/{pid}" for pid in limit.patients}
            if not mine.intersection(self._links.of_version(v)):
                return False
        if limit.where is not None:
            where = And((IdMatch((v.id,)), limit.where))
            return await self.ctx.store.count(v.type, where) > 0
        return True

    async def may_see(self, v: Version, perm: str = "r") -> bool:
        """Whether the caller may see `v` (False, not 403, for a type it may not see at all)."""
        if await self.limit(v.type, perm) is NOTHING:
            return False
        return await self.visible(v, perm)

    async def require_visible(self, v: Version | None, perm: str = "r") -> None:
        """404, as for a resource that does not exist, unless the caller may see `v` (a
        deletion is never visible to a limited caller: it would tell that something was
        there)."""
        if v is not None and not await self.visible(v, perm):
            raise errors.not_found(f"{v.type}/{v.id} is not known")

    async def check_content(
        self, type_: str, resource: dict[str, Any], current: Version | None, perm: str
    ) -> None:
        """What a write stores must stay inside what the caller may see; a patient may change
        only their own contact details."""
        limit = await self.require(type_, perm)
        if limit is None:
            return
        if self.principal.role == "patient":
            _patient_may_change(current, resource)
        if limit.patients is not None:
            probe = Version(type_, resource.get("id") or "-", 0, "", "PUT", orjson.dumps(resource))
            if not await self.visible(probe, perm):
                raise errors.forbidden(
                    f"Access denied: the {type_} would belong to a patient outside your care"
                )

    def shown(self, v: Version) -> Version:
        """`v` as this caller gets it. A patient's view of an AuditEvent keeps only what is
        about them: an event of a search that also returned other patients' data names those
        patients and the query (their names, perhaps), which are not theirs to see."""
        own = self.principal.patient
        if self.principal.role != "patient" or v.type != "AuditEvent" or own is None or \
                v.body is None:
            return v
        redacted = _redacted_event(v.resource(), f"Patient/{own}")
        return Version(v.type, v.id, v.version, v.last_updated, v.method,
                       orjson.dumps(redacted))

    # --- searches

    def predicate(self, type_: str, limit: Limit | None) -> Predicate | None:
        if limit is None:
            return None
        parts: list[Predicate] = []
        if limit.patients is not None:
            parts.append(compartment_of(type_, limit.patients))
        if limit.where is not None:
            parts.append(limit.where)
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def check_criteria(self, type_: str, where: Predicate | None) -> None:
        """A patient searches their audit trail only by what their redacted view of it shows:
        criteria on the parts left out (other patients, queries) would find events by them."""
        own = self.principal.patient
        if self.principal.role != "patient" or type_ != "AuditEvent" or where is None:
            return
        for leaf in _leaves(where):
            param = getattr(leaf, "param", None)
            if isinstance(leaf, IdMatch) or (param in PATIENT_AUDIT_CRITERIA
                                             and not isinstance(leaf, Has)):
                continue
            if param == "patient" and isinstance(leaf, ReferenceMatch) and \
                    (leaf.type, leaf.id) in (("Patient", own), (None, own)):
                continue
            raise errors.forbidden(
                f"Access denied: patients search AuditEvents by "
                f"{', '.join(sorted(PATIENT_AUDIT_CRITERIA))} or patient=Patient/{own} only"
            )

    async def search_filter(self, type_: str) -> Predicate | None:
        return self.predicate(type_, await self.limit(type_))

    async def guard(self, where: Predicate | None) -> Predicate | None:
        """`where` with every chain and reverse chain limited to what the caller may see, so
        no search can probe resources hidden from it."""
        if where is None or self.unrestricted:
            return where
        filters = {t: await self.search_filter(t) for t in _linked_types(where)}
        return _limited(where, filters)

    # --- relationships

    async def related_patients(self) -> frozenset[str]:
        if self._related is None:
            self._related = await self._find_related()
        return self._related

    async def _find_related(self) -> frozenset[str]:
        me = self.principal.resource
        if not me or "/" not in me:
            return frozenset()
        selves = [me]
        kind, _, my_id = me.partition("/")
        if kind == "Practitioner":
            roles = await self._search("PractitionerRole", [("practitioner", me)])
            selves += [f"PractitionerRole/{v.id}" for v in roles]
        elif kind == "PractitionerRole":
            role = await self.ctx.store.read("PractitionerRole", my_id)
            ref = (role.resource().get("practitioner") or {}).get("reference") if role and \
                role.body else None
            if isinstance(ref, str):
                selves.append(ref)
        who = ",".join(selves)
        patients: set[str] = set()
        for v in await self._search("CareTeam", [("participant", who), ("status", "active")]):
            patients.update(_subject_patient(v))
        for v in await self._search("Patient", [("general-practitioner", who)]):
            patients.add(v.id)
        since = datetime.now(UTC) - timedelta(days=self.ctx.settings.encounter_access_days)
        encounters = await self._search("Encounter", [
            ("participant", who), ("status", _ACTIVE_ENCOUNTER),
            ("date", f"ge{format_instant(since)}"),
        ])
        for v in encounters:
            patients.update(_subject_patient(v))
        return frozenset(patients)

    async def _search(self, type_: str, params: list[tuple[str, str]]) -> list[Version]:
        request = parse_search(type_, params, self.ctx.registry, self.ctx.base_url, True)
        query = SearchQuery(type_, request.where, limit=_RELATED_LIMIT)
        return [m.version for m in await self.ctx.store.search(query)]


def id_of(reference: Any, type_: str) -> str | None:
    """The id in a `type_/id` reference, or None when it is not one."""
    if isinstance(reference, str) and reference.startswith(f"{type_}/"):
        return reference.split("/", 1)[1]
    return None


def patient_in_context(role: str | None, fhir_user: str | None) -> str | None:
    """The patient `patient/` scopes are about: for a patient user, themselves."""
    return id_of(fhir_user, "Patient") if role == "patient" else None


def _subject_patient(v: Version) -> list[str]:
    ref = (v.resource().get("subject") or {}).get("reference") if v.body else None
    own = id_of(ref, "Patient")
    return [own] if own else []


def _patient_may_change(current: Version | None, resource: dict[str, Any]) -> None:
    if current is None or current.body is None:
        raise errors.forbidden("Access denied: patients may not create resources")
    before = current.resource()

    def content(r: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in (r.get("meta") or {}).items() if k not in _SERVER_META}
        return {**r, "meta": meta}

    old, new = content(before), content(resource)
    changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    if changed - PATIENT_EDITABLE:
        fields = ", ".join(sorted(changed - PATIENT_EDITABLE))
        raise errors.forbidden(
            f"Access denied: patients may change only their telecom, address, name and "
            f"communication, not {fields}"
        )


REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "REDACTED"}
_PATIENT_ROLE_CODE = "1"
_RESOURCE_ROLE_CODE = "4"


def _redacted_event(event: dict[str, Any], own: str) -> dict[str, Any]:
    """The entities of `event` that concern the patient `own` alone: their own Patient, and the
    resources the event names when it names no other patient. Queries are left out."""
    entities = event.get("entity") or []

    def reference(e: dict[str, Any]) -> str:
        return str((e.get("what") or {}).get("reference", "")).split("/_history/")[0]

    def role(e: dict[str, Any]) -> str | None:
        return (e.get("role") or {}).get("code")

    others = {reference(e) for e in entities if role(e) == _PATIENT_ROLE_CODE} - {own}
    kept = [e for e in entities if reference(e) == own
            or (not others and role(e) == _RESOURCE_ROLE_CODE)]
    if len(kept) == len(entities):
        return event
    meta = event.get("meta") or {}
    shown = {**event, "meta": {**meta, "security": [*meta.get("security", []), REDACTED]}}
    if kept:
        shown["entity"] = kept
    else:
        shown.pop("entity", None)
    return shown


def _reaches_other_resources(p: Predicate) -> bool:
    return any(isinstance(leaf, Chain | Has | ListMatch) for leaf in _leaves(p))


def _linked_types(p: Predicate) -> set[str]:
    if isinstance(p, Chain):
        return {p.target_type} | _linked_types(p.where)
    if isinstance(p, Has):
        return {p.source_type} | _linked_types(p.where)
    if isinstance(p, And | Or):
        return set().union(*(_linked_types(c) for c in p.predicates))
    if isinstance(p, Not):
        return _linked_types(p.predicate)
    return set()


def _limited(p: Predicate, filters: dict[str, Predicate | None]) -> Predicate:
    if isinstance(p, Chain):
        return Chain(p.param, p.target_type, _with(_limited(p.where, filters),
                                                   filters[p.target_type]))
    if isinstance(p, Has):
        return Has(p.source_type, p.param, _with(_limited(p.where, filters),
                                                 filters[p.source_type]))
    if isinstance(p, And):
        return And(tuple(_limited(c, filters) for c in p.predicates))
    if isinstance(p, Or):
        return Or(tuple(_limited(c, filters) for c in p.predicates))
    if isinstance(p, Not):
        return Not(_limited(p.predicate, filters))
    return p


def _leaves(p: Predicate) -> list[Predicate]:
    """The parts of `p` below And, Or and Not (chains and reverse chains count as leaves)."""
    if isinstance(p, And | Or):
        return [leaf for c in p.predicates for leaf in _leaves(c)]
    if isinstance(p, Not):
        return _leaves(p.predicate)
    return [p]


def _with(where: Predicate, limit: Predicate | None) -> Predicate:
    return where if limit is None else And((where, limit))
