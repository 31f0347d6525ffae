"""Who may see and do what, role by role, on both engines (fhir_server/auth/access.py).

Every test sets up the same small world (`build_world`): patients A to F, practitioner D (with
a PractitionerRole R) related to some of them and not to others, their clinical data, two
payers with their coverages, claims and explanations of benefit. What each caller may see is
computed from that world — who D's care relationships are with, whose compartment a resource
is in, which payer it belongs to — and compared with what the server answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.auth.conftest import AuthServer

Resource = dict[str, Any]

LOINC = "http://loinc.org"
OBS_SYSTEM = "urn:test:observation"
CLINICAL = ("Observation", "Condition", "Encounter", "MedicationRequest")
"""Clinical types each patient has one or more resources of."""
PATIENT_KEYS = "abcef"
"""Patients A, B, C, E, F (D is the practitioner)."""
FAMILIES = {"a": "Ashford", "b": "Blackwood", "c": "Carrow", "e": "Eastwick", "f": "Fairleigh"}
GIVEN = {k: f"{name[:3]}ina" for k, name in FAMILIES.items()}
BIRTH = {k: f"19{50 + i}-0{1 + i}-1{i}" for i, k in enumerate(PATIENT_KEYS)}
CODES = {"a": "8867-4", "b": "8310-5", "c": "29463-7", "e": "39156-5", "f": "9279-1"}
"""Each patient's first Observation has a code no other patient's has."""
SHARED_CODE = "85354-9"
"""Every patient's second Observation (blood pressure) has this one."""
BREAK_GLASS_REASON = "unconscious patient"


def when(days_ago: float) -> str:
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class World:
    """The resources of a test, and the facts what everyone may see follows from."""

    practitioner: str = "Practitioner/prac-d"
    role: str = "PractitionerRole/role-r"
    other_practitioner: str = "Practitioner/prac-o"
    payers: dict[str, str] = field(default_factory=lambda: {
        "x": "Organization/payer-x", "y": "Organization/payer-y",
    })
    care_teams: list[tuple[str, str, str]] = field(default_factory=list)
    """(patient key, status, member) of each CareTeam."""
    gp: dict[str, str] = field(default_factory=dict)
    """patient key -> generalPractitioner reference."""
    encounters: list[tuple[str, str, float | None]] = field(default_factory=list)
    """(patient key, participant, days since it ended) of each Encounter."""
    resources: dict[str, Resource] = field(default_factory=dict)
    """Every resource, by `Type/id`."""
    owner: dict[str, str] = field(default_factory=dict)
    """`Type/id` -> key of the patient whose compartment it is in (clinical data only)."""
    payer_of: dict[str, str] = field(default_factory=dict)
    """`Type/id` -> payer key, for Coverage, Claim and ExplanationOfBenefit."""

    def add(self, resource: Resource, owner: str | None = None) -> Resource:
        ref = f"{resource['resourceType']}/{resource['id']}"
        self.resources[ref] = resource
        if owner is not None:
            self.owner[ref] = owner
        return resource

    def related(self, days: int) -> set[str]:
        """The patients D has an active care relationship with (access.py's rules), from the
        facts of this world."""
        selves = {self.practitioner, self.role}
        keys = {k for k, status, member in self.care_teams
                if status == "active" and member in selves}
        keys |= {k for k, ref in self.gp.items() if ref in selves}
        keys |= {k for k, who, ended in self.encounters
                 if who in selves and (ended is None or ended <= days)}
        return keys

    def of(self, type_: str, keys: Iterable[str] | None = None) -> set[str]:
        """Ids of the `type_` resources in the compartment of patients `keys` (all: None)."""
        wanted = None if keys is None else set(keys)
        return {
            ref.split("/")[1] for ref in self.resources
            if ref.startswith(f"{type_}/")
            and (wanted is None or self.owner.get(ref) in wanted)
        }

    def refs(self, keys: Iterable[str], types: Iterable[str] = CLINICAL) -> list[str]:
        """`Type/id` of the clinical resources (and Patients) of patients `keys`."""
        wanted = set(keys)
        kinds = {*types, "Patient"}
        return sorted(ref for ref, k in self.owner.items()
                      if k in wanted and ref.split("/")[0] in kinds)


def patient_ref(key: str) -> str:
    return f"Patient/pat-{key}"


