"""User accounts: a role, the FHIR resource the user acts as, an argon2id password, lockout after
repeated failures, TOTP for the roles that need it. Kept as `auth.account.<username>` settings.

A login answer never tells a wrong username from a wrong password: an unknown name costs a
password verification too (against a dummy hash) and gets locked like a real account, its
failures counted in memory so that guessing names writes nothing to storage.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fhir_server.config import Settings
from fhir_server.fhirtime import format_instant, parse_instant
from fhir_server.store.base import Store, VersionConflict

ACCOUNT_PREFIX = "auth.account."
ROLE_RESOURCES: dict[str, tuple[tuple[str, ...], bool]] = {
    "practitioner": (("Practitioner", "PractitionerRole"), True),
    "patient": (("Patient",), True),
    "admin": (("Practitioner",), False),
    "auditor": (("Practitioner",), False),
    "insurer": (("Organization",), True),
}
"""Per role: the resource types an account may act as, and whether it must name one."""
ROLES = tuple(ROLE_RESOURCES)
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
RESOURCE = re.compile(r"([A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")
UNKNOWN_NAMES_KEPT = 10_000
"""Unknown usernames whose failed logins are remembered; the oldest is forgotten first."""
SWAP_ATTEMPTS = 10
TOTP_ISSUER = "fhir-server"
PASSWORDS = PasswordHasher()
"""argon2id with the library's recommended parameters."""

T = TypeVar("T")


class AccountError(ValueError):
    """A change the accounts refuse; the message is meant for the person who asked."""


@cache
def _dummy_hash() -> str:
    return PASSWORDS.hash(secrets.token_urlsafe(32))


async def hash_password(password: str) -> str:
    # In a thread: argon2 takes tens of milliseconds, the event loop must not wait for it.
    return await asyncio.to_thread(PASSWORDS.hash, password)


async def check_password(hashed: str | None, password: str) -> bool:
    """Whether `password` matches `hashed`. With None (no such user or client) a dummy hash is
    verified all the same and the answer is False, so both take as long."""

    def verify() -> bool:
        try:
            return PASSWORDS.verify(hashed or _dummy_hash(), password) and hashed is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


