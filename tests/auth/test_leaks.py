"""No way around access control: a caller who may not see patient B learns nothing of B's record
through totals, paging, includes, chains, `_has`, compartments, history, conditional writes,
bundles, `$validate` or error messages; without a valid token nothing is answered, and the
refusal is audited. On both engines.

The callers who must not see B: practitioner D (no care relationship with B) and patient A. The
world is the one of test_access_matrix.py; what each caller may see is computed from it, and
every probe is checked to find B's data for the system client, so each test can fail.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.auth.conftest import AuthServer
from tests.auth.test_access_matrix import (
    BIRTH,
    CALLERS,
    CODES,
    FAMILIES,
    GIVEN,
    OK,
    SHARED_CODE,
    World,
    audit_trail,
    current,
    days,
    expectations,
    ids,
    load_world,
    missing_id,
    new_observation,
    patient_ref,
    refs_of,
    search_all,
)

Resource = dict[str, Any]

LEAK_CALLERS = ["practitioner", "patient"]
"""Practitioner D and patient A: neither may see patient B."""
B_DATA = (FAMILIES["b"], GIVEN["b"], BIRTH["b"], "MRN-B")
"""What of B's record must never show in an answer to them."""


@pytest.fixture
async def world(auth_server: AuthServer) -> World:
    return await load_world(auth_server)


def headers_of(server: AuthServer, name: str) -> dict[str, str]:
    return CALLERS[name].headers(server)


def visible(server: AuthServer, world: World, name: str) -> set[str]:
    """`Type/id` of the world's resources the caller may see."""
    want = expectations(CALLERS[name], world, days(server))
    assert "b" not in {world.owner.get(ref) for ref, o in want.items() if o == OK}
    return {ref for ref, o in want.items() if o == OK}


def of_type(refs: set[str], *types: str) -> set[str]:
    return {r for r in refs if r.split("/")[0] in types}


def matches(bundle: Resource) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"
    }


def included(bundle: Resource) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "include"
    }


def assert_no_b_data(response: httpx.Response) -> None:
    for value in B_DATA:
        assert value not in response.text, (value, response.text[:300])


B_OBS = "Observation/obs-b-1"
B_OBS_IDENTIFIER = "urn:test:observation|obs-b-1"


# --- totals and paging -----------------------------------------------------------------------


@pytest.mark.parametrize("name", LEAK_CALLERS)
@pytest.mark.parametrize("type_", ["Observation", "Patient", "Condition"])
async def test_total_counts_only_visible_resources(
    auth_server: AuthServer, world: World, name: str, type_: str
) -> None:
    want = of_type(visible(auth_server, world, name), type_)
    everything = world.of(type_)
    assert len(everything) > len(want)
    for params in ({"_total": "accurate", "_count": "1"}, {"_summary": "count"}):
        r = await auth_server.http.get(f"/{type_}", params=params,
                                       headers=headers_of(auth_server, name))
        assert r.status_code == 200, r.text
        assert r.json()["total"] == len(want), params
        system = await auth_server.http.get(f"/{type_}", params=params,
                                            headers=auth_server.system)
        assert system.json()["total"] == len(everything)


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_paging_one_at_a_time_never_yields_a_hidden_resource(
    auth_server: AuthServer, world: World, name: str
) -> None:
    want = of_type(visible(auth_server, world, name), "Observation")
    headers = headers_of(auth_server, name)
    seen: list[str] = []
    url: str | None = "/Observation?_count=1&_sort=_id"
    while url is not None:
        r = await auth_server.http.get(url, headers=headers)
        assert r.status_code == 200, r.text
        bundle = r.json()
        page = sorted(matches(bundle))
        assert len(page) <= 1
        seen += page
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        assert len(seen) <= len(world.of("Observation"))
    assert len(seen) == len(set(seen))
    assert set(seen) == want


# --- _include and _revinclude -----------------------------------------------------------------

INCLUDE_QUERIES = {
    "include": "Observation?_include=Observation:subject&_include=Observation:derived-from",
    "include-iterate": (
        "Observation?_id=obs-a-2&_include=Observation:derived-from"
        "&_include:iterate=Observation:subject"
    ),
    "revinclude": (
        "Patient?_id=pat-a&_revinclude=Observation:subject&_revinclude=Observation:focus"
    ),
    "revinclude-then-include-iterate": (
        "Patient?_revinclude=Observation:subject&_include:iterate=Observation:derived-from"
    ),
}