def build_world(days: int) -> World:
    """The world of every test (`days`: the server's encounter_access_days)."""
    w = World()
    d, r = w.practitioner, w.role
    w.care_teams = [("a", "active", r), ("b", "inactive", d)]
    w.gp = {"c": d}
    w.encounters = [("e", d, days / 3), ("f", d, days * 2)]
    for ref, family in ((d, "Dunmore"), (w.other_practitioner, "Osgood")):
        w.add({"resourceType": "Practitioner", "id": ref.split("/")[1],
               "name": [{"family": family, "given": ["Doc"]}]})
    w.add({"resourceType": "PractitionerRole", "id": r.split("/")[1], "active": True,
           "practitioner": {"reference": d}})
    w.add({"resourceType": "Location", "id": "loc-1", "name": "Ward 1", "status": "active"})
    for key, payer in w.payers.items():
        w.add({"resourceType": "Organization", "id": payer.split("/")[1], "active": True,
               "name": f"Payer {key.upper()}"})
    for i, key in enumerate(PATIENT_KEYS):
        _add_patient(w, key, i)
    for k, status, member in w.care_teams:
        w.add({
            "resourceType": "CareTeam", "id": f"ct-{k}", "status": status,
            "subject": {"reference": patient_ref(k)},
            "participant": [{"member": {"reference": member}}],
        }, k)
    for k, who, ended in w.encounters:
        end = when(ended or 0)
        w.add({
            "resourceType": "Encounter", "id": f"enc-{k}-care", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "subject": {"reference": patient_ref(k)},
            "participant": [{"individual": {"reference": who}}],
            "period": {"start": when((ended or 0) + 1), "end": end},
        }, k)
    # Links across patients: a visible resource pointing at a hidden one and the reverse.
    w.resources["Observation/obs-a-2"]["derivedFrom"] = [{"reference": "Observation/obs-b-1"}]
    w.resources["Observation/obs-b-2"]["focus"] = [{"reference": patient_ref("a")}]
    for key, patient in (("x", "a"), ("y", "b")):
        _add_payer_data(w, key, patient)
    return w


def _add_patient(w: World, key: str, i: int) -> None:
    pid = f"pat-{key}"
    patient: Resource = {
        "resourceType": "Patient", "id": pid,
        "identifier": [{"system": "urn:test:mrn", "value": f"MRN-{key.upper()}"}],
        "name": [{"family": FAMILIES[key], "given": [GIVEN[key]]}],
        "gender": "female" if i % 2 else "male", "birthDate": BIRTH[key],
        "telecom": [{"system": "phone", "value": f"555-010{i}"}],
    }
    if key in w.gp:
        patient["generalPractitioner"] = [{"reference": w.gp[key]}]
    w.add(patient, key)
    subject = {"reference": f"Patient/{pid}"}
    for n, code in ((1, CODES[key]), (2, SHARED_CODE)):
        w.add({
            "resourceType": "Observation", "id": f"obs-{key}-{n}", "status": "final",
            "identifier": [{"system": OBS_SYSTEM, "value": f"obs-{key}-{n}"}],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": subject, "effectiveDateTime": when(20 + i),
            "valueQuantity": {"value": 60 + 7 * i + n, "unit": "1"},
        }, key)
    w.add({
        "resourceType": "Condition", "id": f"cond-{key}", "subject": subject,
        "code": {"text": f"Condition of {FAMILIES[key]}"},
    }, key)
    w.add({
        "resourceType": "Encounter", "id": f"enc-{key}", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": subject, "period": {"start": when(400), "end": when(399)},
    }, key)
    w.add({
        "resourceType": "MedicationRequest", "id": f"mr-{key}", "status": "active",
        "intent": "order", "medicationCodeableConcept": {"text": f"Drug {i}"},
        "subject": subject,
    }, key)


def _add_payer_data(w: World, key: str, patient: str) -> None:
    payer = {"reference": w.payers[key]}
    coverage = f"Coverage/cov-{key}"
    w.payer_of[coverage] = key
    w.add({
        "resourceType": "Coverage", "id": f"cov-{key}", "status": "active",
        "beneficiary": {"reference": patient_ref(patient)}, "payor": [payer],
    }, patient)
    claim = f"Claim/claim-{key}"
    w.payer_of[claim] = key
    w.add({
        "resourceType": "Claim", "id": f"claim-{key}", "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                             "code": "professional"}]},
        "use": "claim", "patient": {"reference": patient_ref(patient)}, "created": when(5)[:10],
        "provider": {"reference": w.practitioner}, "insurer": payer,
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": coverage}}],
    }, patient)
    eob = f"ExplanationOfBenefit/eob-{key}"
    w.payer_of[eob] = key
    w.add({
        "resourceType": "ExplanationOfBenefit", "id": f"eob-{key}", "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                             "code": "professional"}]},
        "use": "claim", "patient": {"reference": patient_ref(patient)}, "created": when(4)[:10],
        "insurer": payer, "provider": {"reference": w.practitioner}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"reference": coverage}}],
    }, patient)


async def load_world(server: AuthServer) -> World:
    """Build the world and store it with the system client (one transaction)."""
    world = build_world(server.app.state.settings.encounter_access_days)
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": res, "request": {"method": "PUT", "url": ref}}
            for ref, res in world.resources.items()
        ],
    }
    r = await server.http.post("/", json=bundle, headers=server.system)
    assert r.status_code == 200, r.text
    return world


