"""The authorization server end to end: discovery, the authorization-code flow with PKCE and
the login form (lockout, TOTP, expired passwords), token refresh and revocation, client
credentials (secret and private_key_jwt), and the audit records all of it leaves."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from fhir_server.app import create_app
from fhir_server.auth.service import auth_required
from fhir_server.cli import app as cli
from fhir_server.config import Settings
from tests.auth.conftest import AuthServer
from tests.conftest import BASE, drop_store, make_store, settings_for

REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def alert(page: httpx.Response) -> str:
    found = re.findall(r'role="alert">([^<]*)<', page.text)
    return found[0] if found else ""


class App:
    """A registered SMART app signing users in through the login form."""

    def __init__(self, server: AuthServer, client_id: str, secret: str) -> None:
        self.server, self.client_id, self.secret = server, client_id, secret
        self.verifier, challenge = pkce()
        self.query = {
            "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
            "scope": "user/*.cruds offline_access", "state": secrets.token_hex(8),
            "code_challenge": challenge, "code_challenge_method": "S256",
        }

    async def login(self, username: str, password: str, **more: str) -> httpx.Response:
        form = {**self.query, "username": username, "password": password, **more}
        return await self.server.root.post("/auth/authorize", data=form)

    def code_of(self, response: httpx.Response) -> str:
        assert response.status_code == 302, response.text
        location = urlparse(response.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
        query = parse_qs(location.query)
        assert query["state"] == [self.query["state"]]
        return query["code"][0]

    async def token(self, **form: str) -> httpx.Response:
        return await self.server.root.post(
            "/auth/token", data=form, auth=(self.client_id, self.secret))

    async def exchange(self, code: str) -> httpx.Response:
        return await self.token(grant_type="authorization_code", code=code,
                                redirect_uri=REDIRECT, code_verifier=self.verifier)


async def register(server: AuthServer, scopes: str = "user/*.cruds offline_access") -> App:
    client, secret = await server.security.clients.add("Ward app", scopes,
                                                       redirect_uris=(REDIRECT,))
    assert secret is not None
    return App(server, client.client_id, secret)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def security_events(server: AuthServer, kind: str) -> list[dict[str, Any]]:
    r = await server.http.get("/AuditEvent", params={"_count": "1000", "_sort": "_lastUpdated"},
                              headers=server.headers(scope="system/AuditEvent.rs", sub="audit"))
    assert r.status_code == 200, r.text
    events = [e["resource"] for e in r.json().get("entry", [])]
    return [e for e in events if e["subtype"][0]["code"] == kind]


# --- discovery ------------------------------------------------------------------------------


async def test_smart_configuration_and_jwks_describe_the_server(auth_server: AuthServer) -> None:
    r = await auth_server.http.get("/.well-known/smart-configuration")
    assert r.status_code == 200
    config = r.json()
    root = "http://testserver"
    assert config["authorization_endpoint"] == f"{root}/auth/authorize"
    assert config["token_endpoint"] == f"{root}/auth/token"
    assert "S256" in config["code_challenge_methods_supported"]
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(
        config["grant_types_supported"])
    metadata = (await auth_server.http.get("/metadata")).json()
    [oauth] = metadata["rest"][0]["security"]["extension"]
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert uris["token"] == config["token_endpoint"]
    assert uris["authorize"] == config["authorization_endpoint"]
    keys = (await auth_server.root.get("/auth/jwks")).json()["keys"]
    assert keys and all("d" not in k and k["kty"] == "RSA" for k in keys)
    # A token the server issues verifies against the published keys.
    token = auth_server.headers(scope="system/*.rs")["Authorization"].split()[1]
    kid = jwt.get_unverified_header(token)["kid"]
    [key] = [k for k in keys if k["kid"] == kid]
    public = jwt.PyJWK(key).key
    claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_aud": False})
    assert claims["iss"] == config["issuer"]


# --- authentication required ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/Patient/x"), ("GET", "/Patient"), ("POST", "/Patient"), ("POST", ""),
    ("GET", "/_history"), ("POST", "/Patient/$validate"),
])
async def test_requests_without_a_valid_token_get_401(
    auth_server: AuthServer, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
        r = await auth_server.http.request(method, path, headers=headers,
                                           json={"resourceType": "Patient"})
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["issue"][0]["code"] == "login"
    assert (await auth_server.http.get("/metadata")).status_code == 200  # capabilities: open


async def test_an_expired_token_is_refused(
    auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    security = auth_server.security
    past = time.time() - 3600
    token, _ = security.tokens.issue("old", "system/*.rs", "c", now=past)
    r = await auth_server.http.get("/Patient", headers=bearer(token))
    assert r.status_code == 401
    assert "expired" in r.json()["issue"][0]["diagnostics"]
    # A token the server has already seen (and so need not verify again) expires all the same.
    fresh, lifetime = security.tokens.issue("new", "system/*.rs", "c")
    assert (await auth_server.http.get("/Patient", headers=bearer(fresh))).status_code == 200
    later = time.time() + lifetime + 60
    monkeypatch.setattr("fhir_server.auth.service.time.time", lambda: later)
    r = await auth_server.http.get("/Patient", headers=bearer(fresh))
    assert r.status_code == 401 and "expired" in r.json()["issue"][0]["diagnostics"]


# --- authorization code with PKCE ---------------------------------------------------------


async def test_sign_in_exchange_refresh_and_revoke(auth_server: AuthServer) -> None:
    security = auth_server.security
    await security.accounts.add("dr.house", "practitioner", PASSWORD, "Practitioner/house")
    app = await register(auth_server)

    form = await auth_server.root.get("/auth/authorize", params=app.query)
    assert form.status_code == 200 and 'name="password"' in form.text
    assert "Ward app" in form.text

    code = app.code_of(await app.login("dr.house", PASSWORD))
    r = await app.exchange(code)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 15 * 60
    assert body["fhirUser"] == "Practitioner/house"
    assert r.headers["cache-control"] == "no-store"
    # A code works once only.
    assert (await app.exchange(code)).json()["error"] == "invalid_grant"

    ok = await auth_server.http.get("/Practitioner", headers=bearer(body["access_token"]))
    assert ok.status_code == 200

    # Refresh tokens rotate: the new one works, the old one is dead, and presenting it again
    # (a stolen copy) kills the whole family, the new one included.
    refreshed = await app.token(grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    newer = refreshed.json()["refresh_token"]
    assert newer != body["refresh_token"]
    reused = await app.token(grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    after = await app.token(grant_type="refresh_token", refresh_token=newer)
    assert after.status_code == 400

    # Revoking the access token ends it at once.
    access = refreshed.json()["access_token"]
    assert (await auth_server.http.get("/Practitioner", headers=bearer(access))).status_code == 200
    revoked = await auth_server.root.post("/auth/revoke", data={"token": access},
                                          auth=(app.client_id, app.secret))
    assert revoked.status_code == 200
    r = await auth_server.http.get("/Practitioner", headers=bearer(access))
    assert r.status_code == 401 and "revoked" in r.json()["issue"][0]["diagnostics"]

    logins = await security_events(auth_server, "110122")
    assert [e["outcome"] for e in logins] == ["0"]
    assert logins[0]["agent"][0]["altId"] == "dr.house"
    issued = await security_events(auth_server, "token-issue")
    assert [e["outcome"] for e in issued] == ["0", "4"]  # the code, then its refused reuse
    refreshes = await security_events(auth_server, "token-refresh")
    assert [e["outcome"] for e in refreshes] == ["0", "4", "4"]
    assert [e["outcome"] for e in await security_events(auth_server, "token-revoke")] == ["0"]


async def test_refresh_token_dies_after_an_hour_unused(auth_server: AuthServer) -> None:
    security = auth_server.security
    await security.accounts.add("nurse", "practitioner", PASSWORD, "Practitioner/n")
    app = await register(auth_server)
    body = (await app.exchange(app.code_of(await app.login("nurse", PASSWORD)))).json()
    assert await security.grants.rotate_refresh(
        body["refresh_token"], app.client_id, now=time.time() + 61 * 60) is None


async def test_authorize_refuses_unknown_clients_and_redirects(auth_server: AuthServer) -> None:
    app = await register(auth_server)
    bad_client = await auth_server.root.get(
        "/auth/authorize", params={**app.query, "client_id": "nobody"})
    assert bad_client.status_code == 400 and "location" not in bad_client.headers
    elsewhere = await auth_server.root.get(
        "/auth/authorize", params={**app.query, "redirect_uri": "https://evil.example/cb"})
    assert elsewhere.status_code == 400 and "location" not in elsewhere.headers
    no_pkce = {k: v for k, v in app.query.items() if not k.startswith("code_challenge")}
    r = await auth_server.root.get("/auth/authorize", params=no_pkce)
    assert r.status_code == 302
    assert parse_qs(urlparse(r.headers["location"]).query)["error"] == ["invalid_request"]


async def test_a_code_needs_the_verifier_and_the_client_it_was_issued_to(
    auth_server: AuthServer,
) -> None:
    await auth_server.security.accounts.add("gp", "practitioner", PASSWORD, "Practitioner/gp")
    app = await register(auth_server)
    other = await register(auth_server)
    code = app.code_of(await app.login("gp", PASSWORD))
    stolen = await other.token(grant_type="authorization_code", code=code,
                               redirect_uri=REDIRECT, code_verifier=app.verifier)
    assert stolen.json()["error"] == "invalid_grant"
    wrong = await app.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                            code_verifier=pkce()[0])
    assert wrong.json()["error"] == "invalid_grant"
    assert (await app.exchange(code)).status_code == 200  # failed attempts did not use it up
    bad_secret = await auth_server.root.post(
        "/auth/token", data={"grant_type": "authorization_code"}, auth=(app.client_id, "nope"))
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"


# --- the login form ----------------------------------------------------------------------


async def test_fourth_failure_locks_without_telling_whether_the_user_exists(
    auth_server: AuthServer,
) -> None:
    await auth_server.security.accounts.add("real", "practitioner", PASSWORD, "Practitioner/r")
    app = await register(auth_server)
    pages: dict[str, list[httpx.Response]] = {"real": [], "ghost": []}
    for name in pages:
        for _ in range(5):
            pages[name].append(await app.login(name, "wrong password here"))
    for name, answers in pages.items():
        assert [p.status_code for p in answers] == [401, 401, 401, 403, 403], name
        assert "locked" in alert(answers[3])
    assert alert(pages["real"][3]) == alert(pages["ghost"][3])
    # Locked: even the right password does not get in.
    assert (await app.login("real", PASSWORD)).status_code == 403
    await auth_server.security.accounts.unlock("real")
    app.code_of(await app.login("real", PASSWORD))
    outcomes = [e["outcome"] for e in await security_events(auth_server, "110122")]
    assert outcomes.count("4") == 11 and outcomes.count("0") == 1


async def test_admins_sign_in_with_a_totp_code(auth_server: AuthServer) -> None:
    accounts = auth_server.security.accounts
    await accounts.add("root", "admin", PASSWORD)
    app = await register(auth_server)
    r = await app.login("root", PASSWORD)
    assert r.status_code == 200 and "administrator" in alert(r)  # not enrolled yet
    secret = await accounts.enroll_totp("root")
    r = await app.login("root", PASSWORD)
    assert 'name="totp"' in r.text and "authenticator" in alert(r)
    assert (await app.login("root", PASSWORD, totp="000000")).status_code == 401
    code = pyotp.TOTP(secret).now()
    app.code_of(await app.login("root", PASSWORD, totp=code))
    # The same code does not open a second session.
    assert (await app.login("root", PASSWORD, totp=code)).status_code == 401


async def test_an_old_password_must_be_changed_at_sign_in(auth_server: AuthServer) -> None:
    accounts = auth_server.security.accounts
    long_ago = datetime.now(UTC) - timedelta(days=91)
    await accounts.add("slow", "practitioner", PASSWORD, "Practitioner/s", now=long_ago)
    app = await register(auth_server)
    r = await app.login("slow", PASSWORD)
    assert r.status_code == 200 and 'name="new_password"' in r.text
    mismatch = await app.login("slow", PASSWORD, new_password="a brand new secret",
                               new_password2="something else!!")
    assert "differ" in alert(mismatch)
    code = app.code_of(await app.login("slow", PASSWORD, new_password="a brand new secret",
                                       new_password2="a brand new secret"))
    assert code
    app.code_of(await app.login("slow", "a brand new secret"))
    assert (await app.login("slow", PASSWORD)).status_code == 401
    assert [e["outcome"] for e in await security_events(auth_server, "password-change")] == ["0"]


# --- client credentials -------------------------------------------------------------------


async def test_client_credentials_with_a_secret_and_narrowed_scopes(
    auth_server: AuthServer,
) -> None:
    client, secret = await auth_server.security.clients.add(
        "lab", "system/Observation.cruds system/Patient.rs")
    assert secret is not None
    token = auth_server.root.post
    r = await token("/auth/token", data={"grant_type": "client_credentials",
                                         "scope": "system/Observation.rs system/Claim.rs"},
                    auth=(client.client_id, secret))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Observation.rs"
    headers = bearer(r.json()["access_token"])
    assert (await auth_server.http.get("/Observation", headers=headers)).status_code == 200
    assert (await auth_server.http.get("/Claim", headers=headers)).status_code == 403
    created = await auth_server.http.post(
        "/Observation", headers=headers,
        json={"resourceType": "Observation", "status": "final", "code": {"text": "K"}})
    assert created.status_code == 403  # the token asked for read and search only
    form_secret = await token("/auth/token", data={
        "grant_type": "client_credentials", "client_id": client.client_id,
        "client_secret": secret})
    assert form_secret.json()["scope"] == "system/Observation.cruds system/Patient.rs"


async def test_backend_service_signs_in_with_a_private_key_jwt(auth_server: AuthServer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    public.update(kid="k1", alg="RS384")
    client, secret = await auth_server.security.clients.add(
        "registry", "system/Patient.rs", jwks={"keys": [public]})
    assert secret is None

    def assertion(aud: str = "http://testserver/auth/token", jti: str | None = None) -> str:
        claims = {"iss": client.client_id, "sub": client.client_id, "aud": aud,
                  "exp": int(time.time()) + 120, "jti": jti or secrets.token_hex(8)}
        return jwt.encode(claims, key, "RS384", {"kid": "k1"})

    def form(signed: str) -> dict[str, str]:
        return {"grant_type": "client_credentials", "scope": "system/Patient.rs",
                "client_assertion_type":
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": signed}

    once = assertion(jti="only-once")
    r = await auth_server.root.post("/auth/token", data=form(once))
    assert r.status_code == 200, r.text
    got = await auth_server.http.get("/Patient", headers=bearer(r.json()["access_token"]))
    assert got.status_code == 200
    replay = await auth_server.root.post("/auth/token", data=form(once))
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    elsewhere = await auth_server.root.post(
        "/auth/token", data=form(assertion(aud="https://other.example/token")))
    assert elsewhere.status_code == 401


# --- when authentication is on -------------------------------------------------------------


@pytest.mark.parametrize(("auth", "host", "mongodb", "required"), [
    ("auto", "127.0.0.1", False, False),
    ("auto", "::1", False, False),
    ("auto", "0.0.0.0", False, True),
    ("auto", "127.0.0.1", True, True),
    ("required", "127.0.0.1", False, True),
    ("off", "localhost", False, False),
])
def test_when_authentication_is_required(
    auth: str, host: str, mongodb: bool, required: bool
) -> None:
    settings = Settings(auth=auth, mongodb_url="mongodb://db" if mongodb else None)
    assert auth_required(settings, host) is required


def test_serve_refuses_auth_off_on_a_public_address(tmp_path: Any) -> None:
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--auth", "off",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "refused" in result.output


async def test_rotating_the_signing_key_keeps_earlier_tokens_valid(
    auth_server: AuthServer,
) -> None:
    before = auth_server.headers(scope="system/*.rs")
    assert (await auth_server.http.get("/Patient", headers=before)).status_code == 200
    data_dir = auth_server.app.state.settings.data_dir
    result = CliRunner().invoke(cli, ["keys", "rotate", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    new_kid = re.findall(r"kid: (\S+)", result.stdout)[0]
    after = auth_server.headers(scope="system/*.rs")
    assert jwt.get_unverified_header(after["Authorization"].split()[1])["kid"] == new_kid
    for headers in (before, after):
        assert (await auth_server.http.get("/Patient", headers=headers)).status_code == 200
    published = (await auth_server.root.get("/auth/jwks")).json()["keys"]
    assert new_kid in {k["kid"] for k in published} and len(published) == 2


async def test_a_refresh_token_only_for_apps_that_ask_to_stay_signed_in(
    auth_server: AuthServer,
) -> None:
    await auth_server.security.accounts.add("brief", "practitioner", PASSWORD, "Practitioner/b")
    app = await register(auth_server)
    app.query["scope"] = "user/*.rs"
    body = (await app.exchange(app.code_of(await app.login("brief", PASSWORD)))).json()
    assert body["scope"] == "user/*.rs" and "refresh_token" not in body


async def test_scope_parameters_narrow_what_a_scope_grants(auth_server: AuthServer) -> None:
    ids: dict[str, str] = {}
    for code in ("8867-4", "8310-5"):
        r = await auth_server.http.post("/Observation", headers=auth_server.system, json={
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}})
        assert r.status_code == 201, r.text
        ids[code] = r.json()["id"]
    narrow = auth_server.headers(scope="system/Observation.rs?code=http://loinc.org|8867-4")
    found = await auth_server.http.get("/Observation", headers=narrow,
                                       params={"_total": "accurate"})
    assert found.json()["total"] == 1
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [ids["8867-4"]]
    assert (await auth_server.http.get(f"/Observation/{ids['8867-4']}",
                                       headers=narrow)).status_code == 200
    assert (await auth_server.http.get(f"/Observation/{ids['8310-5']}",
                                       headers=narrow)).status_code == 404
    # Another scope without parameters grants the rest; a parameter the server does not know
    # grants nothing; and parameters limit reading only: a write under them is refused.
    both = auth_server.headers(scope="system/Observation.rs?code=http://loinc.org|8867-4 "
                                     "system/Observation.rs")
    assert (await auth_server.http.get(f"/Observation/{ids['8310-5']}",
                                       headers=both)).status_code == 200
    unknown = auth_server.headers(scope="system/Observation.rs?colour=blue")
    assert (await auth_server.http.get("/Observation", headers=unknown)).status_code == 403
    writer = auth_server.headers(scope="system/Observation.c?code=http://loinc.org|8867-4")
    r = await auth_server.http.post("/Observation", headers=writer, json={
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}})
    assert r.status_code == 403


async def test_tokens_of_a_configured_identity_provider_are_accepted(
    engine: str, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    public.update(kid="idp-1", alg="RS256", use="sig")
    jwks = tmp_path / "idp-jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    issuer = "https://idp.example/realms/clinic"
    settings = settings_for(
        tmp_path, auth="required", external_issuer=issuer, external_jwks=str(jwks),
        external_audience="fhir-server",
        external_claims={"scope": "scp", "role": "realm_access.roles", "sub": "preferred_username",
                         "fhirUser": "fhir_user"},
    )

    def token(**claims: Any) -> dict[str, str]:
        now = int(time.time())
        body = {"iss": issuer, "aud": "fhir-server", "exp": now + 300, "iat": now,
                "jti": secrets.token_hex(8),
                "preferred_username": "audrey", "scp": "user/*.rs",
                "realm_access": {"roles": ["offline_access", "auditor"]}, **claims}
        return bearer(jwt.encode(body, key, "RS256", {"kid": "idp-1"}))

    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            assert (await http.get("/AuditEvent", headers=token())).status_code == 200
            assert (await http.get("/Patient", headers=token())).status_code == 403
            other = token(iss="https://elsewhere.example")
            assert (await http.get("/AuditEvent", headers=other)).status_code == 401
            events = (await http.get("/AuditEvent", headers=token(),
                                     params={"altid": "audrey"})).json()
            agents = [e["resource"]["agent"][0] for e in events["entry"]]
            assert len(agents) == 2 and all(a["role"] == [{"text": "auditor"}] for a in agents)
    await drop_store(handle)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


def test_serve_speaks_tls_and_requires_tokens(tmp_path: Path) -> None:
    import socket
    import ssl
    import subprocess
    import sys

    cert, key = self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-c", "from fhir_server.cli import main; main()", "serve",
            "--port", str(port), "--data-dir", str(tmp_path / "data"), "--no-seed",
            "--auth", "required", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"https://127.0.0.1:{port}/fhir"
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trusted, timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    metadata = http.get(f"{base}/metadata")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.3)
            assert metadata.status_code == 200
            assert http.get(f"{base}/Patient").status_code == 401
            config = http.get(f"{base}/.well-known/smart-configuration").json()
            assert config["token_endpoint"] == f"https://127.0.0.1:{port}/auth/token"
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_users_and_clients_added_with_the_cli_work_on_the_running_server(
    auth_server: AuthServer, engine: str
) -> None:
    if engine != "sqlite":
        pytest.skip("the CLI opens its own store: mongomock lives inside this process only")
    data_dir = str(auth_server.app.state.settings.data_dir)

    def invoke(args: list[str]) -> Any:  # in a thread: the CLI runs its own event loop
        return asyncio.to_thread(CliRunner().invoke, cli, args)

    added = await invoke(["users", "add", "late", "--role", "practitioner", "--resource",
                                "Practitioner/late", "--password", PASSWORD,
                                "--data-dir", data_dir])
    assert added.exit_code == 0, added.output
    registered = await invoke(["clients", "add", "late app", "--scopes",
                                     "user/*.rs offline_access", "--redirect-uri", REDIRECT,
                                     "--data-dir", data_dir])
    assert registered.exit_code == 0, registered.output
    client_id = re.findall(r"client_id: (\S+)", registered.stdout)[0]
    secret = re.findall(r"client_secret: (\S+)", registered.stdout)[0]
    app = App(auth_server, client_id, secret)
    r = await app.exchange(app.code_of(await app.login("late", PASSWORD)))
    assert r.status_code == 200 and r.json()["fhirUser"] == "Practitioner/late"


def test_rotation_retires_keys_no_valid_token_can_need(tmp_path: Path) -> None:
    runner = CliRunner()
    kids = []
    for _ in range(2):
        result = runner.invoke(cli, ["keys", "rotate", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        kids.append(re.findall(r"kid: (\S+)", result.stdout)[0])
    ring_dir = tmp_path / "auth"
    assert len(list(ring_dir.glob("*.pem"))) == 3  # the first key and two rotations
    # Pretend the rotations happened long ago: every key but the current one is replaced for
    # longer than a token lives, so the next rotation retires them.
    long_ago = time.time() - 3600
    for pem in ring_dir.glob("*.pem"):
        os.utime(pem, (long_ago, long_ago))
    result = runner.invoke(cli, ["keys", "rotate", "--data-dir", str(tmp_path)])
    newest = re.findall(r"kid: (\S+)", result.stdout)[0]
    remaining = {line.split()[0] for line in runner.invoke(
        cli, ["keys", "list", "--data-dir", str(tmp_path)]).stdout.splitlines()
        if line.strip() and len(line.split()[0]) == len(newest)}
    assert remaining == {kids[-1], newest}