@pytest.mark.parametrize("name", LEAK_CALLERS)
@pytest.mark.parametrize("query", list(INCLUDE_QUERIES))
async def test_includes_never_add_hidden_resources(
    auth_server: AuthServer, world: World, name: str, query: str
) -> None:
    """What the system client gets included, less what the caller may not see."""
    may_see = visible(auth_server, world, name)
    url = "/" + INCLUDE_QUERIES[query] + "&_count=1000"
    everything = (await auth_server.http.get(url, headers=auth_server.system)).json()
    assert included(everything) - may_see, "the query must reach something hidden"
    r = await auth_server.http.get(url, headers=headers_of(auth_server, name))
    assert r.status_code == 200, r.text
    assert matches(r.json()) == matches(everything) & may_see
    assert included(r.json()) == (included(everything) & may_see) - matches(r.json())
    assert_no_b_data(r)


# --- chains and _has --------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEAK_CALLERS)
@pytest.mark.parametrize("params", [
    {"subject.name": FAMILIES["b"]},
    {"subject:Patient.family": FAMILIES["b"]},
    {"subject:Patient.identifier": "urn:test:mrn|MRN-B"},
])
async def test_chained_search_through_a_hidden_patient_finds_nothing(
    auth_server: AuthServer, world: World, name: str, params: dict[str, str]
) -> None:
    system = await search_all(auth_server, "/Observation", auth_server.system, **params)
    assert ids(system) == world.of("Observation", {"b"})
    r = await auth_server.http.get("/Observation", params=params,
                                   headers=headers_of(auth_server, name))
    assert r.status_code == 200, r.text
    assert ids(r.json()) == set()


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_has_does_not_find_a_hidden_patient(
    auth_server: AuthServer, world: World, name: str
) -> None:
    params = {"_has:Observation:patient:code": CODES["b"]}
    system = await search_all(auth_server, "/Patient", auth_server.system, **params)
    assert ids(system) == {"pat-b"}
    r = await auth_server.http.get("/Patient", params=params,
                                   headers=headers_of(auth_server, name))
    assert r.status_code == 200, r.text
    assert ids(r.json()) == set()


PROBES = [
    # Does a hidden Observation with this code point at (focus) visible patient A?
    ("Patient", "_has:Observation:focus:code", SHARED_CODE, {"Patient/pat-a"}),
    # Is the hidden Observation visible obs-a-2 derives from of this code?
    ("Observation", "derived-from:Observation.code", CODES["b"], {"Observation/obs-a-2"}),
]


@pytest.mark.parametrize("name", LEAK_CALLERS)
@pytest.mark.parametrize(("type_", "param", "code", "system_finds"), PROBES)
async def test_has_and_chains_cannot_probe_hidden_resources(
    auth_server: AuthServer, world: World, name: str, type_: str, param: str, code: str,
    system_finds: set[str],
) -> None:
    """A visible resource linked to a hidden one: the search answers exactly as for a code
    nobody has, so it cannot tell what the hidden resource holds."""
    assert not system_finds - visible(auth_server, world, name)
    found = await search_all(auth_server, f"/{type_}", auth_server.system, **{param: code})
    assert refs_of(found) == system_finds
    headers = headers_of(auth_server, name)
    probe = await search_all(auth_server, f"/{type_}", headers, **{param: code})
    blank = await search_all(auth_server, f"/{type_}", headers, **{param: "no-such-code"})
    assert refs_of(probe) == refs_of(blank) == set()
    assert probe.get("total") == blank.get("total")


# --- compartments and system search -----------------------------------------------------------