async def update_setting(store: Store, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
    """Apply `change` (current value -> (new value, result)) to the setting `key` by
    compare-and-set, starting over from the fresh value when another process or request
    changed it meanwhile, so no update is lost. If `change` raises, nothing changes."""
    attempt = 0
    while True:
        try:
            async with store.transaction() as tx:
                current = await tx.get_setting(key)
                new, result = change(current)
                if new != current:
                    await tx.swap_setting(key, current, new)
            return result
        except VersionConflict:
            attempt += 1
            if attempt == SWAP_ATTEMPTS:
                raise
            # Jitter, so that contenders which collided do not collide again in lockstep.
            await asyncio.sleep(random.uniform(0, 0.005 * attempt))


def check_role(role: str, resource: str | None) -> None:
    """Refuse an unknown role, or a resource the role cannot act as (or lacks but needs)."""
    if role not in ROLE_RESOURCES:
        raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    types, required = ROLE_RESOURCES[role]
    if resource is None:
        if required:
            raise AccountError(f"a {role} account needs --resource {types[0]}/ID")
        return
    match = RESOURCE.fullmatch(resource)
    if match is None or match[1] not in types:
        raise AccountError(
            f"a {role} account acts as {' or '.join(f'{t}/ID' for t in types)}, not {resource!r}"
        )


def totp_uri(username: str, secret: str) -> str:
    """The otpauth:// URI an authenticator app reads (usually from a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def _now() -> datetime:
    return datetime.now(UTC)


def _instant(moment: datetime | None) -> str | None:
    return None if moment is None else format_instant(moment)


def _moment(text: str | None) -> datetime | None:
    return None if text is None else parse_instant(text)


class LoginStatus(StrEnum):
    OK = "ok"
    INVALID = "invalid"
    """Wrong username, password or TOTP code: which one is never said."""
    LOCKED = "locked"
    TOTP_REQUIRED = "totp_required"
    """The password was right; the account needs a TOTP code too."""
    TOTP_NOT_ENROLLED = "totp_not_enrolled"
    """The password was right; the role needs TOTP but an administrator has not enrolled it."""
    PASSWORD_CHANGE_REQUIRED = "password_change_required"
    """Authenticated, but the password is temporary or too old: it must be changed first."""


@dataclass(frozen=True, slots=True)
class LoginResult:
    status: LoginStatus
    account: Account | None = None
    """Set when the password was right (never with `invalid` or `locked`)."""
    locked_until: datetime | None = None
    """With `locked`."""


@dataclass(frozen=True, slots=True)
class Strikes:
    """Consecutive failed logins of one name, and the lock they led to."""

    failures: int = 0
    locked_until: datetime | None = None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def failed(self, now: datetime, settings: Settings) -> Strikes:
        """One more failure; once there are more than `lockout_failures`, a lock. After an
        expired lock the count starts over; during one (a concurrent attempt set it) nothing
        changes."""
        if self.locked(now):
            return self
        failures = 1 if self.locked_until is not None else self.failures + 1
        if failures > settings.lockout_failures:
            return Strikes(failures, now + timedelta(minutes=settings.lockout_minutes))
        return Strikes(failures)

    def refusal(self) -> LoginResult:
        """The answer to a failed or refused attempt that led to these strikes."""
        if self.locked_until is not None:
            return LoginResult(LoginStatus.LOCKED, locked_until=self.locked_until)
        return LoginResult(LoginStatus.INVALID)


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    role: str
    resource: str | None
    """`Type/id` of the FHIR resource the user acts as (see ROLE_RESOURCES)."""
    password_hash: str
    password_changed: datetime
    password_temporary: bool = False
    """Set by an administrator, so known to one: the user must change it at the next login."""
    failures: int = 0
    locked_until: datetime | None = None
    totp_secret: str | None = None
    totp_last_step: int | None = None
    """The time step of the last TOTP code accepted: no code of it or before counts again."""

    @property
    def strikes(self) -> Strikes:
        return Strikes(self.failures, self.locked_until)

    def with_strikes(self, strikes: Strikes) -> Account:
        return replace(self, failures=strikes.failures, locked_until=strikes.locked_until)

    def requires_totp(self, settings: Settings) -> bool:
        return self.role in settings.totp_roles

    def must_change_password(self, now: datetime, settings: Settings) -> bool:
        max_age = timedelta(days=settings.password_max_age_days)
        return self.password_temporary or now - self.password_changed > max_age

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "role": self.role,
            "resource": self.resource,
            "password_hash": self.password_hash,
            "password_changed": format_instant(self.password_changed),
            "password_temporary": self.password_temporary,
            "failures": self.failures,
            "locked_until": _instant(self.locked_until),
            "totp_secret": self.totp_secret,
            "totp_last_step": self.totp_last_step,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Account:
        return cls(**{
            **data,
            "password_changed": parse_instant(data["password_changed"]),
            "locked_until": _moment(data["locked_until"]),
        })


def _failed(account: Account, now: datetime, settings: Settings) -> tuple[Account, LoginResult]:
    strikes = account.strikes.failed(now, settings)
    return account.with_strikes(strikes), strikes.refusal()


def _totp_step(secret: str, last: int | None, code: str, now: datetime) -> int | None:
    """The time step `code` is valid for (the current one or a neighbour, for clock drift, as
    `verify(valid_window=1)`), unless a code of step `last` or later was accepted already."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if (last is None or step > last) and totp.verify(code, for_time=step * totp.interval):
            return step
    return None


def _key(username: str) -> str:
    return ACCOUNT_PREFIX + username


class Accounts:
    """The user accounts of one store. Keep one instance per process: it remembers the failed
    logins of unknown names."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._unknown: OrderedDict[str, Strikes] = OrderedDict()

    async def add(
        self,
        username: str,
        role: str,
        password: str,
        resource: str | None = None,
        *,
        temporary: bool = False,
        now: datetime | None = None,
    ) -> Account:
        """A new account; `temporary`: its password must be changed at the first login."""
        if not USERNAME.fullmatch(username):
            raise AccountError(
                f"invalid username {username!r}: up to 64 letters, digits and . _ @ -"
            )
        check_role(role, resource)
        self._check_password(username, password)
        account = Account(
            username, role, resource, await hash_password(password), now or _now(), temporary
        )

        def create(current: Any) -> tuple[Any, Account]:
            if current is not None:
                raise AccountError(f"user {username} already exists")
            return account.to_json(), account

        return await update_setting(self._store, _key(username), create)

    async def get(self, username: str) -> Account | None:
        data = await self._store.get_setting(_key(username))
        return None if data is None else Account.from_json(data)

    async def set_password(
        self, username: str, password: str, now: datetime | None = None
    ) -> Account:
        """An administrator's reset. The password is temporary, to be changed at the next
        login (so that in the end only the user knows it); the account is unlocked."""
        self._check_password(username, password)
        hashed = await hash_password(password)
        changed = now or _now()
        return await self._change(username, lambda a: replace(
            a, password_hash=hashed, password_changed=changed, password_temporary=True,
            failures=0, locked_until=None,
        ))

    async def change_password(
        self, username: str, old: str, new: str, now: datetime | None = None
    ) -> LoginResult:
        """The user's own change, which needs the current password: `ok` (with the account)
        once changed, or `invalid` / `locked` exactly as `login` would answer (a wrong
        password counts as a failed login). No TOTP code is asked here: for a TOTP role,
        offer this only after a login that got past TOTP (`password_change_required`)."""
        if new == old:
            raise AccountError("the new password must differ from the current one")
        self._check_password(username, new)
        hashed = await hash_password(new)
        moment = now or _now()

        def succeed(account: Account) -> tuple[Account, LoginResult]:
            changed = replace(
                account, password_hash=hashed, password_changed=moment,
                password_temporary=False,
            ).with_strikes(Strikes())
            return changed, LoginResult(LoginStatus.OK, changed)

        return await self._attempt(username, old, moment, succeed)

    async def unlock(self, username: str) -> Account:
        return await self._change(username, lambda a: a.with_strikes(Strikes()))

    async def enroll_totp(self, username: str) -> str:
        """A new TOTP secret (base32) for the account, replacing any previous one."""
        secret = pyotp.random_base32()
        await self._change(
            username, lambda a: replace(a, totp_secret=secret, totp_last_step=None)
        )
        return secret

    async def login(
        self,
        username: str,
        password: str,
        totp_code: str | None = None,
        now: datetime | None = None,
    ) -> LoginResult:
        moment = now or _now()
        settings = self._settings

        def succeed(account: Account) -> tuple[Account, LoginResult]:
            if account.requires_totp(settings):
                if account.totp_secret is None:
                    return account, LoginResult(LoginStatus.TOTP_NOT_ENROLLED, account)
                if not totp_code:
                    return account, LoginResult(LoginStatus.TOTP_REQUIRED, account)
                step = _totp_step(
                    account.totp_secret, account.totp_last_step, totp_code, moment
                )
                if step is None:
                    return _failed(account, moment, settings)
                account = replace(account, totp_last_step=step)
            account = account.with_strikes(Strikes())
            if account.must_change_password(moment, settings):
                return account, LoginResult(LoginStatus.PASSWORD_CHANGE_REQUIRED, account)
            return account, LoginResult(LoginStatus.OK, account)

        return await self._attempt(username, password, moment, succeed)

    async def list(self) -> list[Account]:
        found = await self._store.list_settings(ACCOUNT_PREFIX)
        return [Account.from_json(data) for data in found.values()]

    def _check_password(self, username: str, password: str) -> None:
        minimum = self._settings.password_min_length
        if len(password) < minimum:
            raise AccountError(f"the password must have at least {minimum} characters")
        if password.casefold() == username.casefold():
            raise AccountError("the password must not be the username")

    async def _change(self, username: str, edit: Callable[[Account], Account]) -> Account:
        def change(current: Any) -> tuple[Any, Account]:
            if current is None:
                raise AccountError(f"no user {username}")
            account = edit(Account.from_json(current))
            return account.to_json(), account

        return await update_setting(self._store, _key(username), change)

    async def _attempt(
        self,
        username: str,
        password: str,
        now: datetime,
        succeed: Callable[[Account], tuple[Account, LoginResult]],
    ) -> LoginResult:
        """Check `password`: refused without a look while locked, a failure counted when
        wrong, and `succeed` deciding what follows a right one."""
        account = await self.get(username)
        if account is None:
            return await self._unknown_attempt(username, password, now)
        if account.strikes.locked(now):
            return account.strikes.refusal()
        right = await check_password(account.password_hash, password)

        # Decided again on the account as it is inside the transaction: concurrent attempts
        # each count, and a lock one of them just set holds for the others.
        def decide(current: Any) -> tuple[Any, LoginResult]:
            if current is None:  # removed meanwhile
                return None, LoginResult(LoginStatus.INVALID)
            fresh = Account.from_json(current)
            if fresh.strikes.locked(now):
                return current, fresh.strikes.refusal()
            # A password changed since it was verified is not the one the user gave.
            if right and fresh.password_hash == account.password_hash:
                updated, result = succeed(fresh)
            else:
                updated, result = _failed(fresh, now, self._settings)
            return updated.to_json(), result

        return await update_setting(self._store, _key(username), decide)

    async def _unknown_attempt(self, username: str, password: str, now: datetime) -> LoginResult:
        """What `_attempt` does for an account, for a name that has none."""
        strikes = self._unknown.get(username, Strikes())
        if strikes.locked(now):
            return strikes.refusal()
        await check_password(None, password)
        # Read again after the wait: concurrent attempts each count.
        strikes = self._unknown.pop(username, Strikes()).failed(now, self._settings)
        self._unknown[username] = strikes
        if len(self._unknown) > UNKNOWN_NAMES_KEPT:
            self._unknown.popitem(last=False)
        return strikes.refusal()