@pytest.fixture
async def world(auth_server: AuthServer) -> World:
    return await load_world(auth_server)


# --- helpers ---------------------------------------------------------------------------------


def ids(bundle: Resource, type_: str | None = None) -> set[str]:
    return {
        e["resource"]["id"] for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") != "outcome"
        and (type_ is None or e["resource"]["resourceType"] == type_)
    }


def refs_of(bundle: Resource) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
        if "resource" in e and e.get("search", {}).get("mode") != "outcome"
    }


async def search_all(
    server: AuthServer, path: str, headers: dict[str, str], **params: str
) -> Resource:
    r = await server.http.get(path, params={"_count": "1000", **params}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def issue_codes(response: httpx.Response) -> list[str]:
    return [i["code"] for i in response.json().get("issue", [])]


def practitioner(server: AuthServer, world: World, scope: str = "user/*.cruds",
                 **extra: str) -> dict[str, str]:
    return server.headers(role="practitioner", resource=world.practitioner, scope=scope,
                          sub="dr-d", **extra)


def days(server: AuthServer) -> int:
    return server.app.state.settings.encounter_access_days


def missing_id(type_: str) -> str:
    return f"{type_.lower()}-that-never-existed"


def like_missing(hidden: httpx.Response, missing: httpx.Response, hidden_id: str,
                 absent_id: str) -> bool:
    """The answer about a hidden resource is the answer about one that does not exist (its id
    aside): same status, same OperationOutcome."""
    return hidden.status_code == missing.status_code == 404 and (
        hidden.text.replace(hidden_id, absent_id) == missing.text
    )




# --- who is asking, and what the rules give them ---------------------------------------------

DIRECTORY = frozenset(("Practitioner", "PractitionerRole", "Organization", "Location"))
PAYER_TYPES = frozenset(("Coverage", "Claim", "ExplanationOfBenefit"))
OK, HIDDEN, FORBIDDEN = "ok", "hidden", "forbidden"


@dataclass(frozen=True)
class Caller:
    name: str
    role: str | None
    resource: str | None
    scope: str
    types: frozenset[str] | None = None
    """The types its scopes grant reading and searching (None: every type)."""
    patient_context_only: bool = False
    """Its only scopes are `patient/` ones: nothing outside the patient's compartment."""

    def headers(self, server: AuthServer) -> dict[str, str]:
        return server.headers(role=self.role, resource=self.resource, scope=self.scope,
                              sub=self.name)

    def expect(self, world: World, days: int, ref: str) -> str:
        """What the rules of access.py give this caller for reading `ref`."""
        type_ = ref.split("/")[0]
        if self.types is not None and type_ not in self.types:
            return FORBIDDEN
        owner = world.owner.get(ref)
        if self.role is None:
            return OK
        if type_ == "AuditEvent":
            # Auditors see all of them; patients those about them (decided per event).
            return OK if self.role == "auditor" else (
                HIDDEN if self.role == "patient" else FORBIDDEN)
        if self.role == "admin":
            return OK if type_ in DIRECTORY else FORBIDDEN
        if self.role == "auditor":
            return OK if type_ == "AuditEvent" else FORBIDDEN
        if self.role == "insurer":
            if type_ not in PAYER_TYPES:
                return FORBIDDEN
            payer = world.payers[world.payer_of[ref]]
            return OK if payer == self.resource else HIDDEN
        if type_ in DIRECTORY:
            return HIDDEN if self.patient_context_only else OK
        if self.role == "patient":
            mine = self.resource == patient_ref(owner) if owner else False
            return OK if mine else HIDDEN
        assert self.role == "practitioner" and owner is not None
        return OK if owner in world.related(days) else HIDDEN


D_REF = "Practitioner/prac-d"
CALLERS = {
    c.name: c for c in (
        Caller("practitioner", "practitioner", D_REF, "user/*.cruds"),
        Caller("practitioner-observations-only", "practitioner", D_REF, "user/Observation.rs",
               frozenset(("Observation",))),
        Caller("patient", "patient", "Patient/pat-a", "patient/*.rs", patient_context_only=True),
        Caller("patient-user-scopes", "patient", "Patient/pat-a", "user/*.cruds"),
        Caller("admin", "admin", None, "user/*.cruds"),
        Caller("auditor", "auditor", None, "user/*.rs"),
        Caller("insurer", "insurer", "Organization/payer-x", "user/*.rs"),
        Caller("backend-observations", None, None, "system/Observation.rs",
               frozenset(("Observation",))),
    )
}


def outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return OK
    if response.status_code == 403:
        return FORBIDDEN
    if response.status_code == 404:
        return HIDDEN
    return f"status {response.status_code}: {response.text[:200]}"


def expectations(caller: Caller, world: World, days: int) -> dict[str, str]:
    """What `caller` may do with each resource of the world. Every caller is refused something
    (and all but the auditor see something), so a server that let everyone see everything, or
    nothing, would fail."""
    want = {ref: caller.expect(world, days, ref) for ref in world.resources}
    assert set(want.values()) - {OK}, caller.name
    assert OK in want.values() or caller.role == "auditor", caller.name
    return want


# --- the roles x interactions matrix ---------------------------------------------------------


@pytest.mark.parametrize("name", list(CALLERS))
async def test_search_finds_exactly_what_the_caller_may_see(
    auth_server: AuthServer, world: World, name: str
) -> None:
    caller = CALLERS[name]
    want = expectations(caller, world, days(auth_server))
    headers = caller.headers(auth_server)
    types = sorted({ref.split("/")[0] for ref in world.resources})
    got: dict[str, str] = {}
    for type_ in types:
        r = await auth_server.http.get(f"/{type_}", params={"_count": "1000"}, headers=headers)
        found = {f"{type_}/{i}" for i in ids(r.json())} if r.status_code == 200 else set()
        for ref in (ref for ref in world.resources if ref.startswith(f"{type_}/")):
            got[ref] = OK if ref in found else HIDDEN if r.status_code == 200 else outcome(r)
    # A type that is searchable at all answers 200 (leaving out what is hidden), so a type
    # whose resources are all hidden is answered 200 with none of them.
    assert got == want


@pytest.mark.parametrize("name", list(CALLERS))
async def test_vread_answers_as_the_rules_say(
    auth_server: AuthServer, world: World, name: str
) -> None:
    caller = CALLERS[name]
    want = expectations(caller, world, days(auth_server))
    headers = caller.headers(auth_server)
    got: dict[str, str] = {}
    for ref in world.resources:
        type_ = ref.split("/")[0]
        r = await auth_server.http.get(f"/{ref}/_history/1", headers=headers)
        got[ref] = outcome(r)
        if r.status_code == 200:
            assert r.json()["id"] == ref.split("/")[1]
        elif r.status_code == 404:
            missing = await auth_server.http.get(
                f"/{type_}/{missing_id(type_)}/_history/1", headers=headers)
            assert missing.status_code == 404
            assert issue_codes(r) == issue_codes(missing)
    assert got == want


@pytest.mark.parametrize("name", list(CALLERS))
async def test_instance_history_answers_as_the_rules_say(
    auth_server: AuthServer, world: World, name: str
) -> None:
    caller = CALLERS[name]
    want = expectations(caller, world, days(auth_server))
    headers = caller.headers(auth_server)
    got: dict[str, str] = {}
    for ref in world.resources:
        type_, id_ = ref.split("/")
        r = await auth_server.http.get(f"/{ref}/_history", headers=headers)
        got[ref] = outcome(r)
        if r.status_code == 200:
            assert {e["resource"]["id"] for e in r.json()["entry"]} == {id_}
        elif r.status_code == 404:
            missing = await auth_server.http.get(f"/{type_}/{missing_id(type_)}/_history",
                                                 headers=headers)
            assert like_missing(r, missing, id_, missing_id(type_)), (r.text, missing.text)
    assert got == want


async def read_outcomes(server: AuthServer, world: World, caller: Caller) -> dict[str, str]:
    headers = caller.headers(server)
    got: dict[str, str] = {}
    for ref in world.resources:
        type_, id_ = ref.split("/")
        r = await server.http.get(f"/{ref}", headers=headers)
        got[ref] = outcome(r)
        if r.status_code == 200:
            assert r.json()["id"] == id_
        elif r.status_code == 404:
            missing = await server.http.get(f"/{type_}/{missing_id(type_)}", headers=headers)
            if not like_missing(r, missing, id_, missing_id(type_)):
                got[ref] = f"404 unlike a missing id: {r.text} / {missing.text}"
    return got


@pytest.mark.parametrize("name", list(CALLERS))
async def test_read_answers_as_the_rules_say(
    auth_server: AuthServer, world: World, name: str
) -> None:
    caller = CALLERS[name]
    want = expectations(caller, world, days(auth_server))
    assert await read_outcomes(auth_server, world, caller) == want


async def test_vread_of_a_hidden_resource_reads_exactly_like_a_missing_one(
    auth_server: AuthServer, world: World
) -> None:
    headers = practitioner(auth_server, world)
    hidden_id = sorted(world.of("Observation", {"b"}))[0]
    absent = missing_id("Observation")
    hidden = await auth_server.http.get(f"/Observation/{hidden_id}/_history/1", headers=headers)
    missing = await auth_server.http.get(f"/Observation/{absent}/_history/1", headers=headers)
    assert like_missing(hidden, missing, hidden_id, absent), (hidden.text, missing.text)


# --- practitioner ----------------------------------------------------------------------------


async def test_practitioner_care_relationships_decide_whose_record_is_open(
    auth_server: AuthServer, world: World
) -> None:
    """Active CareTeam through the PractitionerRole (A), general practitioner (C), a recent
    Encounter (E) open a record; an inactive CareTeam (B) and an Encounter older than
    encounter_access_days (F) do not."""
    headers = practitioner(auth_server, world)
    window = days(auth_server)
    related = world.related(window)
    for key in PATIENT_KEYS:
        bundle = await search_all(auth_server, "/Observation", headers,
                                  subject=patient_ref(key))
        expected = world.of("Observation", {key}) if key in related else set()
        assert ids(bundle) == expected, key
    assert related == {"a", "c", "e"}  # the relationships the world was built with
    ended = {k: e for k, who, e in world.encounters if who == world.practitioner}
    assert ended["e"] is not None and ended["e"] < window < (ended["f"] or 0)
    assert "e" in related and "f" not in related


async def audit_trail(server: AuthServer, **params: str) -> list[Resource]:
    """The AuditEvents (matching `params`) as the system client finds them, oldest first."""
    bundle = await search_all(server, "/AuditEvent", server.system, _sort="_lastUpdated",
                              **params)
    return [e["resource"] for e in bundle.get("entry", [])]


def mentions(event: Resource) -> set[str]:
    """Every reference an AuditEvent makes: its agents and entities (versions as `Type/id`)."""
    found = {a.get("who", {}).get("reference") for a in event.get("agent", [])}
    for entity in event.get("entity", []):
        ref = entity.get("what", {}).get("reference")
        if ref:
            found.add("/".join(ref.split("/")[:2]))
    return {r for r in found if r}


@pytest.mark.parametrize("name", list(CALLERS))
async def test_only_auditors_and_patients_may_search_the_audit_trail(
    auth_server: AuthServer, world: World, name: str
) -> None:
    caller = CALLERS[name]
    allowed = caller.expect(world, days(auth_server), "AuditEvent/any") != FORBIDDEN
    r = await auth_server.http.get("/AuditEvent", headers=caller.headers(auth_server))
    assert r.status_code == (200 if allowed else 403), r.text


# --- practitioner: writes --------------------------------------------------------------------


def new_observation(key: str, value: str) -> Resource:
    return {
        "resourceType": "Observation", "status": "final",
        "identifier": [{"system": OBS_SYSTEM, "value": value}],
        "code": {"coding": [{"system": LOINC, "code": SHARED_CODE}]},
        "subject": {"reference": patient_ref(key)},
    }


async def by_identifier(server: AuthServer, value: str) -> set[str]:
    bundle = await search_all(server, "/Observation", server.system,
                              identifier=f"{OBS_SYSTEM}|{value}")
    return ids(bundle)


async def test_practitioner_creates_observations_only_for_patients_in_their_care(
    auth_server: AuthServer, world: World
) -> None:
    headers = practitioner(auth_server, world)
    related = world.related(days(auth_server))
    for key in PATIENT_KEYS:
        r = await auth_server.http.post("/Observation", json=new_observation(key, f"new-{key}"),
                                        headers=headers)
        assert r.status_code == (201 if key in related else 403), (key, r.text)
        stored = await by_identifier(auth_server, f"new-{key}")
        assert stored == ({r.json()["id"]} if key in related else set())


async def test_practitioner_cannot_update_patch_or_delete_a_record_outside_their_care(
    auth_server: AuthServer, world: World
) -> None:
    headers = practitioner(auth_server, world)
    hidden = world.refs({"b"})
    assert hidden
    for ref in hidden:
        changed = {**world.resources[ref], "language": "fr"}
        put = await auth_server.http.put(f"/{ref}", json=changed, headers=headers)
        patch = await auth_server.http.patch(
            f"/{ref}", content=b'[{"op": "add", "path": "/language", "value": "fr"}]',
            headers={**headers, "Content-Type": "application/json-patch+json"})
        delete = await auth_server.http.delete(f"/{ref}", headers=headers)
        assert (put.status_code, patch.status_code, delete.status_code) == (404, 404, 404), ref
        stored = await auth_server.http.get(f"/{ref}", headers=auth_server.system)
        assert stored.status_code == 200 and stored.json()["meta"]["versionId"] == "1", ref
    # The same changes to a resource in D's care go through.
    ref = world.refs({"a"}, ["Observation"])[0]
    changed = {**world.resources[ref], "language": "fr"}
    assert (await auth_server.http.put(f"/{ref}", json=changed, headers=headers)).status_code \
        == 200


async def test_practitioner_cannot_move_a_record_to_a_patient_outside_their_care(
    auth_server: AuthServer, world: World
) -> None:
    headers = practitioner(auth_server, world)
    ref = "Observation/obs-a-1"
    moved = {**world.resources[ref], "subject": {"reference": patient_ref("b")}}
    r = await auth_server.http.put(f"/{ref}", json=moved, headers=headers)
    assert r.status_code == 403, r.text
    stored = (await auth_server.http.get(f"/{ref}", headers=auth_server.system)).json()
    assert stored["subject"] == world.resources[ref]["subject"]
    assert stored["meta"]["versionId"] == "1"


# --- practitioner: break the glass -----------------------------------------------------------


async def test_break_glass_opens_a_record_and_is_audited_with_its_reason(
    auth_server: AuthServer, world: World
) -> None:
    plain = practitioner(auth_server, world)
    glass = practitioner(auth_server, world, **{"X-Break-Glass": BREAK_GLASS_REASON})
    assert "b" not in world.related(days(auth_server))
    query = {"subject": patient_ref("b")}
    assert ids(await search_all(auth_server, "/Observation", plain, **query)) == set()
    opened = await search_all(auth_server, "/Observation", glass, **query)
    assert ids(opened) == world.of("Observation", {"b"})
    r = await auth_server.http.get(f"/{patient_ref('b')}", headers=glass)
    assert r.status_code == 200 and r.json()["name"][0]["family"] == FAMILIES["b"]

    events = [e for e in await audit_trail(auth_server)
              if e["agent"][0].get("altId") == "dr-d"]
    assert [e["subtype"][0]["code"] for e in events] == ["search-type", "search-type", "read"]
    assert "purposeOfUse" not in events[0]["agent"][0]
    for event in events[1:]:
        purpose = event["agent"][0]["purposeOfUse"][0]
        assert purpose["coding"][0]["code"] == "BTG"
        assert purpose["text"] == BREAK_GLASS_REASON
    assert patient_ref("b") in mentions(events[2])


async def test_break_glass_is_for_practitioners_only(
    auth_server: AuthServer, world: World
) -> None:
    for name in ("patient", "patient-user-scopes", "insurer"):
        caller = CALLERS[name]
        headers = {**caller.headers(auth_server), "X-Break-Glass": BREAK_GLASS_REASON}
        want = {ref for ref, o in expectations(caller, world, days(auth_server)).items()
                if o == OK and ref.startswith(("Observation/", "Coverage/"))}
        found = set()
        for type_ in ("Observation", "Coverage"):
            r = await auth_server.http.get(f"/{type_}", headers=headers)
            if r.status_code == 200:
                found |= {f"{type_}/{i}" for i in ids(r.json())}
        assert found == want, name


# --- patient ---------------------------------------------------------------------------------

PATIENT_WRITE_SCOPES = ["patient/*.rs patient/Patient.u", "user/*.cruds"]
"""A patient app's scopes, and a patient token with every user scope (the role limits it)."""
CONTACT_CHANGES: dict[str, Any] = {
    "telecom": [{"system": "email", "value": "a@example.org"}],
    "address": [{"line": ["1 New Street"], "city": "Springfield"}],
    "name": [{"family": "Ashford-Lee", "given": ["Ana"]}],
    "communication": [{"language": {"text": "Dutch"}, "preferred": True}],
}
OTHER_CHANGES: dict[str, Any] = {"birthDate": "2001-02-03", "gender": "other"}


def patient_a(server: AuthServer, scope: str) -> dict[str, str]:
    return server.headers(role="patient", resource=patient_ref("a"), scope=scope, sub="pat-a")


async def current(server: AuthServer, ref: str) -> Resource:
    r = await server.http.get(f"/{ref}", headers=server.system)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("scope", PATIENT_WRITE_SCOPES)
async def test_patient_updates_their_own_contact_details(
    auth_server: AuthServer, world: World, scope: str
) -> None:
    headers = patient_a(auth_server, scope)
    for element, value in CONTACT_CHANGES.items():
        mine = await current(auth_server, patient_ref("a"))
        assert mine.get(element) != value
        r = await auth_server.http.put(f"/{patient_ref('a')}", json={**mine, element: value},
                                       headers=headers)
        assert r.status_code == 200, (element, r.text)
        assert (await current(auth_server, patient_ref("a")))[element] == value


@pytest.mark.parametrize("scope", PATIENT_WRITE_SCOPES)
async def test_patient_may_not_change_birth_date_or_gender(
    auth_server: AuthServer, world: World, scope: str
) -> None:
    headers = patient_a(auth_server, scope)
    before = await current(auth_server, patient_ref("a"))
    for element, value in OTHER_CHANGES.items():
        assert before[element] != value
        r = await auth_server.http.put(f"/{patient_ref('a')}", json={**before, element: value},
                                       headers=headers)
        assert r.status_code == 403, (element, r.text)
        assert element in r.json()["issue"][0]["diagnostics"]
    # Nor sneak one in along with an allowed change.
    sneaky = {**before, "telecom": CONTACT_CHANGES["telecom"], "birthDate": "2001-02-03"}
    r = await auth_server.http.put(f"/{patient_ref('a')}", json=sneaky, headers=headers)
    assert r.status_code == 403
    assert await current(auth_server, patient_ref("a")) == before


@pytest.mark.parametrize("scope", PATIENT_WRITE_SCOPES)
async def test_patient_may_not_create_anything(
    auth_server: AuthServer, world: World, scope: str
) -> None:
    headers = patient_a(auth_server, scope)
    r = await auth_server.http.post("/Observation", json=new_observation("a", "by-patient"),
                                    headers=headers)
    assert r.status_code == 403, r.text
    assert await by_identifier(auth_server, "by-patient") == set()
    newborn = {"resourceType": "Patient", "name": [{"family": "Newborn"}]}
    r = await auth_server.http.post("/Patient", json=newborn, headers=headers)
    assert r.status_code == 403, r.text
    assert ids(await search_all(auth_server, "/Patient", auth_server.system,
                                family="Newborn")) == set()


@pytest.mark.parametrize("scope", PATIENT_WRITE_SCOPES)
async def test_patient_may_not_update_another_patient(
    auth_server: AuthServer, world: World, scope: str
) -> None:
    headers = patient_a(auth_server, scope)
    other = await current(auth_server, patient_ref("b"))
    changed = {**other, "telecom": CONTACT_CHANGES["telecom"]}
    r = await auth_server.http.put(f"/{patient_ref('b')}", json=changed, headers=headers)
    assert r.status_code == 404, r.text
    assert await current(auth_server, patient_ref("b")) == other


@pytest.mark.parametrize("scope", ["patient/*.rs", "user/*.cruds"])
async def test_patient_sees_the_audit_events_about_them_and_no_others(
    auth_server: AuthServer, world: World, scope: str
) -> None:
    headers = patient_a(auth_server, scope)
    me = patient_ref("a")
    assert (await auth_server.http.get(f"/{me}", headers=headers)).status_code == 200
    await search_all(auth_server, "/Observation", headers)
    assert (await auth_server.http.post("/Observation", json=new_observation("a", "x"),
                                        headers=headers)).status_code == 403

    seen = await search_all(auth_server, "/AuditEvent", headers)
    mine = [e["resource"] for e in seen.get("entry", [])]
    about_me = await audit_trail(auth_server, patient=me)
    everything = await audit_trail(auth_server)

    assert mine and all(me in mentions(e) for e in mine)
    # The system's search for patient A finds the same, plus the patient's search itself.
    extra = [e for e in about_me if e["id"] not in {m["id"] for m in mine}]
    assert {m["id"] for m in mine} <= {e["id"] for e in about_me}
    assert len(extra) == 1 and extra[0]["subtype"][0]["code"] == "search-type"
    assert extra[0]["agent"][0]["who"]["reference"] == me
    # The trail holds events about other patients, and the patient saw none of them.
    others = {e["id"] for e in everything if me not in mentions(e)}
    assert any(patient_ref("b") in mentions(e) for e in everything)
    assert others and not others & {m["id"] for m in mine}
    # Events the patient may not see are 404 to them, like a missing one.
    hidden = sorted(others)[0]
    r = await auth_server.http.get(f"/AuditEvent/{hidden}/_history/1", headers=headers)
    assert r.status_code == 404


async def test_patient_audit_view_names_no_other_patient(
    auth_server: AuthServer, world: World
) -> None:
    # Someone (the backend) runs a search that returns patients A and B.
    found = await search_all(auth_server, "/Patient", auth_server.system,
                             family=f"{FAMILIES['a']},{FAMILIES['b']}")
    assert ids(found) == {"pat-a", "pat-b"}
    seen = await search_all(auth_server, "/AuditEvent", patient_a(auth_server, "patient/*.rs"))
    text = str([e["resource"] for e in seen.get("entry", [])])
    assert "pat-b" not in text
    assert FAMILIES["b"] not in text


# --- admin, auditor, insurer, backend ---------------------------------------------------------

DIRECTORY_SAMPLES: dict[str, Resource] = {
    "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Newhire"}]},
    "Organization": {"resourceType": "Organization", "name": "New Clinic"},
    "Location": {"resourceType": "Location", "name": "Ward 9", "status": "active"},
}


