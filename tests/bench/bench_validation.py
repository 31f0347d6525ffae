"""Validation cost per resource: structural alone, structural + the base definitions' rules
(invariants, required bindings: what every write pays), the national-core profiles (seed data),
and US Core 5.0.1 (the Synthea samples, when ../shared is present).

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
from fhir_server.validation.base_rules import check_base_rules
from fhir_server.validation.conformance import NATIONAL_CORE_REQUIRED, Conformance
from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.structure import check_structure, validate_structure
from fhir_server.validation.terminology import Terminology

SHARED = PROJECT_ROOT.parent / "shared"
US_CORE = SHARED / "fhir-r4" / "uscore-v5.0.1-structuredefinitions.json"
SYNTHEA = SHARED / "samples" / "synthea-r4"
US = "http://hl7.org/fhir/us/core/StructureDefinition/"
US_CORE_FOR = {
    "Patient": US + "us-core-patient",
    "MedicationRequest": US + "us-core-medicationrequest",
}


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
    """The structure alone (JSON shape, formats, R4B models)."""
    try:
        check_structure(resource)
    except Exception:
        return


def write_time(resource: dict[str, Any]) -> None:
    """What every write pays: the structure, then the base definitions' rules."""
    try:
        validate_structure(resource)
    except Exception:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rows: list[tuple[str, int, float]] = []

    def row(what: str, items: list[Any], check: Callable[[Any], object], repeat: int) -> None:
        rows.append((what, len(items), per_resource_ms(items, check, repeat)))

    seed = bundle_resources(PROJECT_ROOT / "seed_data")
    national = Conformance.load(Settings(require_national_core=True))
    profiled = [r for r in seed if r["resourceType"] in NATIONAL_CORE_REQUIRED]
    row("structural (seed, profiled types)", profiled, structural, args.repeat)
    row("structural + base rules (seed, profiled types)", profiled, write_time, args.repeat)
    row("national-core profile + base walk", profiled,
        lambda r: national.validator.validate(r, national.required[r["resourceType"]]),
        args.repeat)  # fmt: skip

    if US_CORE.exists() and SYNTHEA.is_dir():
        with tempfile.TemporaryDirectory() as directory:
            sds = json.loads(US_CORE.read_text())
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": sd} for sd in sds]}  # fmt: skip
            (Path(directory) / "uscore.json").write_text(json.dumps(bundle))
            us_core = ProfileValidator.load(Path(directory), Terminology.load())
        synthea = [r for r in bundle_resources(SYNTHEA) if r["resourceType"] in US_CORE_FOR]
        row("structural (Synthea Patient+MedicationRequest)", synthea, structural, args.repeat)
        row("structural + base rules (Synthea Patient+MedicationRequest)", synthea, write_time,
            args.repeat)  # fmt: skip

        def us_core_profile(r: dict[str, Any]) -> object:
            return us_core.validate(r, [US_CORE_FOR[r["resourceType"]]])

        row("US Core profile + base walk", synthea, us_core_profile, args.repeat)
        everything = bundle_resources(SYNTHEA)
        few = max(1, args.repeat // 5)
        row("structural (all Synthea)", everything, structural, few)
        row("structural + base rules (all Synthea)", everything, write_time, few)
        row("base rules alone (all Synthea)", everything, check_base_rules, few)
        row("base definitions walk of $validate (all Synthea)", everything, us_core.validate,
            max(1, args.repeat // 10))  # fmt: skip

    print(f"{'what':60} {'resources':>9} {'ms/resource':>12}")
    for what, count, ms in rows:
        print(f"{what:60} {count:>9} {ms:>12.3f}")


if __name__ == "__main__":
    main()
