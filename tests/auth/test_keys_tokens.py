"""Signing keys on disk, access tokens (ours and an external identity provider's), and SMART
Backend Services client assertions."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhir_server.auth.keys import KeyRing
from fhir_server.auth.tokens import (
    Claims,
    TokenError,
    TokenService,
    verify_client_assertion,
)
from tests.conftest import settings_for

ISSUER = "https://fhir.example.org/auth"
EXTERNAL = "https://idp.example.org/realms/clinic"
NOW = 1_750_000_000
CLIENT = "backend-1"
TOKEN_URL = "https://fhir.example.org/auth/token"

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
other_rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP384R1())


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid}


@pytest.fixture(scope="module")
def shared_ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """One key ring for the tests that do not rotate (RSA key generation is slow)."""
    return KeyRing.load_or_create(tmp_path_factory.mktemp("keys") / "auth")


@pytest.fixture
def service(shared_ring: KeyRing, tmp_path: Path) -> TokenService:
    return TokenService(shared_ring, settings_for(tmp_path), ISSUER)


def sign(payload: dict[str, Any], key: Any, alg: str = "RS256", **headers: Any) -> str:
    return jwt.encode(payload, key, alg, headers)


def own_claims(**changes: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER, "sub": "ana", "aud": ISSUER, "iat": NOW, "exp": NOW + 900,
        "jti": "j1", "scope": "user/*.rs", "client_id": "app",
    }
    return {**claims, **changes}


# --------------------------------------------------------------------------------------------
# Keys


def test_keys_are_private_files_and_the_jwks_only_public(tmp_path: Path) -> None:
    folder = tmp_path / "auth"
    ring = KeyRing.load_or_create(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert [f.name for f in files] == ["signing-000001.pem"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600

    [jwk] = ring.jwks()["keys"]
    assert set(jwk) == {"kty", "kid", "use", "alg", "n", "e"}
    assert (jwk["kty"], jwk["use"], jwk["alg"], jwk["kid"]) == (
        "RSA", "sig", "RS256", ring.current.kid)
    # The kid is the RFC 7638 thumbprint, which anyone can recompute from the public key.
    canonical = orjson.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]})
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest())
    assert jwk["kid"] == expected.rstrip(b"=").decode()


def test_an_existing_folder_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "auth"
    folder.mkdir(mode=0o755)
    KeyRing.load_or_create(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_reloading_from_disk_gives_the_same_current_key(tmp_path: Path) -> None:
    first = KeyRing.load_or_create(tmp_path / "auth")
    first.rotate()
    again = KeyRing.load_or_create(tmp_path / "auth")
    assert again.current.kid == first.current.kid
    assert [k.kid for k in again.all_keys()] == [k.kid for k in first.all_keys()]


def test_concurrent_creation_makes_one_key(tmp_path: Path) -> None:
    folder = tmp_path / "auth"
    with ThreadPoolExecutor(4) as pool:
        rings = list(pool.map(lambda _: KeyRing.load_or_create(folder), range(4)))
    assert {ring.current.kid for ring in rings} == {rings[0].current.kid}
    assert [p.name for p in folder.iterdir()] == ["signing-000001.pem"]


async def test_rotation_keeps_tokens_of_older_keys_verifying(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path / "auth")
    service = TokenService(ring, settings_for(tmp_path), ISSUER)
    old_token, _ = service.issue("ana", "user/*.rs", "app", now=NOW)
    old_kid = ring.current.kid

    new = ring.rotate()
    assert new.kid != old_kid and ring.current.kid == new.kid
    new_token, _ = service.issue("ana", "user/*.rs", "app", now=NOW)
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    assert (await service.verify(old_token, now=NOW)).sub == "ana"
    assert (await service.verify(new_token, now=NOW)).sub == "ana"
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid, old_kid]

    # Pruned once its successor has been current longer than a token lives.
    assert ring.prune(older_than=900, now=new.created + 60) == []
    assert ring.prune(older_than=900, now=new.created + 901) == [old_kid]
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]
    with pytest.raises(TokenError, match="unknown key"):
        await service.verify(old_token, now=NOW)


async def test_a_rotation_by_another_process_is_picked_up(tmp_path: Path) -> None:
    server = KeyRing.load_or_create(tmp_path / "auth")
    cli = KeyRing.load_or_create(tmp_path / "auth")
    rotated = cli.rotate()
    token, _ = TokenService(cli, settings_for(tmp_path), ISSUER).issue("ana", "", "app", now=NOW)
    service = TokenService(server, settings_for(tmp_path), ISSUER)
    assert (await service.verify(token, now=NOW)).sub == "ana"
    assert server.current.kid == rotated.kid


# --------------------------------------------------------------------------------------------
# Our access tokens


async def test_issue_and_verify(service: TokenService) -> None:
    token, expires_in = service.issue(
        "ana", "user/*.rs openid", "app", fhir_user="Practitioner/7", role="practitioner", now=NOW
    )
    assert expires_in == 15 * 60
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == (
        "RS256", "at+jwt", service.keyring.current.kid)
    claims = await service.verify(token, now=NOW + 10)
    assert claims == Claims(
        sub="ana", scope="user/*.rs openid", client_id="app", fhir_user="Practitioner/7",
        role="practitioner", jti=claims.jti, expires=NOW + 900, issuer=ISSUER, extra={},
    )
    assert claims.jti
    other, _ = service.issue("ana", "user/*.rs", "app", now=NOW)
    assert (await service.verify(other, now=NOW)).jti != claims.jti


async def test_expiry_allows_30_seconds_of_clock_skew(service: TokenService) -> None:
    token, lifetime = service.issue("ana", "user/*.rs", "app", now=NOW)
    assert (await service.verify(token, now=NOW + lifetime + 30)).sub == "ana"
    with pytest.raises(TokenError, match="expired"):
        await service.verify(token, now=NOW + lifetime + 31)
    with pytest.raises(TokenError, match="issued in the future"):
        await service.verify(token, now=NOW - 31)


async def test_tampered_payload_is_refused(service: TokenService) -> None:
    token, _ = service.issue("ana", "patient/*.rs", "app", now=NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="bad signature"):
        await service.verify(f"{header}.{forged}.{signature}", now=NOW)


async def test_refused_tokens(service: TokenService) -> None:
    kid = service.keyring.current.kid
    ours = service.keyring.current.private_key
    cases = {
        "malformed": "not.a.jwt",
        "unknown issuer": sign(own_claims(iss="https://elsewhere"), ours, kid=kid, typ="at+jwt"),
        "wrong audience": sign(own_claims(aud="https://other"), ours, kid=kid, typ="at+jwt"),
        "unknown key": sign(own_claims(), ours, kid="nope", typ="at+jwt"),
        "bad signature": sign(own_claims(), other_rsa_key, kid=kid, typ="at+jwt"),
        "not an access token": sign(own_claims(), ours, kid=kid),
        "missing claim jti": sign(own_claims(jti=None), ours, kid=kid, typ="at+jwt"),
        "algorithm not allowed": sign(own_claims(), b"k" * 32, "HS256", kid=kid, typ="at+jwt"),
    }
    for reason, token in cases.items():
        with pytest.raises(TokenError) as caught:
            await service.verify(token, now=NOW)
        assert caught.value.reason == reason
    unsigned = jwt.encode(own_claims(), None, "none", {"kid": kid, "typ": "at+jwt"})
    with pytest.raises(TokenError, match="algorithm not allowed"):
        await service.verify(unsigned, now=NOW)


async def test_another_issuer_is_refused(shared_ring: KeyRing, tmp_path: Path) -> None:
    token, _ = TokenService(shared_ring, settings_for(tmp_path), ISSUER).issue(
        "ana", "", "app", now=NOW)
    elsewhere = TokenService(shared_ring, settings_for(tmp_path), "https://other.example.org")
    with pytest.raises(TokenError, match="unknown issuer"):
        await elsewhere.verify(token, now=NOW)


async def test_revoked_tokens_are_refused(shared_ring: KeyRing, tmp_path: Path) -> None:
    revoked: set[str] = set()

    async def is_revoked(jti: str) -> bool:
        return jti in revoked

    service = TokenService(shared_ring, settings_for(tmp_path), ISSUER, is_revoked)
    token, _ = service.issue("ana", "user/*.rs", "app", now=NOW)
    claims = await service.verify(token, now=NOW)
    revoked.add(claims.jti or "")
    with pytest.raises(TokenError, match="revoked"):
        await service.verify(token, now=NOW)


# --------------------------------------------------------------------------------------------
# External identity provider


def external_token(key: Any = rsa_key, kid: str = "idp-1", **changes: Any) -> str:
    claims = {
        "iss": EXTERNAL, "aud": "fhir", "exp": NOW + 300, "iat": NOW, "jti": "x1",
        "azp": "portal", "preferred_username": "dr.bo", "profile": "Practitioner/9",
        "scp": ["user/*.rs", "openid"], "email": "bo@example.org",
        "realm_access": {"roles": ["offline_access", "practitioner", "admin"]},
    }
    return sign({**claims, **changes}, key, "RS384", kid=kid)


def external_service(tmp_path: Path, jwks: str, **kwargs: Any) -> TokenService:
    settings = settings_for(
        tmp_path, external_issuer=EXTERNAL, external_jwks=jwks,
        external_claims={"sub": "preferred_username", "scope": "scp",
                         "role": "realm_access.roles", "fhirUser": "profile"},
    )
    kwargs.setdefault("external_audience", "fhir")
    return TokenService(KeyRing.load_or_create(tmp_path / "auth"), settings, ISSUER, **kwargs)


@pytest.fixture
def jwks_file(tmp_path: Path) -> str:
    path = tmp_path / "idp-jwks.json"
    path.write_bytes(orjson.dumps({"keys": [public_jwk(rsa_key, "idp-1")]}))
    return str(path)


async def test_external_tokens_verify_and_map_claims(tmp_path: Path, jwks_file: str) -> None:
    service = external_service(tmp_path, jwks_file)
    claims = await service.verify(external_token(), now=NOW)
    assert claims == Claims(
        sub="dr.bo", scope="user/*.rs openid", client_id="portal", fhir_user="Practitioner/9",
        role="practitioner", jti="x1", expires=NOW + 300, issuer=EXTERNAL,
        extra={"realm_access": {"roles": ["offline_access", "practitioner", "admin"]},
               "email": "bo@example.org"},
    )
    # A space-separated scope and a single role are read as they are; a user of a role this
    # server does not know is refused (not taken for a backend service), no role is none.
    token = external_token(scp="patient/*.rs", realm_access={"roles": "patient"})
    claims = await service.verify(token, now=NOW)
    assert (claims.scope, claims.role) == ("patient/*.rs", "patient")
    with pytest.raises(TokenError, match="superuser"):
        await service.verify(external_token(realm_access={"roles": ["superuser"]}), now=NOW)
    assert (await service.verify(external_token(realm_access={}), now=NOW)).role is None
    # Without an audience to check, a token the provider issued to any application would do.
    unchecked = external_service(tmp_path, jwks_file, external_audience=None)
    with pytest.raises(TokenError, match="AUDIENCE"):
        await unchecked.verify(external_token(), now=NOW)


async def test_external_tokens_are_checked(tmp_path: Path, jwks_file: str) -> None:
    service = external_service(tmp_path, jwks_file, external_audience="fhir")
    cases = {
        "bad signature": external_token(key=other_rsa_key),
        "unknown key": external_token(kid="idp-2"),
        "expired": external_token(exp=NOW - 31),
        "wrong audience": external_token(aud="account"),
        "missing claim preferred_username": external_token(preferred_username=None),
        "unknown issuer": external_token(iss="https://evil.example.org"),
    }
    for reason, token in cases.items():
        with pytest.raises(TokenError) as caught:
            await service.verify(token, now=NOW)
        assert caught.value.reason == reason


async def test_external_tokens_need_the_configuration(shared_ring: KeyRing, tmp_path: Path) -> None:
    service = TokenService(shared_ring, settings_for(tmp_path), ISSUER)
    with pytest.raises(TokenError, match="unknown issuer"):
        await service.verify(external_token(), now=NOW)


@pytest.fixture
def jwks_url() -> Iterator[str]:
    body = orjson.dumps({"keys": [public_jwk(rsa_key, "idp-1")]})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    server.shutdown()
    thread.join()


async def test_external_keys_from_a_url(tmp_path: Path, jwks_url: str) -> None:
    service = external_service(tmp_path, jwks_url)
    assert (await service.verify(external_token(), now=NOW)).sub == "dr.bo"
    with pytest.raises(TokenError, match="unknown key"):
        await service.verify(external_token(kid="idp-2"), now=NOW)


# --------------------------------------------------------------------------------------------
# Client assertions (SMART Backend Services)


class Seen:
    def __init__(self) -> None:
        self.jtis: dict[str, int] = {}

    async def __call__(self, jti: str, expires: int) -> bool:
        if jti in self.jtis:
            return True
        self.jtis[jti] = expires
        return False


CLIENT_JWKS = {"keys": [public_jwk(rsa_key, "c-rsa"), public_jwk(ec_key, "c-ec")]}


def assertion(key: Any = rsa_key, alg: str = "RS384", kid: str = "c-rsa", **changes: Any) -> str:
    claims = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": NOW + 240, "jti": "a1"}
    return sign({**claims, **changes}, key, alg, kid=kid)


async def check(token: str, seen: Seen | None = None) -> dict[str, Any]:
    return await verify_client_assertion(
        token, CLIENT_JWKS, CLIENT, TOKEN_URL, seen or Seen(), now=NOW
    )


async def test_client_assertions_are_accepted_once() -> None:
    seen = Seen()
    assert (await check(assertion(), seen))["jti"] == "a1"
    assert seen.jtis == {"a1": NOW + 240}
    with pytest.raises(TokenError, match="replayed"):
        await check(assertion(), seen)
    assert (await check(assertion(ec_key, "ES384", "c-ec", jti="a2"), seen))["jti"] == "a2"
    assert (await check(assertion(alg="RS256", jti="a3"), seen))["jti"] == "a3"


async def test_bad_client_assertions_are_refused() -> None:
    seen = Seen()
    cases = {
        "wrong audience": assertion(aud="https://fhir.example.org/other"),
        "expired": assertion(exp=NOW - 31),
        "expires more than five minutes ahead": assertion(exp=NOW + 600),
        "wrong issuer": assertion(iss="someone-else"),
        "sub must be the client_id": assertion(sub="someone-else"),
        "missing claim jti": assertion(jti=None),
        "unknown key": assertion(kid="c-other"),
        "bad signature": assertion(other_rsa_key),
        "algorithm not allowed": assertion(alg="RS512"),
    }
    for reason, token in cases.items():
        with pytest.raises(TokenError) as caught:
            await check(token, seen)
        assert caught.value.reason == reason
    # None of them used up its jti: a forged assertion cannot block the real one.
    assert seen.jtis == {}
    # An RSA key does not verify an EC algorithm whatever the header says.
    with pytest.raises(TokenError, match="algorithm not allowed"):
        await check(assertion(ec_key, "ES384", "c-rsa"))


async def test_a_client_without_usable_keys_is_refused() -> None:
    with pytest.raises(TokenError, match="no usable public key"):
        await verify_client_assertion(assertion(), {"keys": []}, CLIENT, TOKEN_URL, Seen(), NOW)
