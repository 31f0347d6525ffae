"""Searching the audit trail: every AuditEvent search parameter, on both engines.

One server per engine and module (`world`) gets a varied audit history through ordinary
requests from two client addresses: Practitioners, Patients and Observations created, read,
vread, searched, listed, updated, patched and deleted; failures (404 unknown id and type, 410
gone, 422 invalid resource, 400 mismatching id); and four AuditEvents that clients POST with
their own shapes (recorded in the past at seconds, fractional and offset precision, agents that
are Practitioners or a Patient, altIds, names with accents and Cyrillic, network addresses,
subtypes with and without a system, types of other systems, absolute and versioned entity
references, an agent with no `who` and no network).

Every expected answer is computed in Python from the AuditEvents as the server returns them
(and the Patients, Practitioners and Observations it holds), by a small reference
implementation of the spec's matching rules below (`token_match`, `string_match`, `prefix_match`,
`target`); no expected id is typed in.

The snapshot. Every request, searches included, records a new AuditEvent, and some of those
match the searches that follow (a search that returns a patient's events names that patient).
So once the history is built the fixture takes a cut instant `cut` between the last event of the
history and the first event of anything after it (checked: the snapshot holds exactly one event
per request made while building, plus the stored event of each client POST), and fetches the
snapshot: every AuditEvent with `_lastUpdated=le<cut>`, paged. Each search case then runs twice:

- as written: the returned events that are in the snapshot must be exactly the expected set, and
  every other returned event must be one recorded after the cut (`meta.lastUpdated > cut`), i.e.
  made by this module's own later requests;
- bounded, with `_lastUpdated=le<cut>` added (an AND over the same query): exactly the expected
  set. Counts (`_total`, `_summary=count`), sort orders and includes use the bounded form only.

Every search pages with a small `_count` (PAGE; WIDE_PAGE for the unbounded form), follows
`next` links and requires no entry twice, and runs with `Prefer: handling=strict`, so a
parameter the server dropped is an error, not a silently wider answer.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from fhir_server.app import create_app
from tests.conftest import BASE, ENGINES, drop_store, make_store, settings_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

Resource = dict[str, Any]
Params = Sequence[tuple[str, str]]
Key = tuple[str, str]

FHIR_JSON = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRICT = {"Prefer": "handling=strict"}
PAGE = 20
"""Page size of the searches: small enough that the broad ones take several pages."""
WIDE_PAGE = 50
"""Page size of the unbounded searches, whose answers grow with every search the module makes."""
ADDRESS = "192.0.2.10"
OTHER_ADDRESS = "198.51.100.7"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
APP_SUBTYPES = "urn:example:app-subtypes"
PORTAL_TYPES = "urn:example:portal-event-type"
CE1_RECORDED = "2024-05-06T07:08:09Z"
"""Seconds precision: the whole second [07:08:09, 07:08:10)."""
CE2_RECORDED = "2023-11-20T23:30:00+02:00"
CE3_RECORDED = "2024-01-15T10:00:00.5Z"
CE4_RECORDED = "2024-05-06T07:08:10Z"
"""The second right after CE1's: the edge of every prefix on CE1's value."""
INSTANT = "%Y-%m-%dT%H:%M:%S.%fZ"


# --- the reference implementation of the matching rules -----------------------------------------


def normalize(text: str) -> str:
    """Case- and accent-insensitive form (search.html#string), for every script."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def string_match(values: Iterable[str], search: str, modifier: str | None = None) -> bool:
    """String search: prefix (case/accent-insensitive), :contains, :exact."""
    for value in values:
        if modifier == "exact" and value == search:
            return True
        if modifier == "contains" and normalize(search) in normalize(value):
            return True
        if modifier is None and normalize(value).startswith(normalize(search)):
            return True
    return False


Coding = tuple[str | None, str | None]


def token_match(codings: Iterable[Coding], search: str) -> bool:
    """Token search: `code`, `system|code`, `|code` (no system), `system|` (any code)."""
    codings = list(codings)
    if "|" not in search:
        return any(code == search for _, code in codings)
    system, code = search.split("|", 1)
    if not system:
        return any(s is None and c == code for s, c in codings)
    if not code:
        return any(s == system for s, _ in codings)
    return any(s == system and c == code for s, c in codings)


_LOCAL = re.compile(
    rf"(?:{re.escape(BASE)}/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{{1,64}})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)


def target(reference: str | None) -> Key | None:
    """(type, id) of a reference relative to this server (or absolute under its base), with
    or without a version."""
    m = _LOCAL.fullmatch(reference or "")
    return (m["type"], m["id"]) if m else None


_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})(?:T(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def span(text: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a date/dateTime/instant, as wide as its precision."""
    m = _DATE.fullmatch(text)
    assert m, text
    tz: timezone = UTC
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][4:6])))
    fraction = m["fraction"] or ""
    start = datetime(
        int(m["year"]), int(m["month"] or 1), int(m["day"] or 1), int(m["hour"] or 0),
        int(m["minute"] or 0), int(m["second"] or 0), int((fraction + "000000")[:6]), tzinfo=tz,
    )
    if m["month"] is None:
        end = start.replace(year=start.year + 1)
    elif m["day"] is None:
        end = (start + timedelta(days=31)).replace(day=1)
    elif m["hour"] is None:
        end = start + timedelta(days=1)
    elif m["second"] is None:
        end = start + timedelta(minutes=1)
    else:
        end = start + timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    return start.astimezone(UTC), end.astimezone(UTC)


def prefix_match(prefix: str, search: str, value: str) -> bool:
    """search.html#prefix on ranges: the target `value` against the search `search`."""
    lo, hi = span(search)
    start, end = span(value)
    within = lo <= start and end <= hi
    return {
        "eq": within,
        "ne": not within,
        "gt": end > hi,
        "lt": start < lo,
        "ge": end > hi or within,
        "le": start < lo or within,
        "sa": start >= hi,
        "eb": end <= lo,
    }[prefix]


# --- what an AuditEvent holds for each parameter --------------------------------------------------


def agents(event: Resource) -> list[Resource]:
    return list(event.get("agent", []))


def agent_refs(event: Resource) -> set[Key]:
    return {k for a in agents(event) if (k := target((a.get("who") or {}).get("reference")))}


def entity_refs(event: Resource) -> set[Key]:
    return {
        k for e in event.get("entity", []) if (k := target((e.get("what") or {}).get("reference")))
    }


def patient_refs(event: Resource) -> set[Key]:
    """`patient`: agent.who and entity.what where they are Patients."""
    return {k for k in agent_refs(event) | entity_refs(event) if k[0] == "Patient"}


def tokens(event: Resource, param: str) -> list[Coding]:
    if param in ("action", "outcome"):
        return [(None, event[param])] if param in event else []
    if param == "altid":
        return [(None, a["altId"]) for a in agents(event) if "altId" in a]
    if param == "subtype":
        return [(c.get("system"), c.get("code")) for c in event.get("subtype", [])]
    if param == "type":
        return [(event["type"].get("system"), event["type"].get("code"))]
    raise AssertionError(param)


def strings(event: Resource, param: str) -> list[str]:
    if param == "agent-name":
        return [a["name"] for a in agents(event) if "name" in a]
    if param == "address":
        return [a["network"]["address"] for a in agents(event) if "address" in a.get("network", {})]
    raise AssertionError(param)


def has(event: Resource, param: str, search: str) -> bool:
    return token_match(tokens(event, param), search)


def recorded(event: Resource) -> str:
    return str(event["recorded"])


def updated(event: Resource) -> str:
    return str(event["meta"]["lastUpdated"])


def names(resource: Resource | None) -> list[str]:
    """The strings a Patient's or Practitioner's `name` parameter matches."""
    found: list[str] = []
    for name in (resource or {}).get("name", []):
        for part in ("family", "text"):
            if part in name:
                found.append(name[part])
        for part in ("given", "prefix", "suffix"):
            found += name.get(part, [])
    return found


def instant(moment: datetime) -> str:
    return moment.strftime(INSTANT)


# --- the server and its history -------------------------------------------------------------------


@dataclass
class World:
    engine: str
    http: httpx.AsyncClient
    """The client most requests come from (at ADDRESS)."""
    other: httpx.AsyncClient
    """Another client (at OTHER_ADDRESS)."""
    ids: dict[str, str] = field(default_factory=dict)
    """Names of the resources the history created ("p1", "o2", "pr1", "ce3", ...) -> id."""
    requests: int = 0
    """Requests made while building the history (each leaves one event)."""
    client_events: int = 0
    cut: str = ""
    events: list[Resource] = field(default_factory=list)
    """The snapshot: every AuditEvent up to `cut`, in `_lastUpdated` order."""
    live: dict[Key, Resource] = field(default_factory=dict)
    """The Patients, Practitioners and Observations the server holds at the cut."""

    def __getitem__(self, name: str) -> str:
        return self.ids[name]

    @property
    def snapshot_ids(self) -> set[str]:
        return {e["id"] for e in self.events}

    def expected(self, predicate: Callable[[Resource], bool]) -> set[str]:
        return {e["id"] for e in self.events if predicate(e)}

    def by_id(self, event_id: str) -> Resource:
        return next(e for e in self.events if e["id"] == event_id)

    def server_events(self) -> list[Resource]:
        """The events the server recorded itself, in `recorded` order."""
        mine = [e for e in self.events if e["type"].get("system") == EVENT_TYPE]
        return sorted(mine, key=lambda e: span(recorded(e)))

    def name_of(self, key: Key) -> list[str]:
        return names(self.live.get(key))

    async def send(self, method: str, path: str, status: int, *, other: bool = False,
                   **request: Any) -> httpx.Response:
        http = self.other if other else self.http
        response = await http.request(method, path, **request)
        assert response.status_code == status, (method, path, response.text)
        self.requests += 1
        return response

    async def create(self, name: str, resource: Resource, *, other: bool = False) -> Resource:
        response = await self.send("POST", f"/{resource['resourceType']}", 201, other=other,
                                   json=resource, headers=FHIR_JSON)
        body: Resource = response.json()
        self.ids[name] = body["id"]
        return body


def observation(patient_id: str, status: str = "final", text: str = "heart rate") -> Resource:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def client_events(w: World) -> dict[str, Resource]:
    """AuditEvents of other systems, each with its own shape."""
    source = {"observer": {"display": "a client application"}}
    return {
        "ce1": {
            "resourceType": "AuditEvent",
            "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
            "subtype": [{"system": APP_SUBTYPES, "code": "chart-review"}, {"code": "local-only"}],
            "action": "R",
            "recorded": CE1_RECORDED,
            "outcome": "0",
            "agent": [{
                "requestor": True,
                "who": {"reference": f"Practitioner/{w['pr1']}", "display": "Dr Hausarzt"},
                "altId": "jf-001",
                "name": "Jürgen Фёдоров",
                "network": {"address": "192.0.2.77", "type": "2"},
            }],
            "source": source,
            "entity": [{"what": {"reference": f"Patient/{w['p1']}"}},
                       {"what": {"reference": f"Observation/{w['o1']}"}}],
        },
        "ce2": {
            "resourceType": "AuditEvent",
            "type": {"system": DCM, "code": "110106", "display": "Export"},
            "subtype": [{"system": APP_SUBTYPES, "code": "bulk-export"}],
            "action": "E",
            "recorded": CE2_RECORDED,
            "outcome": "8",
            "agent": [
                {"requestor": True, "who": {"reference": f"Practitioner/{w['pr2']}"},
                 "altId": "zob-7", "name": "Zoë O'Brien"},
                {"requestor": False, "who": {"display": "export robot"}, "name": "Export Robot",
                 "network": {"address": "10.1.2.3", "type": "2"}},
            ],
            "source": source,
            "entity": [{"what": {"reference": f"{BASE}/Patient/{w['p2']}"}},
                       {"what": {"reference": f"Observation/{w['o3']}/_history/1"}}],
        },
        "ce3": {
            "resourceType": "AuditEvent",
            "type": {"system": PORTAL_TYPES, "code": "portal-access"},
            "action": "U",
            "recorded": CE3_RECORDED,
            "outcome": "4",
            "agent": [{
                "requestor": True,
                "who": {"reference": f"Patient/{w['p3']}"},
                "name": "ФЕДОРОВА Анна",
                "network": {"address": "192.0.2.200", "type": "2"},
            }],
            "source": source,
            "entity": [{"what": {"reference": f"Patient/{w['p3']}/_history/1"}}],
        },
        "ce4": {
            "resourceType": "AuditEvent",
            "type": {"system": DCM, "code": "110103", "display": "Patient Care Assignment"},
            "subtype": [{"system": APP_SUBTYPES, "code": "purge"}],
            "action": "D",
            "recorded": CE4_RECORDED,
            "outcome": "0",
            "agent": [{"requestor": False, "altId": "ext-sync", "name": "external sync"}],
            "source": source,
            "entity": [{"what": {"reference": f"Patient/{w['p5']}"}}],
        },
    }


async def build_history(w: World) -> None:
    """Ordinary requests from both clients, then the clients' own AuditEvents."""
    await w.create("pr1", {"resourceType": "Practitioner",
                           "name": [{"family": "Hausarzt", "given": ["Greta"]}]})
    await w.create("pr2", {"resourceType": "Practitioner", "name": [{"family": "Okonkwo"}]},
                   other=True)
    await w.create("p1", {"resourceType": "Patient",
                          "name": [{"family": "Ångström", "given": ["Åsa"]}]})
    await w.create("p2", {"resourceType": "Patient", "name": [{"family": "Smith"}]}, other=True)
    await w.create("p3", {"resourceType": "Patient", "name": [{"family": "Иванова"}]})
    await w.create("p4", {"resourceType": "Patient", "name": [{"family": "Doomed"}]})
    await w.create("p5", {"resourceType": "Patient", "name": [{"family": "Quiet"}]})
    await w.create("o1", observation(w["p1"]))
    o2 = await w.create("o2", observation(w["p1"], text="blood pressure"))
    await w.create("o3", observation(w["p2"]), other=True)
    await w.create("o4", observation(w["p3"]))
    await w.create("o5", observation(w["p4"]))

    # Reads, updates, vread, patch.
    await w.send("GET", f"/Patient/{w['p1']}", 200)
    await w.send("GET", f"/Observation/{w['o1']}", 200, other=True)
    await w.send("PUT", f"/Observation/{w['o2']}", 200, json={**o2, "status": "amended"},
                 headers=FHIR_JSON)
    await w.send("GET", f"/Observation/{w['o2']}/_history/1", 200)
    await w.send("PATCH", f"/Patient/{w['p2']}", 200, other=True, headers=JSON_PATCH,
                 content=orjson.dumps([{"op": "add", "path": "/gender", "value": "male"}]))
    await w.send("GET", f"/Patient/{w['p3']}", 200, other=True)
    await w.send("GET", f"/Practitioner/{w['pr1']}", 200)

    # Searches and history.
    await w.send("GET", "/Observation", 200, params={"subject": f"Patient/{w['p1']}"})
    await w.send("GET", "/Patient", 200, other=True, params={"family": "Smi"})
    await w.send("GET", "/Observation", 200, params={"status": "amended"})
    await w.send("GET", f"/Observation/{w['o2']}/_history", 200)
    await w.send("GET", "/Patient/_history", 200, other=True)

    # Deletions.
    await w.send("DELETE", f"/Observation/{w['o4']}", 200)
    await w.send("DELETE", f"/Patient/{w['p4']}", 200)

    # Failures.
    await w.send("GET", f"/Patient/{w['p1']}-missing", 404)
    await w.send("GET", "/Foo/1", 404, other=True)
    await w.send("GET", f"/Observation/{w['o4']}", 410)
    await w.send("POST", "/Patient", 422, json={"resourceType": "Patient", "gender": 12},
                 headers=FHIR_JSON)
    await w.send("PUT", f"/Patient/{w['p2']}", 400, headers=FHIR_JSON,
                 json={"resourceType": "Patient", "id": w["p1"], "name": [{"family": "X"}]})
    await w.send("PUT", f"/Observation/{w['o3']}", 422, other=True, headers=FHIR_JSON,
                 json={**observation(w["p2"]), "id": w["o3"], "status": "not-a-status"})

    # The clients' own events.
    for name, event in client_events(w).items():
        response = await w.send("POST", "/AuditEvent", 201, json=event, headers=FHIR_JSON)
        w.ids[name] = response.json()["id"]
        w.client_events += 1

    # A last read, so the client events sit in the middle of the trail.
    await w.send("GET", f"/Patient/{w['p5']}", 200)


async def pages(http: httpx.AsyncClient, path: str, params: Params) -> list[Resource]:
    """Every page of a GET search, following `next` links, under strict handling."""
    response = await http.get(path, params=list(params), headers=STRICT)
    bundles = []
    while True:
        assert response.status_code == 200, (path, params, response.text)
        bundle = response.json()
        bundles.append(bundle)
        following = [x["url"] for x in bundle.get("link", []) if x["relation"] == "next"]
        if not following:
            return bundles
        assert len(bundles) < 200, (path, params)
        response = await http.get(following[0], headers=STRICT)


@dataclass
class Found:
    matches: list[Resource]
    included: list[Resource]
    totals: list[int | None]
    pages: int

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.matches]

    @property
    def included_keys(self) -> set[Key]:
        return {(r["resourceType"], r["id"]) for r in self.included}


async def run(http: httpx.AsyncClient, path: str, params: Params, count: int = PAGE) -> Found:
    """A search over all its pages: its matches (in order, none twice), what it included,
    and the total of each page."""
    bundles = await pages(http, path, [*params, ("_count", str(count))])
    found = Found([], [], [b.get("total") for b in bundles], len(bundles))
    for bundle in bundles:
        for entry in bundle.get("entry", []):
            mode = entry["search"]["mode"]
            assert mode in ("match", "include"), (params, entry)
            (found.matches if mode == "match" else found.included).append(entry["resource"])
    assert len(found.ids) == len(set(found.ids)), (params, found.ids)
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    engine: str = request.param
    tmp = tmp_path_factory.mktemp(f"audit-search-{engine}")
    store, handle = await make_store(engine, tmp)
    app = create_app(settings_for(tmp, audit_source="audit-search-site"), store)
    try:
        async with app.router.lifespan_context(app):
            first = httpx.ASGITransport(app=app, raise_app_exceptions=False,
                                        client=(ADDRESS, 40001))
            second = httpx.ASGITransport(app=app, raise_app_exceptions=False,
                                         client=(OTHER_ADDRESS, 40002))
            async with (
                httpx.AsyncClient(transport=first, base_url=BASE, timeout=120) as http,
                httpx.AsyncClient(transport=second, base_url=BASE, timeout=120) as other,
            ):
                w = World(engine, http, other)
                await build_history(w)
                await asyncio.sleep(0.01)
                w.cut = instant(datetime.now(UTC))
                await asyncio.sleep(0.01)
                snapshot = await run(http, "/AuditEvent",
                                     [("_lastUpdated", f"le{w.cut}"), ("_sort", "_lastUpdated")])
                w.events = snapshot.matches
                for type_ in ("Patient", "Practitioner", "Observation"):
                    for resource in (await run(http, f"/{type_}", [])).matches:
                        w.live[(type_, resource["id"])] = resource
                yield w
    finally:
        await drop_store(handle)


# --- checking a search ----------------------------------------------------------------------------


def bounded(w: World, *params: tuple[str, str]) -> list[tuple[str, str]]:
    return [*params, ("_lastUpdated", f"le{w.cut}")]


async def check_search(w: World, params: Params, expected: set[str], *,
                       empty: bool = False) -> None:
    """The search, as written and bounded by the cut, finds exactly `expected` among the
    snapshot (see the module docstring)."""
    if not empty:
        assert expected, f"the history gives {params} nothing to find"
    assert expected <= w.snapshot_ids
    found = await run(w.http, "/AuditEvent", params, count=WIDE_PAGE)
    later = [r for r in found.matches if r["id"] not in w.snapshot_ids]
    assert {i for i in found.ids if i in w.snapshot_ids} == expected, params
    assert all(updated(r) > w.cut for r in later), [updated(r) for r in later]
    within = await run(w.http, "/AuditEvent", bounded(w, *params))
    assert set(within.ids) == expected, params


@dataclass(frozen=True)
class Case:
    params: Callable[[World], list[tuple[str, str]]]
    expect: Callable[[World, Resource], bool]
    empty: bool = False
    """The answer may be empty (a search that must find nothing)."""


def case(name: str, params: Callable[[World], list[tuple[str, str]]],
         expect: Callable[[World, Resource], bool], *, empty: bool = False) -> Any:
    return pytest.param(Case(params, expect, empty), id=name)


async def check_case(w: World, c: Case) -> None:
    await check_search(w, c.params(w), w.expected(lambda e: c.expect(w, e)), empty=c.empty)


def fixed(*params: tuple[str, str]) -> Callable[[World], list[tuple[str, str]]]:
    return lambda _w: list(params)


def mid(w: World) -> str:
    """`recorded` of the server event in the middle of the trail (microsecond precision)."""
    events = w.server_events()
    return recorded(events[len(events) // 2])


def middle(w: World) -> Resource:
    """The event in the middle of the snapshot (by `_lastUpdated`)."""
    return w.events[len(w.events) // 2]


def third(w: World, n: int) -> str:
    """`meta.lastUpdated` of the event n thirds into the snapshot."""
    return updated(w.events[n * len(w.events) // 3])


def late(w: World) -> str:
    events = w.server_events()
    return recorded(events[3 * len(events) // 4])


def client_event(w: World, event: Resource) -> bool:
    return event["id"] in {w[c] for c in ("ce1", "ce2", "ce3", "ce4")}


PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")

TOKEN_CASES = [
    case("action=R", fixed(("action", "R")), lambda w, e: has(e, "action", "R")),
    case("action=C,U (or)", fixed(("action", "C,U")),
         lambda w, e: has(e, "action", "C") or has(e, "action", "U")),
    case("action=D", fixed(("action", "D")), lambda w, e: has(e, "action", "D")),
    case("outcome=0", fixed(("outcome", "0")), lambda w, e: has(e, "outcome", "0")),
    case("outcome=4", fixed(("outcome", "4")), lambda w, e: has(e, "outcome", "4")),
    case("outcome=8", fixed(("outcome", "8")), lambda w, e: has(e, "outcome", "8")),
    case("subtype=read", fixed(("subtype", "read")), lambda w, e: has(e, "subtype", "read")),
    case("subtype=system|read", fixed(("subtype", f"{INTERACTION}|read")),
         lambda w, e: has(e, "subtype", f"{INTERACTION}|read")),
    case("subtype=|code without system", fixed(("subtype", "|local-only")),
         lambda w, e: has(e, "subtype", "|local-only")),
    case("subtype=|read finds no system-less read", fixed(("subtype", "|read")),
         lambda w, e: has(e, "subtype", "|read"), empty=True),
    case("subtype=system| any code", fixed(("subtype", f"{APP_SUBTYPES}|")),
         lambda w, e: has(e, "subtype", f"{APP_SUBTYPES}|")),
    case("subtype=read,vread (or)", fixed(("subtype", "read,vread")),
         lambda w, e: has(e, "subtype", "read") or has(e, "subtype", "vread")),
    case("subtype=history codes", fixed(
        ("subtype", f"{INTERACTION}|history-instance,{INTERACTION}|history-type")),
         lambda w, e: has(e, "subtype", "history-instance") or has(e, "subtype", "history-type")),
    case("type=system|code", fixed(("type", f"{DCM}|110110")),
         lambda w, e: has(e, "type", f"{DCM}|110110")),
    case("type=other system|", fixed(("type", f"{PORTAL_TYPES}|")),
         lambda w, e: has(e, "type", f"{PORTAL_TYPES}|")),
    case("type=rest (server events)", fixed(("type", "rest")), lambda w, e: has(e, "type", "rest")),
    case("type=DCM codes (or)", fixed(("type", f"{DCM}|110110,{DCM}|110103")),
         lambda w, e: has(e, "type", f"{DCM}|110110") or has(e, "type", f"{DCM}|110103")),
    case("subtype:not=read", fixed(("subtype:not", "read")),
         lambda w, e: not has(e, "subtype", "read")),
    case("subtype:not=read,vread (neither)", fixed(("subtype:not", "read,vread")),
         lambda w, e: not (has(e, "subtype", "read") or has(e, "subtype", "vread"))),
    case("action:not=R", fixed(("action:not", "R")), lambda w, e: not has(e, "action", "R")),
    case("outcome:not=0", fixed(("outcome:not", "0")), lambda w, e: not has(e, "outcome", "0")),
    case("altid=jf-001", fixed(("altid", "jf-001")), lambda w, e: has(e, "altid", "jf-001")),
    case("altid=a,b (or)", fixed(("altid", "zob-7,ext-sync")),
         lambda w, e: has(e, "altid", "zob-7") or has(e, "altid", "ext-sync")),
    case("altid:missing=true", fixed(("altid:missing", "true")),
         lambda w, e: not tokens(e, "altid")),
    case("altid:missing=false", fixed(("altid:missing", "false")),
         lambda w, e: bool(tokens(e, "altid"))),
    case("agent:missing=true", fixed(("agent:missing", "true")), lambda w, e: not agent_refs(e)),
    case("agent:missing=false", fixed(("agent:missing", "false")),
         lambda w, e: bool(agent_refs(e))),
    case("subtype:missing=true", fixed(("subtype:missing", "true")),
         lambda w, e: not tokens(e, "subtype")),
    case("address:missing=true", fixed(("address:missing", "true")),
         lambda w, e: not strings(e, "address")),
    case("patient:missing=true", fixed(("patient:missing", "true")),
         lambda w, e: not patient_refs(e)),
]

STRING_CASES = [
    case("agent-name=jurg (accent-insensitive prefix)", fixed(("agent-name", "jurg")),
         lambda w, e: string_match(strings(e, "agent-name"), "jurg")),
    case("agent-name=JÜRGEN (case)", fixed(("agent-name", "JÜRGEN")),
         lambda w, e: string_match(strings(e, "agent-name"), "JÜRGEN")),
    case("agent-name=фёд (Cyrillic prefix)", fixed(("agent-name", "фёд")),
         lambda w, e: string_match(strings(e, "agent-name"), "фёд")),
    case("agent-name=ФЕД (Cyrillic case)", fixed(("agent-name", "ФЕД")),
         lambda w, e: string_match(strings(e, "agent-name"), "ФЕД")),
    case("agent-name=zoe (diaeresis)", fixed(("agent-name", "zoe")),
         lambda w, e: string_match(strings(e, "agent-name"), "zoe")),
    case("agent-name=export (second agent)", fixed(("agent-name", "export")),
         lambda w, e: string_match(strings(e, "agent-name"), "export")),
    case("agent-name=anon (server events)", fixed(("agent-name", "anon")),
         lambda w, e: string_match(strings(e, "agent-name"), "anon")),
    case("agent-name:contains=фёд", fixed(("agent-name:contains", "фёд")),
         lambda w, e: string_match(strings(e, "agent-name"), "фёд", "contains")),
    case("agent-name:contains=BRIE", fixed(("agent-name:contains", "BRIE")),
         lambda w, e: string_match(strings(e, "agent-name"), "BRIE", "contains")),
    case("agent-name:exact", fixed(("agent-name:exact", "Jürgen Фёдоров")),
         lambda w, e: string_match(strings(e, "agent-name"), "Jürgen Фёдоров", "exact")),
    case("agent-name:exact is case-sensitive", fixed(("agent-name:exact", "jürgen фёдоров")),
         lambda w, e: string_match(strings(e, "agent-name"), "jürgen фёдоров", "exact"),
         empty=True),
    case("agent-name:exact not a prefix", fixed(("agent-name:exact", "Jürgen")),
         lambda w, e: string_match(strings(e, "agent-name"), "Jürgen", "exact"), empty=True),
    case("agent-name=a,b (or)", fixed(("agent-name", "zoe,фед")),
         lambda w, e: string_match(strings(e, "agent-name"), "zoe")
         or string_match(strings(e, "agent-name"), "фед")),
    case("address=192.0 (prefix)", fixed(("address", "192.0")),
         lambda w, e: string_match(strings(e, "address"), "192.0")),
    case("address=198.51", fixed(("address", "198.51")),
         lambda w, e: string_match(strings(e, "address"), "198.51")),
    case("address=10.1 (second agent)", fixed(("address", "10.1")),
         lambda w, e: string_match(strings(e, "address"), "10.1")),
    case("address:exact", fixed(("address:exact", ADDRESS)),
         lambda w, e: string_match(strings(e, "address"), ADDRESS, "exact")),
    case("address:exact not a prefix", fixed(("address:exact", "192.0.2")),
         lambda w, e: string_match(strings(e, "address"), "192.0.2", "exact"), empty=True),
    case("address:contains=.2.2", fixed(("address:contains", ".2.2")),
         lambda w, e: string_match(strings(e, "address"), ".2.2", "contains")),
]


def patient(name: str) -> Callable[[World, Resource], bool]:
    return lambda w, e: ("Patient", w[name]) in patient_refs(e)


REFERENCE_CASES = [
    case("patient=Patient/id", lambda w: [("patient", f"Patient/{w['p1']}")], patient("p1")),
    case("patient=id", lambda w: [("patient", w["p1"])], patient("p1")),
    case("patient=absolute URL of this server",
         lambda w: [("patient", f"{BASE}/Patient/{w['p2']}")],
         patient("p2")),
    case("patient=Patient/id finds an absolute reference",
         lambda w: [("patient", f"Patient/{w['p2']}")],
         patient("p2")),
    case("patient as agent", lambda w: [("patient", f"Patient/{w['p3']}")], patient("p3")),
    case("patient of a deleted Patient", lambda w: [("patient", f"Patient/{w['p4']}")],
         patient("p4")),
    case("patient=a,b (or)", lambda w: [("patient", f"Patient/{w['p1']},Patient/{w['p3']}")],
         lambda w, e: patient("p1")(w, e) or patient("p3")(w, e)),
    case("patient=a&patient=b (and)",
         lambda w: [("patient", f"Patient/{w['p1']}"), ("patient", f"Patient/{w['p3']}")],
         lambda w, e: patient("p1")(w, e) and patient("p3")(w, e)),
    case("patient:missing=false", fixed(("patient:missing", "false")),
         lambda w, e: bool(patient_refs(e))),
    case("entity=Observation/id", lambda w: [("entity", f"Observation/{w['o1']}")],
         lambda w, e: ("Observation", w["o1"]) in entity_refs(e)),
    case("entity=Observation/id of a deleted one", lambda w: [("entity", f"Observation/{w['o4']}")],
         lambda w, e: ("Observation", w["o4"]) in entity_refs(e)),
    case("entity:Patient=id", lambda w: [("entity:Patient", w["p1"])],
         lambda w, e: ("Patient", w["p1"]) in entity_refs(e)),
    case("entity:Observation=id (versioned entity)", lambda w: [("entity:Observation", w["o3"])],
         lambda w, e: ("Observation", w["o3"]) in entity_refs(e)),
    case("entity=Practitioner/id", lambda w: [("entity", f"Practitioner/{w['pr1']}")],
         lambda w, e: ("Practitioner", w["pr1"]) in entity_refs(e)),
    case("agent=Practitioner/id", lambda w: [("agent", f"Practitioner/{w['pr1']}")],
         lambda w, e: ("Practitioner", w["pr1"]) in agent_refs(e)),
    case("agent:Practitioner=id", lambda w: [("agent:Practitioner", w["pr2"])],
         lambda w, e: ("Practitioner", w["pr2"]) in agent_refs(e)),
    case("agent:Patient=id", lambda w: [("agent:Patient", w["p3"])],
         lambda w, e: ("Patient", w["p3"]) in agent_refs(e)),
    case("entity=the AuditEvent a create stored", lambda w: [("entity", f"AuditEvent/{w['ce1']}")],
         lambda w, e: ("AuditEvent", w["ce1"]) in entity_refs(e)),
]

DATE_CASES = [
    *[case(f"date={p} middle server event", lambda w, p=p: [("date", f"{p}{mid(w)}")],
           lambda w, e, p=p: prefix_match(p, mid(w), recorded(e))) for p in PREFIXES],
    *[case(f"date={p} seconds-precision client event", fixed(("date", f"{p}{CE1_RECORDED}")),
           lambda w, e, p=p: prefix_match(p, CE1_RECORDED, recorded(e))) for p in PREFIXES],
    case("date=minute", fixed(("date", "2024-05-06T07:08Z")),
         lambda w, e: prefix_match("eq", "2024-05-06T07:08Z", recorded(e))),
    case("date=eq with an offset", fixed(("date", f"eq{CE2_RECORDED}")),
         lambda w, e: prefix_match("eq", CE2_RECORDED, recorded(e))),
    case("date=same instant in UTC", fixed(("date", "2023-11-20T21:30:00Z")),
         lambda w, e: prefix_match("eq", "2023-11-20T21:30:00Z", recorded(e))),
    case("date=fractional seconds", fixed(("date", CE3_RECORDED)),
         lambda w, e: prefix_match("eq", CE3_RECORDED, recorded(e))),
    case("date=year", fixed(("date", "2024")),
         lambda w, e: prefix_match("eq", "2024", recorded(e))),
    case("date=lt year (client events only)", fixed(("date", "lt2025-01-01T00:00:00Z")),
         lambda w, e: prefix_match("lt", "2025-01-01T00:00:00Z", recorded(e))),
    case("date=ge&date=le (range)", lambda w: [("date", f"ge{mid(w)}"), ("date", f"le{late(w)}")],
         lambda w, e: prefix_match("ge", mid(w), recorded(e))
         and prefix_match("le", late(w), recorded(e))),
    case("date=gt&date=lt around client events",
         fixed(("date", "gt2023-12-31T00:00:00Z"), ("date", f"lt{CE4_RECORDED}")),
         lambda w, e: prefix_match("gt", "2023-12-31T00:00:00Z", recorded(e))
         and prefix_match("lt", CE4_RECORDED, recorded(e))),
    case("date=a,b (or)", fixed(("date", f"{CE1_RECORDED},{CE3_RECORDED}")),
         lambda w, e: prefix_match("eq", CE1_RECORDED, recorded(e))
         or prefix_match("eq", CE3_RECORDED, recorded(e))),
    case("_lastUpdated=ge&lt (range)",
         lambda w: [("_lastUpdated", f"ge{third(w, 1)}"), ("_lastUpdated", f"lt{third(w, 2)}")],
         lambda w, e: prefix_match("ge", third(w, 1), updated(e))
         and prefix_match("lt", third(w, 2), updated(e))),
    case("_lastUpdated=gt middle", lambda w: [("_lastUpdated", f"gt{updated(middle(w))}")],
         lambda w, e: prefix_match("gt", updated(middle(w)), updated(e))),
    case("_lastUpdated=le middle", lambda w: [("_lastUpdated", f"le{updated(middle(w))}")],
         lambda w, e: prefix_match("le", updated(middle(w)), updated(e))),
    case("_lastUpdated=eq one event", lambda w: [("_lastUpdated", updated(w.by_id(w["ce2"])))],
         lambda w, e: prefix_match("eq", updated(w.by_id(w["ce2"])), updated(e))),
]

COMBINED_CASES = [
    case("patient&action=R&outcome=0",
         lambda w: [("patient", f"Patient/{w['p1']}"), ("action", "R"), ("outcome", "0")],
         lambda w, e: patient("p1")(w, e) and has(e, "action", "R") and has(e, "outcome", "0")),
    case("action=C,U&outcome=0", fixed(("action", "C,U"), ("outcome", "0")),
         lambda w, e: (has(e, "action", "C") or has(e, "action", "U")) and has(e, "outcome", "0")),
    case("subtype=read,vread&address=198.51",
         fixed(("subtype", "read,vread"), ("address", "198.51")),
         lambda w, e: (has(e, "subtype", "read") or has(e, "subtype", "vread"))
         and string_match(strings(e, "address"), "198.51")),
    case("outcome=4&address:exact", fixed(("outcome", "4"), ("address:exact", OTHER_ADDRESS)),
         lambda w, e: has(e, "outcome", "4")
         and string_match(strings(e, "address"), OTHER_ADDRESS, "exact")),
    case("entity:Patient&date=lt (client event only)",
         lambda w: [("entity:Patient", w["p1"]), ("date", "lt2025-01-01T00:00:00Z")],
         lambda w, e: ("Patient", w["p1"]) in entity_refs(e)
         and prefix_match("lt", "2025-01-01T00:00:00Z", recorded(e))),
    case("type=rest&subtype:not=read&action=R", fixed(
        ("type", f"{EVENT_TYPE}|rest"), ("subtype:not", "read"), ("action", "R")),
         lambda w, e: has(e, "type", f"{EVENT_TYPE}|rest") and not has(e, "subtype", "read")
         and has(e, "action", "R")),
    case("agent-name=anon&altid:missing=false", fixed(
        ("agent-name", "anon"), ("altid:missing", "false")),
         lambda w, e: string_match(strings(e, "agent-name"), "anon") and bool(tokens(e, "altid")),
         empty=True),
    case("_id=a,b", lambda w: [("_id", f"{w.events[0]['id']},{w['ce3']}")],
         lambda w, e: e["id"] in (w.events[0]["id"], w["ce3"])),
    case("_id=a,b&action", lambda w: [("_id", f"{w.events[0]['id']},{w['ce3']}"), ("action", "U")],
         lambda w, e: e["id"] in (w.events[0]["id"], w["ce3"]) and has(e, "action", "U")),
    case("_id:not&outcome=8", lambda w: [("_id:not", w["ce2"]), ("outcome", "8")],
         lambda w, e: e["id"] != w["ce2"] and has(e, "outcome", "8"), empty=True),
]


def named(w: World, refs: set[Key], type_: str, search: str) -> bool:
    """Some reference of `refs` points at a `type_` the server holds whose name matches."""
    return any(t == type_ and string_match(w.name_of((t, i)), search) for t, i in refs)


def observed_smith(w: World, refs: set[Key]) -> bool:
    """Some reference points at a held Observation whose subject is a held Patient named
    Smith*."""
    for t, i in refs:
        obs = w.live.get((t, i)) if t == "Observation" else None
        subject = target((obs or {}).get("subject", {}).get("reference"))
        if subject and named(w, {subject}, "Patient", "smith"):
            return True
    return False


CHAIN_CASES = [
    case("entity:Patient.name (accents)", fixed(("entity:Patient.name", "ångs")),
         lambda w, e: named(w, entity_refs(e), "Patient", "ångs")),
    case("entity:Patient.name=ANGSTROM", fixed(("entity:Patient.name", "ANGSTROM")),
         lambda w, e: named(w, entity_refs(e), "Patient", "ANGSTROM")),
    case("patient.name (Cyrillic)", fixed(("patient.name", "иван")),
         lambda w, e: named(w, patient_refs(e), "Patient", "иван")),
    case("patient.name=smith", fixed(("patient.name", "smith")),
         lambda w, e: named(w, patient_refs(e), "Patient", "smith")),
    case("patient.name of a deleted Patient", fixed(("patient.name", "doomed")),
         lambda w, e: named(w, patient_refs(e), "Patient", "doomed"), empty=True),
    case("agent:Practitioner.name", fixed(("agent:Practitioner.name", "haus")),
         lambda w, e: named(w, agent_refs(e), "Practitioner", "haus")),
    case("entity:Observation.status", fixed(("entity:Observation.status", "amended")),
         lambda w, e: any(t == "Observation" and w.live.get((t, i), {}).get("status") == "amended"
                          for t, i in entity_refs(e))),
    case("entity:Observation.subject:Patient.name (two links)",
         fixed(("entity:Observation.subject:Patient.name", "smith")),
         lambda w, e: observed_smith(w, entity_refs(e))),
    case("patient._id", lambda w: [("patient._id", w["p2"])], patient("p2")),
    case("patient.name&action=R", fixed(("patient.name", "ångström"), ("action", "R")),
         lambda w, e: named(w, patient_refs(e), "Patient", "ångström") and has(e, "action", "R")),
]


@pytest.mark.parametrize("c", TOKEN_CASES)
async def test_token_search(world: World, c: Case) -> None:
    await check_case(world, c)


@pytest.mark.parametrize("c", STRING_CASES)
async def test_string_search(world: World, c: Case) -> None:
    await check_case(world, c)


@pytest.mark.parametrize("c", REFERENCE_CASES)
async def test_reference_search(world: World, c: Case) -> None:
    await check_case(world, c)


@pytest.mark.parametrize("c", DATE_CASES)
async def test_date_search(world: World, c: Case) -> None:
    await check_case(world, c)


@pytest.mark.parametrize("c", COMBINED_CASES)
async def test_combined_search(world: World, c: Case) -> None:
    await check_case(world, c)


@pytest.mark.parametrize("c", CHAIN_CASES)
async def test_chained_search(world: World, c: Case) -> None:
    await check_case(world, c)


# --- the snapshot itself --------------------------------------------------------------------------


async def test_snapshot_holds_one_event_per_request(world: World) -> None:
    """One event per request of the history, plus each client event as stored; the unbounded
    listing agrees with the snapshot up to the cut."""
    w = world
    assert len(w.events) == w.requests + w.client_events
    assert [updated(e) for e in w.events] == sorted(updated(e) for e in w.events)
    assert all(updated(e) <= w.cut for e in w.events)
    everything = await run(w.http, "/AuditEvent", [("_sort", "_lastUpdated")])
    assert [e for e in everything.matches if updated(e) <= w.cut] == w.events
    # The history covers what the cases rely on.
    assert {e["action"] for e in w.events} == {"C", "R", "U", "D", "E"}
    assert {e["outcome"] for e in w.events} == {"0", "4", "8"}
    assert sum(client_event(w, e) for e in w.events) == w.client_events == 4


# --- versioned references -------------------------------------------------------------------------


async def test_versioned_reference_matches_its_resource(world: World) -> None:
    """`entity=Patient/x/_history/1` finds at least the events naming that version and at most
    those naming the Patient at all (version-specific references match their resource)."""
    w = world
    pid = w["p3"]
    versioned = f"Patient/{pid}/_history/1"
    exact = w.expected(lambda e: any(
        (x.get("what") or {}).get("reference") == versioned for x in e.get("entity", [])))
    any_version = w.expected(lambda e: ("Patient", pid) in entity_refs(e))
    assert exact and exact < any_version
    for params in ([("entity", versioned)], bounded(w, ("entity", versioned))):
        found = {i for i in (await run(w.http, "/AuditEvent", params)).ids if i in w.snapshot_ids}
        assert exact <= found <= any_version, params


# --- POST _search ---------------------------------------------------------------------------------


async def test_post_search_answers_as_get(world: World) -> None:
    w = world
    params = [("patient", f"Patient/{w['p1']}"), ("action", "R,C"), ("_lastUpdated", f"le{w.cut}"),
              ("_count", "1000")]
    response = await w.http.post("/AuditEvent/_search", data=dict(params), headers=STRICT)
    assert response.status_code == 200, response.text
    ids = {e["resource"]["id"] for e in response.json()["entry"]}
    assert ids == w.expected(lambda e: patient("p1")(w, e)
                             and (has(e, "action", "R") or has(e, "action", "C")))


# --- sorting, totals, counts ----------------------------------------------------------------------


def token_filter(event: Resource, name: str, value: str) -> bool:
    """`name=value` for a token parameter, `name` possibly with :not."""
    code, _, modifier = name.partition(":")
    return token_match(tokens(event, code), value) != (modifier == "not")


@pytest.mark.parametrize(
    ("sort", "filters"),
    [
        pytest.param("date", (), id="date"),
        pytest.param("-date", (), id="-date"),
        pytest.param("date", (("action", "R"),), id="date with action=R"),
        pytest.param("-date", (("outcome:not", "0"),), id="-date with outcome:not=0"),
    ],
)
async def test_sort_by_date(world: World, sort: str, filters: tuple[tuple[str, str], ...]) -> None:
    """Sorted by `recorded` (client events recorded in the past come first), across pages."""
    w = world
    found = await run(w.http, "/AuditEvent", bounded(w, *filters, ("_sort", sort)), count=7)
    wanted = [e for e in w.events if all(token_filter(e, p, v) for p, v in filters)]
    descending = sort.startswith("-")
    keys = [span(recorded(e))[1 if descending else 0] for e in wanted]
    assert len(set(keys)) == len(keys), "ties would leave the order open"
    ordered = sorted(wanted, key=lambda e: span(recorded(e))[1 if descending else 0],
                     reverse=descending)
    assert found.ids == [e["id"] for e in ordered]
    assert found.pages > 1
    # The trail's own order differs: recorded and lastUpdated disagree on client events.
    if not filters:
        assert found.ids != [e["id"] for e in (w.events[::-1] if descending else w.events)]


@pytest.mark.parametrize("descending", [False, True], ids=["_lastUpdated", "-_lastUpdated"])
async def test_sort_by_last_updated(world: World, descending: bool) -> None:
    w = world
    sort = "-_lastUpdated" if descending else "_lastUpdated"
    found = await run(w.http, "/AuditEvent", bounded(w, ("_sort", sort)), count=9)
    order = [e["id"] for e in w.events]
    assert found.ids == (order[::-1] if descending else order)


async def test_total_accurate_counts_every_match(world: World) -> None:
    w = world
    wanted = w.expected(lambda e: has(e, "action", "R"))
    response = await w.http.get("/AuditEvent", headers=STRICT, params=bounded(
        w, ("action", "R"), ("_total", "accurate"), ("_count", "2")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(wanted) > 2
    assert len(body["entry"]) == 2
    assert {e["resource"]["id"] for e in body["entry"]} <= wanted


@pytest.mark.parametrize(
    "params",
    [
        pytest.param((("outcome", "4"),), id="outcome=4"),
        pytest.param((("agent-name", "anon"),), id="agent-name=anon"),
        pytest.param((), id="everything"),
    ],
)
async def test_summary_count(world: World, params: tuple[tuple[str, str], ...]) -> None:
    w = world
    wanted = w.expected(lambda e: all(
        (string_match(strings(e, p), v) if p == "agent-name" else has(e, p, v))
        for p, v in params))
    response = await w.http.get("/AuditEvent", headers=STRICT,
                                params=bounded(w, *params, ("_summary", "count")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(wanted) > 0
    assert "entry" not in body


# --- reverse chains and includes ------------------------------------------------------------------


async def test_has_audit_event_patient_action_d(world: World) -> None:
    """Patients (still held) whose record a deletion touched: a deleted Observation's subject,
    and the Patient a client's purge record names; the deleted Patient itself is gone."""
    w = world
    wanted = {i for e in w.events if has(e, "action", "D")
              for t, i in patient_refs(e) if ("Patient", i) in w.live}
    assert wanted >= {w["p3"], w["p5"]}
    found = await run(w.http, "/Patient", [("_has:AuditEvent:patient:action", "D")])
    assert set(found.ids) == wanted


@pytest.mark.parametrize(
    ("source_type", "param", "code", "value"),
    [
        pytest.param("Patient", "entity", "altid", "jf-001", id="Patient by entity altid"),
        pytest.param("Patient", "patient", "outcome", "4", id="Patient by patient outcome=4"),
        pytest.param("Practitioner", "agent", "outcome", "8", id="Practitioner by agent outcome"),
        pytest.param("Observation", "entity", "action", "U", id="Observation by entity action"),
        pytest.param("Patient", "patient", "subtype", f"{INTERACTION}|vread",
                     id="Patient by subtype vread"),
    ],
)
async def test_has_audit_event(world: World, source_type: str, param: str, code: str,
                               value: str) -> None:
    w = world
    refs = {"entity": entity_refs, "patient": patient_refs, "agent": agent_refs}[param]
    wanted = {i for e in w.events if has(e, code, value)
              for t, i in refs(e) if t == source_type and (t, i) in w.live}
    assert wanted
    found = await run(w.http, f"/{source_type}", [(f"_has:AuditEvent:{param}:{code}", value)])
    assert set(found.ids) == wanted


async def test_revinclude_audit_events_of_patients(world: World) -> None:
    w = world
    chosen = {w["p1"], w["p3"]}
    found = await run(w.http, "/Patient", [("_id", ",".join(sorted(chosen))),
                                           ("_revinclude", "AuditEvent:patient")])
    assert set(found.ids) == chosen
    assert {r["resourceType"] for r in found.included} == {"AuditEvent"}
    included = {r["id"] for r in found.included}
    assert included & w.snapshot_ids == w.expected(
        lambda e: any(("Patient", p) in patient_refs(e) for p in chosen))
    assert all(updated(r) > w.cut for r in found.included if r["id"] not in w.snapshot_ids)


async def test_revinclude_audit_events_of_practitioners(world: World) -> None:
    w = world
    found = await run(w.http, "/Practitioner", [("_revinclude", "AuditEvent:agent")])
    assert set(found.ids) == {i for t, i in w.live if t == "Practitioner"}
    wanted = w.expected(lambda e: any(t == "Practitioner" for t, _ in agent_refs(e)))
    assert {r["id"] for r in found.included} & w.snapshot_ids == wanted
    assert len(wanted) == 2


@pytest.mark.parametrize(
    ("include", "params", "refs"),
    [
        pytest.param("AuditEvent:patient", lambda w: [("altid", "jf-001,zob-7")], patient_refs,
                     id="patient of client events"),
        pytest.param("AuditEvent:patient", lambda w: [("action", "D")], patient_refs,
                     id="patient of deletions"),
        pytest.param("AuditEvent:entity", lambda w: [("entity", f"Observation/{w['o1']}")],
                     entity_refs, id="entity"),
        pytest.param("AuditEvent:agent", lambda w: [(
            "agent", f"Practitioner/{w['pr1']},Practitioner/{w['pr2']},Patient/{w['p3']}")],
                     agent_refs, id="agent"),
    ],
)
async def test_include_from_audit_events(
    world: World, include: str, params: Callable[[World], list[tuple[str, str]]],
    refs: Callable[[Resource], set[Key]],
) -> None:
    """The matches, and as includes the resources they reference that the server holds."""
    w = world
    found = await run(w.http, "/AuditEvent", bounded(w, *params(w), ("_include", include)),
                      count=5)
    matched = [w.by_id(i) for i in found.ids]
    wanted = {k for e in matched for k in refs(e) if k in w.live}
    assert wanted
    assert found.included_keys == wanted
    assert all(r["meta"] == w.live[(r["resourceType"], r["id"])]["meta"] for r in found.included)