@pytest.mark.parametrize("name", LEAK_CALLERS)
@pytest.mark.parametrize("kind", ["Observation", "*"])
async def test_compartment_of_a_hidden_patient_is_empty(
    auth_server: AuthServer, world: World, name: str, kind: str
) -> None:
    system = refs_of(await search_all(auth_server, f"/Patient/pat-b/{kind}",
                                      auth_server.system))
    assert {world.owner.get(r) for r in system if not r.startswith("AuditEvent/")} == {"b"}
    r = await auth_server.http.get(f"/Patient/pat-b/{kind}", params={"_count": "1000"},
                                   headers=headers_of(auth_server, name))
    assert r.status_code in (200, 404), r.text
    if r.status_code == 200:
        assert refs_of(r.json()) == set()
    assert_no_b_data(r)
    # The compartment of a patient the caller may see is there.
    mine = refs_of(await search_all(auth_server, f"/Patient/pat-a/{kind}",
                                    headers_of(auth_server, name)))
    all_of_a = refs_of(await search_all(auth_server, f"/Patient/pat-a/{kind}",
                                        auth_server.system))
    shown = all_of_a & visible(auth_server, world, name)
    assert shown and {r for r in mine if not r.startswith("AuditEvent/")} == shown
    # AuditEvents in A's compartment: a patient's own, never a practitioner's.
    events = {r for r in mine if r.startswith("AuditEvent/")}
    assert events <= (all_of_a if CALLERS[name].role == "patient" else set())


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_system_search_leaves_hidden_resources_out(
    auth_server: AuthServer, world: World, name: str
) -> None:
    r = await auth_server.http.get(str(auth_server.http.base_url).rstrip("/"),
                                   params={"_type": "Observation,Patient", "_count": "1000"},
                                   headers=headers_of(auth_server, name))
    assert r.status_code == 200, r.text
    want = of_type(visible(auth_server, world, name), "Observation", "Patient")
    assert refs_of(r.json()) == want
    assert r.json()["total"] == len(want)


# --- history and vread ------------------------------------------------------------------------


def history_refs(bundle: Resource) -> set[tuple[str, str]]:
    """(Type/id, version) of each entry of a history Bundle."""
    out = set()
    for e in bundle.get("entry", []):
        ref = "/".join(e["fullUrl"].split("/")[-2:])
        out.add((ref, e["response"]["etag"]))
    return out


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_history_lists_none_of_a_hidden_patients_versions(
    auth_server: AuthServer, world: World, name: str
) -> None:
    headers = headers_of(auth_server, name)
    may_see = visible(auth_server, world, name)
    r = await auth_server.http.get(f"/{B_OBS}/_history", headers=headers)
    assert r.status_code == 404
    for path, types in (("/Observation/_history", {"Observation"}), ("/_history", None)):
        system = await search_all(auth_server, path, auth_server.system)
        listed = {ref for ref, _ in history_refs(system)}
        assert {r for r in listed if world.owner.get(r) == "b"}, path
        want = {r for r in listed if r in may_see and (types is None or r.split("/")[0] in types)}
        mine = {ref for ref, _ in history_refs(await search_all(auth_server, path, headers))}
        assert {r for r in mine if not r.startswith("AuditEvent/")} == want, path
        # The only AuditEvents listed are a patient's own (those about them).
        events = {r for r in mine if r.startswith("AuditEvent/")}
        about_me = {f"AuditEvent/{e['id']}" for e in await audit_trail(
            auth_server, patient=CALLERS[name].resource or "-")}
        assert events <= (about_me if CALLERS[name].role == "patient" else set()), path


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_versions_from_before_a_resource_moved_into_view_stay_hidden(
    auth_server: AuthServer, world: World, name: str
) -> None:
    """An Observation recorded for B, then corrected to A: the caller sees version 2 only."""
    first = {**new_observation("b", "moved"), "id": "obs-moved"}
    await auth_server.put(first)
    await auth_server.put({**first, "subject": {"reference": patient_ref("a")}})
    headers = headers_of(auth_server, name)
    r = await auth_server.http.get("/Observation/obs-moved/_history", headers=headers)
    assert r.status_code == 200, r.text
    assert history_refs(r.json()) == {("Observation/obs-moved", 'W/"2"')}
    assert (await auth_server.http.get("/Observation/obs-moved/_history/2",
                                       headers=headers)).status_code == 200
    old = await auth_server.http.get("/Observation/obs-moved/_history/1", headers=headers)
    assert old.status_code == 404
    assert_no_b_data(old)
    listed = await search_all(auth_server, "/Observation/_history", headers)
    assert ("Observation/obs-moved", 'W/"1"') not in history_refs(listed)
    assert ("Observation/obs-moved", 'W/"2"') in history_refs(listed)


