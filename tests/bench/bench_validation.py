"""Validation cost per resource: structural alone, the national-core profiles (seed data), and
US Core 5.0.1 (the Synthea samples, when ../shared is present).

    python -m tests.bench.bench_validation [--repeat 20]

In-process timings (no HTTP); each figure is the mean over `--repeat` passes after one warm-up
pass that compiles the profiles and fills the terminology caches.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhir_server.config import PROJECT_ROOT, Settings
from fhir_server.validation.conformance import NATIONAL_CORE_REQUIRED, Conformance
from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.structure import validate_structure
from fhir_server.validation.terminology import Terminology

SHARED = PROJECT_ROOT.parent / "shared"
US_CORE = SHARED / "fhir-r4" / "uscore-v5.0.1-structuredefinitions.json"
SYNTHEA = SHARED / "samples" / "synthea-r4"
US = "http://hl7.org/fhir/us/core/StructureDefinition/"
US_CORE_FOR = {"Patient": US + "us-core-patient",
               "MedicationRequest": US + "us-core-medicationrequest"}


def bundle_resources(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")):
        found += [e["resource"] for e in json.loads(path.read_text())["entry"]]
    return found


def per_resource_ms(items: list[Any], check: Callable[[Any], object], repeat: int) -> float:
    for item in items:
        check(item)
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            check(item)
    return (time.perf_counter() - start) / (repeat * len(items)) * 1000


def structural(resource: dict[str, Any]) -> None:
    try:
        validate_structure(resource)
    except Exception:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rows: list[tuple[str, int, float]] = []

    seed = bundle_resources(PROJECT_ROOT / "seed_data")
    national = Conformance.load(Settings(require_national_core=True))
    profiled = [r for r in seed if r["resourceType"] in NATIONAL_CORE_REQUIRED]
    rows.append(("structural (seed, profiled types)", len(profiled),
                 per_resource_ms(profiled, structural, args.repeat)))
    rows.append(("national-core profile + base walk", len(profiled), per_resource_ms(
        profiled, lambda r: national.validator.validate(r, national.required[r["resourceType"]]),
        args.repeat)))

    if US_CORE.exists() and SYNTHEA.is_dir():
        with tempfile.TemporaryDirectory() as directory:
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": sd} for sd in json.loads(US_CORE.read_text())]}
            (Path(directory) / "uscore.json").write_text(json.dumps(bundle))
            us_core = ProfileValidator.load(Path(directory), Terminology.load())
        synthea = [r for r in bundle_resources(SYNTHEA) if r["resourceType"] in US_CORE_FOR]
        rows.append(("structural (Synthea Patient+MedicationRequest)", len(synthea),
                     per_resource_ms(synthea, structural, args.repeat)))
        rows.append(("US Core profile + base walk", len(synthea), per_resource_ms(
            synthea, lambda r: us_core.validate(r, [US_CORE_FOR[r["resourceType"]]]),
            args.repeat)))
        everything = bundle_resources(SYNTHEA)
        rows.append(("base definitions only (all Synthea)", len(everything),
                     per_resource_ms(everything, us_core.validate, max(1, args.repeat // 10))))

    print(f"{'what':50} {'resources':>9} {'ms/resource':>12}")
    for what, count, ms in rows:
        print(f"{what:50} {count:>9} {ms:>12.3f}")


if __name__ == "__main__":
    main()
