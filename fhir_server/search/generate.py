"""Generate parameters.json and compartment.json from the official FHIR R4 definitions.

    python -m fhir_server.search.generate [--source DIR]

The source directory holds search-parameters.json (a Bundle of every R4 SearchParameter) and
compartmentdefinition-patient.json; by default it is ../shared/fhir-r4 next to the repository.
Both outputs are compact and deterministic, so regenerating from the same specification leaves
the committed files unchanged.

parameters.json is {"parameters": [...], "excluded": [...]}. Each parameter is an object with
url, code, type, base (list), expression (as published) and expressions (base type -> the union
terms of the expression that apply to it), plus, only when the definition has them: target,
component ([[component code, relative expression], ...]), multipleOr, multipleAnd, modifier,
comparator. "excluded" lists {url, code, type, reason} for definitions the server cannot index.

compartment.json is the Patient CompartmentDefinition as {resource type: [param codes]}, for the
types that can be in a Patient's compartment.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from fhir_server.definitions import R4_RESOURCE_TYPES

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "fhir-r4"
PACKAGE_DIR = Path(__file__).resolve().parent
PARAMETERS_FILE = PACKAGE_DIR / "parameters.json"
COMPARTMENT_FILE = PACKAGE_DIR / "compartment.json"

# Abstract bases whose terms apply to every resource type of the parameter's base list.
GENERIC_BASES = frozenset(("Resource", "DomainResource"))
OPTIONAL_KEYS = ("multipleOr", "multipleAnd", "modifier", "comparator")
_HEAD = re.compile(r"\(*([A-Za-z_][A-Za-z0-9_]*)")


def split_union(expression: str) -> list[str]:
    """The top-level `|` terms of a FHIRPath expression (not those inside parentheses, function
    arguments or string literals)."""
    terms: list[str] = []
    depth = 0
    quote = False
    start = 0
    for i, char in enumerate(expression):
        if quote:
            quote = char != "'" or expression[i - 1] == "\\"
        elif char == "'":
            quote = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth == 0:
            terms.append(expression[start:i].strip())
            start = i + 1
    terms.append(expression[start:].strip())
    return terms


def expression_for_base(expression: str, base: str) -> str:
    """The union terms of `expression` that apply to resources of type `base`.

    A term applies when its path starts with the base type or with Resource./DomainResource.
    (also behind opening parentheses, as in `(Observation.value as Quantity)`). A term whose
    path starts with no type name at all (InsurancePlan-name is `name | alias`) is relative to
    the resource, so it applies to every base and is prefixed with it to read like the others.
    """
    kept = []
    for term in split_union(expression):
        match = _HEAD.match(term)
        if match is None:
            raise ValueError(f"cannot read the path of {term!r} in {expression!r}")
        head = match.group(1)
        if head == base or head in GENERIC_BASES:
            kept.append(term)
        elif head not in R4_RESOURCE_TYPES:
            kept.append(term[: match.start(1)] + base + "." + term[match.start(1) :])
    if not kept:
        raise ValueError(f"no term of {expression!r} applies to {base}")
    return " | ".join(kept)


def compact_parameter(resource: dict[str, Any], codes_by_url: dict[str, str]) -> dict[str, Any]:
    expression = resource["expression"]
    out: dict[str, Any] = {
        "url": resource["url"],
        "code": resource["code"],
        "type": resource["type"],
        "base": resource["base"],
        "expression": expression,
        "expressions": {base: expression_for_base(expression, base) for base in resource["base"]},
    }
    if resource.get("target"):
        out["target"] = resource["target"]
    if resource.get("component"):
        out["component"] = [
            [codes_by_url[component["definition"]], component["expression"]]
            for component in resource["component"]
        ]
    for key in OPTIONAL_KEYS:
        if key in resource:
            out[key] = resource[key]
    return out


def search_parameters(source: Path) -> list[dict[str, Any]]:
    bundle = orjson.loads((source / "search-parameters.json").read_bytes())
    return [
        entry["resource"]
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "SearchParameter"
    ]


def build_parameters(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    resources = list(resources)
    codes_by_url = {resource["url"]: resource["code"] for resource in resources}
    parameters = []
    excluded = []
    for resource in resources:
        if resource.get("expression"):
            parameters.append(compact_parameter(resource, codes_by_url))
        else:
            # _text, _content and _query: full-text search and named queries are not
            # expressible as element values, so there is nothing to index.
            excluded.append(
                {
                    "url": resource["url"],
                    "code": resource["code"],
                    "type": resource["type"],
                    "reason": "no expression",
                }
            )
    return {"parameters": parameters, "excluded": excluded}


def build_compartment(source: Path) -> dict[str, list[str]]:
    definition = orjson.loads((source / "compartmentdefinition-patient.json").read_bytes())
    return {item["code"]: item["param"] for item in definition["resource"] if item.get("param")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    data = build_parameters(search_parameters(args.source))
    PARAMETERS_FILE.write_bytes(orjson.dumps(data) + b"\n")
    COMPARTMENT_FILE.write_bytes(orjson.dumps(build_compartment(args.source)) + b"\n")
    print(
        f"{len(data['parameters'])} parameters written to {PARAMETERS_FILE.name}, "
        f"{len(data['excluded'])} excluded: " + ", ".join(item["code"] for item in data["excluded"])
    )


if __name__ == "__main__":
    main()
