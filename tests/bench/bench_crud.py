"""On-demand CRUD benchmark: create and read throughput and p50/p99 latency of a running
fhir-server, next to a bare FastAPI endpoint serving the same stored JSON on the same machine.

    python -m tests.bench.bench_crud [--duration 10] [--connections 32] [--engine sqlite]

Steps: start `fhir-server serve` (one uvicorn worker, free loopback port, temporary data dir),
create --patients realistic Patients (~1 KB each), then measure
  1. create: POST /fhir/Patient, the same body over and over;
  2. read:   GET /fhir/Patient/{id}, ids drawn at random among the created patients;
  3. bare:   the same reads against tests/bench/bare_app.py (FastAPI, one route, documents in a
             dict, the same uvicorn options), loaded with the very bodies the server returned.
Reads run in --rounds alternating fhir-server/bare rounds (both servers up, only one loaded at a
time); the table shows the median run of each, and the read ratio is the median of the
per-round ratios. The first run against each server follows a short unmeasured warm-up.

The load generator is `wrk` when it is on PATH (Lua scripts in tests/bench/wrk/), else a bounded
asyncio+httpx client, which is itself the bottleneck on a small machine and under-reports the
servers: the output says which one ran.

Not a test: pytest does not collect tests/bench. Always exits 0 unless the benchmark itself
could not run; the goals (reads >= 2,000 req/s per worker and >= 0.5 x bare) are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from tests.bench.common import (
    HERE,
    JSON,
    BenchError,
    LoadGen,
    Result,
    Server,
    cpus_fact,
    fhir_server_argv,
    free_port,
    generator_fact,
    load_average_fact,
    run_main,
    server_env,
    servers,
    version,
    wrk_wanted,
)

READ_GOAL_RPS = 2000.0
RATIO_GOAL = 0.5


# --------------------------------------------------------------------------------------------
# Data


FAMILIES = ["Ivanova", "Petrov", "Shevchenko", "Jovanovic", "Smith", "Horvat", "Mueller",
            "Novak", "Kowalski", "Garcia", "Rossi", "Dubois", "Nielsen", "Papadopoulos"]
GIVEN = ["Maria", "Georgi", "Olena", "Stefan", "John", "Petra", "Anna", "Jan", "Ewa", "Lucia",
         "Marco", "Claire", "Lars", "Eleni", "Tomas", "Ines"]
CITIES = [("Sofia", "BG", "1000"), ("Kyiv", "UA", "01001"), ("Belgrade", "RS", "11000"),
          ("Zagreb", "HR", "10000"), ("Munich", "DE", "80331"), ("London", "GB", "SW1A 1AA"),
          ("Warsaw", "PL", "00-001"), ("Madrid", "ES", "28001"), ("Rome", "IT", "00118")]


def make_patient(n: int, rng: random.Random) -> dict[str, Any]:
    """A realistic Patient of about 1 KB: identifiers, names, telecom, address, marital status."""
    family, given = rng.choice(FAMILIES), rng.choice(GIVEN)
    city, country, postal = rng.choice(CITIES)
    gender = rng.choice(["male", "female"])
    born = f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    phone = f"+{rng.randint(30, 49)} {rng.randint(100, 999)} {rng.randint(100000, 999999)}"
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                     "code": "MR", "display": "Medical record number"}]},
                "system": "urn:oid:1.2.36.146.595.217.0.1",
                "value": f"MRN-{n:08d}",
            },
            {"use": "official", "system": "urn:oid:2.16.840.1.113883.4.1",
             "value": f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"},
        ],
        "active": True,
        "name": [
            {"use": "official", "family": family, "given": [given, rng.choice(GIVEN)],
             "prefix": ["Ms." if gender == "female" else "Mr."]},
            {"use": "usual", "given": [given[:3]]},
        ],
        "telecom": [
            {"system": "phone", "value": phone, "use": "home", "rank": 2},
            {"system": "phone", "value": phone[:-2] + "00", "use": "mobile", "rank": 1},
            {"system": "email", "value": f"{given.lower()}.{family.lower()}{n}@example.org",
             "use": "home"},
        ],
        "gender": gender,
        "birthDate": born,
        "deceasedBoolean": False,
        "address": [{
            "use": "home", "type": "both",
            "text": f"{rng.randint(1, 200)} Main Street, {city} {postal}",
            "line": [f"{rng.randint(1, 200)} Main Street", f"Apt {rng.randint(1, 90)}"],
            "city": city, "postalCode": postal, "country": country,
            "period": {"start": "2010-03-23"},
        }],
        "maritalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M",
            "display": "Married"}]},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]},
                           "preferred": True}],
    }


# --------------------------------------------------------------------------------------------
# Load generation


def measure_creates(load: LoadGen, name: str, base: str, body_file: Path,
                    warm: bool = True) -> Result:
    """POST the body in `body_file` to /fhir/Patient over and over."""
    return load.measure(name, base, "POST", "/fhir/Patient", "post.lua", [str(body_file)],
                        lambda: ["/fhir/Patient"], body_file.read_bytes(), warm=warm)


def measure_reads(load: LoadGen, name: str, base: str, ids_file: Path,
                  warm: bool = True) -> Result:
    """GET /fhir/Patient/{id}, ids drawn at random from `ids_file`."""
    return load.measure(name, base, "GET", "", "get.lua", [str(ids_file), "/fhir/Patient/"],
                        lambda: [f"/fhir/Patient/{i}" for i in ids_file.read_text().split()],
                        warm=warm)


# --------------------------------------------------------------------------------------------
# Benchmark


async def create_patients(
    base: str, count: int, concurrency: int = 8, more_headers: dict[str, str] | None = None
) -> list[bytes]:
    """POST `count` patients; the response bodies (the stored documents), in order."""
    rng = random.Random(2024)
    patients = [make_patient(n, rng) for n in range(count)]
    bodies: list[bytes] = [b""] * count
    queue = iter(range(count))
    headers = {"Content-Type": JSON, "Accept": JSON, **(more_headers or {})}

    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:

        async def worker() -> None:
            for n in queue:
                r = await client.post("/fhir/Patient", json=patients[n], headers=headers)
                if r.status_code != 201:
                    raise BenchError(f"create returned {r.status_code}: {r.text[:2000]}")
                bodies[n] = r.content

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return bodies


def machine_facts(args: argparse.Namespace, generator: str,
                  load_before: tuple[float, float, float]) -> dict[str, str]:
    loop = "uvloop" if version("uvloop") != "not installed" else "asyncio"
    http = "httptools" if version("httptools") != "not installed" else "h11"
    return {
        "cpus": cpus_fact(),
        "python": f"{platform.python_version()} ({platform.python_implementation()}), "
                  f"{platform.system()} {platform.release()}",
        "engine": args.engine,
        "auth": "required: a backend client's token on every request" if args.auth else "off",
        "servers": f"1 uvicorn worker each; uvicorn {version('uvicorn')}, loop={loop}, "
                   f"http={http}, access log on; fastapi {version('fastapi')}",
        "load generator": generator_fact(generator == "wrk", args.threads,
                                         "client-bound, under-reports the servers"),
        "load": f"{args.connections} connections, {args.duration:g}s per run after a "
                f"{args.warmup:g}s warm-up, {args.patients} patients created first",
        "note": "client and servers share the same CPUs; " + load_average_fact(load_before),
    }


def median_run(runs: Sequence[Result]) -> Result:
    """The run with the median throughput (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]


