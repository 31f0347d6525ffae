"""`fhir-server users …` and `fhir-server clients …` against a temporary SQLite data directory
(the CLI opens its own store, which mongomock cannot share with the test)."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyotp
import pytest
import typer
from typer.testing import CliRunner, Result

import fhir_server.cli  # noqa: F401  (first: it mounts the apps below at its end)
from fhir_server.auth.accounts import Accounts, LoginStatus
from fhir_server.auth.cli import clients_app, users_app
from fhir_server.auth.clients import Clients
from fhir_server.store.base import Store
from fhir_server.store.sqlite import SqliteStore
from tests.auth.test_accounts import PASSWORD
from tests.conftest import settings_for

T = TypeVar("T")

cli = typer.Typer()
cli.add_typer(users_app, name="users")
cli.add_typer(clients_app, name="clients")


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI reads FHIR_SERVER_* variables; none from the outside may leak in."""
    for name in os.environ:
        if name.startswith("FHIR_SERVER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Result]:
    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)], input=input)

    return invoke


def on_store(tmp_path: Path, action: Callable[[Store], Awaitable[T]]) -> T:
    """`action` on the store the CLI wrote to."""

    async def go() -> T:
        store = SqliteStore(tmp_path / "fhir.sqlite")
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def login(tmp_path: Path, username: str, password: str, code: str | None = None) -> LoginStatus:
    result = on_store(tmp_path, lambda store: Accounts(store, settings_for(tmp_path)).login(
        username, password, code))
    return result.status


def field(output: str, name: str) -> str | None:
    found = re.search(rf"^{name}: (\S+)$", output, re.MULTILINE)
    return found[1] if found else None


