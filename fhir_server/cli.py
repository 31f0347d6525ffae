"""The `fhir-server` command: serve, load."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fhir_server.config import Settings

app = typer.Typer(help="FHIR R4 server.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
YOUNG_OBJECTS_BEFORE_COLLECTION = 20_000
"""`serve`'s first-generation threshold for the garbage collector (Python's default: 700)."""

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Directory of the embedded SQLite database [./fhir-data]"),
]
MongoUrl = Annotated[
    str | None, typer.Option("--mongodb-url", help="Use MongoDB at this URL instead of SQLite")
]


def settings_from(data_dir: Path | None, mongodb_url: str | None, **more: object) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    overrides = {"data_dir": data_dir, "mongodb_url": mongodb_url, **more}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
    no_seed: Annotated[bool, typer.Option("--no-seed", help="Do not load seed_data/")] = False,
    auth: Annotated[
        str | None,
        typer.Option(help="required | off | auto (default: required with MongoDB or on a "
                          "non-loopback address; off is refused there)"),
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
) -> None:
    """Run the server; the FHIR base URL is http(s)://HOST:PORT/fhir."""
    import uvicorn

    from fhir_server.app import create_app
    from fhir_server.auth.service import auth_required

    if auth not in (None, "auto", "required", "off"):
        console.print(f"[red]--auth must be required, off or auto, not {auth!r}[/red]")
        raise typer.Exit(2)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        console.print("[red]--ssl-certfile and --ssl-keyfile go together[/red]")
        raise typer.Exit(2)
    settings = settings_from(data_dir, mongodb_url, seed=False if no_seed else None, auth=auth)
    try:
        required = auth_required(settings, host)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    # The app decides from the settings alone: hand it the decision made with the address.
    settings = settings.model_copy(update={"auth": "required" if required else "off"})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = f"MongoDB ({settings.mongodb_db})" if settings.mongodb_url else (
        f"SQLite ({settings.data_dir / 'fhir.sqlite'})"
    )
    scheme = "https" if ssl_certfile else "http"
    console.print(f"FHIR base URL: {scheme}://{host}:{port}/fhir — storage: {engine}")
    if not required:
        console.print(
            "[bold red]WARNING: authentication is OFF. Anyone who can reach "
            f"{host}:{port} can read and change every record. Use it only for local "
            "development; `--auth required` turns it on.[/bold red]"
        )
    server = create_app(settings)
    # The definitions, registries and compiled profiles live as long as the process: frozen
    # out of the collector's sight, full collections stop scanning them (p99 of audited reads
    # under wrk: 42-55 ms instead of 87).
    gc.collect()
    gc.freeze()
    # A young collection runs whenever 700 more container objects are alive than at the last
    # one; a group commit's events and their requests' state (a few thousand objects) cross
    # that together and are freed together, so audited reads under wrk ran one every nine
    # requests, 35 µs a request. Above that peak, young collections are left to garbage
    # cycles (one per 13,000 audited reads).
    gc.set_threshold(YOUNG_OBJECTS_BEFORE_COLLECTION, *gc.get_threshold()[1:])
    uvicorn.run(
        server, host=host, port=port, log_level="info",
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )


@app.command()
def load(
    paths: Annotated[list[Path], typer.Argument(help="JSON, Bundle or NDJSON files, or folders")],
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Load resources into the database (works while the server runs)."""
    from fhir_server.audit.trail import AuditTrail
    from fhir_server.loader import files, items, load_paths
    from fhir_server.search.registry import default_registry
    from fhir_server.store import build_store
    from fhir_server.validation.conformance import Conformance

    settings = settings_from(data_dir, mongodb_url)
    total = sum(1 for path in files(paths) if path.is_file() for _ in items(path))

    async def run() -> int:
        store = build_store(settings)
        await store.open()
        try:
            columns = (TextColumn("loading"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("load", total=total)
                registry = default_registry()
                summary = await load_paths(
                    store, settings, registry, paths, lambda _: bar.advance(task),
                    conformance=Conformance.load(settings),
                    audit=AuditTrail(store, registry, settings.audit_source, settings.audit),
                )
        finally:
            await store.close()
        for failure in summary.failures:
            console.print(f"[red]failed[/red] {failure}")
        console.print(f"Done: {summary}")
        return 1 if summary.failed else 0

    raise typer.Exit(asyncio.run(run()))


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="JSON, Bundle or NDJSON files, or folders")],
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Also validate against this profile")
    ] = None,
) -> None:
    """Validate resources (structure, claimed and required profiles); exit 1 on any error."""
    from fhir_server import errors
    from fhir_server.loader import files, items
    from fhir_server.validation.conformance import Conformance
    from fhir_server.validation.structure import validate_structure

    conformance = Conformance.load(settings_from(None, None))
    failed = 0
    for path in files(paths):
        for item in items(path):
            resource = item.resource
            issues: list[errors.Issue] = []
            if not isinstance(resource, dict) or "resourceType" not in resource:
                issues.append(errors.Issue("structure", "not a FHIR resource"))
            else:
                try:
                    validate_structure(resource)
                except errors.FhirError as exc:
                    issues += exc.issues
                except KeyError:
                    issues.append(errors.Issue("not-supported", "unknown resource type"))
                required = conformance.required.get(str(resource.get("resourceType")), ())
                wanted = [*required, *(profile or [])]
                if not issues:
                    issues += conformance.validator.validate(resource, wanted)
            bad = [i for i in issues if i.severity in ("error", "fatal")]
            failed += bool(bad)
            status = "[red]invalid[/red]" if bad else "[green]valid[/green]"
            console.print(f"{status} {item.where}")
            for issue in issues:
                where = ", ".join(issue.expression)
                console.print(f"  {issue.severity}: {issue.diagnostics}" + (
                    f" ({where})" if where else ""))
    raise typer.Exit(1 if failed else 0)


@app.command()
def reindex(
    resource_type: Annotated[str, typer.Argument(help="Resource type to reindex, e.g. Patient")],
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Index existing resources for the custom SearchParameters stored for a type, then
    switch those parameters on (a running server picks them up at its next start)."""
    from fhir_server import errors, interactions
    from fhir_server.context import RequestContext
    from fhir_server.search.registry import default_registry
    from fhir_server.search.reindex import load_active
    from fhir_server.search.reindex import reindex as run_reindex
    from fhir_server.store import build_store

    settings = settings_from(data_dir, mongodb_url)

    async def run() -> int:
        store = build_store(settings)
        await store.open()
        searchable, indexing = default_registry(), default_registry()
        try:
            interactions.check_type(resource_type)
            await load_active(store, (searchable, indexing))
            ctx = RequestContext(store, settings, searchable, settings.base_url or "")
            with Progress(TextColumn("reindexing {task.fields[type]}"), TextColumn(
                    "{task.completed} resources"), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("reindex", total=None, type=resource_type)
                result = await run_reindex(
                    ctx, indexing, resource_type, lambda n: bar.update(task, completed=n)
                )
        except errors.FhirError as exc:
            console.print(f"[red]failed[/red] {exc}")
            return 1
        finally:
            await store.close()
        active = ", ".join(result.activated) or "none"
        console.print(f"Reindexed {result.reindexed} {resource_type} resources; "
                      f"custom parameters now searchable: {active}")
        return 0

    raise typer.Exit(asyncio.run(run()))


audit_app = typer.Typer(help="The audit trail: check its hash chain, export it.",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None, mongodb_url: MongoUrl = None) -> None:
    """Walk the AuditEvents' hash chain from the first event; exit 1 at the first broken link."""
    from fhir_server.audit.chain import verify
    from fhir_server.store import build_store

    settings = settings_from(data_dir, mongodb_url)

    async def run() -> int:
        store = build_store(settings)
        await store.open()
        try:
            verdict = await verify(store)
        finally:
            await store.close()
        if verdict.intact:
            console.print(f"[green]intact[/green]: {verdict.checked} AuditEvents, every link holds")
            return 0
        console.print(f"[red]broken[/red] after {verdict.checked} good AuditEvents: "
                      f"{verdict.broken}")
        return 1

    raise typer.Exit(asyncio.run(run()))


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str | None, typer.Option(help="Only events stored at or after this date/time")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write [standard output]")
    ] = None,
    data_dir: DataDir = None,
    mongodb_url: MongoUrl = None,
) -> None:
    """Write the AuditEvents as NDJSON (one per line, in the order they were stored), for a
    SIEM."""
    import sys

    from fhir_server.audit.chain import walk
    from fhir_server.fhirtime import format_instant, parse_range
    from fhir_server.store import build_store

    settings = settings_from(data_dir, mongodb_url)
    try:
        start = format_instant(parse_range(since)[0]) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None

    async def run() -> int:
        store = build_store(settings)
        await store.open()
        sink = output.open("wb") if output else sys.stdout.buffer
        count = 0
        try:
            async for v in walk(store):
                if v.body is not None and (start is None or v.last_updated >= start):
                    sink.write(v.body + b"\n")
                    count += 1
        finally:
            await store.close()
            if output:
                sink.close()
            else:
                sink.flush()
        console.print(f"exported {count} AuditEvents")
        return 0

    raise typer.Exit(asyncio.run(run()))


# Mounted last: these modules import the options defined above.
from fhir_server.auth.cli import clients_app, keys_app, users_app  # noqa: E402

app.add_typer(users_app, name="users")
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")


def main() -> None:
    app()