async def deleted_obs_of_b(server: AuthServer) -> str:
    await server.put({**new_observation("b", "deleted"), "id": "obs-b-deleted"})
    r = await server.http.delete("/Observation/obs-b-deleted", headers=server.system)
    assert r.status_code == 200, r.text
    return "Observation/obs-b-deleted"


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_vread_and_history_of_a_hidden_deleted_resource_are_404_not_410(
    auth_server: AuthServer, world: World, name: str
) -> None:
    ref = await deleted_obs_of_b(auth_server)
    system = await auth_server.http.get(f"/{ref}/_history/2", headers=auth_server.system)
    assert system.status_code == 410
    headers = headers_of(auth_server, name)
    for path in (f"/{ref}/_history/1", f"/{ref}/_history/2", f"/{ref}/_history",
                 f"/{B_OBS}/_history/1"):
        r = await auth_server.http.get(path, headers=headers)
        assert r.status_code == 404, (path, r.text)


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_read_of_a_hidden_deleted_resource_is_404_not_410(
    auth_server: AuthServer, world: World, name: str
) -> None:
    ref = await deleted_obs_of_b(auth_server)
    r = await auth_server.http.get(f"/{ref}", headers=headers_of(auth_server, name))
    assert r.status_code == 404, r.text


# --- conditional interactions -----------------------------------------------------------------



