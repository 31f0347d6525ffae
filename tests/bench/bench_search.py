"""On-demand search benchmark: p50/p99 latency of five typical searches at ~1,000 and at
~100,000 resources, on one fhir-server worker (SQLite).

    python -m tests.bench.bench_search [--sizes 1000,100000] [--duration 10] [--connections 1]

Steps:
  1. Data: the Synthea sample bundles (--samples, default /work/shared/samples/synthea-r4) are
     cloned with fresh ids (every UUID in a bundle is mapped to a new one per clone, the
     `urn:uuid:` references become `Type/id`) and varied patients (each clone's patients get
     other family/given names and birth dates), so the searches stay as selective at 100k as at
     1k. Each clone of each bundle becomes one NDJSON file; the files are written in order (the
     practitioners' bundle first) until a size is reached.
  2. Load: the new files of each size go through the in-process loader
     (`fhir_server.loader.load_paths`: validation, versioning, indexing, one SQLite transaction
     per resource) in --load-jobs processes; the load is timed (resources/s).
  3. Measure: `fhir-server serve --no-seed` (one uvicorn worker) on the data dir; for each
     search, --queries URLs with parameters drawn from the loaded data are sent once (checked
     and counted: results per query), then wrk GETs them at random for --duration seconds
     after a --warmup, with --connections keep-alive connections (1: the latency of an
     unloaded server). The server is stopped before the next, larger size is loaded.

The searches: Observation by patient+code, Encounter by patient+date (ge the year of one of the
patient's encounters), Condition by code, Patient by family+birthdate, MedicationRequest by
patient with _include=MedicationRequest:requester. Goals (from the issue): p50 <= 10 ms, p99 <=
50 ms, and p50 at the largest size <= 1.5 x p50 at the smallest.

Not a test: pytest does not collect tests/bench. Exits 0 whether or not the goals are met; 2
when the benchmark itself could not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from tests.bench.common import (
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

DEFAULT_SAMPLES = Path(os.environ.get("FHIR_BENCH_SYNTHEA", "/work/shared/samples/synthea-r4"))
P50_GOAL_MS = 10.0
P99_GOAL_MS = 50.0
RATIO_GOAL = 1.5
MAX_SIZE = 2_000_000
NAMESPACE = uuid.UUID("5b0c3c52-58a4-4c1e-9a4e-6f1c8f0b6e11")
UUID_TEXT = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# A reference to a bundle entry, or any other UUID (ids, identifiers, fullUrls).
UUID_OR_REFERENCE = re.compile(rf'(?P<ref>"reference"\s*:\s*"urn:uuid:)?(?P<id>{UUID_TEXT})')

SURNAMES = ["Koepp", "Goldner", "Prohaska", "Jacobi", "Schamberger", "Conn", "Armstrong", "Hahn",
            "Beer", "Ivanova", "Petrov", "Shevchenko", "Jovanovic", "Smith", "Horvat", "Mueller",
            "Novak", "Kowalski", "Garcia", "Rossi", "Dubois", "Nielsen", "Papadopoulos", "Kuhn",
            "Wehner", "Runolfsson", "Bernhard", "Hettinger", "Lakin", "Ortiz", "Marvin", "Stark",
            "Kessler", "Wiza", "Bogan", "Ziemann", "Rath", "Hirthe", "Gleason", "Herzog"]
GIVEN = ["Abdul", "Barrett", "Errol", "Hassan", "Judi", "Liz", "Oswaldo", "Sabra", "Tony",
         "Maria", "Georgi", "Olena", "Stefan", "John", "Petra", "Anna", "Jan", "Ewa", "Lucia",
         "Marco", "Claire", "Lars", "Eleni", "Tomas", "Ines", "Noe", "Aiko", "Rosa", "Ali"]

SEARCHES = {
    "observation": "Observation by patient+code",
    "encounter": "Encounter by patient+date",
    "condition": "Condition by code",
    "patient": "Patient by family+birthdate",
    "medreq": "MedicationRequest by patient +_include",
}


# --------------------------------------------------------------------------------------------
# Data: Synthea bundles cloned with fresh ids


@dataclass
class Catalog:
    """What has been loaded so far, to draw query parameters from (one element per resource,
    so a parameter is drawn as often as the data has it)."""

    observations: list[tuple[str, str]] = field(default_factory=list)
    """(patient id, system|code)"""
    encounters: list[tuple[str, str]] = field(default_factory=list)
    """(patient id, start year)"""
    conditions: list[str] = field(default_factory=list)
    """system|code"""
    patients: list[tuple[str, str]] = field(default_factory=list)
    """(family, birthDate)"""
    medication_requests: list[str] = field(default_factory=list)
    """patient id"""


@dataclass(frozen=True)
class Template:
    """One sample bundle: its text and the type of each entry's UUID."""

    name: str
    text: str
    types: dict[str, str]
    resources: int


