"""`fhir-server users …` and `fhir-server clients …`: accounts and OAuth clients, managed on the
same store as the server's, so they work while it runs.

Data a script may read (client ids and secrets, TOTP secrets, the lists) goes to standard
output; confirmations, warnings and errors to standard error (`console`).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import orjson
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from fhir_server.audit.events import Agent
from fhir_server.audit.trail import AuditTrail
from fhir_server.auth.accounts import (
    ROLES,
    AccountError,
    Accounts,
    check_role,
    totp_uri,
)
from fhir_server.auth.clients import ClientError, Clients
from fhir_server.cli import DataDir, MongoUrl, console, settings_from
from fhir_server.config import Settings
from fhir_server.search.registry import default_registry
from fhir_server.store import build_store
from fhir_server.store.base import StorageError, Store

users_app = typer.Typer(
    help="User accounts: add, reset passwords, unlock, enroll TOTP.", no_args_is_help=True
)
clients_app = typer.Typer(
    help="OAuth clients: SMART apps and backend services.", no_args_is_help=True
)


def _table(*headers: str | Column) -> Table:
    return Table(*headers, box=box.SIMPLE)


def _whole(header: str) -> Column:
    """A column of identifiers, never wrapped or cut (the others give way)."""
    return Column(header, no_wrap=True)


def _print_table(table: Table) -> None:
    # As wide as the terminal; into a pipe or a file, as wide as the values (rich would
    # otherwise squeeze it into 80 columns and cut them).
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)


Password = Annotated[
    str | None,
    typer.Option(help="The password (visible in the shell's history): without it, a prompt"),
]
T = TypeVar("T")


def _fail(message: str) -> NoReturn:
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)  # one line, whatever its length
    raise typer.Exit(1)


def _run(
    data_dir: Path | None,
    mongodb_url: str | None,
    action: Callable[[Store, Settings], Awaitable[T]],
    audit: tuple[str, str] | None = None,
) -> T:
    """`action` on the configured store; a refusal ends the command with its message. With
    `audit` (kind, what), the change is recorded, refused or done, as an AuditEvent naming the
    operating-system user who ran the command."""
    settings = settings_from(data_dir, mongodb_url)

    async def run() -> T:
        store = build_store(settings)
        await store.open()
        try:
            if audit is None:
                return await action(store, settings)
            trail = AuditTrail(store, default_registry(), settings.audit_source, settings.audit)
            agent = Agent(f"fhir-server {audit[0]}", getpass.getuser(), roles=("operator",))
            try:
                result = await action(store, settings)
            except (AccountError, ClientError) as exc:
                await trail.record_security(audit[0], agent, 400, f"{audit[1]}: refused: {exc}")
                raise
            await trail.record_security(audit[0], agent, 200, audit[1])
            return result
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (AccountError, ClientError, StorageError) as exc:
        _fail(str(exc))


def _ask_password(password: str | None) -> str:
    if password is not None:
        return password
    entered: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return entered


def _print_totp(username: str, secret: str) -> None:
    typer.echo(f"totp_secret: {secret}")
    typer.echo(f"totp_uri: {totp_uri(username, secret)}")
    console.print("Add it to the user's authenticator app (most read the URI as a QR code).")


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name")],
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}")],
    resource: Annotated[
        str | None,
        typer.Option(help="What the user acts as: Practitioner/ID, PractitionerRole/ID, "
                     "Patient/ID or Organization/ID (insurer)"),
    ] = None,
    password: Password = None,
    temporary: Annotated[
        bool, typer.Option("--temporary", help="To be changed at the first login")
    ] = False,
    totp: Annotated[bool, typer.Option("--totp", help="Enroll TOTP at once")] = False,
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Create a user account."""
    try:
        check_role(role, resource)  # before asking for a password that would be refused anyway
    except AccountError as exc:
        _fail(str(exc))
    secret = _ask_password(password)

    async def add(store: Store, settings: Settings) -> str | None:
        accounts = Accounts(store, settings)
        await accounts.add(username, role, secret, resource, temporary=temporary)
        return await accounts.enroll_totp(username) if totp else None

    totp_secret = _run(data_dir, mongodb_url, add,
                       ("account-change", f"add user {username} ({role} {resource or ''})"))
    acting = f" as {resource}" if resource else ""
    console.print(f"added user {escape(username)} ({role}{escape(acting)})")
    if totp_secret:
        _print_totp(username, totp_secret)


