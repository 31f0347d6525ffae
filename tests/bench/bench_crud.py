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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
WRK_SCRIPTS = HERE / "wrk"
JSON = "application/fhir+json"
READ_GOAL_RPS = 2000.0
RATIO_GOAL = 0.5
PYTHON_MAX_REQUESTS = 2_000_000
"""Upper bound on requests of one Python load run (it is also bounded by --duration)."""


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a request failed, ...)."""


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
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                time.sleep(0.1)
        raise BenchError(f"{self.name} not ready at {url} after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self._log_file.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole group (uvicorn shuts down cleanly), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log_file.close()


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    print("terminated", file=sys.stderr)
    raise SystemExit(128 + signum)


def server_env(**extra: str) -> dict[str, str]:
    """This environment without FHIR_SERVER_* settings (they would override the options)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def fhir_server_argv(port: int, data_dir: Path, mongodb_url: str | None) -> list[str]:
    script = Path(sys.executable).with_name("fhir-server")
    head = [str(script)] if script.exists() else [
        sys.executable, "-c", "from fhir_server.cli import main; main()"]
    argv = [*head, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--no-seed"]
    if mongodb_url:
        argv += ["--mongodb-url", mongodb_url]
    return argv


# --------------------------------------------------------------------------------------------
# Load generation


@dataclass
class Result:
    name: str
    generator: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    """Non-2xx responses, socket errors and timeouts."""


def run_wrk(name: str, url: str, script: str, script_args: Sequence[str], duration: float,
            connections: int, threads: int) -> Result:
    wrk = shutil.which("wrk")
    assert wrk is not None
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "--latency", "-s", str(WRK_SCRIPTS / script), url,
            "--", *script_args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    seconds = s["duration_us"] / 1e6
    errors = sum(s[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts",
                                "status_errors"))
    return Result(name, "wrk", s["requests"], seconds, s["requests"] / seconds,
                  s["p50_us"] / 1e3, s["p90_us"] / 1e3, s["p99_us"] / 1e3, s["max_us"] / 1e3,
                  errors)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _python_load(name: str, base: str, method: str, paths: Sequence[str],
                       body: bytes | None, duration: float, connections: int) -> Result:
    latencies: list[float] = []
    errors = 0
    headers = {"Accept": JSON} | ({"Content-Type": JSON} if body is not None else {})
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) < PYTHON_MAX_REQUESTS:
                path = paths[rng.randrange(len(paths))]
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, content=body, headers=headers)
                    ok = r.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.perf_counter() - start
    latencies.sort()
    ms = [x * 1e3 for x in latencies]
    return Result(name, "python-httpx", len(ms), seconds, len(ms) / seconds,
                  _percentile(ms, 50), _percentile(ms, 90), _percentile(ms, 99),
                  ms[-1] if ms else float("nan"), errors)


@dataclass
class LoadGen:
    use_wrk: bool
    duration: float
    warmup: float
    connections: int
    threads: int

    @property
    def name(self) -> str:
        return "wrk" if self.use_wrk else "python-httpx"

    def creates(self, name: str, base: str, body_file: Path, warm: bool = True) -> Result:
        url = f"{base}/fhir/Patient"
        if self.use_wrk:
            return self._twice(lambda d: run_wrk(name, url, "post.lua", [str(body_file)], d,
                                                 self.connections, self.threads), warm)
        body = body_file.read_bytes()
        return self._twice(lambda d: asyncio.run(_python_load(
            name, base, "POST", ["/fhir/Patient"], body, d, self.connections)), warm)

    def reads(self, name: str, base: str, ids_file: Path, warm: bool = True) -> Result:
        if self.use_wrk:
            return self._twice(lambda d: run_wrk(name, base, "get.lua",
                                                 [str(ids_file), "/fhir/Patient/"], d,
                                                 self.connections, self.threads), warm)
        paths = [f"/fhir/Patient/{i}" for i in ids_file.read_text().split()]
        return self._twice(lambda d: asyncio.run(_python_load(
            name, base, "GET", paths, None, d, self.connections)), warm)

    def _twice(self, run: Callable[[float], Result], warm: bool) -> Result:
        """A short unmeasured warm-up (when `warm`), then the measured run."""
        if warm and self.warmup > 0:
            run(self.warmup)
        return run(self.duration)


