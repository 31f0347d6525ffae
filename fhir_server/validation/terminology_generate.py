"""Generate r4-terminology.json.gz from the official FHIR R4 ValueSets and CodeSystems.

    python -m fhir_server.validation.terminology_generate [--source DIR] [--output FILE]

The source directory holds valuesets.json (the specification's Bundle of ValueSets and
CodeSystems); by default it is ../shared/fhir-r4 next to the repository. The server never reads
the specification: it reads the committed, compact output through
fhir_server.validation.terminology.

Only what expansion and validation need is kept, in FHIR shape so that the built-in content and
local resources go through the same code:

- CodeSystems (not supplements): url, version, name, content, caseSensitive, hierarchyMeaning
  and the concept tree (code, display, nested concept); concept properties only when they say
  how the hierarchy is built (parent / child / subsumedBy) or whether the concept is
  abstract / inactive;
- ValueSets: url, version, name and compose (include / exclude with system, version, concept
  code + display, filter, valueSet); an expansion only when there is no compose.

The R4 specification does not contain the terminology.hl7.org v2 / v3 code systems (they were
published separately). THO_FRAGMENTS adds the few of their codes that common R4 bindings and the
national-core profiles use, as CodeSystems with content "fragment": a code listed there is known,
a code not listed is "cannot decide", never "invalid".

The output is deterministic (sorted by url, gzip without a timestamp), so regenerating from the
same specification leaves the committed file unchanged.
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "fhir-r4"
DEFAULT_OUTPUT = Path(__file__).with_name("r4-terminology.json.gz")

CS_KEYS = ("url", "version", "name", "content", "caseSensitive", "hierarchyMeaning")
VS_KEYS = ("url", "version", "name")
KEPT_PROPERTIES = frozenset(
    (
        "parent",
        "child",
        "subsumedBy",
        "abstract",
        "notSelectable",
        "inactive",
        "status",
        "deprecated",
    )
)

THO = "http://terminology.hl7.org/CodeSystem/"

# (url, name, [(code, display), ...]): codes and displays as published by terminology.hl7.org.
THO_FRAGMENTS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        THO + "v2-0203",
        "IdentifierType",
        [
            ("ACSN", "Accession ID"),
            ("BRN", "Breed Registry Number"),
            ("DL", "Driver's license number"),
            ("DR", "Donor Registration Number"),
            ("EN", "Employer number"),
            ("FILL", "Filler Identifier"),
            ("JHN", "Jurisdictional health number (Canada)"),
            ("MCN", "Microchip Number"),
            ("MD", "Medical License number"),
            ("MR", "Medical record number"),
            ("NI", "National unique individual identifier"),
            ("NIIP", "National Insurance Payor Identifier (Payor)"),
            ("NPI", "National provider identifier"),
            ("PLAC", "Placer Identifier"),
            ("PPN", "Passport number"),
            ("PRN", "Provider number"),
            ("SB", "Social Beneficiary Identifier"),
            ("SNO", "Serial Number"),
            ("SS", "Social Security number"),
            ("TAX", "Tax ID number"),
            ("UDI", "Universal Device Identifier"),
            ("XX", "Organization identifier"),
        ],
    ),
    (
        THO + "v2-0074",
        "DiagnosticServiceSectionId",
        [
            ("CH", "Chemistry"),
            ("HM", "Hematology"),
            ("LAB", "Laboratory"),
            ("MB", "Microbiology"),
            ("PAT", "Pathology (gross & histopath, not surgical)"),
            ("RAD", "Radiology"),
            ("SR", "Serology"),
            ("IMM", "Immunology"),
        ],
    ),
    (
        THO + "v2-0131",
        "ContactRole",
        [
            ("BP", "Billing contact person"),
            ("C", "Emergency Contact"),
            ("CP", "Contact person"),
            ("E", "Employer"),
            ("EP", "Emergency contact person"),
            ("F", "Federal Agency"),
            ("I", "Insurance Company"),
            ("N", "Next-of-Kin"),
            ("O", "Other"),
            ("PR", "Person preparing referral"),
            ("S", "State Agency"),
            ("U", "Unknown"),
        ],
    ),
    (
        THO + "v2-0360",
        "DegreeLicenseCertificate",
        [
            ("BSN", "Bachelor of Science in Nursing"),
            ("DDS", "Doctor of Dental Surgery"),
            ("DO", "Doctor of Osteopathy"),
            ("MD", "Doctor of Medicine"),
            ("PharmD", "Doctor of Pharmacy"),
            ("PHD", "Doctor of Philosophy"),
            ("RN", "Registered Nurse"),
            ("RPH", "Registered Pharmacist"),
        ],
    ),
    (
        THO + "v3-ActCode",
        "ActCode",
        [
            ("AMB", "ambulatory"),
            ("EMER", "emergency"),
            ("FLD", "field"),
            ("HH", "home health"),
            ("IMP", "inpatient encounter"),
            ("ACUTE", "inpatient acute"),
            ("NONAC", "inpatient non-acute"),
            ("OBSENC", "observation encounter"),
            ("PRENC", "pre-admission"),
            ("SS", "short stay"),
            ("VR", "virtual"),
        ],
    ),
    (
        THO + "v3-ObservationInterpretation",
        "ObservationInterpretation",
        [
            ("<", "Off scale low"),
            (">", "Off scale high"),
            ("A", "Abnormal"),
            ("AA", "Critical abnormal"),
            ("H", "High"),
            ("HH", "Critical high"),
            ("HU", "Significantly high"),
            ("L", "Low"),
            ("LL", "Critical low"),
            ("LU", "Significantly low"),
            ("N", "Normal"),
            ("I", "Intermediate"),
            ("R", "Resistant"),
            ("S", "Susceptible"),
            ("POS", "Positive"),
            ("NEG", "Negative"),
        ],
    ),
    (
        THO + "v3-MaritalStatus",
        "MaritalStatus",
        [
            ("A", "Annulled"),
            ("D", "Divorced"),
            ("I", "Interlocutory"),
            ("L", "Legally Separated"),
            ("M", "Married"),
            ("P", "Polygamous"),
            ("S", "Never Married"),
            ("T", "Domestic partner"),
            ("U", "unmarried"),
            ("W", "Widowed"),
        ],
    ),
    (
        THO + "v3-ParticipationType",
        "ParticipationType",
        [
            ("ADM", "admitter"),
            ("ATND", "attender"),
            ("CALLBCK", "callback contact"),
            ("CON", "consultant"),
            ("DIS", "discharger"),
            ("ESC", "escort"),
            ("REF", "referrer"),
            ("PART", "Participation"),
            ("PPRF", "primary performer"),
            ("SPRF", "secondary performer"),
            ("TRANS", "Transcriber"),
        ],
    ),
    (
        THO + "v3-RoleCode",
        "RoleCode",
        [
            ("FTH", "father"),
            ("MTH", "mother"),
            ("SON", "natural son"),
            ("DAU", "natural daughter"),
            ("SPS", "spouse"),
            ("HUSB", "husband"),
            ("WIFE", "wife"),
            ("BRO", "brother"),
            ("SIS", "sister"),
            ("FRND", "unrelated friend"),
            ("GRMTH", "grandmother"),
            ("GRFTH", "grandfather"),
            ("GUARD", "guardian"),
        ],
    ),
]


def _concepts(concepts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for concept in concepts:
        item: dict[str, Any] = {"code": concept["code"]}
        if concept.get("display"):
            item["display"] = concept["display"]
        properties = [p for p in concept.get("property", ()) if p["code"] in KEPT_PROPERTIES]
        if properties:
            item["property"] = properties
        if concept.get("concept"):
            item["concept"] = _concepts(concept["concept"])
        out.append(item)
    return out


def compact_code_system(cs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "CodeSystem"}
    out.update((k, cs[k]) for k in CS_KEYS if k in cs)
    if cs.get("concept"):
        out["concept"] = _concepts(cs["concept"])
    return out


def _include(inc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: inc[k] for k in ("system", "version", "valueSet") if k in inc}
    if "concept" in inc:
        out["concept"] = [
            {"code": c["code"], **({"display": c["display"]} if c.get("display") else {})}
            for c in inc["concept"]
        ]
    if "filter" in inc:
        out["filter"] = [{k: f[k] for k in ("property", "op", "value")} for f in inc["filter"]]
    return out


def compact_value_set(vs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "ValueSet"}
    out.update((k, vs[k]) for k in VS_KEYS if k in vs)
    compose = vs.get("compose")
    if compose:
        out["compose"] = {
            part: [_include(i) for i in compose[part]]
            for part in ("include", "exclude")
            if compose.get(part)
        }
        if "inactive" in compose:
            out["compose"]["inactive"] = compose["inactive"]
    elif "expansion" in vs:
        out["expansion"] = {"contains": vs["expansion"].get("contains", [])}
    return out


def tho_fragments() -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "CodeSystem",
            "url": url,
            "name": name,
            "content": "fragment",
            "caseSensitive": True,
            "concept": [{"code": code, "display": display} for code, display in codes],
        }
        for url, name, codes in THO_FRAGMENTS
    ]


def build(source: Path) -> dict[str, Any]:
    bundle = orjson.loads((source / "valuesets.json").read_bytes())
    code_systems: dict[str, dict[str, Any]] = {}
    value_sets: dict[str, dict[str, Any]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "CodeSystem" and resource.get("content") != "supplement":
            code_systems[resource["url"]] = compact_code_system(resource)
        elif resource["resourceType"] == "ValueSet":
            value_sets[resource["url"]] = compact_value_set(resource)
    for fragment in tho_fragments():
        code_systems.setdefault(fragment["url"], fragment)
    return {
        "fhirVersion": "4.0.1",
        "codeSystems": [code_systems[u] for u in sorted(code_systems)],
        "valueSets": [value_sets[u] for u in sorted(value_sets)],
    }


def write(data: dict[str, Any], output: Path) -> int:
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    output.write_bytes(packed)
    return len(packed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    data = build(args.source)
    size = write(data, args.output)
    print(
        f"wrote {args.output}: {len(data['codeSystems'])} CodeSystems, "
        f"{len(data['valueSets'])} ValueSets, {size} bytes"
    )


if __name__ == "__main__":
    main()