def read_templates(samples: Path) -> list[Template]:
    files = sorted(samples.glob("*.json"), key=lambda p: (not p.name.startswith("pract"), p.name))
    templates = []
    for path in files:
        text = path.read_text()
        bundle = orjson.loads(text)
        entries = [e for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]
        types = {}
        for e in entries:
            resource = e["resource"]
            for ref in (str(e.get("fullUrl", "")).removeprefix("urn:uuid:"), resource.get("id")):
                if ref:
                    types[ref] = resource["resourceType"]
        templates.append(Template(path.name, text, types, len(entries)))
    if not templates or not sum(t.resources for t in templates):
        raise BenchError(f"no Synthea bundles (*.json) in {samples}")
    return templates


def _reference(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"].rpartition("/")[2]
    return None


def _first_coding(concept: Any) -> str | None:
    for coding in (concept or {}).get("coding") or []:
        if coding.get("code"):
            return f"{coding.get('system', '')}|{coding['code']}"
    return None


def vary_patient(patient: dict[str, Any], rng: random.Random) -> None:
    """Other names and birth date, Synthea style (`Koepp521`), so clones stay distinguishable."""
    family = f"{rng.choice(SURNAMES)}{rng.randint(10, 999)}"
    given = f"{rng.choice(GIVEN)}{rng.randint(10, 999)}"
    for name in patient.get("name") or []:
        maiden = f"{rng.choice(SURNAMES)}{rng.randint(10, 999)}"
        name["family"] = maiden if name.get("use") == "maiden" else family
        name["given"] = [given]
    patient["birthDate"] = (f"{rng.randint(1925, 2015)}-{rng.randint(1, 12):02d}-"
                            f"{rng.randint(1, 28):02d}")


def clone(template: Template, k: int, catalog: Catalog) -> list[bytes]:
    """Clone `k` of a bundle as NDJSON lines (resources with their new ids, references as
    Type/id); records what it holds in `catalog`."""
    fresh: dict[str, str] = {}

    def new_id(old: str) -> str:
        found = fresh.get(old)
        if found is None:
            found = fresh[old] = str(uuid.uuid5(NAMESPACE, f"{k}/{old}"))
        return found

    def replace(m: re.Match[str]) -> str:
        old = m.group("id")
        if m.group("ref") is None:
            return new_id(old)
        type_ = template.types.get(old)
        target = f"{type_}/{new_id(old)}" if type_ else f"urn:uuid:{new_id(old)}"
        return f'"reference": "{target}'

    bundle = orjson.loads(UUID_OR_REFERENCE.sub(replace, template.text))
    rng = random.Random(f"{k}/{template.name}")
    lines = []
    for entry in bundle.get("entry") or []:
        r = entry.get("resource")
        if not isinstance(r, dict):
            continue
        kind = r.get("resourceType")
        if kind == "Patient":
            vary_patient(r, rng)
            catalog.patients.append((r["name"][0]["family"], r["birthDate"]))
        elif kind == "Observation":
            code, patient = _first_coding(r.get("code")), _reference(r.get("subject"))
            if code and patient:
                catalog.observations.append((patient, code))
        elif kind == "Encounter":
            patient, start = _reference(r.get("subject")), (r.get("period") or {}).get("start")
            if patient and start:
                catalog.encounters.append((patient, start[:4]))
        elif kind == "Condition":
            if code := _first_coding(r.get("code")):
                catalog.conditions.append(code)
        elif kind == "MedicationRequest" and (patient := _reference(r.get("subject"))):
            catalog.medication_requests.append(patient)
        lines.append(orjson.dumps(r))
    return lines


def clones(templates: list[Template], out: Path, catalog: Catalog) -> Iterator[tuple[Path, int]]:
    """(NDJSON file, resources in it), one per clone of each bundle, without end."""
    for k in range(MAX_SIZE):
        for template in templates:
            lines = clone(template, k, catalog)
            path = out / f"{k:04d}-{template.name.removesuffix('.json')}.ndjson"
            path.write_bytes(b"\n".join(lines) + b"\n")
            yield path, len(lines)


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadStats:
    resources: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    jobs: int = 1
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else float("nan")


def _load_job(db: str, paths: list[str]) -> dict[str, Any]:
    """One loader process: load `paths` into the SQLite database `db` (in a fresh interpreter)."""
    from fhir_server.config import Settings
    from fhir_server.loader import load_paths
    from fhir_server.search.registry import default_registry
    from fhir_server.store.sqlite import SqliteStore

    async def run() -> dict[str, Any]:
        store = SqliteStore(Path(db))
        await store.open()
        try:
            registry = default_registry()
            start = time.perf_counter()
            summary = await load_paths(store, Settings(seed=False), registry,
                                       [Path(p) for p in paths])
            seconds = time.perf_counter() - start
        finally:
            await store.close()
        return {"created": summary.created, "updated": summary.updated,
                "unchanged": summary.unchanged, "failed": summary.failed,
                "failures": summary.failures[:5], "seconds": seconds}

    return asyncio.run(run())


def load(db: Path, files: list[tuple[Path, int]], jobs: int) -> LoadStats:
    """Load the files in `jobs` processes (files dealt out to balance resource counts)."""
    shares: list[list[str]] = [[] for _ in range(jobs)]
    weights = [0] * jobs
    for path, count in sorted(files, key=lambda f: -f[1]):
        lightest = weights.index(min(weights))
        shares[lightest].append(str(path))
        weights[lightest] += count
    stats = LoadStats(resources=sum(c for _, c in files), jobs=jobs)
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_load_job, str(db), share) for share in shares if share]
        for future in futures:
            part = future.result()
            stats.created += part["created"]
            stats.updated += part["updated"]
            stats.unchanged += part["unchanged"]
            stats.failed += part["failed"]
            stats.failures += part["failures"]
    stats.seconds = time.perf_counter() - start
    return stats


