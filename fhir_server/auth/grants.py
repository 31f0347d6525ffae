"""Authorization codes, refresh tokens and revocations, kept as settings in the Store.

Keys carry the SHA-256 of a code, token or jti, never the secret itself, so a copy of the
database grants nothing. Whatever must happen once (redeeming a code, rotating a refresh
token, seeing a client assertion's jti) removes or creates its entry by compare-and-set: of
two concurrent attempts exactly one wins. Times are epoch seconds; every method takes `now` so
callers (and tests) decide the clock.

Refresh tokens rotate on every use; the token a rotation replaced leaves a tombstone naming its
family, and presenting it again (a stolen copy, or the legitimate client after a thief rotated
first) revokes the family: OAuth 2.0 Security BCP, refresh token rotation. There is no grace
period for a client that sends the same token twice at once: it cannot be told from a thief
racing the client, and a grace period would let the thief keep the family.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from fhir_server.auth.tokens import epoch
from fhir_server.config import Settings
from fhir_server.store.base import Store, VersionConflict

CODE = "auth.code."
REFRESH = "auth.refresh."
REFRESH_USED = "auth.refresh-used."
FAMILY_REVOKED = "auth.refresh-revoked."
REVOKED = "auth.revoked."
ASSERTION = "auth.assertion."
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
"""An S256 code_challenge: base64url of a SHA-256, unpadded."""
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
"""RFC 7636 code_verifier."""


@dataclass(frozen=True)
class CodeGrant:
    """What a user granted a client: who, with which scopes."""

    username: str
    client_id: str
    scope: str
    fhir_user: str | None
    role: str | None
    signed_in: float
    """When the user signed in (epoch seconds): a password changed since ends the session."""


@dataclass(frozen=True)
class RefreshGrant(CodeGrant):
    family: str
    """Shared by every token rotated from the same first refresh token."""
    last_used: int


class Grants:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    @property
    def _idle(self) -> int:
        return self.settings.refresh_idle_minutes * 60

    async def issue_code(
        self,
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        challenge_method: str,
        scope: str,
        username: str,
        fhir_user: str | None,
        role: str | None,
        now: float | None = None,
    ) -> str:
        """A new authorization code. Raises ValueError unless PKCE is S256 with a well-formed
        challenge (the authorize endpoint reports that to the client)."""
        if challenge_method != "S256":
            raise ValueError("code_challenge_method must be S256")
        if not CHALLENGE.fullmatch(code_challenge):
            raise ValueError("code_challenge must be an unpadded base64url SHA-256")
        code = secrets.token_urlsafe(32)
        grant = CodeGrant(
            username, client_id, scope, fhir_user, role, time.time() if now is None else now
        )
        record = {
            **asdict(grant), "redirect_uri": redirect_uri, "challenge": code_challenge,
            "expires": epoch(now) + self.settings.authorization_code_seconds,
        }
        await self.store.put_setting(CODE + _digest(code), record)
        return code

    async def redeem_code(
        self,
        code: str,
        client_id: str,
        redirect_uri: str,
        code_verifier: str,
        now: float | None = None,
    ) -> CodeGrant | None:
        """The grant behind `code`, once: None when it is unknown, used, expired, or was issued
        to another client or redirect URI, or the PKCE verifier does not match."""
        key = CODE + _digest(code)
        record = await self.store.get_setting(key)
        if (
            record is None
            or record["client_id"] != client_id
            or record["redirect_uri"] != redirect_uri
            or epoch(now) >= record["expires"]
            or not _pkce_matches(code_verifier, record["challenge"])
            or not await self._take(key, record)
        ):
            return None
        return CodeGrant(**{f.name: record[f.name] for f in fields(CodeGrant)})

    async def issue_refresh(self, grant: CodeGrant, now: float | None = None) -> str:
        """The first refresh token of a new family."""
        token = secrets.token_urlsafe(32)
        first = RefreshGrant(**asdict(grant), family=secrets.token_hex(16), last_used=epoch(now))
        await self.store.put_setting(REFRESH + _digest(token), asdict(first))
        return token

    async def rotate_refresh(
        self, token: str, client_id: str, now: float | None = None
    ) -> tuple[str, RefreshGrant] | None:
        """Replace `token` by a new one of the same family; None when it is unknown, another
        client's, idle too long, or its family was revoked. A token presented again after (or
        while) it was rotated is taken as stolen: its family is revoked, whoever holds the
        newer token."""
        at = epoch(now)
        digest = _digest(token)
        record = await self.store.get_setting(REFRESH + digest)
        if record is None:
            used = await self.store.get_setting(REFRESH_USED + digest)
            if used is not None:
                await self._revoke_family(used["family"], at)
            return None
        if record["client_id"] != client_id or at >= record["last_used"] + self._idle:
            return None
        new_token = secrets.token_urlsafe(32)
        grant = RefreshGrant(**{**record, "last_used": at})
        tombstone = {"family": grant.family, "expires": at + self._idle}
        try:
            async with self.store.transaction() as tx:
                if await tx.get_setting(FAMILY_REVOKED + grant.family) is not None:
                    return None
                await tx.swap_setting(REFRESH + digest, record, None)
                await tx.swap_setting(REFRESH_USED + digest, None, tombstone)
                await tx.swap_setting(REFRESH + _digest(new_token), None, asdict(grant))
        except VersionConflict:
            # Rotated by someone else meanwhile: presented twice, like a reuse.
            await self._revoke_family(grant.family, at)
            return None
        return new_token, grant

    async def revoke_refresh(self, token: str, client_id: str, now: float | None = None) -> bool:
        """Revoke `token` and its family (RFC 7009); False if it is not a live token of that
        client."""
        key = REFRESH + _digest(token)
        record = await self.store.get_setting(key)
        if record is None or record["client_id"] != client_id:
            return False
        await self._revoke_family(record["family"], epoch(now))
        await self._take(key, record)
        return True

    async def revoke_access(self, jti: str, expires: int) -> None:
        """Refuse the access token `jti` from now on (kept until it would have expired)."""
        await self.store.put_setting(REVOKED + _digest(jti), {"expires": expires})

    async def is_revoked(self, jti: str) -> bool:
        return await self.store.get_setting(REVOKED + _digest(jti)) is not None

    async def remember_assertion(self, jti: str, expires: int) -> bool:
        """Record a client assertion's jti until it expires; True if it was seen before."""
        try:
            async with self.store.transaction() as tx:
                await tx.swap_setting(ASSERTION + _digest(jti), None, {"expires": expires})
        except VersionConflict:
            return True
        return False

    async def purge(self, now: float | None = None) -> int:
        """Remove expired codes, refresh tokens, tombstones, revocations and assertion jtis;
        return how many."""
        at = epoch(now)
        removed = 0
        for prefix in (CODE, REFRESH, REFRESH_USED, FAMILY_REVOKED, REVOKED, ASSERTION):
            for key, record in (await self.store.list_settings(prefix)).items():
                if at >= self._expiry(prefix, record) and await self._take(key, record):
                    removed += 1
        return removed

    def _expiry(self, prefix: str, record: dict[str, Any]) -> int:
        return record["last_used"] + self._idle if prefix == REFRESH else record["expires"]

    async def _revoke_family(self, family: str, now: int) -> None:
        # Rotation refuses a revoked family, which also stops a rotation racing with this one.
        # The mark outlasts the idle limit, past which no token of the family is alive anyway.
        await self.store.put_setting(FAMILY_REVOKED + family, {"expires": now + 2 * self._idle})

    async def _take(self, key: str, record: Any) -> bool:
        """Remove `key` if it still holds `record`; False if someone else changed it first."""
        try:
            async with self.store.transaction() as tx:
                await tx.swap_setting(key, record, None)
        except VersionConflict:
            return False
        return True


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _pkce_matches(verifier: str, challenge: str) -> bool:
    if not _VERIFIER.fullmatch(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return hmac.compare_digest(computed, challenge)