@pytest.mark.parametrize("type_", list(DIRECTORY_SAMPLES))
async def test_admin_creates_reads_updates_searches_and_deletes_directory_resources(
    auth_server: AuthServer, world: World, type_: str
) -> None:
    headers = CALLERS["admin"].headers(auth_server)
    created = await auth_server.http.post(f"/{type_}", json=DIRECTORY_SAMPLES[type_],
                                          headers=headers)
    assert created.status_code == 201, created.text
    body = created.json()
    ref = f"{type_}/{body['id']}"
    assert (await auth_server.http.get(f"/{ref}", headers=headers)).status_code == 200
    updated = await auth_server.http.put(f"/{ref}", json={**body, "language": "en"},
                                         headers=headers)
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    listed = await search_all(auth_server, f"/{type_}", headers)
    assert body["id"] in ids(listed)
    assert ids(listed) == world.of(type_) | {body["id"]}
    assert (await auth_server.http.delete(f"/{ref}", headers=headers)).status_code == 200
    assert (await auth_server.http.get(f"/{ref}", headers=auth_server.system)).status_code \
        == 410


async def test_admin_may_not_create_or_search_clinical_data(
    auth_server: AuthServer, world: World
) -> None:
    headers = CALLERS["admin"].headers(auth_server)
    for type_ in ("Patient", "Observation"):
        assert (await auth_server.http.get(f"/{type_}", headers=headers)).status_code == 403
    r = await auth_server.http.post("/Observation", json=new_observation("a", "by-admin"),
                                    headers=headers)
    assert r.status_code == 403
    assert await by_identifier(auth_server, "by-admin") == set()