def read_ratio(reads: Sequence[Result], bares: Sequence[Result]) -> float:
    """fhir-server / bare read throughput: the median of the per-round ratios (each round's
    two runs ran back to back, so they saw about the same machine)."""
    ratios = sorted(r.rps / b.rps for r, b in zip(reads, bares, strict=True) if b.rps > 0)
    if not ratios:
        return float("nan")
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def report(facts: dict[str, str], create: Result, reads: Sequence[Result],
           bares: Sequence[Result], body_size: int) -> str:
    lines = ["", "fhir-server CRUD benchmark", "=" * 26]
    lines += [f"{k:>15}: {v}" for k, v in facts.items()]
    lines.append(f"{'patient body':>15}: {body_size} bytes (as stored, with meta)")
    lines.append("")
    header = f"{'run':<22}{'requests':>10}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}" \
             f"{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
    lines += [header, "-" * len(header)]
    read, bare = median_run(reads), median_run(bares)
    for r in (create, read, bare):
        lines.append(f"{r.name:<22}{r.requests:>10}{r.rps:>10.0f}{r.p50_ms:>9.2f}"
                     f"{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.2f}{r.errors:>8}")
    if len(reads) > 1:
        lines.append(f"(read rows: the median of {len(reads)} interleaved rounds by req/s)")
    lines.append("")
    ratio = read_ratio(reads, bares)
    lines.append(f"read ratio fhir-server / bare FastAPI: {ratio:.2f}"
                 + (" (median of the per-round ratios)" if len(reads) > 1 else ""))
    if len(reads) > 1:
        rounds = ", ".join(f"{r.rps:.0f}/{b.rps:.0f}={r.rps / b.rps:.2f}"
                           for r, b in zip(reads, bares, strict=True) if b.rps > 0)
        lines.append(f"  per round (req/s): {rounds}")
    lines.append(
        f"goals: reads >= {READ_GOAL_RPS:,.0f} req/s per worker: "
        f"{'met' if read.rps >= READ_GOAL_RPS else 'NOT met'}; "
        f"ratio >= {RATIO_GOAL}: {'met' if ratio >= RATIO_GOAL else 'NOT met'}")
    if create.generator != "wrk":
        lines.append("(the Python load generator saturates before the servers do: these figures "
                     "understate both servers and the goal check is not meaningful; install wrk)")
    if any(r.errors for r in (create, *reads, *bares)):
        lines.append("WARNING: some requests failed (see the errors column)")
    return "\n".join(lines)


