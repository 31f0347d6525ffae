"""Access tokens: the JWTs this server signs (or an external identity provider's) and their
verification, and SMART Backend Services client assertions (`private_key_jwt`)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from fhir_server.auth.keys import ALGORITHM, KeyRing
from fhir_server.config import Settings

SKEW = 30
"""Seconds of clock difference tolerated on exp, nbf and iat."""
ASSERTION_MAX_LIFETIME = 300
ACCESS_TOKEN_TYPE = "at+jwt"
"""RFC 9068 `typ`: keeps an ID token or a client assertion from passing as an access token."""
KNOWN_ROLES = ("practitioner", "patient", "admin", "auditor", "insurer")
EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
ASSERTION_ALGORITHMS = ("RS384", "ES384", "RS256")
JWKS_TIMEOUT = 10
"""Seconds to wait for the identity provider's JWKS (requests wait meanwhile)."""
_KEY_FAMILIES = {"RSA": ("RS", "PS"), "EC": ("ES",)}
_REGISTERED = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "client_id", "azp"})
"""Kept in fields of Claims, or needed only to verify: left out of `extra`."""
_OWN_CLAIMS = _REGISTERED | {"scope", "fhirUser", "role"}
_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
)

RevocationCheck = Callable[[str], Awaitable[bool]]
"""True when the access token with this jti was revoked."""
ReplayCheck = Callable[[str, int], Awaitable[bool]]
"""Records a client assertion's (jti, exp); True when that jti was seen before."""


class TokenError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    sub: str
    scope: str
    client_id: str | None
    """None only for an external token that names no client (no client_id or azp)."""
    fhir_user: str | None
    role: str | None
    jti: str | None
    """None only for an external token without one (it cannot be revoked here)."""
    expires: int
    issuer: str
    extra: dict[str, Any] = field(default_factory=dict)


