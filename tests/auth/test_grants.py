"""Authorization codes, refresh tokens, revocations and client assertion jtis in the Store,
on both engines."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from fhir_server.auth.grants import CodeGrant, Grants, RefreshGrant
from fhir_server.store.base import DelegatingStore, Store
from tests.conftest import settings_for

NOW = 1_750_000_000
VERIFIER = "v" * 43 + "-._~0123456789"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=")
REDIRECT = "https://app.example.org/callback"
GRANT = CodeGrant("ana", "app", "launch/patient patient/*.rs", "Patient/1", "patient", NOW)
IDLE = 60 * 60


class Interleaving(DelegatingStore):
    """Yields to the event loop after every read, as a network round trip would: concurrent
    callers all read before any of them writes (SQLite's reads never yield by themselves), so
    only compare-and-set can keep two of them from winning."""

    async def get_setting(self, key: str) -> Any:
        value = await self.inner.get_setting(key)
        await asyncio.sleep(0)
        return value


@pytest.fixture
def grants(store: Store, tmp_path: Path) -> Grants:
    return Grants(Interleaving(store), settings_for(tmp_path))


async def new_code(grants: Grants, now: int = NOW) -> str:
    return await grants.issue_code(
        "app", REDIRECT, CHALLENGE.decode(), "S256", GRANT.scope, "ana", "Patient/1", "patient",
        now=now,
    )


async def redeem(grants: Grants, code: str, **changes: Any) -> CodeGrant | None:
    args = {"client_id": "app", "redirect_uri": REDIRECT, "code_verifier": VERIFIER, "now": NOW}
    return await grants.redeem_code(code, **{**args, **changes})


async def stored_text(store: Store) -> str:
    return repr(await store.list_settings("auth."))


# --------------------------------------------------------------------------------------------
# Authorization codes


async def test_a_code_is_redeemed_once(grants: Grants, store: Store) -> None:
    code = await new_code(grants)
    assert code not in await stored_text(store)
    [key] = await store.list_settings("auth.code.")
    assert key == "auth.code." + hashlib.sha256(code.encode()).hexdigest()

    assert await redeem(grants, code) == GRANT
    assert await redeem(grants, code) is None
    assert await store.list_settings("auth.code.") == {}


async def test_a_code_needs_its_client_redirect_and_verifier(grants: Grants) -> None:
    code = await new_code(grants)
    assert await redeem(grants, code, client_id="other") is None
    assert await redeem(grants, code, redirect_uri=REDIRECT + "/") is None
    assert await redeem(grants, code, code_verifier="w" * 43) is None
    # The S256 challenge itself is no verifier (that would be the `plain` method).
    assert await redeem(grants, code, code_verifier=CHALLENGE.decode()) is None
    assert await redeem(grants, code, code_verifier="short") is None
    assert await redeem(grants, "unknown") is None
    # Failed attempts do not use the code up.
    assert await redeem(grants, code) == GRANT


async def test_a_code_expires(grants: Grants) -> None:
    code = await new_code(grants)
    assert await redeem(grants, code, now=NOW + 60) is None
    code = await new_code(grants)
    assert await redeem(grants, code, now=NOW + 59) == GRANT


async def test_pkce_must_be_s256(grants: Grants) -> None:
    with pytest.raises(ValueError, match="S256"):
        await grants.issue_code(
            "app", REDIRECT, VERIFIER, "plain", "openid", "ana", None, None, now=NOW)
    with pytest.raises(ValueError, match="base64url"):
        await grants.issue_code("app", REDIRECT, "abc", "S256", "openid", "ana", None, None)


async def test_concurrent_redemptions_have_one_winner(grants: Grants) -> None:
    for _ in range(5):
        code = await new_code(grants)
        results = await asyncio.gather(*(redeem(grants, code) for _ in range(3)))
        assert sorted(results, key=lambda r: r is None) == [GRANT, None, None]


# --------------------------------------------------------------------------------------------
# Refresh tokens


async def test_refresh_tokens_rotate(grants: Grants, store: Store) -> None:
    first = await grants.issue_refresh(GRANT, now=NOW)
    assert first not in await stored_text(store)
    rotated = await grants.rotate_refresh(first, "app", now=NOW + 100)
    assert rotated is not None
    second, grant = rotated
    assert second != first
    assert grant == RefreshGrant(**vars(GRANT), family=grant.family, last_used=NOW + 100)
    assert second not in await stored_text(store)

    rotated = await grants.rotate_refresh(second, "app", now=NOW + 200)
    assert rotated is not None
    assert (rotated[1].family, rotated[1].last_used) == (grant.family, NOW + 200)
    assert len(await store.list_settings("auth.refresh.")) == 1


async def test_refresh_needs_its_client_and_recent_use(grants: Grants) -> None:
    token = await grants.issue_refresh(GRANT, now=NOW)
    assert await grants.rotate_refresh(token, "other", now=NOW) is None
    assert await grants.rotate_refresh("unknown", "app", now=NOW) is None
    # Each use restarts the idle time.
    rotated = await grants.rotate_refresh(token, "app", now=NOW + IDLE - 1)
    assert rotated is not None
    token = rotated[0]
    assert await grants.rotate_refresh(token, "app", now=NOW + 2 * IDLE - 2) is not None

    idle = await grants.issue_refresh(GRANT, now=NOW)
    assert await grants.rotate_refresh(idle, "app", now=NOW + IDLE) is None


async def test_reusing_a_rotated_token_revokes_the_family(grants: Grants) -> None:
    stolen = await grants.issue_refresh(GRANT, now=NOW)
    rotated = await grants.rotate_refresh(stolen, "app", now=NOW + 10)
    assert rotated is not None
    current = rotated[0]
    other_family = await grants.issue_refresh(GRANT, now=NOW)

    assert await grants.rotate_refresh(stolen, "app", now=NOW + 20) is None
    assert await grants.rotate_refresh(current, "app", now=NOW + 30) is None
    assert await grants.rotate_refresh(other_family, "app", now=NOW + 30) is not None


async def test_concurrent_rotations_have_one_winner(grants: Grants, store: Store) -> None:
    token = await grants.issue_refresh(GRANT, now=NOW)
    results = await asyncio.gather(
        *(grants.rotate_refresh(token, "app", now=NOW + 5) for _ in range(3))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert len(await store.list_settings("auth.refresh.")) == 1
    # The same token presented twice is a reuse, even at the same moment.
    assert await grants.rotate_refresh(winners[0][0], "app", now=NOW + 6) is None


async def test_revoking_a_refresh_token(grants: Grants) -> None:
    token = await grants.issue_refresh(GRANT, now=NOW)
    assert not await grants.revoke_refresh(token, "other", now=NOW)
    assert await grants.rotate_refresh(token, "app", now=NOW) is not None

    token = await grants.issue_refresh(GRANT, now=NOW)
    assert await grants.revoke_refresh(token, "app", now=NOW)
    assert await grants.rotate_refresh(token, "app", now=NOW) is None
    assert not await grants.revoke_refresh(token, "app", now=NOW)


# --------------------------------------------------------------------------------------------
# Access token revocation, client assertion jtis, purge


async def test_revoked_access_tokens(grants: Grants) -> None:
    assert not await grants.is_revoked("j1")
    await grants.revoke_access("j1", NOW + 900)
    assert await grants.is_revoked("j1")
    assert not await grants.is_revoked("j2")


async def test_assertion_jtis_are_remembered(grants: Grants) -> None:
    assert not await grants.remember_assertion("a1", NOW + 300)
    assert await grants.remember_assertion("a1", NOW + 300)
    results = await asyncio.gather(*(grants.remember_assertion("a2", NOW) for _ in range(3)))
    assert sorted(results) == [False, True, True]


async def test_purge_removes_only_what_expired(grants: Grants, store: Store) -> None:
    await new_code(grants)
    used = await grants.issue_refresh(GRANT, now=NOW)
    rotated = await grants.rotate_refresh(used, "app", now=NOW)
    assert rotated is not None
    await grants.rotate_refresh(used, "app", now=NOW)  # reuse: the family is revoked
    await grants.revoke_access("j1", NOW + 900)
    await grants.remember_assertion("a1", NOW + 300)
    prefixes = {key.rsplit(".", 1)[0] for key in await store.list_settings("auth.")}
    assert prefixes == {
        "auth.code", "auth.refresh", "auth.refresh-used", "auth.refresh-revoked", "auth.revoked",
        "auth.assertion",
    }

    assert await grants.purge(now=NOW + 59) == 0
    assert await grants.purge(now=NOW + 60) == 1  # the code
    assert await grants.purge(now=NOW + 900) == 2  # the access token and assertion jtis
    assert await grants.purge(now=NOW + IDLE) == 2  # the refresh token and its tombstone
    assert list(await store.list_settings("auth.")) == list(
        await store.list_settings("auth.refresh-revoked."))
    assert await grants.purge(now=NOW + 2 * IDLE) == 1
    assert await store.list_settings("auth.") == {}