async def test_auditor_reads_and_searches_every_audit_event(
    auth_server: AuthServer, world: World
) -> None:
    before = {e["id"] for e in await audit_trail(auth_server)}
    headers = CALLERS["auditor"].headers(auth_server)
    seen = await search_all(auth_server, "/AuditEvent", headers)
    assert before and before <= ids(seen)
    one = sorted(before)[0]
    r = await auth_server.http.get(f"/AuditEvent/{one}", headers=headers)
    assert r.status_code == 200 and r.json()["id"] == one
    event = {"resourceType": "AuditEvent", "type": {"code": "x"}, "recorded": when(0),
             "agent": [{"requestor": True}], "source": {"observer": {"display": "me"}}}
    assert (await auth_server.http.post("/AuditEvent", json=event, headers=headers)).status_code \
        == 403


async def test_insurer_sees_only_its_own_payer_coverage_claims_and_benefits(
    auth_server: AuthServer, world: World
) -> None:
    caller = CALLERS["insurer"]
    headers = caller.headers(auth_server)
    mine = {ref for ref, payer in world.payer_of.items()
            if world.payers[payer] == caller.resource}
    assert mine and set(world.payer_of) - mine
    for type_ in sorted(PAYER_TYPES):
        found = {f"{type_}/{i}" for i in ids(await search_all(auth_server, f"/{type_}", headers))}
        assert found == {ref for ref in mine if ref.startswith(f"{type_}/")}
    for ref in world.payer_of:
        r = await auth_server.http.get(f"/{ref}/_history/1", headers=headers)
        assert r.status_code == (200 if ref in mine else 404), ref