async def test_conditional_interactions_work_for_a_caller_allowed_to_make_them(
    auth_server: AuthServer, world: World
) -> None:
    """The control of the tests below: conditional writes do find what the caller may see."""
    headers = headers_of(auth_server, "practitioner")
    mine = world.resources["Observation/obs-a-1"]
    r = await auth_server.http.put("/Observation?identifier=urn:test:observation|obs-a-1",
                                   json={**mine, "status": "amended"}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "obs-a-1" and r.json()["meta"]["versionId"] == "2"
    r = await auth_server.http.post(
        "/Observation", json=new_observation("a", "again"),
        headers={**headers, "If-None-Exist": "identifier=urn:test:observation|obs-a-2"})
    assert r.status_code == 200 and r.json()["id"] == "obs-a-2", r.text
    r = await auth_server.http.delete("/Observation?identifier=urn:test:observation|obs-a-2",
                                      headers=headers)
    assert r.status_code == 200, r.text
    assert (await auth_server.http.get("/Observation/obs-a-2", headers=auth_server.system)
            ).status_code == 410


async def b_obs_unchanged(server: AuthServer, world: World) -> None:
    stored = await current(server, B_OBS)
    assert stored["meta"]["versionId"] == "1"
    assert {k: v for k, v in stored.items() if k != "meta"} == world.resources[B_OBS]


def write_status(name: str, allowed: int) -> int:
    """A practitioner may write Observations of their patients; a patient may not."""
    return allowed if name == "practitioner" else 403


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_conditional_update_does_not_match_a_hidden_resource(
    auth_server: AuthServer, world: World, name: str
) -> None:
    headers = headers_of(auth_server, name)
    body = new_observation("a", "obs-b-1")
    # Naming the hidden resource's id in the body does not reach it.
    r = await auth_server.http.put(f"/Observation?identifier={B_OBS_IDENTIFIER}",
                                   json={**body, "id": "obs-b-1"}, headers=headers)
    assert r.status_code == write_status(name, 404), r.text
    assert_no_b_data(r)
    # Without an id, the criteria match nothing the caller may see: a new resource.
    r = await auth_server.http.put(f"/Observation?identifier={B_OBS_IDENTIFIER}", json=body,
                                   headers=headers)
    assert r.status_code == write_status(name, 201), r.text
    if r.status_code == 201:
        assert r.json()["id"] != "obs-b-1"
        assert r.json()["subject"]["reference"] == patient_ref("a")
    assert_no_b_data(r)
    await b_obs_unchanged(auth_server, world)


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_conditional_delete_deletes_nothing_hidden(
    auth_server: AuthServer, world: World, name: str
) -> None:
    headers = headers_of(auth_server, name)
    for criteria in (f"identifier={B_OBS_IDENTIFIER}", f"subject={patient_ref('b')}",
                     f"subject.name={FAMILIES['b']}"):
        r = await auth_server.http.delete(f"/Observation?{criteria}", headers=headers)
        assert r.status_code in (200, 403), r.text
        if r.status_code == 200:
            assert not r.json()["issue"][0]["diagnostics"].startswith("Deleted"), r.text
    await b_obs_unchanged(auth_server, world)
    system = await search_all(auth_server, "/Observation", auth_server.system,
                              subject=patient_ref("b"))
    assert ids(system) == world.of("Observation", {"b"})


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_if_none_exist_does_not_answer_with_a_hidden_resource(
    auth_server: AuthServer, world: World, name: str
) -> None:
    headers = {**headers_of(auth_server, name), "If-None-Exist": f"identifier={B_OBS_IDENTIFIER}"}
    r = await auth_server.http.post("/Observation", json=new_observation("a", "obs-b-1"),
                                    headers=headers)
    assert r.status_code == write_status(name, 201), r.text
    if r.status_code == 201:
        assert r.json()["id"] != "obs-b-1"
        assert r.json()["subject"]["reference"] == patient_ref("a")
    assert "obs-b-1" not in r.headers.get("location", "")
    assert_no_b_data(r)
    await b_obs_unchanged(auth_server, world)


# --- bundles and operations -------------------------------------------------------------------


def entry_statuses(bundle: Resource) -> list[int]:
    return [int(e["response"]["status"].split()[0]) for e in bundle["entry"]]


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_batch_answers_hidden_entries_404_and_the_rest_as_usual(
    auth_server: AuthServer, world: World, name: str
) -> None:
    mine = sorted(of_type(visible(auth_server, world, name), "Observation"))[0]
    gets = [B_OBS, mine, patient_ref("b"), f"Observation?subject={patient_ref('b')}",
            f"Observation/{missing_id('Observation')}"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": url}} for url in gets
    ]}
    r = await auth_server.http.post("/", json=batch, headers=headers_of(auth_server, name))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert entry_statuses(answer) == [404, 200, 404, 200, 404]
    assert answer["entry"][1]["resource"]["id"] == mine.split("/")[1]
    assert answer["entry"][3]["resource"].get("entry", []) == []
    hidden, missing = answer["entry"][0]["response"], answer["entry"][4]["response"]
    assert [i["code"] for i in hidden["outcome"]["issue"]] \
        == [i["code"] for i in missing["outcome"]["issue"]]
    assert_no_b_data(r)


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_transaction_writing_a_hidden_resource_fails_and_writes_nothing(
    auth_server: AuthServer, world: World, name: str
) -> None:
    mine = "Observation/obs-a-1"
    before = await current(auth_server, mine)
    entries = [
        {"resource": {**world.resources[mine], "status": "amended"},
         "request": {"method": "PUT", "url": mine}},
        {"resource": {**world.resources[B_OBS], "status": "amended"},
         "request": {"method": "PUT", "url": B_OBS}},
        {"fullUrl": "urn:uuid:6b3ef4a0-6a51-4b1e-9a8e-0e3c1c7f0c11",
         "resource": new_observation("a", "in-transaction"),
         "request": {"method": "POST", "url": "Observation"}},
    ]
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = await auth_server.http.post("/", json=transaction, headers=headers_of(auth_server, name))
    assert r.status_code == write_status(name, 404), r.text
    assert_no_b_data(r)
    assert await current(auth_server, mine) == before
    await b_obs_unchanged(auth_server, world)
    created = await search_all(auth_server, "/Observation", auth_server.system,
                               identifier="urn:test:observation|in-transaction")
    assert ids(created) == set()


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_validate_of_a_hidden_stored_resource_is_404(
    auth_server: AuthServer, world: World, name: str
) -> None:
    headers = headers_of(auth_server, name)
    r = await auth_server.http.post(f"/{B_OBS}/$validate", headers=headers)
    assert r.status_code == 404, r.text
    assert_no_b_data(r)
    mine = sorted(of_type(visible(auth_server, world, name), "Observation"))[0]
    ok = await auth_server.http.post(f"/{mine}/$validate", headers=headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("name", LEAK_CALLERS)
async def test_refusals_never_carry_the_hidden_patients_data(
    auth_server: AuthServer, world: World, name: str
) -> None:
    headers = headers_of(auth_server, name)
    b = patient_ref("b")
    patient_b = world.resources[b]
    requests: list[tuple[str, str, Any]] = [
        ("GET", f"/{b}/_history/1", None),
        ("GET", f"/{b}/_history", None),
        ("GET", f"/{B_OBS}/_history/1", None),
        ("POST", f"/{B_OBS}/$validate", None),
        ("POST", "/Observation", new_observation("b", "refused")),
        ("PUT", f"/{b}", {**patient_b, "telecom": [{"system": "phone", "value": "1"}]}),
        ("DELETE", f"/{b}", None),
        ("PUT", f"/{B_OBS}", {**world.resources[B_OBS], "status": "amended"}),
        ("PATCH", f"/{b}", [{"op": "replace", "path": "/gender", "value": "other"}]),
        ("GET", "/AuditEvent?patient=Patient/pat-b", None),
        ("GET", "/Patient/pat-b/$everything", None),
    ]
    for method, path, body in requests:
        extra = {"Content-Type": "application/json-patch+json"} if method == "PATCH" else {}
        r = await auth_server.http.request(method, path, headers={**headers, **extra},
                                           content=orjson.dumps(body) if body else None)
        if method == "GET" and "AuditEvent" in path and r.status_code == 200:
            assert refs_of(r.json()) <= {
                f"AuditEvent/{e['id']}" for e in await audit_trail(
                    auth_server, patient=patient_ref("a"))}
        else:
            assert r.status_code >= 400, (method, path, r.text)
        assert_no_b_data(r)
    stored = await current(auth_server, b)
    assert stored.pop("meta")["versionId"] == "1"
    assert stored == patient_b


# --- no token, or a bad one -------------------------------------------------------------------

ROUTES: list[tuple[str, str, str, Any]] = [
    ("read", "GET", "/Observation/obs-a-1", None),
    ("vread", "GET", "/Observation/obs-a-1/_history/1", None),
    ("search-type", "GET", "/Observation?subject=Patient/pat-a", None),
    ("create", "POST", "/Observation", new_observation("a", "unauthenticated")),
    ("batch", "POST", "/", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/obs-a-1"}}]}),
    ("history-system", "GET", "/_history", None),
    ("history-instance", "GET", "/Observation/obs-a-1/_history", None),
    ("operation", "POST", "/Observation/obs-a-1/$validate", None),
]


def tampered(token: str) -> str:
    """The token with its claims changed to every system scope, signature kept."""
    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def bad_credentials(server: AuthServer, kind: str) -> dict[str, str]:
    if kind == "none":
        return {}
    security = server.security
    if kind == "expired":
        lifetime = security.settings.access_token_minutes * 60
        token, _ = security.tokens.issue("dr-d", "user/*.cruds", "test-client",
                                         "Practitioner/prac-d", "practitioner",
                                         now=time.time() - lifetime - 3600)
    else:
        token, _ = security.tokens.issue("pat-a", "patient/*.rs", "test-client",
                                         "Patient/pat-a", "patient")
        token = tampered(token)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kind", ["none", "expired", "tampered"])
async def test_no_valid_token_no_answer_and_the_refusal_is_audited(
    auth_server: AuthServer, world: World, kind: str
) -> None:
    headers = bad_credentials(auth_server, kind)
    for subtype, method, path, body in ROUTES:
        before = {e["id"] for e in await audit_trail(auth_server, outcome="4")}
        r = await auth_server.http.request(method, path, headers=headers,
                                           content=orjson.dumps(body) if body else None)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer"), path
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "Ashford" not in r.text
        refused = [e for e in await audit_trail(auth_server, outcome="4")
                   if e["id"] not in before]
        assert len(refused) == 1, (path, refused)
        assert refused[0]["subtype"][0]["code"] == subtype, path
        assert "reference" not in refused[0]["agent"][0]["who"]
    assert ids(await search_all(auth_server, "/Observation", auth_server.system,
                                identifier="urn:test:observation|unauthenticated")) == set()