# --------------------------------------------------------------------------------------------
# Queries


def _path(type_: str, params: list[tuple[str, str]]) -> str:
    return f"/fhir/{type_}?{urlencode(params, quote_via=quote, safe=':/')}"


def queries(catalog: Catalog, count: int, rng: random.Random) -> dict[str, list[str]]:
    """`count` request paths per search, parameters drawn from the loaded data."""
    def draw(items: Sequence[Any]) -> list[Any]:
        if not items:
            raise BenchError("the loaded data has nothing to draw a query from")
        return [rng.choice(items) for _ in range(count)]

    return {
        "observation": [_path("Observation", [("patient", f"Patient/{p}"), ("code", c)])
                        for p, c in draw(catalog.observations)],
        "encounter": [_path("Encounter", [("patient", p), ("date", f"ge{year}-01-01")])
                      for p, year in draw(catalog.encounters)],
        "condition": [_path("Condition", [("code", c)]) for c in draw(catalog.conditions)],
        "patient": [_path("Patient", [("family", f), ("birthdate", b)])
                    for f, b in draw(catalog.patients)],
        "medreq": [_path("MedicationRequest",
                         [("patient", p), ("_include", "MedicationRequest:requester")])
                   for p in draw(catalog.medication_requests)],
    }


@dataclass
class Shape:
    """What the queries of one search return (each sent once): means per query."""

    matches: float
    total: float
    included: float
    kbytes: float
    empty: int


def check_queries(base: str, paths: list[str]) -> Shape:
    """Send each path once; every answer must be a 200 searchset."""
    matches = total = included = size = empty = 0
    with httpx.Client(base_url=base, timeout=30.0, headers={"Accept": JSON}) as client:
        for path in paths:
            r = client.get(path)
            if r.status_code != 200:
                raise BenchError(f"GET {path} returned {r.status_code}: {r.text[:1000]}")
            bundle = r.json()
            modes = [e.get("search", {}).get("mode") for e in bundle.get("entry", [])]
            matches += modes.count("match")
            included += modes.count("include")
            total += bundle.get("total", 0)
            empty += not modes.count("match")
            size += len(r.content)
    n = max(1, len(paths))
    return Shape(matches / n, total / n, included / n, size / n / 1024, empty)