async def test_backend_client_is_bound_by_its_system_scopes(
    auth_server: AuthServer, world: World
) -> None:
    headers = CALLERS["backend-observations"].headers(auth_server)
    assert ids(await search_all(auth_server, "/Observation", headers)) \
        == world.of("Observation")
    assert (await auth_server.http.get("/Patient", headers=headers)).status_code == 403
    r = await auth_server.http.post("/Observation", json=new_observation("a", "by-backend"),
                                    headers=headers)
    assert r.status_code == 403
    assert await by_identifier(auth_server, "by-backend") == set()


async def test_scopes_narrower_than_the_role_limit_a_practitioner(
    auth_server: AuthServer, world: World
) -> None:
    headers = CALLERS["practitioner-observations-only"].headers(auth_server)
    related = world.related(days(auth_server))
    assert ids(await search_all(auth_server, "/Observation", headers)) \
        == world.of("Observation", related)
    for path in ("/Condition", "/Condition/cond-a/_history", "/Condition/cond-a/_history/1"):
        assert (await auth_server.http.get(path, headers=headers)).status_code == 403, path
    r = await auth_server.http.post("/Observation", json=new_observation("a", "narrow"),
                                    headers=headers)
    assert r.status_code == 403


async def test_read_of_a_type_outside_the_scopes_is_forbidden(
    auth_server: AuthServer, world: World
) -> None:
    for name, path in (("practitioner-observations-only", "/Condition/cond-a"),
                       ("admin", "/Patient/pat-a"), ("auditor", "/Patient/pat-a"),
                       ("insurer", "/Patient/pat-a"), ("backend-observations", "/Patient/pat-a")):
        r = await auth_server.http.get(path, headers=CALLERS[name].headers(auth_server))
        assert r.status_code == 403, (name, path)