# --------------------------------------------------------------------------------------------
# Benchmark


async def create_patients(base: str, count: int, concurrency: int = 8) -> list[bytes]:
    """POST `count` patients; the response bodies (the stored documents), in order."""
    rng = random.Random(2024)
    patients = [make_patient(n, rng) for n in range(count)]
    bodies: list[bytes] = [b""] * count
    queue = iter(range(count))
    headers = {"Content-Type": JSON, "Accept": JSON}

    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:

        async def worker() -> None:
            for n in queue:
                r = await client.post("/fhir/Patient", json=patients[n], headers=headers)
                if r.status_code != 201:
                    raise BenchError(f"create returned {r.status_code}: {r.text[:2000]}")
                bodies[n] = r.content

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return bodies


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _wrk_version() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        return "not installed"
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10,
                         check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def machine_facts(args: argparse.Namespace, generator: str,
                  load_before: tuple[float, float, float]) -> dict[str, str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    loop = "uvloop" if _version("uvloop") != "not installed" else "asyncio"
    http = "httptools" if _version("httptools") != "not installed" else "h11"
    if generator == "wrk":
        gen = f"wrk ({_wrk_version()}), {args.threads} thread(s)"
    else:
        gen = f"python-httpx (httpx {_version('httpx')}): client-bound, under-reports the servers"
    return {
        "cpus": f"{os.cpu_count()} ({usable} usable), {_cpu_model()}",
        "python": f"{platform.python_version()} ({platform.python_implementation()}), "
                  f"{platform.system()} {platform.release()}",
        "engine": args.engine,
        "servers": f"1 uvicorn worker each; uvicorn {_version('uvicorn')}, loop={loop}, "
                   f"http={http}, access log on; fastapi {_version('fastapi')}",
        "load generator": gen,
        "load": f"{args.connections} connections, {args.duration:g}s per run after a "
                f"{args.warmup:g}s warm-up, {args.patients} patients created first",
        "note": "client and servers share the same CPUs; load average before the run "
                + " ".join(f"{x:.2f}" for x in load_before) + " (other work skews figures)",
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


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """Every server started inside is stopped on the way out, whatever happened."""
    started: list[Server] = []
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()
        signal.signal(signal.SIGTERM, previous)


def drop_mongo_database(url: str, name: str) -> None:
    from pymongo import MongoClient

    with contextlib.suppress(Exception):
        client: MongoClient[Any] = MongoClient(url, serverSelectionTimeoutMS=5000)
        client.drop_database(name)
        client.close()


def run(args: argparse.Namespace) -> int:
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    load = LoadGen(use_wrk, args.duration, args.warmup, args.connections, args.threads)
    if not use_wrk:
        print("wrk not found (apt-get install wrk): using the Python httpx load generator, "
              "which is client-bound and under-reports", file=sys.stderr)
    load_before = os.getloadavg()
    mongo_db = f"fhir_bench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp, servers() as started:
        work = Path(tmp)
        env = server_env(FHIR_SERVER_MONGODB_DB=mongo_db) if args.engine == "mongo" \
            else server_env()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        fhir = Server("fhir-server",
                      fhir_server_argv(port, work / "data",
                                       args.mongodb_url if args.engine == "mongo" else None),
                      env, work / "fhir-server.log")
        started.append(fhir)
        fhir.wait_ready(f"{base}/fhir/metadata")
        print(f"fhir-server up on {base}; creating {args.patients} patients", file=sys.stderr)

        bodies = asyncio.run(create_patients(base, args.patients))
        ids = [json.loads(b)["id"] for b in bodies]
        documents = work / "patients.ndjson"
        documents.write_bytes(b"".join(b + b"\n" for b in bodies))
        ids_file = work / "ids.txt"
        ids_file.write_text("".join(f"{i}\n" for i in ids))
        body_file = work / "patient.json"
        body_file.write_text(json.dumps(make_patient(10**7, random.Random(1))))

        print(f"measuring creates ({load.name})", file=sys.stderr)
        create = load.creates("create (fhir-server)", base, body_file)

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
            reads.append(load.reads("read (fhir-server)", base, ids_file, warm=n == 0))
            bares.append(load.reads("read (bare FastAPI)", bare_base, ids_file, warm=n == 0))

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
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