@users_app.command("passwd")
def users_passwd(
    username: Annotated[str, typer.Argument(help="Login name")],
    password: Password = None,
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Give a user a temporary password (to be changed at the next login); also unlocks."""
    secret = _ask_password(password)
    _run(data_dir, mongodb_url,
         lambda store, settings: Accounts(store, settings).set_password(username, secret),
         ("password-change", f"temporary password set for {username}"))
    console.print(f"password of {escape(username)} set: temporary, to be changed at the next "
                  "login")


@users_app.command("unlock")
def users_unlock(
    username: Annotated[str, typer.Argument(help="Login name")],
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Lift a lock left by failed logins."""
    _run(data_dir, mongodb_url,
         lambda store, settings: Accounts(store, settings).unlock(username),
         ("account-change", f"unlock {username}"))
    console.print(f"unlocked {escape(username)}")


@users_app.command("totp")
def users_totp(
    username: Annotated[str, typer.Argument(help="Login name")],
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Enroll TOTP for a user, or enroll again (the previous authenticator stops working)."""
    secret = _run(data_dir, mongodb_url,
                  lambda store, settings: Accounts(store, settings).enroll_totp(username),
                  ("account-change", f"TOTP enrolled for {username}"))
    _print_totp(username, secret)


@users_app.command("list")
def users_list(data_dir: DataDir = None, mongodb_url: MongoUrl = None) -> None:
    """The user accounts."""
    accounts = _run(data_dir, mongodb_url,
                    lambda store, settings: Accounts(store, settings).list())
    now = datetime.now(UTC)
    table = _table(_whole("username"), "role", _whole("resource"), "locked until (UTC)", "TOTP",
                   "password age (days)")
    for a in accounts:
        locked = ""
        if a.locked_until is not None and a.strikes.locked(now):
            locked = a.locked_until.strftime("%Y-%m-%d %H:%M")
        age = f"{(now - a.password_changed).days}" + (" temporary" if a.password_temporary else "")
        table.add_row(a.username, a.role, a.resource or "", locked,
                      "yes" if a.totp_secret else "no", age)
    _print_table(table)


@clients_app.command("add")
def clients_add(
    name: Annotated[str, typer.Argument(help="What the client is, for people")],
    scopes: Annotated[str, typer.Option(help='Scopes it may get, e.g. "system/*.rs"')],
    jwks: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False,
                     help="Its public keys (JWKS file): it signs JWTs instead of using a secret"),
    ] = None,
    redirect_uri: Annotated[
        list[str] | None,
        typer.Option("--redirect-uri", help="Where to send authorization codes (repeatable)"),
    ] = None,
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Register a client; prints its client_id and, without --jwks, its client_secret."""
    keys = None
    if jwks is not None:
        try:
            keys = orjson.loads(jwks.read_bytes())
        except orjson.JSONDecodeError as exc:
            _fail(f"{jwks}: not JSON ({exc})")
    client, secret = _run(
        data_dir, mongodb_url,
        lambda store, _: Clients(store).add(name, scopes, keys, redirect_uri or ()),
        ("client-change", f"register client {name!r} with scopes {scopes!r}"),
    )
    typer.echo(f"client_id: {client.client_id}")
    if secret is not None:
        typer.echo(f"client_secret: {secret}")
        console.print("[yellow]The secret is shown only this once: store it now.[/yellow]")


@clients_app.command("list")
def clients_list(data_dir: DataDir = None, mongodb_url: MongoUrl = None) -> None:
    """The registered clients."""
    clients = _run(data_dir, mongodb_url, lambda store, _: Clients(store).list())
    table = _table(_whole("client_id"), "name", "scopes", "authenticates with", "redirect URIs",
                   "created")
    for c in clients:
        table.add_row(c.client_id, c.name, c.scopes,
                      "private_key_jwt" if c.jwks else "client_secret",
                      "\n".join(c.redirect_uris), c.created.strftime("%Y-%m-%d"))
    _print_table(table)


@clients_app.command("remove")
def clients_remove(
    client_id: Annotated[str, typer.Argument(help="Its client_id")],
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Remove a client: it can no longer authenticate."""
    client = _run(data_dir, mongodb_url, lambda store, _: Clients(store).remove(client_id),
                  ("client-change", f"remove client {client_id}"))
    console.print(f"removed client {escape(client.client_id)} ({escape(client.name)})")


keys_app = typer.Typer(
    help="The keys that sign access tokens (kept in DATA_DIR/auth).", no_args_is_help=True
)


@keys_app.command("rotate")
def keys_rotate(data_dir: DataDir = None) -> None:
    """Make a new signing key; the older ones keep verifying the tokens they signed until
    those expire, and keys replaced longer ago than a token lives are removed. A running
    server signs with the new key from its next token on."""
    from fhir_server.auth.keys import KeyRing
    from fhir_server.auth.tokens import SKEW

    settings = settings_from(data_dir, None)
    ring = KeyRing.load_or_create(settings.data_dir / "auth")
    key = ring.rotate()
    retired = ring.prune(settings.access_token_minutes * 60 + SKEW)
    typer.echo(f"kid: {key.kid}")
    console.print(f"{len(ring.all_keys())} keys; new tokens are signed with {key.kid}"
                  + (f"; retired {', '.join(retired)}" if retired else ""))


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """The signing keys, newest (the one in use) first."""
    from fhir_server.auth.keys import KeyRing

    ring = KeyRing.load_or_create(settings_from(data_dir, None).data_dir / "auth")
    table = _table(_whole("kid"), "created")
    for key in ring.all_keys():
        table.add_row(key.kid, datetime.fromtimestamp(key.created, UTC).isoformat())
    _print_table(table)
