"""The server's security, built once per app: who a request is, and the parts that say so.

Authentication is `required` or not as `auth_required` decides from the settings (and, for
`serve`, the address it binds). Without it a request with no token is anonymous and unlimited;
a token that is sent is verified either way, so clients behave the same whether it is on.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

from fhir_server import errors
from fhir_server.auth.access import ANONYMOUS, Principal, patient_in_context
from fhir_server.auth.accounts import Accounts
from fhir_server.auth.clients import Clients
from fhir_server.auth.grants import Grants
from fhir_server.auth.keys import KeyRing
from fhir_server.auth.scopes import ScopeError, ScopeSet
from fhir_server.auth.tokens import SKEW, Claims, TokenError, TokenService
from fhir_server.config import Settings
from fhir_server.store.base import Store

BREAK_GLASS_HEADER = "x-break-glass"
MAX_BREAK_GLASS_REASON = 500
MAX_KNOWN_TOKENS = 10_000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(settings: Settings, host: str | None = None) -> bool:
    """Whether every FHIR request needs an access token. `auto`: yes with MongoDB or on an
    address other than loopback. `off` on such an address is refused (ValueError)."""
    exposed = host is not None and not is_loopback(host)
    if settings.auth == "off":
        if exposed:
            raise ValueError(
                f"--auth off is refused on {host}: only a loopback address may run without "
                "authentication"
            )
        return False
    return settings.auth == "required" or exposed or settings.mongodb_url is not None


def issuer_of(settings: Settings) -> str:
    """The `iss` of this server's tokens: stable whatever host name a client used."""
    if settings.auth_issuer:
        return settings.auth_issuer
    return f"urn:fhir-server:{settings.audit_source}"


@dataclass
class Security:
    settings: Settings
    store: Store
    required: bool
    accounts: Accounts = field(init=False)
    clients: Clients = field(init=False)
    grants: Grants = field(init=False)
    _known: OrderedDict[str, tuple[Claims, ScopeSet]] = field(
        init=False, default_factory=OrderedDict
    )

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.store, self.settings)
        self.clients = Clients(self.store)
        self.grants = Grants(self.store, self.settings)

    @cached_property
    def keyring(self) -> KeyRing:
        # Loaded (or made) on first use: a server nobody logs in to never makes a key.
        return KeyRing.load_or_create(self.settings.data_dir / "auth")

    @cached_property
    def tokens(self) -> TokenService:
        return TokenService(
            self.keyring, self.settings, issuer_of(self.settings), self.grants.is_revoked,
            self.settings.external_audience,
        )

    async def principal(self, authorization: str | None, break_glass: str | None) -> Principal:
        """Who sent a request with this Authorization header (401 when it does not say)."""
        if authorization is None:
            if self.required:
                raise _unauthorized("Authentication required: send an access token "
                                    "(Authorization: Bearer ...)", None)
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("The Authorization header must be 'Bearer <access token>'",
                                "invalid_request")
        try:
            claims, scopes = await self._verified(token.strip())
        except (TokenError, ScopeError) as exc:
            reason = exc.reason if isinstance(exc, TokenError) else str(exc)
            raise _unauthorized(
                f"The access token is not valid: {reason}", "invalid_token"
            ) from None
        role = claims.role
        own = patient_in_context(role, claims.fhir_user)
        glass = None
        if role == "practitioner" and break_glass and break_glass.strip():
            glass = break_glass.strip()[:MAX_BREAK_GLASS_REASON]
        return Principal(
            claims.sub, scopes, role, claims.fhir_user, claims.client_id, own, glass
        )


    async def _verified(self, token: str) -> tuple[Claims, ScopeSet]:
        """The token's claims and scopes. A token seen before skips the signature check (PyJWT
        spends ~0.2 ms validating a token's characters); its expiry and the revocation list
        are checked on every request all the same."""
        known = self._known.get(token)
        if known is None:
            claims = await self.tokens.verify(token)
            known = claims, ScopeSet.parse(claims.scope)
            self._known[token] = known
            if len(self._known) > MAX_KNOWN_TOKENS:
                self._known.popitem(last=False)
            return known
        claims = known[0]
        if time.time() >= claims.expires + SKEW:
            del self._known[token]
            raise TokenError("expired")
        if claims.jti is not None and await self.grants.is_revoked(claims.jti):
            raise TokenError("revoked")
        return known


def _unauthorized(message: str, error: str | None) -> errors.FhirError:
    challenge = 'Bearer realm="fhir-server"' + (f', error="{error}"' if error else "")
    return errors.unauthorized(message, **{"WWW-Authenticate": challenge})
