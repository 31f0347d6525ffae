"""OAuth clients (SMART apps, backend services), kept as `auth.client.<client_id>` settings.

A client proves itself with a secret, shown once when it is made and stored only as an argon2id
hash, or — given a JWKS — with a JWT signed by one of its keys (SMART Backend Services
`private_key_jwt`), and then has no secret at all.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fhir_server.auth.accounts import check_password, hash_password, update_setting
from fhir_server.fhirtime import format_instant, parse_instant
from fhir_server.store.base import Store

CLIENT_PREFIX = "auth.client."
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
"""RFC 6749 §3.3: printable ASCII but space, `"` and `\\`."""
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
"""Members of a private or symmetric key, which a client's JWKS must never hold."""


class ClientError(ValueError):
    """A change the clients refuse; the message is meant for the person who asked."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    scopes: str
    """The scopes it may be granted, space-separated."""
    secret_hash: str | None
    jwks: dict[str, Any] | None
    """Its public keys, for `private_key_jwt` (then it has no secret)."""
    redirect_uris: tuple[str, ...]
    created: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "name": self.name,
            "scopes": self.scopes,
            "secret_hash": self.secret_hash,
            "jwks": self.jwks,
            "redirect_uris": list(self.redirect_uris),
            "created": format_instant(self.created),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Client:
        return cls(**{
            **data,
            "redirect_uris": tuple(data["redirect_uris"]),
            "created": parse_instant(data["created"]),
        })


def normalise_scopes(scopes: str) -> str:
    tokens = scopes.split()
    if not tokens:
        raise ClientError("a client needs at least one scope")
    for token in tokens:
        if not SCOPE_TOKEN.fullmatch(token):
            raise ClientError(f"not a scope: {token!r}")
    return " ".join(tokens)


def check_jwks(jwks: Any) -> None:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not keys or not isinstance(keys, list):
        raise ClientError('a JWKS is an object with a non-empty "keys" list')
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise ClientError('every key of a JWKS is an object with a "kty"')
        if private := [m for m in PRIVATE_JWK_MEMBERS if m in key]:
            raise ClientError(
                f"the JWKS holds private key material ({', '.join(private)}): "
                "give the client's public keys only"
            )


def check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    # RFC 6749 §3.1.2: absolute, without a fragment; a custom scheme (native apps) is fine.
    if not parts.scheme or not (parts.netloc or parts.path) or "#" in uri:
        raise ClientError(f"a redirect URI is absolute, without a fragment: {uri!r}")


def _key(client_id: str) -> str:
    return CLIENT_PREFIX + client_id


class Clients:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        name: str,
        scopes: str,
        jwks: dict[str, Any] | None = None,
        redirect_uris: Iterable[str] = (),
        now: datetime | None = None,
    ) -> tuple[Client, str | None]:
        """A new client with a random id, and its secret in clear — the only time it is
        available — unless it has a JWKS."""
        if not name.strip():
            raise ClientError("a client needs a name")
        scopes = normalise_scopes(scopes)
        if jwks is not None:
            check_jwks(jwks)
        uris = tuple(redirect_uris)
        for uri in uris:
            check_redirect_uri(uri)
        secret = None if jwks is not None else secrets.token_urlsafe(32)
        client = Client(
            client_id=secrets.token_urlsafe(16),
            name=name.strip(),
            scopes=scopes,
            secret_hash=None if secret is None else await hash_password(secret),
            jwks=jwks,
            redirect_uris=uris,
            created=now or datetime.now(UTC),
        )
        async with self._store.transaction() as tx:
            await tx.swap_setting(_key(client.client_id), None, client.to_json())
        return client, secret

    async def get(self, client_id: str) -> Client | None:
        data = await self._store.get_setting(_key(client_id))
        return None if data is None else Client.from_json(data)

    async def verify_secret(self, client_id: str, secret: str) -> Client | None:
        """The client, if `secret` is its secret. An unknown id, or a client without a secret,
        costs a hash verification all the same, so the answer's timing tells nothing."""
        client = await self.get(client_id)
        hashed = None if client is None else client.secret_hash
        return client if await check_password(hashed, secret) else None

    async def remove(self, client_id: str) -> Client:
        def drop(current: Any) -> tuple[Any, Client]:
            if current is None:
                raise ClientError(f"no client {client_id}")
            return None, Client.from_json(current)

        return await update_setting(self._store, _key(client_id), drop)

    async def list(self) -> list[Client]:
        found = await self._store.list_settings(CLIENT_PREFIX)
        return [Client.from_json(data) for data in found.values()]