def assert_refused(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_users_add_with_a_password(run: Callable[..., Result], tmp_path: Path) -> None:
    result = run("users", "add", "alice", "--role", "practitioner",
                 "--resource", "Practitioner/p-1", "--password", PASSWORD)
    assert result.exit_code == 0, result.output
    assert "added user alice (practitioner as Practitioner/p-1)" in result.stderr
    assert login(tmp_path, "alice", PASSWORD) == LoginStatus.OK


def test_users_add_prompts_twice_for_the_password(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    result = run("users", "add", "bob", "--role", "auditor", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "Repeat for confirmation" in result.output and PASSWORD not in result.output
    assert login(tmp_path, "bob", PASSWORD) == LoginStatus.OK


def test_users_add_with_totp(run: Callable[..., Result], tmp_path: Path) -> None:
    result = run("users", "add", "root", "--role", "admin", "--password", PASSWORD, "--totp")
    assert result.exit_code == 0, result.output
    secret, uri = field(result.stdout, "totp_secret"), field(result.stdout, "totp_uri")
    assert secret is not None and uri is not None
    assert uri.startswith("otpauth://totp/fhir-server:root?") and f"secret={secret}" in uri
    assert login(tmp_path, "root", PASSWORD) == LoginStatus.TOTP_REQUIRED
    code = pyotp.TOTP(secret).now()
    assert login(tmp_path, "root", PASSWORD, code) == LoginStatus.OK


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "nurse", "--password", PASSWORD), "unknown role 'nurse'"),
        (("--role", "patient", "--password", PASSWORD), "needs --resource Patient/ID"),
        (("--role", "patient", "--resource", "Practitioner/x", "--password", PASSWORD),
         "acts as Patient/ID"),
        (("--role", "admin", "--password", "short"), "at least 12 characters"),
    ],
)
def test_users_add_refuses(
    run: Callable[..., Result], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    assert_refused(run("users", "add", "carol", *args), message)
    assert on_store(tmp_path, lambda store: store.list_settings("auth.")) == {}


def test_a_bad_role_is_refused_before_the_password_prompt(run: Callable[..., Result]) -> None:
    result = run("users", "add", "carol", "--role", "nurse", input="")
    assert_refused(result, "unknown role")
    assert "Password" not in result.output


def test_users_add_refuses_a_duplicate(run: Callable[..., Result]) -> None:
    run("users", "add", "alice", "--role", "admin", "--password", PASSWORD)
    result = run("users", "add", "alice", "--role", "admin", "--password", PASSWORD)
    assert_refused(result, "user alice already exists")


@pytest.mark.parametrize(
    "args", [("passwd", "ghost", "--password", PASSWORD), ("unlock", "ghost"), ("totp", "ghost")]
)
def test_unknown_users(run: Callable[..., Result], args: tuple[str, ...]) -> None:
    assert_refused(run("users", *args), "no user ghost")


def test_users_passwd_sets_a_temporary_password(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    run("users", "add", "alice", "--role", "admin", "--password", PASSWORD)
    result = run("users", "passwd", "alice", input="a temporary one\na temporary one\n")
    assert result.exit_code == 0, result.output
    assert "temporary" in result.stderr
    assert login(tmp_path, "alice", PASSWORD) == LoginStatus.INVALID
    on_store(tmp_path, lambda store: Accounts(store, settings_for(tmp_path)).enroll_totp("alice"))
    assert login(tmp_path, "alice", "a temporary one") == LoginStatus.TOTP_REQUIRED


def test_users_passwd_refuses_a_weak_password(run: Callable[..., Result]) -> None:
    run("users", "add", "alice", "--role", "auditor", "--password", PASSWORD)
    assert_refused(run("users", "passwd", "alice", "--password", "Alice"), "at least 12")


def test_users_unlock_and_list(run: Callable[..., Result], tmp_path: Path) -> None:
    run("users", "add", "alice", "--role", "insurer", "--resource", "Organization/payer-1",
        "--password", PASSWORD)
    run("users", "add", "root", "--role", "admin", "--password", PASSWORD, "--totp")
    for _ in range(4):
        login(tmp_path, "alice", "wrong password!")
    assert login(tmp_path, "alice", PASSWORD) == LoginStatus.LOCKED

    listing = run("users", "list")
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "insurer" in rows["alice"] and "Organization/payer-1" in rows["alice"]
    # The lock's end is minutes ahead: shortly before midnight (UTC) it is tomorrow.
    now = datetime.now(UTC)
    days = [(now + timedelta(days=n)).strftime("%Y-%m-%d") for n in (0, 1)]
    assert any(day in rows["alice"] for day in days) and " no " in rows["alice"]
    assert not any(day in rows["root"] for day in days) and " yes " in rows["root"]
    assert "$argon2" not in listing.output

    result = run("users", "unlock", "alice")
    assert result.exit_code == 0 and "unlocked alice" in result.stderr
    assert login(tmp_path, "alice", PASSWORD) == LoginStatus.OK
    listed = run("users", "list").stdout
    assert not any(day in listed for day in days)


def test_users_totp_re_enrolls(run: Callable[..., Result], tmp_path: Path) -> None:
    first = run("users", "add", "root", "--role", "admin", "--password", PASSWORD, "--totp")
    again = run("users", "totp", "root")
    assert again.exit_code == 0, again.output
    secret = field(again.stdout, "totp_secret")
    assert secret is not None and secret != field(first.stdout, "totp_secret")
    assert login(tmp_path, "root", PASSWORD, pyotp.TOTP(secret).now()) == LoginStatus.OK


def test_clients_add_prints_the_secret_once(run: Callable[..., Result], tmp_path: Path) -> None:
    result = run("clients", "add", "Lab import", "--scopes", "system/*.rs system/Patient.cru")
    assert result.exit_code == 0, result.output
    client_id, secret = field(result.stdout, "client_id"), field(result.stdout, "client_secret")
    assert client_id is not None and secret is not None
    assert "only this once" in result.stderr
    found = on_store(tmp_path, lambda store: Clients(store).verify_secret(client_id, secret))
    assert found is not None and found.scopes == "system/*.rs system/Patient.cru"
    listing = run("clients", "list")
    assert "Lab import" in listing.stdout and "client_secret" in listing.stdout
    assert secret not in listing.output


def test_clients_add_with_jwks_and_redirect_uris(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    jwks = {"keys": [{"kty": "RSA", "n": "0vx7", "e": "AQAB", "kid": "k1"}]}
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps(jwks))
    result = run("clients", "add", "Backend", "--scopes", "system/*.rs", "--jwks", str(path),
                 "--redirect-uri", "https://a.example/cb", "--redirect-uri", "https://b.example/cb")
    assert result.exit_code == 0, result.output
    client_id = field(result.stdout, "client_id")
    assert client_id is not None and field(result.stdout, "client_secret") is None
    client = on_store(tmp_path, lambda store: Clients(store).get(client_id))
    assert client is not None and client.jwks == jwks and client.secret_hash is None
    assert client.redirect_uris == ("https://a.example/cb", "https://b.example/cb")
    assert "private_key_jwt" in run("clients", "list").stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not JSON"), (b'{"keys": []}', '"keys" list')],
)
def test_clients_add_refuses_a_bad_jwks(
    run: Callable[..., Result], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    result = run("clients", "add", "Backend", "--scopes", "system/*.rs", "--jwks", str(path))
    assert_refused(result, message)


def test_clients_add_refuses_empty_scopes(run: Callable[..., Result]) -> None:
    assert_refused(run("clients", "add", "App", "--scopes", " "), "at least one scope")


def test_clients_remove(run: Callable[..., Result], tmp_path: Path) -> None:
    made = run("clients", "add", "Old app", "--scopes", "user/*.rs")
    client_id = field(made.stdout, "client_id")
    assert client_id is not None
    result = run("clients", "remove", client_id)
    assert result.exit_code == 0 and f"removed client {client_id} (Old app)" in result.stderr
    assert on_store(tmp_path, lambda store: Clients(store).list()) == []
    assert_refused(run("clients", "remove", client_id), f"no client {client_id}")


def test_account_and_client_changes_are_audited(run: Callable[..., Result], tmp_path: Path) -> None:
    assert run("users", "add", "eve", "--role", "auditor", "--password", PASSWORD).exit_code == 0
    assert run("users", "add", "eve", "--role", "auditor", "--password", PASSWORD).exit_code == 1
    assert run("users", "passwd", "eve", "--password", "another long secret").exit_code == 0
    assert run("clients", "add", "lab", "--scopes", "system/*.rs").exit_code == 0

    async def events(store: Store) -> list[dict[str, Any]]:
        from fhir_server.audit.chain import verify, walk

        assert (await verify(store)).intact
        return [v.resource() async for v in walk(store)]

    recorded = on_store(tmp_path, events)
    kinds = [(e["subtype"][0]["code"], e["outcome"]) for e in recorded]
    assert kinds == [("account-change", "0"), ("account-change", "4"),
                     ("password-change", "0"), ("client-change", "0")]
    assert all(e["agent"][0]["altId"] == getpass.getuser() for e in recorded)
    assert "already exists" in recorded[1]["outcomeDesc"]