# --------------------------------------------------------------------------------------------
# Benchmark


@dataclass
class Row:
    search: str
    size: int
    result: Result
    shape: Shape


def measure_size(args: argparse.Namespace, run: LoadGen, work: Path, data: Path, size: int,
                 catalog: Catalog, started: list[Server]) -> list[Row]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Server(f"fhir-server ({size})", fhir_server_argv(port, data, None), server_env(),
                    work / f"fhir-server-{size}.log")
    started.append(server)
    rows = []
    try:
        server.wait_ready(f"{base}/fhir/metadata")
        chosen = queries(catalog, args.queries, random.Random(f"{args.seed}/{size}"))
        for key in args.searches:
            paths = chosen[key]
            paths_file = work / f"paths-{key}-{size}.txt"
            paths_file.write_text("".join(p + "\n" for p in paths))
            shape = check_queries(base, paths)
            print(f"  {SEARCHES[key]}: measuring", file=sys.stderr)
            result = run.measure(SEARCHES[key], base, "GET", "", "search.lua",
                                 [str(paths_file)], lambda paths=paths: paths)
            rows.append(Row(key, size, result, shape))
    finally:
        server.stop()
        started.remove(server)
    return rows


def report(facts: dict[str, str], loads: list[tuple[int, LoadStats]], rows: list[Row],
           sizes: list[int]) -> str:
    lines = ["", "fhir-server search benchmark", "=" * 28]
    lines += [f"{k:>15}: {v}" for k, v in facts.items()]
    lines += ["", "load (in-process loader: validation + versioning + indexing, one SQLite "
              "transaction per resource)"]
    for size, s in loads:
        lines.append(
            f"  up to {size:>7,} resources: {s.resources:>7,} loaded in {s.seconds:6.1f}s = "
            f"{s.rate:6.0f} resources/s with {s.jobs} process(es) (~{s.rate / s.jobs:.0f}/s "
            f"each); {s.created} created, {s.updated} updated, {s.unchanged} unchanged, "
            f"{s.failed} failed")
    lines.append("")
    header = (f"{'search':<40}{'size':>9}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}{'match':>7}"
              f"{'total':>8}{'incl':>6}{'KB':>6}{'errors':>7}  goals")
    lines += [header, "-" * len(header)]
    for r in rows:
        res = r.result
        met = res.p50_ms <= P50_GOAL_MS and res.p99_ms <= P99_GOAL_MS
        lines.append(
            f"{SEARCHES[r.search]:<40}{r.size:>9,}{res.p50_ms:>8.2f}{res.p99_ms:>8.2f}"
            f"{res.rps:>8.0f}{r.shape.matches:>7.1f}{r.shape.total:>8.1f}"
            f"{r.shape.included:>6.1f}{r.shape.kbytes:>6.1f}{res.errors:>7}  "
            f"{'met' if met else 'NOT met'}")
    lines.append("(match/total/incl/KB: means per query over the query list: entries on the "
                 "page, Bundle.total, _include entries, response size)")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        lines += ["", f"p50 ratio {large:,} / {small:,} resources (goal <= {RATIO_GOAL}):"]
        by = {(r.search, r.size): r.result for r in rows}
        for key in dict.fromkeys(r.search for r in rows):
            a, b = by.get((key, small)), by.get((key, large))
            if a and b:
                ratio = b.p50_ms / a.p50_ms
                lines.append(f"  {SEARCHES[key]:<40}{a.p50_ms:>7.2f} -> {b.p50_ms:>7.2f} ms  "
                             f"x{ratio:.2f}  {'met' if ratio <= RATIO_GOAL else 'NOT met'}")
    if any(r.result.errors for r in rows):
        lines.append("WARNING: some requests failed (see the errors column)")
    return "\n".join(lines)


