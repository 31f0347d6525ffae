"""What auditing costs (on demand): the same work against two servers, one recording every
interaction as an AuditEvent (the default) and one with `FHIR_SERVER_AUDIT=false`.

    python -m tests.bench.bench_audit [--rounds 3] [--duration 10] [--connections 32]

Both servers run at once (embedded SQLite, one uvicorn worker each, temporary data dirs); the
measured runs alternate between them so the noise of a shared machine falls on both alike:
1. **ingest**: every Synthea bundle in `--samples` POSTed as a transaction, one after the
   other (resources/s);
2. **read**: `GET /fhir/Patient/{id}` with wrk over `--patients` patients (req/s, p50, p99).

Goals (issue 6): overhead <= 20 % on reads and <= 15 % on ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.bench.bench_crud import create_patients, measure_reads, median_run
from tests.bench.bench_ingest import SAMPLES, TRANSACTION, bundles, count, ingest_rate, median
from tests.bench.common import (
    LoadGen,
    Result,
    Server,
    fhir_server_argv,
    free_port,
    run_main,
    server_env,
    servers,
    wrk_wanted,
)

READ_GOAL = 0.20
INGEST_GOAL = 0.15


def overhead(audited: float, plain: float) -> float:
    """The share of throughput auditing takes away."""
    return 1 - audited / plain if plain else float("nan")


def run(args: argparse.Namespace) -> int:
    raw = bundles(args.samples)[: args.bundles]
    if not raw:
        raise SystemExit(f"no bundles in {args.samples}")
    load = LoadGen(wrk_wanted(False, ""), args.duration, 2, args.connections, 1)
    with tempfile.TemporaryDirectory(prefix="fhir-bench-audit-") as tmp, servers() as started:
        work = Path(tmp)
        bases = {}
        for name, audit in (("plain", "false"), ("audited", "true")):
            port = free_port()
            server = Server(name, fhir_server_argv(port, work / name, None),
                            server_env(FHIR_SERVER_AUDIT=audit), work / f"{name}.log")
            started.append(server)
            server.wait_ready(f"http://127.0.0.1:{port}/fhir/metadata")
            bases[name] = f"http://127.0.0.1:{port}"
        ingest: dict[str, list[float]] = {"plain": [], "audited": []}
        with httpx.Client(timeout=600) as client:
            for base in bases.values():
                client.post(f"{base}/fhir", content=raw[0], headers=TRANSACTION)  # warm-up
            for n in range(args.rounds):
                print(f"ingest round {n + 1}/{args.rounds}", file=sys.stderr)
                for name, base in bases.items():
                    ingest[name].append(ingest_rate(client, f"{base}/fhir", raw))
        reads: dict[str, list[Result]] = {"plain": [], "audited": []}
        for name, base in bases.items():
            ids = [b.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
                   for b in asyncio.run(create_patients(base, args.patients))]
            (work / f"{name}.ids").write_text("".join(f"{i}\n" for i in ids))
        for n in range(args.rounds):
            print(f"read round {n + 1}/{args.rounds} ({load.name})", file=sys.stderr)
            for name, base in bases.items():
                reads[name].append(measure_reads(load, f"read ({name})", base,
                                                 work / f"{name}.ids", warm=n == 0))
    print(report(ingest, reads, count(raw), len(raw)))
    return 0


def report(ingest: dict[str, list[float]], reads: dict[str, list[Result]], resources: int,
           bundle_count: int) -> str:
    lines = ["", "fhir-server audit overhead", "=" * 26,
             f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; ingest of {bundle_count} "
             f"bundles ({resources} resources) per round"]
    for name, rates in ingest.items():
        lines.append(f"ingest {name:>8}: {median(rates):7.0f} resources/s  rounds: "
                     + ", ".join(f"{r:.0f}" for r in rates))
    ingest_cost = overhead(median(ingest["audited"]), median(ingest["plain"]))
    for name, results in reads.items():
        r = median_run(results)
        lines.append(f"read   {name:>8}: {r.rps:7.0f} req/s  p50 {r.p50_ms:.2f} ms  p99 "
                     f"{r.p99_ms:.2f} ms  errors {r.errors}  rounds: "
                     + ", ".join(f"{x.rps:.0f}" for x in results))
    read_cost = overhead(median_run(reads["audited"]).rps, median_run(reads["plain"]).rps)
    lines.append(f"overhead: ingest {ingest_cost:.1%} (goal <= {INGEST_GOAL:.0%}: "
                 f"{'met' if ingest_cost <= INGEST_GOAL else 'NOT met'}), read {read_cost:.1%} "
                 f"(goal <= {READ_GOAL:.0%}: {'met' if read_cost <= READ_GOAL else 'NOT met'})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per read run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--bundles", type=int, default=1000, help="at most this many bundles")
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
