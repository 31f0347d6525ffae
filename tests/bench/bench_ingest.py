"""Ingest benchmark (on demand): Synthea transaction bundles against a running server.

    python -m tests.bench.bench_ingest [--rounds 3] [--samples DIR] [--json PATH]

1. **server**: `fhir-server serve` (embedded SQLite, one uvicorn worker, temporary data dir)
   starts in a subprocess; every bundle in `--samples` is POSTed to `/fhir` as a transaction
   (`Prefer: return=minimal`), one after the other, `--rounds` times. Reports resources/s.
2. **raw baseline**, same machine, same run: each bundle is parsed and each resource inserted
   untouched into a SqliteStore (one transaction per bundle, no validation, no index, no
   reference rewriting, no HTTP).
3. **profile**: the same bundles through `bundles.process_bundle` in-process, with each stage
   timed on its own (parse, reference rewriting, validation, indexing, storage), plus the
   functions cProfile finds most expensive.

Goals (issue 4): >= 1,000 resources/s with validation and indexing on, >= 0.25 x raw.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.bench.common import BenchError, Server, fhir_server_argv, free_port, server_env

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "samples" / "synthea-r4"


def bundles(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.json"))]


def count(raw: list[bytes]) -> int:
    return sum(len(orjson.loads(b)["entry"]) for b in raw)


def server_run(raw: list[bytes], rounds: int) -> list[float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        server = Server("fhir-server", fhir_server_argv(port, Path(work) / "data", None),
                        server_env(), Path(work) / "fhir-server.log")
        try:
            base = f"http://127.0.0.1:{port}/fhir"
            try:
                server.wait_ready(f"{base}/metadata")
            except BenchError as exc:
                raise SystemExit(f"the server did not start: {exc}") from None
            with httpx.Client(timeout=600) as client:
                client.post(base, content=raw[0], headers=TRANSACTION)  # warm-up, not measured
                return [ingest_rate(client, base, raw) for _ in range(rounds)]
        finally:
            server.stop()


TRANSACTION = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}


def ingest_rate(client: httpx.Client, base: str, raw: list[bytes]) -> float:
    """POST every bundle to `base` (the FHIR base URL), one after the other: resources/s."""
    started = time.perf_counter()
    for body in raw:
        response = client.post(base, content=body, headers=TRANSACTION)
        if response.status_code != 200:
            raise SystemExit(f"transaction failed: {response.text[:500]}")
    return count(raw) / (time.perf_counter() - started)


async def raw_run(raw: list[bytes], rounds: int) -> list[float]:
    from fhir_server.store.base import Version
    from fhir_server.store.sqlite import SqliteStore

    rates = []
    with tempfile.TemporaryDirectory() as data:
        store = SqliteStore(Path(data) / "raw.sqlite")
        await store.open()
        try:
            n = count(raw)
            for _ in range(rounds):
                started = time.perf_counter()
                for body in raw:
                    bundle = orjson.loads(body)
                    async with store.transaction() as tx:
                        for entry in bundle["entry"]:
                            r = entry["resource"]
                            version = Version(r["resourceType"], str(uuid.uuid4()), 1,
                                              "2024-01-01T00:00:00.000000Z", "POST",
                                              orjson.dumps(r))
                            await tx.put(version)
                rates.append(n / (time.perf_counter() - started))
        finally:
            await store.close()
    return rates


async def profile_run(raw: list[bytes]) -> dict[str, Any]:
    from fhir_server import bundles as bundle_module
    from fhir_server.config import Settings
    from fhir_server.context import RequestContext
    from fhir_server.search.indexer import index_resource
    from fhir_server.search.registry import default_registry
    from fhir_server.store.base import Version
    from fhir_server.store.sqlite import SqliteStore
    from fhir_server.validation.structure import validate_structure

    registry = default_registry()
    n = count(raw)
    stages: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        stages[name] = (time.perf_counter() - started) * 1000 / n

    started = time.perf_counter()
    parsed = [orjson.loads(b) for b in raw]
    timed("parse (orjson, whole bundles)", started)
    started = time.perf_counter()
    for bundle in parsed:
        mapping = {e["fullUrl"]: f"X/{uuid.uuid4()}" for e in bundle["entry"]}
        for e in bundle["entry"]:
            bundle_module._walk(e["resource"], mapping, [])
    timed("reference rewriting", started)
    resources = [e["resource"] for b in parsed for e in b["entry"]]
    started = time.perf_counter()
    for r in resources:
        validate_structure(r)
    timed("validation (json shape + R4 rules)", started)
    started = time.perf_counter()
    indexes = [index_resource(r, registry) for r in resources]
    timed("indexing (FHIRPath search parameters)", started)
    with tempfile.TemporaryDirectory() as data:
        store = SqliteStore(Path(data) / "stage.sqlite")
        await store.open()
        started = time.perf_counter()
        async with store.transaction() as tx:
            for r, index in zip(resources, indexes, strict=True):
                v = Version(r["resourceType"], str(uuid.uuid4()), 1,
                            "2024-01-01T00:00:00.000000Z", "POST", orjson.dumps(r))
                await tx.put(v, index)
        timed("storage (SQLite rows + index rows)", started)
        await store.close()

        store = SqliteStore(Path(data) / "whole.sqlite")
        await store.open()
        ctx = RequestContext(store, Settings(data_dir=Path(data), seed=False), registry,
                             "http://bench/fhir")
        started = time.perf_counter()
        for body in raw:
            await bundle_module.process_bundle(ctx, orjson.loads(body), "minimal")
        timed("process_bundle in-process, all stages", started)
        profiler = cProfile.Profile()
        profiler.enable()
        for body in raw:
            await bundle_module.process_bundle(ctx, orjson.loads(body), "minimal")
        profiler.disable()
        await store.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    return {"ms_per_resource": stages, "cprofile_top": out.getvalue()}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    raw = bundles(args.samples)
    if not raw:
        raise SystemExit(f"no bundles in {args.samples}")
    n = count(raw)
    print(f"fhir-server ingest benchmark: {len(raw)} bundles, {n} resources, "
          f"{args.rounds} rounds, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    server = server_run(raw, args.rounds)
    baseline = asyncio.run(raw_run(raw, args.rounds))
    profile = asyncio.run(profile_run(raw))
    ratio = median(server) / median(baseline)
    print(f"server (HTTP, transactions, validation + indexing): {median(server):8.0f} resources/s"
          f"  rounds: {', '.join(f'{r:.0f}' for r in server)}")
    print(f"raw baseline (parse + untouched insert):            {median(baseline):8.0f} resources/s"
          f"  rounds: {', '.join(f'{r:.0f}' for r in baseline)}")
    print(f"ratio: {ratio:.3f}   goals: >= 1000/s {'met' if median(server) >= 1000 else 'NOT met'}"
          f", >= 0.25 x raw {'met' if ratio >= 0.25 else 'NOT met'}")
    print("\nper-stage cost, ms per resource (each stage timed on its own, in-process):")
    for name, ms in profile["ms_per_resource"].items():
        print(f"  {name:45s} {ms:7.3f}")
    print("\ncProfile of process_bundle (top functions by own time):")
    print(profile["cprofile_top"])
    if args.json:
        args.json.write_text(json.dumps({
            "resources": n, "server": server, "raw": baseline, "ratio": ratio,
            "ms_per_resource": profile["ms_per_resource"],
        }, indent=2))


if __name__ == "__main__":
    main()
