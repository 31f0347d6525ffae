"""OAuth clients (fhir_server/auth/clients.py) on both storage engines: secrets shown once and
stored hashed, JWKS clients without one, validation, removal."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fhir_server.auth.clients import ClientError, Clients
from fhir_server.store.base import Store
from tests.auth.test_accounts import NOW

JWKS = {"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                  "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "k1"}]}


@pytest.fixture
def clients(store: Store) -> Clients:
    return Clients(store)


async def test_a_secret_is_shown_once_and_stored_hashed(clients: Clients, store: Store) -> None:
    client, secret = await clients.add("Lab import", "system/*.rs", now=NOW)
    assert secret is not None and len(secret) >= 43  # 32 random bytes, base64url
    raw = await store.get_setting(f"auth.client.{client.client_id}")
    assert raw["secret_hash"].startswith("$argon2id$")
    assert secret.encode() not in orjson.dumps(await store.list_settings(""))
    assert await clients.get(client.client_id) == client
    assert (client.name, client.scopes, client.created, client.jwks) == (
        "Lab import", "system/*.rs", NOW, None
    )


async def test_verify_secret(clients: Clients) -> None:
    client, secret = await clients.add("Lab import", "system/*.rs")
    other, other_secret = await clients.add("Billing", "system/Claim.cru")
    assert secret is not None and other_secret is not None
    assert await clients.verify_secret(client.client_id, secret) == client
    assert await clients.verify_secret(client.client_id, secret + "x") is None
    assert await clients.verify_secret(client.client_id, other_secret) is None
    assert await clients.verify_secret("no-such-client", secret) is None
    assert await clients.verify_secret(other.client_id, other_secret) == other


async def test_a_jwks_client_has_no_secret(clients: Clients, store: Store) -> None:
    client, secret = await clients.add(
        "Backend", "system/Patient.rs", jwks=JWKS, redirect_uris=["https://app.example/cb"]
    )
    assert secret is None and client.secret_hash is None
    assert (await clients.get(client.client_id)) == client
    assert client.jwks == JWKS and client.redirect_uris == ("https://app.example/cb",)
    assert await clients.verify_secret(client.client_id, "") is None
    assert await clients.verify_secret(client.client_id, "anything at all") is None


async def test_ids_and_secrets_are_random(clients: Clients) -> None:
    made = [await clients.add("App", "user/*.rs") for _ in range(3)]
    assert len({c.client_id for c, _ in made}) == 3
    assert len({s for _, s in made}) == 3
    assert all(len(c.client_id) >= 22 for c, _ in made)


async def test_scopes_are_normalised(clients: Clients) -> None:
    client, _ = await clients.add("App", "  system/*.rs \n user/Patient.r  launch ")
    assert client.scopes == "system/*.rs user/Patient.r launch"


@pytest.mark.parametrize(
    ("name", "scopes", "jwks", "uris", "message"),
    [
        ("", "system/*.rs", None, (), "needs a name"),
        ("App", "   ", None, (), "at least one scope"),
        ("App", 'system/*.rs "quoted"', None, (), "not a scope"),
        ("App", "system/*.rs", {"kty": "EC"}, (), '"keys" list'),
        ("App", "system/*.rs", {"keys": []}, (), '"keys" list'),
        ("App", "system/*.rs", {"keys": [{"kid": "k1"}]}, (), '"kty"'),
        ("App", "system/*.rs", {"keys": ["EC"]}, (), '"kty"'),
        ("App", "system/*.rs", {"keys": [{**JWKS["keys"][0], "d": "secret"}]}, (), "private"),
        ("App", "system/*.rs", {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, (), "private"),
        ("App", "user/*.rs", None, ("/callback",), "absolute"),
        ("App", "user/*.rs", None, ("https://app.example/cb#frag",), "fragment"),
    ],
)
async def test_add_refuses(
    clients: Clients, name: str, scopes: str, jwks: Any, uris: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ClientError, match=message):
        await clients.add(name, scopes, jwks, uris)
    assert await clients.list() == []


async def test_remove(clients: Clients) -> None:
    kept, _ = await clients.add("Kept", "system/*.rs")
    gone, secret = await clients.add("Gone", "system/*.rs")
    assert secret is not None
    assert await clients.remove(gone.client_id) == gone
    assert await clients.get(gone.client_id) is None
    assert await clients.verify_secret(gone.client_id, secret) is None
    assert await clients.list() == [kept]
    with pytest.raises(ClientError, match="no client"):
        await clients.remove(gone.client_id)