class TokenService:
    """Issues this server's access tokens; verifies them and, when configured, the external
    identity provider's. `revoked` consults the revocation list (e.g. `Grants.is_revoked`);
    `external_audience`, when given, must be among an external token's `aud`."""

    def __init__(
        self,
        keyring: KeyRing,
        settings: Settings,
        issuer: str,
        revoked: RevocationCheck | None = None,
        external_audience: str | None = None,
    ) -> None:
        self.keyring = keyring
        self.settings = settings
        self.issuer = issuer
        self._revoked = revoked
        self._external = (
            _ExternalIssuer(
                settings.external_issuer, settings.external_jwks, settings.external_claims,
                external_audience,
            )
            if settings.external_issuer and settings.external_jwks
            else None
        )

    def issue(
        self,
        sub: str,
        scope: str,
        client_id: str,
        fhir_user: str | None = None,
        role: str | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds (the token response's expires_in)."""
        issued = epoch(now)
        lifetime = self.settings.access_token_minutes * 60
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": sub, "aud": self.issuer,
            "iat": issued, "exp": issued + lifetime, "jti": secrets.token_urlsafe(16),
            "scope": scope, "client_id": client_id,
        }
        if fhir_user is not None:
            claims["fhirUser"] = fhir_user
        if role is not None:
            claims["role"] = role
        key = self.keyring.current
        headers = {"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(claims, key.private_key, ALGORITHM, headers), lifetime

    async def verify(self, token: str, now: float | None = None) -> Claims:
        at = epoch(now)
        header, unverified = _peek(token)
        issuer = unverified.get("iss")
        if issuer == self.issuer:
            claims = self._verify_own(token, header, at)
        elif self._external is not None and issuer == self._external.issuer:
            claims = await self._external.verify(token, header, at)
        else:
            raise TokenError("unknown issuer")
        if claims.jti is not None and self._revoked is not None and await self._revoked(claims.jti):
            raise TokenError("revoked")
        return claims

    def _verify_own(self, token: str, header: dict[str, Any], now: int) -> Claims:
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise TokenError("not an access token")
        kid = header.get("kid")
        key = self.keyring.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown key")
        required = ["iss", "sub", "aud", "iat", "exp", "jti", "scope", "client_id"]
        payload = _decode(
            token, key.private_key.public_key(), [ALGORITHM], now,
            issuer=self.issuer, audience=self.issuer, required=required,
        )
        return Claims(
            sub=payload["sub"],
            scope=payload["scope"],
            client_id=payload["client_id"],
            fhir_user=payload.get("fhirUser"),
            role=payload.get("role"),
            jti=payload["jti"],
            expires=int(payload["exp"]),
            issuer=self.issuer,
            extra={k: v for k, v in payload.items() if k not in _OWN_CLAIMS},
        )


async def verify_client_assertion(
    assertion: str,
    client_jwks: dict[str, Any],
    client_id: str,
    token_url: str,
    seen: ReplayCheck,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a SMART Backend Services client assertion; return its claims.

    Signed by one of the client's registered keys, iss == sub == client_id, aud the token URL,
    expiring at most five minutes ahead, and a jti never used before (recorded through `seen`
    only once everything else holds, so forged assertions cannot burn jti values).
    """
    at = epoch(now)
    header, _ = _peek(assertion)
    try:
        keys = jwt.PyJWKSet.from_dict(client_jwks)
    except jwt.PyJWTError as exc:
        raise TokenError("the client has no usable public key") from exc
    jwk = _select(keys, header.get("kid"))
    payload = _decode(
        assertion, jwk.key, _usable(ASSERTION_ALGORITHMS, jwk), at,
        issuer=client_id, audience=token_url, required=["iss", "sub", "aud", "exp", "jti"],
    )
    if payload["sub"] != client_id:
        raise TokenError("sub must be the client_id")
    if payload["exp"] > at + ASSERTION_MAX_LIFETIME + SKEW:
        raise TokenError("expires more than five minutes ahead")
    jti = payload["jti"]
    if not isinstance(jti, str):
        raise TokenError("malformed")
    if await seen(jti, int(payload["exp"])):
        raise TokenError("replayed (jti already used)")
    return payload


class _ExternalIssuer:
    """The identity provider: its public keys, fetched from a URL (cached; refetched when a kid
    is unknown) or read once from a JWKS file, and where its tokens keep our claims."""

    def __init__(
        self, issuer: str, jwks: str, claims: dict[str, str], audience: str | None
    ) -> None:
        self.issuer = issuer
        self._audience = audience
        self._names = {"sub": "sub", "scope": "scope", "role": "role", "fhirUser": "fhirUser"}
        self._names.update(claims)
        self._keys: jwt.PyJWKClient | jwt.PyJWKSet = (
            jwt.PyJWKClient(jwks, cache_keys=True, timeout=JWKS_TIMEOUT)
            if jwks.startswith(("https://", "http://"))
            else jwt.PyJWKSet.from_json(Path(jwks).read_text())
        )

    async def verify(self, token: str, header: dict[str, Any], now: int) -> Claims:
        if self._audience is None:
            # Without an audience to check, a token the provider issued to any other
            # application would pass here.
            raise TokenError("no FHIR_SERVER_EXTERNAL_AUDIENCE is configured to check it against")
        jwk = await self._key(header.get("kid"))
        payload = _decode(
            token, jwk.key, _usable(EXTERNAL_ALGORITHMS, jwk), now,
            issuer=self.issuer, audience=self._audience, required=["iss", "exp"],
        )
        names = self._names
        sub = _claim(payload, names["sub"])
        if not isinstance(sub, str) or not sub:
            raise TokenError(f"missing claim {names['sub']}")
        fhir_user = _claim(payload, names["fhirUser"])
        claimed_role = _claim(payload, names["role"])
        role = _known_role(claimed_role)
        if claimed_role not in (None, [], "") and role is None:
            # A user of a role this server does not know must not pass for a backend service.
            raise TokenError(f"none of the roles {claimed_role!r} is known here")
        client_id = payload.get("client_id", payload.get("azp"))
        jti = payload.get("jti")
        return Claims(
            sub=sub,
            scope=_scope_text(_claim(payload, names["scope"])),
            client_id=client_id if isinstance(client_id, str) else None,
            fhir_user=fhir_user if isinstance(fhir_user, str) else None,
            role=role,
            jti=jti if isinstance(jti, str) else None,
            expires=int(payload["exp"]),
            issuer=self.issuer,
            extra={
                k: v for k, v in payload.items() if k not in _REGISTERED and k not in names.values()
            },
        )

    async def _key(self, kid: Any) -> jwt.PyJWK:
        if isinstance(self._keys, jwt.PyJWKSet):
            return _select(self._keys, kid)
        try:
            # PyJWKClient fetches with blocking I/O when its cache is cold.
            return await asyncio.to_thread(self._keys.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise TokenError("identity provider keys unavailable") from exc
        except jwt.PyJWKClientError as exc:
            raise TokenError("unknown key") from exc


def epoch(now: float | None) -> int:
    """`now` in whole epoch seconds; the clock when None."""
    return int(time.time() if now is None else now)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before any check, only to pick the key and the issuer's rules."""
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError("malformed") from exc
    return header, payload


def _select(keys: jwt.PyJWKSet, kid: Any) -> jwt.PyJWK:
    if kid is None and len(keys.keys) == 1:
        return keys.keys[0]
    try:
        return keys[kid]
    except KeyError:
        raise TokenError("unknown key") from None


def _usable(algorithms: tuple[str, ...], jwk: jwt.PyJWK) -> list[str]:
    """The allowed algorithms that fit the key's type (an RSA key never verifies as ES384)."""
    families = _KEY_FAMILIES.get(jwk.key_type or "", ())
    return [alg for alg in algorithms if alg.startswith(families)]


def _decode(
    token: str,
    key: Any,
    algorithms: list[str],
    now: int,
    *,
    issuer: str,
    audience: str | None,
    required: list[str],
) -> dict[str, Any]:
    # PyJWT checks times against the wall clock; they are checked below against `now`.
    options: Any = {
        "verify_exp": False, "verify_nbf": False, "verify_iat": False,
        "verify_aud": audience is not None, "require": required,
    }
    try:
        payload: dict[str, Any] = jwt.decode(
            token, key, algorithms=algorithms, issuer=issuer, audience=audience, options=options
        )
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"missing claim {exc.claim}") from exc
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _ERRORS if isinstance(exc, kind)), "malformed")
        raise TokenError(reason) from exc
    _check_times(payload, now)
    return payload


def _check_times(payload: dict[str, Any], now: int) -> None:
    times = {name: payload[name] for name in ("exp", "nbf", "iat") if name in payload}
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times.values()):
        raise TokenError("malformed")
    if now > times["exp"] + SKEW:
        raise TokenError("expired")
    if times.get("nbf", now) > now + SKEW:
        raise TokenError("not yet valid")
    if times.get("iat", now) > now + SKEW:
        raise TokenError("issued in the future")


def _claim(payload: dict[str, Any], name: str) -> Any:
    """A claim by name or, failing that, by dotted path (`realm_access.roles`); names may
    themselves contain dots (`https://example.org/roles`)."""
    if name in payload:
        return payload[name]
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _scope_text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return value if isinstance(value, str) else ""


def _known_role(value: Any) -> str | None:
    candidates = value if isinstance(value, list) else [value]
    return next((role for role in candidates if role in KNOWN_ROLES), None)