def drop_mongo_database(url: str, name: str) -> None:
    from pymongo import MongoClient

    with contextlib.suppress(Exception):
        client: MongoClient[Any] = MongoClient(url, serverSelectionTimeoutMS=5000)
        client.drop_database(name)
        client.close()


def backend_token(serve_argv: list[str], base: str, env: dict[str, str]) -> str:
    """Register a backend client allowed everything (the CLI, on the server's own storage
    options) and get its access token, as a backend service would."""
    head = serve_argv[: serve_argv.index("serve")]
    storage = serve_argv[serve_argv.index("--data-dir"):]
    storage = [a for a in storage if a != "--no-seed"]
    done = subprocess.run([*head, "clients", "add", "bench", "--scopes", "system/*.cruds",
                           *storage], capture_output=True, text=True, env=env, check=False)
    found = dict(re.findall(r"^(client_id|client_secret): (\S+)$", done.stdout, re.M))
    if done.returncode != 0 or len(found) != 2:
        raise BenchError(f"could not register a client: {done.stdout}{done.stderr}")
    r = httpx.post(f"{base}/auth/token", data={"grant_type": "client_credentials"},
                   auth=(found["client_id"], found["client_secret"]))
    if r.status_code != 200:
        raise BenchError(f"no token: {r.status_code} {r.text}")
    return str(r.json()["access_token"])


