"""Bulk loading of JSON resources, Bundles and NDJSON files straight into a store.

Used by `fhir-server load` and by start-up seeding. Each resource goes through the same
interactions as the REST API (validation, versioning), so loaded data is indistinguishable from
data written over HTTP. A resource with an id is an update (update-as-create), so loading the
same files twice changes nothing; one without an id is a create.

Transaction and batch Bundles go through `bundles.py` exactly as `POST /fhir` would take them:
a transaction is all-or-nothing with its `urn:uuid:` references resolved to server ids (so
Synthea bundles load as they are), a batch loads entry by entry. Other Bundles (collection,
searchset, history) have each entry's resource loaded on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from fhir_server import bundles, errors, interactions
from fhir_server.audit.events import Agent
from fhir_server.audit.trail import AuditTrail
from fhir_server.config import Settings
from fhir_server.context import RequestContext
from fhir_server.interactions import WriteResult
from fhir_server.search.registry import Registry
from fhir_server.store.base import Store
from fhir_server.validation.conformance import Conformance


@dataclass
class LoadSummary:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def count(self, write: WriteResult) -> None:
        if not write.changed:
            self.unchanged += 1
        elif write.created:
            self.created += 1
        else:
            self.updated += 1

    def __str__(self) -> str:
        return (f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.deleted} deleted, {self.failed} failed")


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to load: a resource and how to write it, with where it came from."""

    where: str
    resource: Any
    method: str = "PUT"


def files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson"))
        else:
            found.append(path)
    return found


def _bundle_items(where: str, bundle: dict[str, Any]) -> Iterator[Item]:
    for index, entry in enumerate(bundle.get("entry") or []):
        request = entry.get("request") or {}
        method = str(request.get("method", "PUT")).upper()
        resource = entry.get("resource")
        if method == "DELETE":
            type_, _, id_ = str(request.get("url", "")).partition("/")
            resource = {"resourceType": type_, "id": id_}
        yield Item(f"{where}#entry[{index}]", resource, method)


def items(path: Path) -> Iterator[Item]:
    """The resources in one file, in order; unreadable content yields an item that fails."""
    if path.suffix == ".ndjson":
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield Item(f"{path}:{number}", _parse(line))
        return
    document = _parse(path.read_bytes())
    if isinstance(document, dict) and document.get("resourceType") == "Bundle" and (
        document.get("type") in ("transaction", "batch", "collection", "searchset", "history")
    ):
        yield from _bundle_items(str(path), document)
    else:
        yield Item(str(path), document)


def _parse(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return exc


async def load_item(ctx: RequestContext, item: Item, summary: LoadSummary) -> None:
    if ctx.audit is not None:
        ctx = replace(ctx, audit=ctx.audit.entry(shared=False))  # each item is recorded alone
    resource = item.resource
    if isinstance(resource, Exception):
        summary.failures.append(f"{item.where}: not valid JSON: {resource}")
        return
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        summary.failures.append(f"{item.where}: not a FHIR resource")
        return
    type_, id_ = resource["resourceType"], resource.get("id")
    try:
        interactions.check_type(type_)
        if item.method == "DELETE":
            summary.deleted += await interactions.delete(ctx, type_, str(id_)) is not None
        elif id_ is None or item.method == "POST":
            await interactions.create(ctx, type_, resource)
            summary.created += 1
        else:
            summary.count(await interactions.update(ctx, type_, str(id_), resource))
    except errors.FhirError as exc:
        summary.failures.append(f"{item.where}: {exc}")


def _processed_bundle(path: Path) -> dict[str, Any] | None:
    """The file's content when it is a transaction or batch Bundle."""
    if path.suffix != ".json":
        return None
    document = _parse(path.read_bytes())
    if isinstance(document, dict) and document.get("resourceType") == "Bundle" and (
        document.get("type") in bundles.PROCESSING
    ):
        return document
    return None


async def load_bundle(
    ctx: RequestContext, path: Path, bundle: dict[str, Any], summary: LoadSummary
) -> None:
    """A transaction (all or nothing) or batch (entry by entry), as `POST /fhir` does it."""
    if ctx.audit is not None:
        ctx = replace(ctx, audit=ctx.audit.entry(shared=False))
    try:
        kind = bundles.check_bundle(ctx, bundle)
        raw = bundle.get("entry") or []
        if kind == "transaction":
            entries = [bundles.parse_entry(ctx, i, e) for i, e in enumerate(raw)]
            results = await bundles.run_transaction(ctx, entries)
        else:
            results = [await bundles.batch_entry(ctx, i, e) for i, e in enumerate(raw)]
    except errors.FhirError as exc:
        summary.failures.append(f"{path} (transaction, nothing loaded): {exc}")
        return
    for index, result in enumerate(results):
        write = result.write
        if result.status >= 400:
            outcome = result.outcome or {}
            text = "; ".join(i.get("diagnostics", "") for i in outcome.get("issue", []))
            summary.failures.append(f"{path}#entry[{index}]: {text}")
        elif result.deleted:
            summary.deleted += result.deleted
        elif write is not None:
            summary.count(write)


async def load_paths(
    store: Store, settings: Settings, registry: Registry, paths: list[Path],
    progress: Callable[[str], None] | None = None, *, conformance: Conformance | None = None,
    audit: AuditTrail | None = None, agent: str = "fhir-server load",
) -> LoadSummary:
    """Load files as the REST API would; with `audit`, every write is recorded as done by
    `agent` (the command line, or the seeding at start-up)."""
    scope = audit.scope(Agent(agent)) if audit is not None else None
    ctx = RequestContext(store, settings, registry, settings.base_url or "",
                         conformance=conformance, audit=scope)
    summary = LoadSummary()
    for path in files(paths):
        if not path.is_file():
            summary.failures.append(f"{path}: no such file")
            continue
        bundle = _processed_bundle(path)
        if bundle is not None:
            await load_bundle(ctx, path, bundle, summary)
            if progress is not None:
                for index in range(len(bundle.get("entry") or [])):
                    progress(f"{path}#entry[{index}]")
            continue
        for item in items(path):
            await load_item(ctx, item, summary)
            if progress is not None:
                progress(item.where)
    return summary
