"""Generate elements.json from the official FHIR R4 StructureDefinitions.

    python -m fhir_server.definitions.generate [--source DIR]

The source directory holds profiles-types.json and profiles-resources.json (Bundles of
StructureDefinitions); by default it is ../shared/fhir-r4 next to the repository. The output is
deterministic, so regenerating from the same specification leaves the committed file unchanged.

Layout of the data file (one compact JSON object):
- resourceTypes: every concrete resource type; modelledResourceTypes: those that fhir.resources
  (R4B) has a model class for;
- primitiveTypes: primitive type code -> Kind value (how its value is written in JSON);
- types: type name or backbone path -> its elements in definition order, each
  [name, type code or backbone path (a list for choice elements, named "x[x]"), flags], flags
  being the FLAG_* bits of fhir_server.definitions.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from fhir_server.definitions import (
    DATA_FILE,
    FLAG_ARRAY,
    FLAG_MANDATORY,
    FLAG_SUMMARY,
    FLAG_XML_ATTR,
    Kind,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "fhir-r4"
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
# Elements of these types have their own children in the snapshot: they are backbone elements.
BACKBONE_CODES = frozenset(("BackboneElement", "Element"))
PRIMITIVE_KINDS = {
    "boolean": Kind.BOOLEAN,
    "integer": Kind.INTEGER,
    "positiveInt": Kind.INTEGER,
    "unsignedInt": Kind.INTEGER,
    "decimal": Kind.DECIMAL,
    "xhtml": Kind.XHTML,
}


def structure_definitions(source: Path, name: str) -> Iterator[dict[str, Any]]:
    bundle = orjson.loads((source / name).read_bytes())
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "StructureDefinition":
            yield resource


def is_concrete(sd: dict[str, Any], kind: str) -> bool:
    """A base definition of the kind, not an abstract one nor a profile (SimpleQuantity)."""
    return (
        sd["kind"] == kind and not sd.get("abstract") and sd.get("derivation") == "specialization"
    )


def type_code(type_ref: dict[str, Any]) -> str:
    """The FHIR type of an element type; ids and primitive values use FHIRPath System types."""
    for extension in type_ref.get("extension", ()):
        if extension["url"] == FHIR_TYPE_EXTENSION:
            return extension["valueUrl"]
    return type_ref["code"]


def element_type(element: dict[str, Any], parents: set[str]) -> str | list[str]:
    if "contentReference" in element:
        return element["contentReference"].removeprefix("#")
    codes = [type_code(t) for t in element["type"]]
    if element["path"].endswith("[x]"):
        return codes
    if len(codes) != 1:
        raise SystemExit(f"{element['path']}: several types on a non-choice element")
    if codes[0] in BACKBONE_CODES and element["path"] in parents:
        return element["path"]
    return codes[0]


def element_flags(element: dict[str, Any]) -> int:
    flags = 0
    if element["max"] != "1" and element["max"] != "0":
        flags |= FLAG_ARRAY
    if element.get("isSummary"):
        flags |= FLAG_SUMMARY
    if element["min"] >= 1:
        flags |= FLAG_MANDATORY
    if "xmlAttr" in element.get("representation", ()):
        flags |= FLAG_XML_ATTR
    return flags


def element_tables(sd: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """The type's own table and one per backbone element, keyed by path."""
    elements = [e for e in sd["snapshot"]["element"] if "sliceName" not in e]
    parents = {e["path"].rpartition(".")[0] for e in elements}
    tables: dict[str, list[list[Any]]] = {sd["type"]: []}
    for element in elements[1:]:
        parent, _, name = element["path"].rpartition(".")
        entry = [name, element_type(element, parents), element_flags(element)]
        tables.setdefault(parent, []).append(entry)
    return tables


def referenced_codes(tables: dict[str, list[list[Any]]]) -> Iterator[tuple[str, str]]:
    for path, elements in tables.items():
        for name, types, _ in elements:
            for code in [types] if isinstance(types, str) else types:
                yield f"{path}.{name}", code


def check_references(data: dict[str, Any]) -> None:
    """Every type an element names must be known, or the run-time lookups would fail later."""
    known = set(data["types"]) | set(data["primitiveTypes"]) | {"Resource"}
    unknown = [
        f"{path}: {code}" for path, code in referenced_codes(data["types"]) if code not in known
    ]
    if unknown:
        raise SystemExit("Unresolved element types:\n" + "\n".join(unknown))


def modelled(resource_types: Iterable[str]) -> list[str]:
    """The resource types fhir.resources can build a model for (computed here, not at run time,
    because importing every model class is slow)."""
    from fhir.resources.R4B import get_fhir_model_class

    names = []
    for name in resource_types:
        try:
            get_fhir_model_class(name)
        except (ValueError, ImportError):
            continue
        names.append(name)
    return names


# Primitive types whose value format is checked with the definition's regex. Strings and
# markdown are left out (their regex rejects Unicode spaces real names contain), base64Binary
# too (a regex over megabytes of data costs more than it tells).
CHECKED_FORMATS = frozenset((
    "code", "date", "dateTime", "instant", "time", "id", "oid", "uuid", "uri", "url", "canonical",
))


def value_regex(sd: dict[str, Any]) -> str | None:
    """The regex extension on a primitive type's `value` element."""
    for element in sd["snapshot"]["element"]:
        if element["path"].endswith(".value"):
            for type_ in element.get("type", []):
                for ext in type_.get("extension", []):
                    if ext["url"].endswith("/regex"):
                        return str(ext["valueString"])
    return None


def build(source: Path) -> dict[str, Any]:
    datatypes = list(structure_definitions(source, "profiles-types.json"))
    resources = [
        sd
        for sd in structure_definitions(source, "profiles-resources.json")
        if is_concrete(sd, "resource")
    ]
    primitives = {
        sd["type"]: PRIMITIVE_KINDS.get(sd["type"], Kind.STRING).value
        for sd in datatypes
        if is_concrete(sd, "primitive-type")
    }
    patterns = {
        sd["type"]: pattern
        for sd in datatypes
        if sd["type"] in CHECKED_FORMATS and (pattern := value_regex(sd)) is not None
    }
    tables: dict[str, list[list[Any]]] = {}
    for sd in [*(d for d in datatypes if is_concrete(d, "complex-type")), *resources]:
        tables.update(element_tables(sd))
    resource_types = sorted(sd["type"] for sd in resources)
    data = {
        "resourceTypes": resource_types,
        "modelledResourceTypes": modelled(resource_types),
        "primitiveTypes": primitives,
        "primitivePatterns": patterns,
        "types": tables,
    }
    check_references(data)
    return data


def serialize(data: dict[str, Any]) -> bytes:
    """Compact and with sorted keys, so regenerating from the same source is byte-identical."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    data = build(args.source)
    DATA_FILE.write_bytes(serialize(data))
    print(
        f"{DATA_FILE}: {len(data['resourceTypes'])} resource types "
        f"({len(data['modelledResourceTypes'])} modelled), {len(data['types'])} type tables, "
        f"{DATA_FILE.stat().st_size} bytes"
    )


if __name__ == "__main__":
    main()