def run(args: argparse.Namespace) -> int:
    use_wrk = wrk_wanted(args.python_client, ", which is client-bound and under-reports")
    load = LoadGen(use_wrk, args.duration, args.warmup, args.connections, args.threads)
    load_before = os.getloadavg()
    mongo_db = f"fhir_bench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp, servers() as started:
        work = Path(tmp)
        env = server_env(FHIR_SERVER_MONGODB_DB=mongo_db) if args.engine == "mongo" \
            else server_env()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        argv = fhir_server_argv(port, work / "data",
                                args.mongodb_url if args.engine == "mongo" else None)
        fhir = Server("fhir-server", [*argv, "--auth", "required" if args.auth else "off"],
                      env, work / "fhir-server.log")
        started.append(fhir)
        fhir.wait_ready(f"{base}/fhir/metadata")
        if args.auth:
            load.headers["Authorization"] = f"Bearer {backend_token(argv, base, env)}"
        print(f"fhir-server up on {base}; creating {args.patients} patients", file=sys.stderr)

        bodies = asyncio.run(create_patients(base, args.patients, more_headers=load.headers))
        ids = [json.loads(b)["id"] for b in bodies]
        documents = work / "patients.ndjson"
        documents.write_bytes(b"".join(b + b"\n" for b in bodies))
        ids_file = work / "ids.txt"
        ids_file.write_text("".join(f"{i}\n" for i in ids))
        body_file = work / "patient.json"
        body_file.write_text(json.dumps(make_patient(10**7, random.Random(1))))

        print(f"measuring creates ({load.name})", file=sys.stderr)
        create = measure_creates(load, "create (fhir-server)", base, body_file)

        bare_port = free_port()
        bare_base = f"http://127.0.0.1:{bare_port}"
        bare = Server("bare app",
                      [sys.executable, "-m", "tests.bench.bare_app", "--port", str(bare_port),
                       "--documents", str(documents)],
                      server_env(PYTHONPATH=str(HERE.parent.parent)), work / "bare.log")
        started.append(bare)
        bare.wait_ready(f"{bare_base}/fhir/Patient/{ids[0]}")
        with httpx.Client() as client:
            if client.get(f"{bare_base}/fhir/Patient/{ids[0]}").content != bodies[0]:
                raise BenchError("the bare app does not serve the stored bodies")

        # Both servers stay up (idle when not measured); alternating the read runs spreads
        # the noise of a shared machine over both series alike.
        reads: list[Result] = []
        bares: list[Result] = []
        for n in range(args.rounds):
            print(f"measuring reads, round {n + 1}/{args.rounds} ({load.name})",
                  file=sys.stderr)
            reads.append(measure_reads(load, "read (fhir-server)", base, ids_file, warm=n == 0))
            bares.append(measure_reads(load, "read (bare FastAPI)", bare_base, ids_file,
                                       warm=n == 0))

    if args.engine == "mongo":
        drop_mongo_database(args.mongodb_url, mongo_db)
    size = sum(len(b) for b in bodies) // max(1, len(bodies))
    facts = machine_facts(args, load.name, load_before)
    print(report(facts, create, reads, bares, size))
    if args.json:
        args.json.write_text(json.dumps({
            "facts": facts, "patient_bytes": size, "create": asdict(create),
            "read": [asdict(r) for r in reads], "bare_read": [asdict(r) for r in bares],
            "read_ratio": read_ratio(reads, bares),
        }, indent=2))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_crud",
        description="Create/read throughput and latency of fhir-server next to bare FastAPI.")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each measured run [10]")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unmeasured warm-up before each run [2]")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent keep-alive connections [32]")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads [1]")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved fhir-server/bare read runs; the median is shown [3]")
    parser.add_argument("--patients", type=int, default=1000,
                        help="patients created before the runs; reads pick among them [1000]")
    parser.add_argument("--engine", choices=["sqlite", "mongo"], default="sqlite")
    parser.add_argument("--auth", action="store_true",
                        help="authentication required: every request carries a backend "
                             "client's access token")
    parser.add_argument("--mongodb-url",
                        default=os.environ.get("FHIR_SERVER_MONGODB_URL",
                                               "mongodb://127.0.0.1:27017"),
                        help="MongoDB for --engine mongo (a throwaway database is used)")
    parser.add_argument("--python-client", action="store_true",
                        help="use the Python load generator even when wrk is installed")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 s and --warmup 0..60 s")
    if not 1 <= args.threads <= args.connections <= 10_000:
        parser.error("need 1 <= --threads <= --connections <= 10000")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")
    if args.patients < 1:
        parser.error("--patients must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
