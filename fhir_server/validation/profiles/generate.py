"""Generate `base.json.gz`: the R4 base StructureDefinitions, trimmed to what validation needs.

    python -m fhir_server.validation.profiles.generate [--source ../shared/fhir-r4]

Reads `profiles-types.json`, `profiles-resources.json` and `extension-definitions.json` (Bundles
of StructureDefinitions) and keeps, per definition, its url, name, type, kind, derivation,
baseDefinition, abstract, context, and per snapshot element only the properties the compiler
uses (path, cardinality, types, fixed/pattern, maxLength, binding, constraints, slicing,
contentReference). Logical models are skipped. The output is the same JSON shape as a
StructureDefinition, so the loader, snapshot generator and compiler treat the base definitions
and local profiles alike. The server reads only the generated file, never the specification.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent
OUTPUT = HERE / "base.json.gz"
SOURCES = ("profiles-types.json", "profiles-resources.json", "extension-definitions.json")
DEFAULT_SOURCE = Path(__file__).resolve().parents[4] / "shared" / "fhir-r4"

SD_KEYS = (
    "url",
    "name",
    "type",
    "kind",
    "abstract",
    "derivation",
    "baseDefinition",
    "context",
)
ELEMENT_KEYS = ("id", "path", "sliceName", "min", "max", "contentReference", "maxLength")


def compact_element(element: dict[str, Any]) -> dict[str, Any]:
    """Keep only what validation needs of one ElementDefinition."""
    out: dict[str, Any] = {k: element[k] for k in ELEMENT_KEYS if k in element}
    for key, value in element.items():
        if key.startswith(("fixed", "pattern")):
            out[key] = value
    if "type" in element:
        types = []
        for t in element["type"]:
            kept = {k: t[k] for k in ("code", "profile", "targetProfile") if k in t}
            for ext in t.get("extension", ()):
                # Primitive values (Patient.id, Extension.url): the FHIR type of the value.
                if ext.get("url", "").endswith("structuredefinition-fhir-type"):
                    kept["code"] = ext.get("valueUrl") or ext.get("valueUri") or kept["code"]
            types.append(kept)
        out["type"] = types
    binding = element.get("binding")
    if binding and "valueSet" in binding:
        out["binding"] = {"strength": binding["strength"], "valueSet": binding["valueSet"]}
    constraints = [
        {k: c[k] for k in ("key", "severity", "expression", "human") if k in c}
        for c in element.get("constraint", ())
        if "expression" in c
    ]
    if constraints:
        out["constraint"] = constraints
    if "slicing" in element:
        out["slicing"] = {
            k: element["slicing"][k]
            for k in ("discriminator", "ordered", "rules")
            if k in element["slicing"]
        }
    return out


def compact_definition(sd: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "StructureDefinition"}
    out.update({k: sd[k] for k in SD_KEYS if k in sd})
    out["snapshot"] = {"element": [compact_element(e) for e in sd["snapshot"]["element"]]}
    return out


def generate(source: Path) -> list[dict[str, Any]]:
    definitions = []
    for name in SOURCES:
        bundle = orjson.loads((source / name).read_bytes())
        for entry in bundle.get("entry", ()):
            sd = entry.get("resource", {})
            if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") == "logical":
                continue
            if "snapshot" not in sd:
                continue
            definitions.append(compact_definition(sd))
    return definitions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    definitions = generate(args.source)
    data = orjson.dumps(definitions)
    # mtime=0: the committed file only changes when its content does.
    args.output.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{len(definitions)} definitions, {len(data):,} bytes -> {args.output}")


if __name__ == "__main__":
    main()
