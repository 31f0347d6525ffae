"""Security review of the authorization layer: each of the first tests was written red against
a flaw the review found (its docstring says what was wrong and where) and holds it fixed.

The world is the one of test_access_matrix.py (practitioner D cares for A, not for B; patient A).
The last few tests pin down things that were checked and found sound, where no test covered
them yet. On both engines.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_server.app import create_app
from fhir_server.auth.scopes import ScopeSet
from tests.auth.conftest import AuthServer
from tests.auth.test_access_matrix import (
    FAMILIES,
    World,
    ids,
    load_world,
    patient_ref,
    practitioner,
    search_all,
)
from tests.auth.test_auth_flow import PASSWORD, register
from tests.conftest import BASE, drop_store, make_store, settings_for

Resource = dict[str, Any]


@pytest.fixture
async def world(auth_server: AuthServer) -> World:
    return await load_world(auth_server)


def patient_a(server: AuthServer, scope: str = "patient/*.rs") -> dict[str, str]:
    return server.headers(role="patient", resource=patient_ref("a"), scope=scope, sub="pat-a")


# --- side doors ------------------------------------------------------------------------------


async def test_list_parameter_ignores_a_hidden_list(auth_server: AuthServer, world: World) -> None:
    """`_list=ID` resolves the List without any access check, so a caller who may not read
    List/list-b (patient B's medication list) gets its entries through
    `Medication?_list=list-b`: the hidden List's existence and contents leak (a practitioner
    learns B takes an antiretroviral). Where: fhir_server/search/resolve.py:78 (`_list` calls
    `ctx.store.read_many` directly); the same path serves conditional criteria and SMART scope
    parameters. Fix: in `_list`, when `ctx.access` is set, keep only Lists for which
    `await ctx.access.may_see(v)` holds (a hidden List selects nothing, as a missing one)."""
    await auth_server.put({"resourceType": "Medication", "id": "med-secret",
                           "code": {"text": "Antiretroviral"}})
    await auth_server.put({"resourceType": "List", "id": "list-b", "status": "current",
                           "mode": "working", "subject": {"reference": patient_ref("b")},
                           "entry": [{"item": {"reference": "Medication/med-secret"}}]})
    headers = practitioner(auth_server, world)
    assert (await auth_server.http.get("/List/list-b", headers=headers)).status_code == 404
    assert (await auth_server.http.get("/Medication/med-secret", headers=headers)).status_code \
        == 200  # a shared definition: readable, just not known to be on B's list
    via_hidden = await search_all(auth_server, "/Medication", headers, _list="list-b")
    via_missing = await search_all(auth_server, "/Medication", headers, _list="list-nope")
    assert ids(via_hidden) == ids(via_missing) == set()


async def test_scope_parameters_cannot_reach_hidden_resources(
    auth_server: AuthServer, world: World
) -> None:
    """SMART v2 scope parameters become part of the access limit without `Access.guard`, so
    a `_has` (or chain) in them runs over resources the caller may not see. The user picks
    them: /auth/authorize narrows the requested scope against the client's (`user/*.cruds`
    narrowed by `user/Patient.rs?_has:...` keeps the parameters). Practitioner D learns that a
    hidden Observation of patient B has A as its focus, which the same `_has` in a search
    rightly hides. Where: fhir_server/auth/access.py:219-227 (`_scope_limit` appends
    `resolve(ctx, where)` unguarded). Fix: guard the predicate (`await self.guard(...)`, with a
    re-entrancy stop since guard asks for limits again), or grant nothing for scopes whose
    parameters hold chains, `_has` or `_list`."""
    query = "_has:Observation:focus:subject=Patient/pat-b"
    narrowed = str(ScopeSet.parse("user/*.cruds").narrow(f"user/Patient.rs?{query}"))
    assert narrowed == f"user/Patient.rs?{query}"  # what a login can obtain
    plain = await search_all(auth_server, "/Patient", practitioner(auth_server, world),
                             **{"_has:Observation:focus:subject": "Patient/pat-b"})
    assert ids(plain) == set()  # the guarded search: B's Observation is hidden
    r = await auth_server.http.get("/Patient", headers=practitioner(auth_server, world,
                                                                    scope=narrowed))
    # Fixed either way: the scope grants nothing (403), or it finds nothing hidden.
    assert r.status_code == 403 or ids(r.json()) == set(), r.text


async def test_patient_audit_search_cannot_match_the_redacted_parts(
    auth_server: AuthServer, world: World
) -> None:
    """A patient sees AuditEvents about them with other patients' entities removed, but the
    search criteria run on the unredacted event: `AuditEvent?entity=Patient/pat-b` finds the
    events about A that also disclosed B (and so whether B exists and was looked at with A),
    the very thing the redaction hides. Where: fhir_server/auth/access.py:306 (`shown` redacts
    only the output) with fhir_server/search/execute.py:312 (criteria run unredacted). Fix:
    for a patient on AuditEvent, refuse (400/403) criteria that reach redactable parts
    (`entity*`, `agent*`, `_has`, chains, `_text`/`_content`), or re-check each match's
    criteria against its redacted form."""
    found = await search_all(auth_server, "/Patient", auth_server.system,
                             family=f"{FAMILIES['a']},{FAMILIES['b']}")
    assert ids(found) == {"pat-a", "pat-b"}
    headers = patient_a(auth_server)
    mine = await search_all(auth_server, "/AuditEvent", headers)
    assert "pat-b" not in json.dumps(mine)  # the redaction itself works
    probe = await auth_server.http.get("/AuditEvent", params={"entity": patient_ref("b")},
                                       headers=headers)
    # Fixed either way: such criteria are refused, or they find nothing B's presence decides.
    assert probe.status_code in (400, 403) or ids(probe.json()) == set(), probe.text


async def test_admin_reindex_cannot_count_clinical_resources(
    auth_server: AuthServer, world: World
) -> None:
    """`$reindex` needs only `SearchParameter` update, so an administrator ("nothing
    clinical") or a client with `system/SearchParameter.u` may reindex any type and is told
    how many there are: "Reindexed 10 Observation resources". Where:
    fhir_server/api/routes.py:341. Fix: also require an unlimited search permission on the
    reindexed type (`await ctx.access.require(rtype, "s") is None`), or leave the count out
    of the answer for callers that may not search the type."""
    headers = auth_server.headers(role="admin", scope="user/*.cruds", sub="admin")
    assert (await auth_server.http.get("/Observation", headers=headers)).status_code == 403
    r = await auth_server.http.post("/Observation/$reindex", headers=headers)
    assert r.status_code == 403 or "Reindexed 10 " not in r.text, r.text


async def test_patient_may_not_rewrite_the_narrative_or_labels_of_their_record(
    auth_server: AuthServer, world: World
) -> None:
    """A patient may change only telecom, address, name and communication of their Patient,
    but `text` and `meta` are left out of the comparison, so they can replace the narrative
    clinicians read ("DNR") and add or drop security labels and tags. Where:
    fhir_server/auth/access.py:71 (`_IGNORED_ON_COMPARE` holds `text` and `meta`). Fix:
    compare `text` and `meta.security`/`meta.tag`/`meta.profile` too (ignore only
    `meta.versionId`, `meta.lastUpdated`, `meta.source`), or regenerate the narrative."""
    before = (await auth_server.http.get("/Patient/pat-a", headers=auth_server.system)).json()
    forged = {
        **before,
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">Do not resuscitate</div>'},
        "meta": {"security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
            "code": "R"}]},
    }
    r = await auth_server.http.put("/Patient/pat-a", json=forged,
                                   headers=patient_a(auth_server, "user/*.cruds"))
    assert r.status_code == 403, r.text


# --- authentication --------------------------------------------------------------------------


async def signed_in(server: AuthServer, username: str, role: str, resource: str
                    ) -> tuple[Any, dict[str, Any]]:
    await server.security.accounts.add(username, role, PASSWORD, resource)
    app = await register(server)
    body = (await app.exchange(app.code_of(await app.login(username, PASSWORD)))).json()
    assert "refresh_token" in body, body
    return app, body


async def test_refresh_token_dies_with_a_password_reset(auth_server: AuthServer) -> None:
    """An administrator resets a password (`fhir-server users passwd`, e.g. after the account
    was compromised), yet refresh tokens issued before keep working, rotating for as long as
    they are used: the attacker's session outlives the reset. Where:
    fhir_server/api/auth_routes.py:393-397 (`_issue_user_token` checks only that the account
    exists) and fhir_server/auth/accounts.py:298 (`set_password` revokes nothing). Fix: keep
    the account's `password_changed` (or a session generation) in the refresh grant and refuse
    the rotation (invalid_grant, family revoked) when the account's has changed since."""
    app, body = await signed_in(auth_server, "dr.reset", "practitioner", "Practitioner/r1")
    await auth_server.security.accounts.set_password("dr.reset", "a brand new password")
    r = await app.token(grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


async def test_refresh_ends_when_the_account_changes_role(
    auth_server: AuthServer,
) -> None:
    """A refreshed access token carries the role and fhirUser of the original sign-in, not
    those the account has now: a practitioner whose account is changed to another role or
    resource keeps the practitioner's access for as long as the refresh family lives
    (indefinitely, with use). Where: fhir_server/api/auth_routes.py:398-399 (issued from
    `grant.role` / `grant.fhir_user`). Fix: issue from `account.role` / `account.resource`,
    or refuse the refresh (invalid_grant) when they differ from the grant's."""
    app, body = await signed_in(auth_server, "dr.moved", "practitioner", "Practitioner/m1")
    store = auth_server.app.state.store
    account = await store.get_setting("auth.account.dr.moved")
    await store.put_setting("auth.account.dr.moved",
                            {**account, "role": "patient", "resource": "Patient/m1"})
    r = await app.token(grant_type="refresh_token", refresh_token=body["refresh_token"])
    if r.status_code == 200:
        claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
        assert (claims.get("role"), claims.get("fhirUser")) == ("patient", "Patient/m1")
    else:
        assert r.json()["error"] == "invalid_grant"


async def test_malformed_code_challenge_is_refused_before_sign_in(auth_server: AuthServer) -> None:
    """/auth/authorize checks only that code_challenge is present; after the password is
    accepted `Grants.issue_code` raises ValueError for one that is not 43 base64url characters
    and the user gets a 500 (and the sign-in is audited as a success). Where:
    fhir_server/api/auth_routes.py:187 and :270 (ValueError from grants.py:426-427). Fix:
    check the challenge's form in `_request_error` (grants._CHALLENGE) and redirect with
    `invalid_request` before the login form is even shown."""
    await auth_server.security.accounts.add("dr.pkce", "practitioner", PASSWORD,
                                            "Practitioner/p1")
    app = await register(auth_server)
    r = await app.login("dr.pkce", PASSWORD, code_challenge="too-short")
    assert r.status_code == 302, r.text
    assert "error=invalid_request" in r.headers["location"]


async def test_basic_credentials_with_non_ascii_bytes_are_a_401(auth_server: AuthServer) -> None:
    """`base64.b64decode(str, validate=True)` raises a plain ValueError (not binascii.Error)
    for non-ASCII characters, which the header decoder lets through: a 500 instead of 401
    invalid_client on /auth/token and /auth/revoke. Where:
    fhir_server/api/auth_routes.py:289-291. Fix: catch ValueError (binascii.Error is one)."""
    for path in ("/auth/token", "/auth/revoke"):
        r = await auth_server.root.post(path, data={"grant_type": "client_credentials",
                                                    "token": "x"},
                                        headers={"Authorization": b"Basic \xe9\xe9\xe9\xe9"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", (path, r.text)


# --- external identity provider --------------------------------------------------------------

ISSUER = "https://idp.example/realms/clinic"
Token = Callable[..., dict[str, str]]


@asynccontextmanager
async def external_idp(engine: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                                            Token]]:
    """A server trusting ISSUER (no FHIR_SERVER_EXTERNAL_AUDIENCE, as the README allows), and
    a maker of that issuer's tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    public.update(kid="idp-1", alg="RS256", use="sig")
    jwks = tmp_path / "idp-jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    settings = settings_for(tmp_path, auth="required", external_issuer=ISSUER,
                            external_jwks=str(jwks))

    def token(**claims: Any) -> dict[str, str]:
        now = int(time.time())
        body = {"iss": ISSUER, "exp": now + 300, "iat": now, "jti": secrets.token_hex(8),
                "sub": "someone", **claims}
        return {"Authorization": "Bearer " + jwt.encode(body, key, "RS256", {"kid": "idp-1"})}

    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings, store)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                yield http, token
    finally:
        await drop_store(handle)


async def test_external_tokens_need_a_configured_audience(
    engine: str, tmp_path: Path
) -> None:
    """Without FHIR_SERVER_EXTERNAL_AUDIENCE no `aud` is checked, so any token the identity
    provider issued to any other application (a payroll app's, say) is an access token here:
    whoever runs one of those apps can replay its users' tokens against the FHIR server.
    Where: fhir_server/auth/tokens.py:215 (`audience=None` turns `verify_aud` off) and
    fhir_server/config.py (the setting is optional). Fix: require the audience whenever an
    external issuer is configured (refuse to start), or default it to the server's base URL /
    issuer."""
    async with external_idp(engine, tmp_path) as (http, token):
        r = await http.get("/AuditEvent", headers=token(aud="payroll-app", role="auditor",
                                                        scope="user/*.rs"))
        assert r.status_code == 401, r.text


async def test_external_user_with_an_unknown_role_is_refused(
    engine: str, tmp_path: Path
) -> None:
    """An external token whose role claim is not one of the five roles ("nurse") gets role
    None, which access.py reads as a SMART Backend Services client bound by its scopes alone:
    with `system/` scopes (common when an IdP maps client scopes onto user tokens) that user
    reads every record, unlimited. Where: fhir_server/auth/tokens.py:339-341 (`_known_role`
    drops the unknown role silently) with fhir_server/auth/access.py:197-200. Fix: refuse
    (401) an external token whose role claim is present but unknown, and treat an external
    token without a role as a user with no role (nothing), not as a backend client, unless it
    is explicitly configured as one."""
    async with external_idp(engine, tmp_path) as (http, token):
        r = await http.get("/Patient", headers=token(role="nurse", scope="system/*.rs",
                                                     fhirUser="Practitioner/n1"))
        assert r.status_code in (401, 403), r.text


# --- checked and sound (no test covered these yet) -------------------------------------------


async def test_conditional_reference_to_a_hidden_patient_answers_as_to_a_missing_one(
    auth_server: AuthServer, world: World
) -> None:
    """A transaction's `Patient?identifier=...` reference is resolved with the caller's limits:
    a hidden match is answered exactly as no match (and a visible one resolves)."""
    headers = practitioner(auth_server, world)

    async def post(reference: str) -> httpx.Response:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Observation", "status": "final",
                         "code": {"text": "probe"}, "subject": {"reference": reference}},
            "request": {"method": "POST", "url": "Observation"}}]}
        return await auth_server.http.post("/", json=bundle, headers=headers)

    hidden = await post("Patient?identifier=urn:test:mrn|MRN-B")
    missing = await post("Patient?identifier=urn:test:mrn|MRN-Z")
    assert hidden.status_code == missing.status_code == 412
    assert hidden.text.replace("MRN-B", "MRN-Z") == missing.text
    assert (await post("Patient?identifier=urn:test:mrn|MRN-A")).status_code == 200


async def test_login_page_escapes_what_the_request_carries(auth_server: AuthServer) -> None:
    """state, scope and the other OAuth fields are echoed in the form only HTML-escaped, and
    the page may not be framed."""
    app = await register(auth_server)
    evil = '"><script>alert(1)</script>'
    page = await auth_server.root.get("/auth/authorize",
                                      params={**app.query, "state": evil, "scope": evil})
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert page.headers["x-frame-options"] == "DENY"


async def test_put_to_a_free_id_answers_as_to_a_hidden_one(
    auth_server: AuthServer, world: World
) -> None:
    """Update-as-create answered 201 at a free id and 404 at a hidden one, telling a limited
    caller which ids exist. A limited caller now creates with POST; PUT at an id it cannot see,
    taken or free, is 404 either way (fhir_server/interactions.py `_write_in`)."""
    headers = practitioner(auth_server, world)
    hidden = sorted(world.of("Observation", ["b"]))[0]
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": patient_ref("a")}}
    answers = []
    for id_ in (hidden, "never-used-id"):
        r = await auth_server.http.put(f"/Observation/{id_}", json={**body, "id": id_},
                                       headers=headers)
        answers.append((r.status_code, r.json()["issue"][0]["code"]))
    assert answers[0] == answers[1] == (404, "not-found")
    created = await auth_server.http.post("/Observation", json=body, headers=headers)
    assert created.status_code == 201