def machine_facts(args: argparse.Namespace, run: LoadGen) -> dict[str, str]:
    return {
        "cpus": cpus_fact(),
        "python": f"{sys.version.split()[0]}, uvicorn {version('uvicorn')}, "
                  f"fastapi {version('fastapi')}, sqlite {__import__('sqlite3').sqlite_version}",
        "engine": "sqlite, 1 uvicorn worker, access log on",
        "load generator": generator_fact(run.use_wrk, args.threads,
                                         "client-bound, over-reports latency"),
        "load": f"{args.connections} connection(s), {args.duration:g}s per search after a "
                f"{args.warmup:g}s warm-up, {args.queries} distinct queries per search",
        "data": f"Synthea bundles from {args.samples}, cloned with fresh ids",
        "note": load_average_fact(os.getloadavg()),
    }


def run(args: argparse.Namespace) -> int:
    use_wrk = wrk_wanted(args.python_client, "")
    settings = LoadGen(use_wrk, args.duration, args.warmup, args.connections, args.threads)
    facts = machine_facts(args, settings)
    templates = read_templates(args.samples)
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="fhir-bench-search-"))
    rows: list[Row] = []
    loads: list[tuple[int, LoadStats]] = []
    reached: list[int] = []
    try:
        with servers() as started:
            out, data = tmp / "ndjson", tmp / "data"
            out.mkdir()
            data.mkdir()
            catalog = Catalog()
            files = clones(templates, out, catalog)
            total = 0
            for target in args.sizes:
                new: list[tuple[Path, int]] = []
                t0 = time.perf_counter()
                while total < target:
                    path, count = next(files)
                    new.append((path, count))
                    total += count
                prepared = time.perf_counter() - t0
                print(f"size {target:,}: {sum(c for _, c in new):,} new resources in "
                      f"{len(new)} files (prepared in {prepared:.1f}s); loading with "
                      f"{args.load_jobs} process(es)", file=sys.stderr)
                stats = load(data / "fhir.sqlite", new, args.load_jobs)
                print(f"  loaded in {stats.seconds:.1f}s ({stats.rate:.0f} resources/s)",
                      file=sys.stderr)
                if stats.failed:
                    raise BenchError("loading failed:\n" + "\n".join(stats.failures))
                loads.append((total, stats))
                reached.append(total)
                rows += measure_size(args, settings, tmp, data, total, catalog, started)
    finally:
        if args.keep:
            print(f"kept {tmp} (data/fhir.sqlite, ndjson/, paths-*.txt, logs)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(facts, loads, rows, reached))
    print(f"\n(whole run: {time.perf_counter() - began:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps({
            "facts": facts,
            "loads": [{"size": size, **asdict(s), "rate": s.rate} for size, s in loads],
            "runs": [{"search": SEARCHES[r.search], "size": r.size, **asdict(r.result),
                      **{f"mean_{k}": v for k, v in asdict(r.shape).items()}} for r in rows],
        }, indent=2))
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of sizes: {text!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"sizes must be 1..{MAX_SIZE:,}")
    return sizes


def _searches(text: str) -> list[str]:
    keys = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [k for k in keys if k not in SEARCHES]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(SEARCHES)}")
    return keys


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_search",
        description="p50/p99 of five typical searches at growing data sizes (SQLite).")
    parser.add_argument("--sizes", type=_sizes, default=[1000, 100_000],
                        help="comma list of resource counts to measure at [1000,100000]")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES,
                        help=f"folder of Synthea bundles [{DEFAULT_SAMPLES}]")
    parser.add_argument("--searches", type=_searches, default=list(SEARCHES),
                        help=f"comma list among {','.join(SEARCHES)} [all]")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each measured run [10]")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unmeasured seconds before each run [2]")
    parser.add_argument("--connections", type=int, default=1,
                        help="concurrent keep-alive connections [1]")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads [1]")
    parser.add_argument("--queries", type=int, default=200,
                        help="distinct query URLs per search and size [200]")
    parser.add_argument("--load-jobs", type=int, default=1,
                        help="loader processes writing into the database; more than one is "
                             "slower today (SQLite write-lock waits) [1]")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the queries [1]")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (database, NDJSON, query lists)")
    parser.add_argument("--python-client", action="store_true",
                        help="use the Python load generator even when wrk is installed")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 s and --warmup 0..60 s")
    if not 1 <= args.threads <= args.connections <= 1000:
        parser.error("need 1 <= --threads <= --connections <= 1000")
    if not 1 <= args.queries <= 100_000 or not 1 <= args.load_jobs <= 64:
        parser.error("--queries must be 1..100000 and --load-jobs 1..64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
