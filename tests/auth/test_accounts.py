"""User accounts (fhir_server/auth/accounts.py) on both storage engines: what is stored, what a
login answers, lockout, password age, TOTP, and concurrent attempts.

`fast_argon2` (tests/auth/conftest.py) swaps in argon2id with minimal costs: the server's
parameters take a quarter of a second a hash on a small machine.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyotp
import pytest
from argon2 import Type

from fhir_server.auth import accounts as accounts_module
from fhir_server.auth.accounts import (
    AccountError,
    Accounts,
    LoginResult,
    LoginStatus,
)
from fhir_server.store.base import Store
from tests.conftest import settings_for

NOW = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
WRONG = "wrong horse battery"
NEW_PASSWORD = "staple in the meadow"
SERVER_HASHER = accounts_module.PASSWORDS


@pytest.fixture
def accounts(store: Store, tmp_path: Path) -> Accounts:
    return Accounts(store, settings_for(tmp_path))


async def practitioner(accounts: Accounts, username: str = "alice") -> None:
    await accounts.add(username, "practitioner", PASSWORD, "Practitioner/p-1", now=NOW)


async def fail_times(accounts: Accounts, username: str, times: int) -> list[LoginResult]:
    return [await accounts.login(username, WRONG, now=NOW) for _ in range(times)]


def code(secret: str, moment: datetime) -> str:
    return pyotp.TOTP(secret).at(moment)


def test_the_server_hashes_with_argon2id_at_owasp_strength_or_more() -> None:
    assert SERVER_HASHER.type is Type.ID
    assert SERVER_HASHER.memory_cost >= 19 * 1024 and SERVER_HASHER.time_cost >= 2


async def test_stores_an_argon2id_hash_and_never_the_password(
    accounts: Accounts, store: Store
) -> None:
    await practitioner(accounts)
    raw = await store.get_setting("auth.account.alice")
    assert raw["password_hash"].startswith("$argon2id$")
    assert PASSWORD.encode() not in orjson.dumps(await store.list_settings(""))
    result = await accounts.login("alice", PASSWORD, now=NOW)
    assert result.status == LoginStatus.OK
    assert result.account is not None and result.account.resource == "Practitioner/p-1"


@pytest.mark.parametrize(
    ("username", "role", "password", "resource", "message"),
    [
        ("bob", "nurse", PASSWORD, None, "unknown role"),
        ("bob", "practitioner", "short pass", "Practitioner/p-1", "at least 12"),
        ("bob-the-builder", "admin", "BOB-the-Builder", None, "not be the username"),
        ("bob smith", "admin", PASSWORD, None, "invalid username"),
        ("alice", "admin", PASSWORD, None, "already exists"),
    ],
)
async def test_add_refuses(
    accounts: Accounts, store: Store,
    username: str, role: str, password: str, resource: str | None, message: str,
) -> None:
    await practitioner(accounts)
    with pytest.raises(AccountError, match=message):
        await accounts.add(username, role, password, resource)
    assert [a.username for a in await accounts.list()] == ["alice"]
    assert (await accounts.get("alice")).role == "practitioner"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("role", "resource", "allowed"),
    [
        ("practitioner", "Practitioner/p-1", True),
        ("practitioner", "PractitionerRole/pr.1", True),
        ("practitioner", None, False),
        ("practitioner", "Patient/p-1", False),
        ("patient", "Patient/pat-ivanova-maria", True),
        ("patient", None, False),
        ("patient", "Patient/bad id", False),
        ("patient", "Patient/" + "a" * 65, False),
        ("patient", "Patient", False),
        ("insurer", "Organization/payer-1", True),
        ("insurer", None, False),
        ("insurer", "Practitioner/p-1", False),
        ("admin", None, True),
        ("admin", "Practitioner/p-1", True),
        ("admin", "Patient/p-1", False),
        ("auditor", None, True),
        ("auditor", "Organization/o-1", False),
    ],
)
async def test_role_and_resource(
    accounts: Accounts, role: str, resource: str | None, allowed: bool
) -> None:
    if allowed:
        account = await accounts.add("bob", role, PASSWORD, resource)
        assert (account.role, account.resource) == (role, resource)
    else:
        with pytest.raises(AccountError):
            await accounts.add("bob", role, PASSWORD, resource)
        assert await accounts.get("bob") is None


async def test_lockout_after_the_fourth_failure_looks_the_same_for_unknown_names(
    accounts: Accounts,
) -> None:
    await practitioner(accounts)
    lock = NOW + timedelta(minutes=10)
    for username in ("alice", "ghost"):
        results = await fail_times(accounts, username, 4)
        assert [r.status for r in results] == [LoginStatus.INVALID] * 3 + [LoginStatus.LOCKED]
        assert results[3].locked_until == lock
        assert all(r.account is None for r in results)
        # Locked: even the right password is not looked at.
        locked = await accounts.login(username, PASSWORD, now=NOW + timedelta(minutes=9))
        assert locked == LoginResult(LoginStatus.LOCKED, locked_until=lock)
    assert (await accounts.get("alice")).failures == 4  # type: ignore[union-attr]


async def test_the_lock_ends_after_lockout_minutes_and_failures_start_over(
    accounts: Accounts,
) -> None:
    await practitioner(accounts)
    await fail_times(accounts, "alice", 4)
    later = NOW + timedelta(minutes=10)
    assert (await accounts.login("alice", WRONG, now=later)).status == LoginStatus.INVALID
    assert (await accounts.get("alice")).failures == 1  # type: ignore[union-attr]
    assert (await accounts.login("alice", PASSWORD, now=later)).status == LoginStatus.OK
    account = await accounts.get("alice")
    assert account is not None and (account.failures, account.locked_until) == (0, None)


async def test_the_lock_of_an_unknown_name_ends_too(accounts: Accounts) -> None:
    await fail_times(accounts, "ghost", 4)
    later = NOW + timedelta(minutes=10, seconds=1)
    statuses = [(await accounts.login("ghost", WRONG, now=later)).status for _ in range(4)]
    assert statuses == [LoginStatus.INVALID] * 3 + [LoginStatus.LOCKED]


async def test_a_success_resets_the_failures(accounts: Accounts) -> None:
    await practitioner(accounts)
    await fail_times(accounts, "alice", 3)
    assert (await accounts.login("alice", PASSWORD, now=NOW)).status == LoginStatus.OK
    statuses = [r.status for r in await fail_times(accounts, "alice", 3)]
    assert statuses == [LoginStatus.INVALID] * 3


async def test_settings_decide_the_lockout(store: Store, tmp_path: Path) -> None:
    accounts = Accounts(store, settings_for(tmp_path, lockout_failures=1, lockout_minutes=2))
    await practitioner(accounts)
    results = await fail_times(accounts, "alice", 2)
    assert [r.status for r in results] == [LoginStatus.INVALID, LoginStatus.LOCKED]
    assert results[1].locked_until == NOW + timedelta(minutes=2)


async def test_an_administrator_unlocks(accounts: Accounts) -> None:
    await practitioner(accounts)
    await fail_times(accounts, "alice", 4)
    await accounts.unlock("alice")
    assert (await accounts.login("alice", PASSWORD, now=NOW)).status == LoginStatus.OK


async def test_unknown_users_cannot_be_changed(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="no user ghost"):
        await accounts.unlock("ghost")
    with pytest.raises(AccountError, match="no user ghost"):
        await accounts.set_password("ghost", NEW_PASSWORD)
    with pytest.raises(AccountError, match="no user ghost"):
        await accounts.enroll_totp("ghost")
    assert await accounts.list() == []


async def test_a_password_older_than_90_days_must_be_changed(accounts: Accounts) -> None:
    await practitioner(accounts)
    on_time = await accounts.login("alice", PASSWORD, now=NOW + timedelta(days=90))
    assert on_time.status == LoginStatus.OK
    late = await accounts.login("alice", PASSWORD, now=NOW + timedelta(days=90, seconds=1))
    assert late.status == LoginStatus.PASSWORD_CHANGE_REQUIRED
    assert late.account is not None and late.account.username == "alice"
    wrong = await accounts.login("alice", WRONG, now=NOW + timedelta(days=91))
    assert wrong.status == LoginStatus.INVALID


async def test_an_administrators_password_is_temporary_and_unlocks(accounts: Accounts) -> None:
    await practitioner(accounts)
    await fail_times(accounts, "alice", 4)
    await accounts.set_password("alice", NEW_PASSWORD, now=NOW)
    assert (await accounts.login("alice", PASSWORD, now=NOW)).status == LoginStatus.INVALID
    first = await accounts.login("alice", NEW_PASSWORD, now=NOW)
    assert first.status == LoginStatus.PASSWORD_CHANGE_REQUIRED
    changed = await accounts.change_password("alice", NEW_PASSWORD, "my own secret words", NOW)
    assert changed.status == LoginStatus.OK
    after = await accounts.login("alice", "my own secret words", now=NOW)
    assert after.status == LoginStatus.OK


async def test_a_temporary_password_at_creation(accounts: Accounts) -> None:
    await accounts.add("bob", "admin", PASSWORD, temporary=True)
    assert (await accounts.login("bob", PASSWORD, now=NOW)).status != LoginStatus.OK


async def test_change_password_needs_the_current_one(accounts: Accounts) -> None:
    await practitioner(accounts)
    wrong = await accounts.change_password("alice", WRONG, NEW_PASSWORD, NOW)
    assert wrong.status == LoginStatus.INVALID
    assert (await accounts.get("alice")).failures == 1  # type: ignore[union-attr]
    with pytest.raises(AccountError, match="differ"):
        await accounts.change_password("alice", PASSWORD, PASSWORD, NOW)
    with pytest.raises(AccountError, match="at least 12"):
        await accounts.change_password("alice", PASSWORD, "too short", NOW)
    unknown = await accounts.change_password("ghost", PASSWORD, NEW_PASSWORD, NOW)
    assert unknown.status == LoginStatus.INVALID
    assert (await accounts.login("alice", PASSWORD, now=NOW)).status == LoginStatus.OK
    assert (await accounts.login("alice", NEW_PASSWORD, now=NOW)).status == LoginStatus.INVALID


async def test_change_password_counts_towards_the_lock(accounts: Accounts) -> None:
    await practitioner(accounts)
    await fail_times(accounts, "alice", 3)
    locked = await accounts.change_password("alice", WRONG, NEW_PASSWORD, NOW)
    assert locked.status == LoginStatus.LOCKED
    still = await accounts.change_password("alice", PASSWORD, NEW_PASSWORD, NOW)
    assert still.status == LoginStatus.LOCKED


async def test_totp_for_an_administrator(accounts: Accounts, store: Store) -> None:
    await accounts.add("root", "admin", PASSWORD)
    not_enrolled = await accounts.login("root", PASSWORD, now=NOW)
    assert not_enrolled.status == LoginStatus.TOTP_NOT_ENROLLED
    assert (await accounts.login("root", WRONG, now=NOW)).status == LoginStatus.INVALID

    secret = await accounts.enroll_totp("root")
    assert (await store.get_setting("auth.account.root"))["totp_secret"] == secret
    # Only a right password reveals that a code is needed.
    assert (await accounts.login("root", WRONG, now=NOW)).status == LoginStatus.INVALID
    assert (await accounts.login("root", PASSWORD, now=NOW)).status == LoginStatus.TOTP_REQUIRED
    assert (await accounts.get("root")).failures == 2  # type: ignore[union-attr]

    wrong_code = "000000" if code(secret, NOW) != "000000" else "111111"
    bad = await accounts.login("root", PASSWORD, wrong_code, now=NOW)
    assert bad == LoginResult(LoginStatus.INVALID)
    assert (await accounts.get("root")).failures == 3  # type: ignore[union-attr]

    good = await accounts.login("root", PASSWORD, code(secret, NOW), now=NOW)
    assert good.status == LoginStatus.OK
    assert (await accounts.get("root")).failures == 0  # type: ignore[union-attr]
    replay = await accounts.login("root", PASSWORD, code(secret, NOW), now=NOW + timedelta(
        seconds=20))
    assert replay.status == LoginStatus.INVALID
    later = NOW + timedelta(seconds=30)
    assert (await accounts.login("root", PASSWORD, code(secret, later), now=later)).status == (
        LoginStatus.OK
    )


async def test_totp_allows_one_step_of_clock_drift_but_not_older_codes(
    accounts: Accounts,
) -> None:
    await accounts.add("root", "admin", PASSWORD)
    secret = await accounts.enroll_totp("root")
    behind = code(secret, NOW - timedelta(seconds=30))
    assert (await accounts.login("root", PASSWORD, behind, now=NOW)).status == LoginStatus.OK
    older = code(secret, NOW - timedelta(seconds=60))
    assert (await accounts.login("root", PASSWORD, older, now=NOW)).status == LoginStatus.INVALID


async def test_re_enrolling_totp_replaces_the_secret(accounts: Accounts) -> None:
    await accounts.add("root", "admin", PASSWORD)
    first = await accounts.enroll_totp("root")
    second = await accounts.enroll_totp("root")
    assert first != second
    stale = await accounts.login("root", PASSWORD, code(first, NOW), now=NOW)
    assert stale.status == LoginStatus.INVALID
    ok = await accounts.login("root", PASSWORD, code(second, NOW), now=NOW)
    assert ok.status == LoginStatus.OK


async def test_totp_roles_come_from_the_settings(store: Store, tmp_path: Path) -> None:
    accounts = Accounts(store, settings_for(tmp_path, totp_roles=["practitioner"]))
    await practitioner(accounts)
    await accounts.add("root", "admin", PASSWORD)
    alice = await accounts.login("alice", PASSWORD, now=NOW)
    assert alice.status == LoginStatus.TOTP_NOT_ENROLLED
    assert (await accounts.login("root", PASSWORD, now=NOW)).status == LoginStatus.OK


async def test_concurrent_failures_are_all_counted(accounts: Accounts) -> None:
    await practitioner(accounts)
    await asyncio.gather(*(accounts.login("alice", WRONG, now=NOW) for _ in range(3)))
    assert (await accounts.get("alice")).failures == 3  # type: ignore[union-attr]
    # More than it takes to lock: those finishing after the lock must not lift or restart it.
    for username in ("alice", "ghost"):
        await asyncio.gather(*(accounts.login(username, WRONG, now=NOW) for _ in range(6)))
        last = await accounts.login(username, PASSWORD, now=NOW)
        assert last.status == LoginStatus.LOCKED, username


async def test_concurrent_logins_accept_a_totp_code_once(accounts: Accounts) -> None:
    await accounts.add("root", "admin", PASSWORD)
    secret = await accounts.enroll_totp("root")
    results = await asyncio.gather(
        *(accounts.login("root", PASSWORD, code(secret, NOW), now=NOW) for _ in range(2))
    )
    assert sorted(r.status for r in results) == [LoginStatus.INVALID, LoginStatus.OK]


async def test_unknown_names_take_as_long_as_known_ones(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_module, "PASSWORDS", SERVER_HASHER)  # real costs, real timing
    await practitioner(accounts)

    async def fastest(username: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            await accounts.login(username, WRONG, now=NOW)
            times.append(time.perf_counter() - start)
        return min(times)

    known, unknown = await fastest("alice"), await fastest("ghost")
    # Without a dummy verification the unknown name would answer ~100x faster.
    assert unknown > known / 2


async def test_unknown_names_remembered_are_bounded(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_module, "UNKNOWN_NAMES_KEPT", 2)
    await fail_times(accounts, "ghost-1", 4)
    assert (await accounts.login("ghost-1", WRONG, now=NOW)).status == LoginStatus.LOCKED
    await fail_times(accounts, "ghost-2", 1)
    await fail_times(accounts, "ghost-3", 1)
    # ghost-1, the oldest, was forgotten.
    assert (await accounts.login("ghost-1", WRONG, now=NOW)).status == LoginStatus.INVALID


async def test_list_and_get(accounts: Accounts) -> None:
    await practitioner(accounts, "zoe")
    await practitioner(accounts, "alice")
    assert [a.username for a in await accounts.list()] == ["alice", "zoe"]
    zoe = await accounts.get("zoe")
    assert zoe is not None and zoe.password_changed == NOW and not zoe.password_temporary
    assert await accounts.get("ghost") is None
