"""Search semantics per parameter type, checked against oracles over the loaded dataset.

Each case is a query; its expected result is computed by a plain Python predicate over the
resources as stored (`fixtures/oracle.py` holds the readings of search.html the predicates use),
never typed in. Every case runs on both engines against one dataset loaded per module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.search.conftest import BASE, BIG, Loaded, link, search_pages
from tests.search.fixtures import oracle as o
from tests.search.fixtures.dataset import (
    CONFIDENTIALITY,
    FOREIGN_PATIENT,
    ICD10,
    LOCAL,
    LOINC,
    MRN,
    OBS_CATEGORY,
    ODD_IDS,
    OTHER_IDS,
    RXNORM,
    SNOMED,
    SPECIAL_PROFILE,
    TAGS,
    UCUM,
    build_dataset,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

Resource = dict[str, Any]
Predicate = Callable[[Resource, Loaded], bool]


@dataclass(frozen=True)
class Case:
    resource_type: str
    query: str
    """`name=value&name=value` as it would be written (values not URL-encoded)."""
    expect: Predicate
    empty: bool | None = False
    """The oracle selects nothing on purpose (a value that must not match); None: either (the
    generated date-prefix grid, where some combinations select nothing)."""

    @property
    def params(self) -> list[tuple[str, str]]:
        pairs = []
        for part in self.query.split("&"):
            name, _, value = part.partition("=")
            pairs.append((name, value))
        return pairs

    def __str__(self) -> str:
        return f"{self.resource_type}?{self.query}"


CASES: list[Case] = []


def case(
    resource_type: str, query: str, expect: Predicate, empty: bool | None = False
) -> None:
    CASES.append(Case(resource_type, query, expect, empty))


def value_of(query: str) -> str:
    return query.split("=", 1)[1]


def resolve(d: Loaded, ref: dict[str, Any] | None) -> Resource | None:
    target = o.reference_target(ref, BASE)
    return d.get(*target) if target else None


def refs(r: Resource, key: str) -> list[dict[str, Any]]:
    return o.reference_values(r.get(key))


def referrers(d: Loaded, source_type: str, key: str, target: Resource,
              only: str | None = None) -> list[Resource]:
    """Resources of `source_type` whose `key` references `target` (of type `only` if given)."""
    found = []
    for source in d.of_type(source_type):
        for ref in refs(source, key):
            hit = o.reference_target(ref, BASE)
            if hit == (target["resourceType"], target["id"]) and only in (None, hit[0]):
                found.append(source)
                break
    return found


def patient_ref(r: Resource) -> list[dict[str, Any]]:
    """Observation/Encounter `patient`: the subject when it is a Patient reference."""
    return [
        ref for ref in refs(r, "subject")
        if (o.reference_target(ref, BASE) or ("", ""))[0] == "Patient"
    ]


# ---------------------------------------------------------------------------- string

PATIENT_STRINGS: dict[str, Callable[[Resource], list[str]]] = {
    "name": lambda r: o.names(r),
    "family": lambda r: o.names(r, ["family"]),
    "given": lambda r: o.names(r, ["given"]),
    "address": lambda r: o.addresses(r),
    "address-city": lambda r: o.addresses(r, ["city"]),
    "address-country": lambda r: o.addresses(r, ["country"]),
    "address-state": lambda r: o.addresses(r, ["state"]),
    "address-postalcode": lambda r: o.addresses(r, ["postalCode"]),
}

for param, values in {
    "name": ["иван", "ИВАНОВА", "muller", "Mü", "olund", "ÖLUND", "garcia", "nguyen", "thi",
             "smith", "Dr", "Jr", "Jane Smithson", "o'b", "张", "sean", "Иванова,Müller",
             "zzz-nobody"],
    "family": ["Иванов", "mueller", "smiths", "o'brien"],
    "given": ["Мар", "jose", "björn", "q"],  # noqa: RUF001
    "family:exact": ["Müller", "muller", "Smith", "Иванова", "иванова"],
    "family:contains": ["ll", "ith", "ванов", "ÜLL"],
    "given:contains": ["ria", "ÖRN"],
    "name:contains": ["son"],
    "address": ["Berlin", "101", "ул", "тверская", "bayern", "de"],
    "address:contains": ["тверская", "erlin"],
    "address:exact": ["München", "Munchen"],
    "address-city": ["mun", "санкт", "San José", "san jose"],
    "address-country": ["de", "RU,SE"],
    "address-state": ["il"],
    "address-postalcode": ["101", "10115"],
}.items():
    code, _, modifier = param.partition(":")
    for v in values:
        case("Patient", f"{param}={v}",
             lambda r, d, c=code, m=modifier, v=v: o.string_match(v, PATIENT_STRINGS[c](r),
                                                                   m or None),
             empty=(v in ("zzz-nobody", "тверская") and not modifier)
             or (v in ("muller", "иванова", "Munchen") and modifier == "exact"))

for v in ["charite", "CHARITÉ \N{EN DASH} UNIV", "клиника", "клиника №1", "acme,gesund",
          "universitäts"]:
    case("Organization", f"name={v}",
         lambda r, d, v=v: o.string_match(v, [r.get("name", "")]),
         empty=v == "universitäts")
case("Organization", "name:contains=universitäts",
     lambda r, d: o.string_match("universitäts", [r.get("name", "")], "contains"))
case("Organization", "address-city=berlin",
     lambda r, d: o.string_match("berlin", o.addresses(r, ["city"])))
for v in ["weiss", "WEISS", "петр", "house"]:
    case("Practitioner", f"family={v}",
         lambda r, d, v=v: o.string_match(v, o.names(r, ["family"])))
for q in ["value-string=patient pays", "value-string=größe", "value-string:contains=normal",
          "value-string:exact=Patient pays 5$ per visit", "value-string=current"]:
    code, _, rest = q.partition("=")
    modifier = code.partition(":")[2] or None
    case("Observation", q,
         lambda r, d, v=rest, m=modifier: o.string_match(
             v, [r.get("valueString") or (r.get("valueCodeableConcept") or {}).get("text") or ""],
             m))

# ---------------------------------------------------------------------------- token

PATIENT_TOKENS: dict[str, Callable[[Resource], list[o.Token]]] = {
    "gender": lambda r: o.plain(r.get("gender")),
    "active": lambda r: o.plain(r.get("active")),
    "identifier": o.identifiers,
    "deceased": lambda r: o.plain("deceasedDateTime" in r or r.get("deceasedBoolean") is True),
    "phone": lambda r: o.plain(*(t["value"] for t in r.get("telecom", [])
                                 if t.get("system") == "phone")),
    "email": lambda r: o.plain(*(t["value"] for t in r.get("telecom", [])
                                 if t.get("system") == "email")),
    "telecom": lambda r: o.plain(*(t["value"] for t in r.get("telecom", []))),
    "address-use": lambda r: o.plain(*(a.get("use") for a in r.get("address", []))),
    "_tag": lambda r: [(t.get("system"), t.get("code"), None)
                       for t in r.get("meta", {}).get("tag", [])],
    "_security": lambda r: [(t.get("system"), t.get("code"), None)
                            for t in r.get("meta", {}).get("security", [])],
}

for param, values in {
    "gender": ["male", "female", "male,female", "other", "unknown"],
    "gender:not": ["male", "male,female"],
    "identifier": ["MRN-1001", f"{MRN}|MRN-1001", f"{OTHER_IDS}|MRN-1001", f"{MRN}|", "|X-1",
                   "X-1", f"{ODD_IDS}|A\\|B", "A-123", f"{MRN}|MRN-1002,{MRN}|MRN-1003"],
    "active": ["true", "false"],
    "active:not": ["true"],
    "deceased": ["true", "false"],
    "phone": ["555-0100", "+7 495 123-45-67", "maria@example.ru"],
    "email": ["maria@example.ru", "john.smith@example.com,555-0100"],
    "telecom": ["555-0199", "maria@example.ru"],
    "address-use": ["home", "work"],
    "_tag": [f"{TAGS}|vip", "research", f"{TAGS}|", f"{TAGS}|vip,{TAGS}|research"],
    "_tag:not": [f"{TAGS}|vip"],
    "_security": [f"{CONFIDENTIALITY}|R"],
}.items():
    code, _, modifier = param.partition(":")
    for v in values:
        case("Patient", f"{param}={v}",
             lambda r, d, c=code, m=modifier, v=v: o.token_match(v, PATIENT_TOKENS[c](r),
                                                                  m or None),
             empty=v == "maria@example.ru" and code == "phone")

for param, key in {"gender": "gender", "active": "active", "birthdate": "birthDate",
                   "name": "name", "address": "address", "deceased": None}.items():
    for flag in ("true", "false"):
        def missing(r: Resource, d: Loaded, key: str | None = key, flag: str = flag) -> bool:
            absent = key is not None and key not in r
            return absent == (flag == "true")

        case("Patient", f"{param}:missing={flag}", missing, empty=key is None and flag == "true")

OBS_TOKENS: dict[str, Callable[[Resource], list[o.Token]]] = {
    "code": lambda r: o.codings(r["code"]),
    "status": lambda r: o.plain(r.get("status")),
    "category": lambda r: o.concepts(r.get("category", [])),
    "component-code": lambda r: o.concepts(c["code"] for c in r.get("component", [])),
    "combo-code": lambda r: o.concepts([r["code"], *(c["code"] for c in r.get("component", []))]),
    "value-concept": lambda r: o.codings(r.get("valueCodeableConcept")),
}
for param, values in {
    "code": ["8867-4", f"{LOINC}|8867-4", f"{LOCAL}|8867-4", f"{LOINC}|", "|8867-4",
             "8867-4,29463-7", f"{LOINC}|29463-7,{LOCAL}|8867-4"],
    "code:text": ["heart", "BODY", "blood pressure", "pulse"],
    "code:not": [f"{LOINC}|8867-4", "8867-4,29463-7"],
    "status": ["final", "final,amended", "entered-in-error"],
    "status:not": ["final"],
    "category": ["vital-signs", f"{OBS_CATEGORY}|laboratory"],
    "component-code": ["8480-6", f"{LOINC}|8462-4"],
    "combo-code": ["8480-6", "8867-4,85354-9"],
    "value-concept": [f"{SNOMED}|449868002", "266919005"],
    "value-concept:text": ["current", "never"],
}.items():
    code, _, modifier = param.partition(":")
    for v in values:
        case("Observation", f"{param}={v}",
             lambda r, d, c=code, m=modifier, v=v: o.token_match(v, OBS_TOKENS[c](r), m or None),
             empty=v == "|8867-4")
for param, key in {"category": "category", "encounter": "encounter", "subject": "subject",
                   "value-quantity": "valueQuantity", "component-code": "component"}.items():
    case("Observation", f"{param}:missing=true", lambda r, d, k=key: k not in r)
    case("Observation", f"{param}:missing=false", lambda r, d, k=key: k in r)

COND_TOKENS: dict[str, Callable[[Resource], list[o.Token]]] = {
    "code": lambda r: o.codings(r.get("code")),
    "category": lambda r: o.concepts(r.get("category", [])),
    "clinical-status": lambda r: o.codings(r.get("clinicalStatus")),
}
for param, values in {
    "code": ["I10", f"{ICD10}|E11.9", "E11.9", "44054006", f"{SNOMED}|44054006,{ICD10}|J45.909",
             f"{ICD10}|"],
    "code:text": ["diabetes", "asthma, unsp", "essential"],
    "code:not": [f"{ICD10}|I10"],
    "category": ["encounter-diagnosis", "problem-list-item"],
    "clinical-status": ["active", "resolved"],
}.items():
    code, _, modifier = param.partition(":")
    for v in values:
        case("Condition", f"{param}={v}",
             lambda r, d, c=code, m=modifier, v=v: o.token_match(v, COND_TOKENS[c](r), m or None))
case("Condition", "clinical-status:missing=true", lambda r, d: "clinicalStatus" not in r)

for q in ["class=AMB", "class=http://terminology.hl7.org/CodeSystem/v3-ActCode|IMP",
          "status=finished", "status:not=finished", "status=planned,cancelled"]:
    code, _, v = q.partition("=")
    name, _, modifier = code.partition(":")
    case("Encounter", q,
         lambda r, d, n=name, m=modifier, v=v: o.token_match(
             v, [(r["class"]["system"], r["class"]["code"], None)] if n == "class"
             else o.plain(r["status"]), m or None))
for q in [f"code={RXNORM}|860975", "code:text=metformin", "code:text=lisinopril 10",
          "status=active", "status:not=active"]:
    code, _, v = q.partition("=")
    modifier = code.partition(":")[2] or None
    by_status = q.startswith("status")
    case("MedicationRequest", q,
         lambda r, d, v=v, m=modifier, s=by_status: o.token_match(
             v, o.plain(r["status"]) if s
             else o.codings(r["medicationCodeableConcept"]), m))

# ---------------------------------------------------------------------------- date

ALL_PREFIXES = o.PREFIXES
for v, prefixes in {
    "1980": ALL_PREFIXES, "1980-04": ALL_PREFIXES, "1980-04-12": ALL_PREFIXES,
    "1980-04-12T10:00:00Z": ("eq", "ne", "gt", "lt", "ap"), "1999-12-31T23:00:00-05:00":
    ("eq", "ge", "le", "sa"), "2000": ("lt", "ge"),
}.items():
    for prefix in prefixes:
        value = v if prefix == "eq" and v == "1980" else f"{prefix}{v}"
        case("Patient", f"birthdate={value}",
             lambda r, d, value=value: o.date_match(value, o.date_ranges(r.get("birthDate"))),
             empty=None)
case("Patient", "death-date=2020-06-01",
     lambda r, d: o.date_match("2020-06-01", o.date_ranges(r.get("deceasedDateTime"))))
case("Patient", "death-date=2020-06-01T08:00:00Z",
     lambda r, d: o.date_match("2020-06-01T08:00:00Z", o.date_ranges(r.get("deceasedDateTime"))))
case("Patient", "birthdate=1980-04-12,1962",
     lambda r, d: o.date_match("1980-04-12,1962", o.date_ranges(r.get("birthDate"))))


def obs_dates(r: Resource) -> list[o.Range]:
    return o.date_ranges(r.get("effectiveDateTime"), r.get("effectiveInstant"),
                         r.get("effectivePeriod"))


for v, prefixes in {
    "2023-01-10": ALL_PREFIXES,
    "2023-01-10T09:15:00+01:00": ("eq", "ge", "lt", "ne"),
    "2023-01-10T08:15:00Z": ("eq",),
    "2023-01-10T09:15+01:00": ("eq", "gt"),
    "2022-12-31T23:00:00Z": ("gt", "lt", "ge", "le"),
    "2023-01": ("eq", "ne", "sa", "eb"),
    "2019-05-20": ("eq", "sa", "eb", "ap"),
    "2019-05-20T12:15:00Z": ("eq", "ge"),
    "2020-02-28T12:30:45.123Z": ("eq", "ge", "gt"),
    "2020-02-29": ("eq",),
    "2022": ("eq", "ap"),
}.items():
    for prefix in prefixes:
        value = f"{prefix}{v}"
        case("Observation", f"date={value}",
             lambda r, d, value=value: o.date_match(value, obs_dates(r)), empty=None)

for v, prefixes in {
    "2023-01-10": ALL_PREFIXES,
    "2023-01-01": ("eq", "ne", "ge", "le"),
    "2022-12-31": ("eq", "gt", "sa"),
    "2024": ("ge", "eq", "gt"),
    "2018-03-01": ("le", "eb", "lt"),
    "2030": ("le", "lt", "ge", "gt"),
    "2019-05-15": ("eq", "ap"),
}.items():
    for prefix in prefixes:
        value = f"{prefix}{v}"
        case("Encounter", f"date={value}",
             lambda r, d, value=value: o.date_match(value, o.date_ranges(r.get("period"))),
             empty=None)

for q in ["onset-date=2015", "onset-date=2015-06-15", "onset-date=lt2012",
          "onset-date=ge2014-09-01T00:00:00Z", "onset-date=2015-01,2018", "onset-date=2011",
          "recorded-date=2015-07-01", "recorded-date=gt2015-07-01T07:00:00Z",
          "onset-date:missing=true"]:
    name, _, v = q.partition("=")
    if name.endswith(":missing"):
        case("Condition", q, lambda r, d: not o.date_ranges(r.get("onsetDateTime"),
                                                            r.get("onsetPeriod")))
        continue
    key = "recordedDate" if name == "recorded-date" else None
    case("Condition", q,
         lambda r, d, v=v, key=key: o.date_match(
             v, o.date_ranges(r.get(key)) if key
             else o.date_ranges(r.get("onsetDateTime"), r.get("onsetPeriod"))),
         empty=v in ("2015-06-15", "2011"))
for v in ["2018-02-03T10:00:00Z", "2021-01-15", "2021", "ap2015-07-01", "le2015-07-01"]:
    case("MedicationRequest", f"authoredon={v}",
         lambda r, d, v=v: o.date_match(v, o.date_ranges(r.get("authoredOn"))),
         empty=v == "2021-01-15")

# ---------------------------------------------------------------------------- number


def probabilities(r: Resource) -> list[tuple[Any, Any]]:
    found = []
    for p in r.get("prediction", []):
        if "probabilityDecimal" in p:
            value = o.decimal(p["probabilityDecimal"])
            found.append((value, value))
        elif "probabilityRange" in p:
            rng = p["probabilityRange"]
            found.append((o.decimal(rng["low"]["value"]), o.decimal(rng["high"]["value"])))
    return found


for v in ["0.25", "0.3", "gt0.5", "lt0.1", "ge1", "le0.02", "ap0.25", "ne0.25", "1e0",
          "sa0.2", "eb0.29", "0.8,0.02", "0.250", "gt0.35", "lt0.35", "ge0.4"]:
    case("RiskAssessment", f"probability={v}",
         lambda r, d, v=v: o.number_match(v, probabilities(r)), empty=False)

# ---------------------------------------------------------------------------- quantity

for v in ["72", f"72|{UCUM}|/min", "72||/min", "72||beats/minute", f"80.5|{UCUM}|kg",
          f"gt80|{UCUM}|kg", "lt100", "le60", "ge101.5", "ne72", "ap100", "180||lbs",
          f"80500|{UCUM}|g", f"ge0|{UCUM}|", "8.05e1", f"13.5|{UCUM}|g/dL", "sa100", "eb60",
          "72,88", "0.08", f"80.5|{UCUM}|g", "101.50", "gt99.5"]:
    case("Observation", f"value-quantity={v}",
         lambda r, d, v=v: o.quantity_match(v, o.quantities(r.get("valueQuantity"))),
         empty=v == f"80.5|{UCUM}|g")
for v in ["gt140", f"lt80|{UCUM}|mm[Hg]", "91", "ge95||mmHg"]:
    case("Observation", f"component-value-quantity={v}",
         lambda r, d, v=v: o.quantity_match(
             v, o.quantities(*(c.get("valueQuantity") for c in r.get("component", [])))))
for v in ["lt80", "95"]:
    case("Observation", f"combo-value-quantity={v}",
         lambda r, d, v=v: o.quantity_match(
             v, o.quantities(r.get("valueQuantity"),
                             *(c.get("valueQuantity") for c in r.get("component", [])))))

# ---------------------------------------------------------------------------- composite


def composite_quantity(value: str, pairs: list[tuple[Any, Any]]) -> bool:
    code_part, quantity_part = o.split_unescaped(value, "$")
    return any(
        o.token_match(code_part, o.codings(code)) and o.quantity_match(quantity_part,
                                                                     o.quantities(quantity))
        for code, quantity in pairs
    )


for v in [f"{LOINC}|8867-4$gt80", "8867-4$72", f"{LOINC}|29463-7$lt50", f"{LOCAL}|8867-4$72"]:
    case("Observation", f"code-value-quantity={v}",
         lambda r, d, v=v: composite_quantity(v, [(r["code"], r.get("valueQuantity"))]))
for v in [f"{LOINC}|8480-6$gt130", "8462-4$gt90", "8480-6$lt100", f"{LOINC}|8462-4$76"]:
    case("Observation", f"component-code-value-quantity={v}",
         lambda r, d, v=v: composite_quantity(
             v, [(c["code"], c.get("valueQuantity")) for c in r.get("component", [])]),
         empty=v == "8480-6$lt100")
for v in ["8480-6$gt125", f"{LOINC}|8867-4$lt70"]:
    case("Observation", f"combo-code-value-quantity={v}",
         lambda r, d, v=v: composite_quantity(
             v, [(r["code"], r.get("valueQuantity")),
                 *((c["code"], c.get("valueQuantity")) for c in r.get("component", []))]))
# A composite has no sort key: :missing asks whether it has an instance.
for flag in ("true", "false"):
    case("Observation", f"code-value-quantity:missing={flag}",
         lambda r, d, f=flag: ("valueQuantity" in r) != (f == "true"))
    case("Observation", f"component-code-value-quantity:missing={flag}",
         lambda r, d, f=flag: any("valueQuantity" in c for c in r.get("component", []))
         != (f == "true"))
for v in ["8251-1$patient", f"{LOINC}|8251-1$Patient pays 5\\$", "8251-1$5"]:
    case("Observation", f"code-value-string={v}",
         lambda r, d, v=v: o.token_match(o.split_unescaped(v, "$")[0], o.codings(r["code"]))
         and o.string_match(o.split_unescaped(v, "$")[1], [r.get("valueString", "")]),
         empty=v.endswith("$5"))
for v in [f"72166-2${SNOMED}|449868002", "72166-2$266919005,8867-4$266919005"]:
    case("Observation", f"code-value-concept={v}",
         lambda r, d, v=v: any(
             o.token_match(o.split_unescaped(alt, "$")[0], o.codings(r["code"]))
             and o.token_match(o.split_unescaped(alt, "$")[1],
                               o.codings(r.get("valueCodeableConcept")))
             for alt in o.or_values(v)))

# ---------------------------------------------------------------------------- reference

for q in ["subject=Patient/pat-ivanova", "subject=pat-muller",
          f"subject={BASE}/Patient/pat-muller", "subject=Patient/pat-smith",
          "subject=Patient/pat-ivanova,Patient/pat-smith", "subject:Group=grp-1",
          "subject=Group/grp-1", "subject:Patient=pat-smith", "subject:Patient=grp-1",
          f"subject={FOREIGN_PATIENT}", "encounter=enc-1", "encounter=Encounter/enc-3",
          f"encounter={BASE}/Encounter/enc-4", "performer=Practitioner/prac-petrov",
          "performer:Organization=org-clinic-moscow", "performer=prac-petrov"]:
    name, _, v = q.partition("=")
    code, _, type_modifier = name.partition(":")
    key = {"subject": "subject", "encounter": "encounter", "performer": "performer"}[code]
    case("Observation", q,
         lambda r, d, v=v, k=key, t=type_modifier: o.reference_match(
             v, refs(r, k), BASE, t or None),
         empty=q == "subject:Patient=grp-1")
for v in ["pat-ivanova", "Patient/pat-muller", f"{BASE}/Patient/pat-smith", "grp-1"]:
    case("Observation", f"patient={v}",
         lambda r, d, v=v: o.reference_match(v, patient_ref(r), BASE), empty=v == "grp-1")
case("Observation", f"subject:identifier={MRN}|MRN-1001",
     lambda r, d: o.token_match(f"{MRN}|MRN-1001",
                                [(x.get("system"), x.get("value"), None) for x in
                                 [(r.get("subject") or {}).get("identifier") or {}]]))
for q in ["organization=org-charite", "organization=Organization/org-acme",
          "general-practitioner=prac-house", "general-practitioner:Practitioner=prac-weiss",
          "link=pat-ivanova", "organization:missing=true", "general-practitioner:missing=false"]:
    name, _, v = q.partition("=")
    code, _, modifier = name.partition(":")
    key = {"organization": "managingOrganization", "general-practitioner": "generalPractitioner",
           "link": None}[code]

    def patient_refs(r: Resource, key: str | None = key) -> list[dict[str, Any]]:
        if key is None:
            return [link_.get("other", {}) for link_ in r.get("link", [])]
        return refs(r, key)

    if modifier == "missing":
        case("Patient", q, lambda r, d, f=patient_refs, v=v: (not f(r)) == (v == "true"))
    else:
        case("Patient", q, lambda r, d, f=patient_refs, v=v, m=modifier:
             o.reference_match(v, f(r), BASE, m or None))
for q in ["requester=Practitioner/prac-petrov", "requester:Organization=org-acme",
          "requester=prac-house", "requester:missing=true", "subject=pat-ivanova"]:
    name, _, v = q.partition("=")
    code, _, modifier = name.partition(":")
    if modifier == "missing":
        case("MedicationRequest", q, lambda r, d: "requester" not in r)
    else:
        case("MedicationRequest", q, lambda r, d, v=v, c=code, m=modifier:
             o.reference_match(v, refs(r, c), BASE, m or None))
for q in ["service-provider=org-charite", "practitioner=prac-weiss",
          "participant=Practitioner/prac-petrov", "patient=pat-smith"]:
    code, _, v = q.partition("=")

    def enc_refs(r: Resource, c: str = code) -> list[dict[str, Any]]:
        if c == "service-provider":
            return refs(r, "serviceProvider")
        if c == "patient":
            return refs(r, "subject")
        return [p.get("individual", {}) for p in r.get("participant", [])]

    case("Encounter", q, lambda r, d, f=enc_refs, v=v: o.reference_match(v, f(r), BASE))
case("Organization", "partof=org-root",
     lambda r, d: o.reference_match("org-root", refs(r, "partOf"), BASE))
case("Condition", "asserter=Practitioner/prac-petrov",
     lambda r, d: o.reference_match("Practitioner/prac-petrov", refs(r, "asserter"), BASE))

# ---------------------------------------------------------------------------- uri, _id

for q in ["url=http://example.org/fhir/ValueSet/a", "url=http://example.org/fhir",
          "url:below=http://example.org/fhir/", "url:above=http://example.org/fhir/ValueSet/a",
          "url:below=http://other.org"]:
    name, _, v = q.partition("=")
    mode = name.partition(":")[2]

    def uri_match(r: Resource, d: Loaded, v: str = v, mode: str = mode) -> bool:
        url = r.get("url", "")
        if mode == "below":
            return url.startswith(v)
        if mode == "above":
            return v.startswith(url)
        return url == v

    case("ValueSet", q, uri_match, empty=q == "url=http://example.org/fhir")
case("Patient", f"_profile={SPECIAL_PROFILE}",
     lambda r, d: SPECIAL_PROFILE in r.get("meta", {}).get("profile", []))
case("Patient", "_id=pat-smith,pat-olund,nope", lambda r, d: r["id"] in ("pat-smith", "pat-olund"))
case("Patient", "_id=pat-smith&_id=pat-olund", lambda r, d: False, empty=True)

# ---------------------------------------------------------------------------- AND / OR, escaping

case("Patient", "family=Иванова&given=Мария",
     lambda r, d: o.string_match("Иванова", o.names(r, ["family"]))
     and o.string_match("Мария", o.names(r, ["given"])))
case("Patient", "name=smith&name=jane",
     lambda r, d: o.string_match("smith", o.names(r)) and o.string_match("jane", o.names(r)))
case("Patient", "birthdate=ge1980&birthdate=lt1990",
     lambda r, d: o.date_match("ge1980", o.date_ranges(r.get("birthDate")))
     and o.date_match("lt1990", o.date_ranges(r.get("birthDate"))))
case("Patient", "name=иван,müller&gender=male",
     lambda r, d: o.string_match("иван,müller", o.names(r)) and r.get("gender") == "male")
case("Observation", "code=8867-4&value-quantity=gt70&date=ge2023",
     lambda r, d: o.token_match("8867-4", o.codings(r["code"]))
     and o.quantity_match("gt70", o.quantities(r.get("valueQuantity")))
     and o.date_match("ge2023", obs_dates(r)))
for v in ["Comma\\, Inc", "Comma\\,X", "Comma, Inc", "Back\\\\slash", "Back\\slash", "a\\|b",
          "\\$dollar"]:
    case("Patient", f"name={v}", lambda r, d, v=v: o.string_match(v, o.names(r)),
         empty=v == "Comma\\,X")
for v in ["ул. Тверская\\, 1", "ул. Тверская\\, 2"]:
    case("Patient", f"address={v}", lambda r, d, v=v: o.string_match(v, o.addresses(r)),
         empty=v.endswith("2"))

# ---------------------------------------------------------------------------- injection-looking

for q in ['family={"$gt": ""}', "family=' OR 1=1 --", "family=%", "family=_", "given=under_",
          "family=100%", "family=.*", "name=\\\\", "family=Smith' --", "family=Smith%",
          'identifier={"$ne": null}', "identifier=%|%", "_id=' OR '1'='1",
          "gender=male' OR '1'='1", "address-city=Москва\"; DROP TABLE resources; --",
          "family=$where", "family=*", "name=[a-z]"]:
    name, _, v = q.partition("=")
    if name == "_id":
        case("Patient", q, lambda r, d, v=v: r["id"] == v, empty=True)
    elif name in ("identifier", "gender"):
        case("Patient", q, lambda r, d, n=name, v=v: o.token_match(v, PATIENT_TOKENS[n](r)),
             empty=True)
    else:
        case("Patient", q, lambda r, d, n=name, v=v: o.string_match(v, PATIENT_STRINGS[n](r)),
             empty=v not in ("under_", "100%"))
case("Observation", "value-string=%", lambda r, d: False, empty=True)
case("Observation", "code=%", lambda r, d: False, empty=True)

# ---------------------------------------------------------------------------- chains


def chain(d: Loaded, ref: dict[str, Any] | None, test: Callable[[Resource], bool],
          type_: str | None = None) -> bool:
    target = resolve(d, ref)
    return target is not None and type_ in (None, target["resourceType"]) and test(target)


def any_chain(d: Loaded, ref_list: list[dict[str, Any]], test: Callable[[Resource], bool],
              type_: str | None = None) -> bool:
    return any(chain(d, ref, test, type_) for ref in ref_list)


def names_match(v: str, keys: tuple[str, ...] = o.NAME_PARTS) -> Callable[[Resource], bool]:
    return lambda t: o.string_match(v, o.names(t, keys))


def org_name(v: str) -> Callable[[Resource], bool]:
    return lambda t: o.string_match(v, [t.get("name", "")])


case("Observation", "subject:Patient.name=иван",
     lambda r, d: any_chain(d, refs(r, "subject"), names_match("иван"), "Patient"))
case("Observation", "patient.name=müller",
     lambda r, d: any_chain(d, patient_ref(r), names_match("müller")))
case("Observation", "patient.organization.name=charite",
     lambda r, d: any_chain(d, patient_ref(r), lambda p: chain(
         d, p.get("managingOrganization"), org_name("charite"))))
case("Observation", "patient.organization.partof.name=gesund",
     lambda r, d: any_chain(d, patient_ref(r), lambda p: chain(
         d, p.get("managingOrganization"), lambda org: chain(
             d, org.get("partOf"), org_name("gesund")))))
case("Observation", "subject:Patient.organization:Organization.name=клиника",
     lambda r, d: any_chain(d, refs(r, "subject"), lambda p: chain(
         d, p.get("managingOrganization"), org_name("клиника")), "Patient"))
case("Observation", "subject:Patient.birthdate=lt1980",
     lambda r, d: any_chain(d, refs(r, "subject"),
                            lambda p: o.date_match("lt1980", o.date_ranges(p.get("birthDate"))),
                            "Patient"))
case("Observation", "encounter.status=finished",
     lambda r, d: any_chain(d, refs(r, "encounter"), lambda e: e["status"] == "finished"))
case("Observation", "encounter:Encounter.service-provider.name=acme",
     lambda r, d: any_chain(d, refs(r, "encounter"), lambda e: chain(
         d, e.get("serviceProvider"), org_name("acme"))))
case("Observation", "subject:Patient.name=иван&code=8867-4",
     lambda r, d: any_chain(d, refs(r, "subject"), names_match("иван"), "Patient")
     and o.token_match("8867-4", o.codings(r["code"])))
case("Observation", "subject:Group.type=person",
     lambda r, d: any_chain(d, refs(r, "subject"), lambda g: g.get("type") == "person", "Group"))
case("Encounter", "service-provider.partof.name=gesundheitsverbund",
     lambda r, d: chain(d, r.get("serviceProvider"), lambda org: chain(
         d, org.get("partOf"), org_name("gesundheitsverbund"))))
case("MedicationRequest", "requester:Practitioner.family=house",
     lambda r, d: chain(d, r.get("requester"), names_match("house", ("family",)), "Practitioner"))
case("MedicationRequest", "requester:Organization.name=acme",
     lambda r, d: chain(d, r.get("requester"), org_name("acme"), "Organization"))
case("Condition", "subject:Patient.gender=female",
     lambda r, d: chain(d, r.get("subject"), lambda p: p.get("gender") == "female", "Patient"))
case("Condition", f"patient.identifier={MRN}|MRN-1001",
     lambda r, d: chain(d, r.get("subject"),
                        lambda p: o.token_match(f"{MRN}|MRN-1001", o.identifiers(p))))
case("Patient", "organization.name=charite,acme",
     lambda r, d: chain(d, r.get("managingOrganization"), org_name("charite,acme")))
case("Patient", "general-practitioner:Practitioner.name=петр",
     lambda r, d: any_chain(d, refs(r, "generalPractitioner"), names_match("петр")))

# ---------------------------------------------------------------------------- reverse chains


def has(d: Loaded, target: Resource, source_type: str, key: str,
        test: Callable[[Resource], bool], only: str | None = None) -> bool:
    return any(test(s) for s in referrers(d, source_type, key, target, only))


def obs_code(v: str) -> Callable[[Resource], bool]:
    return lambda s: o.token_match(v, o.codings(s["code"]))


case("Patient", "_has:Observation:patient:code=8867-4",
     lambda r, d: has(d, r, "Observation", "subject", obs_code("8867-4"), "Patient"))
case("Patient", "_has:Observation:subject:value-quantity=gt100",
     lambda r, d: has(d, r, "Observation", "subject", lambda s: o.quantity_match(
         "gt100", o.quantities(s.get("valueQuantity")))))
case("Patient", "_has:Condition:patient:code=I10",
     lambda r, d: has(d, r, "Condition", "subject", obs_code("I10")))
case("Patient", "_has:MedicationRequest:subject:requester=Practitioner/prac-petrov",
     lambda r, d: has(d, r, "MedicationRequest", "subject", lambda s: o.reference_match(
         "Practitioner/prac-petrov", refs(s, "requester"), BASE)))
case("Practitioner", "_has:MedicationRequest:requester:status=stopped",
     lambda r, d: has(d, r, "MedicationRequest", "requester", lambda s: s["status"] == "stopped"))
case("Organization", "_has:Patient:organization:gender=male",
     lambda r, d: has(d, r, "Patient", "managingOrganization",
                      lambda s: s.get("gender") == "male"))
case("Patient", "_has:Encounter:patient:_has:Observation:encounter:code=8867-4",
     lambda r, d: has(d, r, "Encounter", "subject", lambda e: has(
         d, e, "Observation", "encounter", obs_code("8867-4"))))
case("Patient", "_has:Observation:patient:code=8867-4&_has:Condition:patient:code=I10",
     lambda r, d: has(d, r, "Observation", "subject", obs_code("8867-4"), "Patient")
     and has(d, r, "Condition", "subject", obs_code("I10")))
case("Encounter", "_has:Observation:encounter:status=amended",
     lambda r, d: has(d, r, "Observation", "encounter", lambda s: s["status"] == "amended"))
case("Patient", "_has:Observation:patient:code=8867-4,29463-7",
     lambda r, d: has(d, r, "Observation", "subject", obs_code("8867-4,29463-7"), "Patient"))
case("Organization", "_has:Patient:organization:_has:Observation:patient:code=85354-9",
     lambda r, d: has(d, r, "Patient", "managingOrganization", lambda p: has(
         d, p, "Observation", "subject", obs_code("85354-9"), "Patient")))

# Sanity of the case list itself: every case has a distinct query, and the generated date grid
# (cases allowed to select nothing) is not vacuous: most of its cases select something.
assert len({str(c) for c in CASES}) == len(CASES), "duplicate search cases"
_GRID = [c for c in CASES if c.empty is None]
_DATA = build_dataset()
_SELECTING = [
    c for c in _GRID if any(c.expect(r, None) for r in _DATA  # type: ignore[arg-type]
                            if r["resourceType"] == c.resource_type)
]
assert len(_SELECTING) >= 0.7 * len(_GRID), f"{len(_SELECTING)} of {len(_GRID)} select anything"


@pytest.mark.parametrize("spec", CASES, ids=str)
async def test_search_matches_oracle(loaded: Loaded, spec: Case) -> None:
    pages = await search_pages(
        loaded.client, f"/{spec.resource_type}", [*spec.params, ("_count", BIG)]
    )
    assert len(pages) == 1 and link(pages[0], "next") is None
    bundle = pages[0]
    got = [e["resource"]["id"] for e in bundle.get("entry", [])
           if e["search"]["mode"] == "match"]
    outcome = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert not outcome, f"{spec}: parameters were ignored: {outcome}"
    expected = loaded.ids(spec.resource_type, lambda r: spec.expect(r, loaded))
    assert len(got) == len(set(got)), f"{spec}: repeated entries {got}"
    assert set(got) == expected, (
        f"{spec}: unexpected {sorted(set(got) - expected)}, missing {sorted(expected - set(got))}"
    )
    assert bundle["total"] == len(expected)
    # An oracle that selects nothing proves little; only cases meant to be empty may be.
    if spec.empty is not None:
        assert bool(expected) != spec.empty, f"{spec}: oracle selected {sorted(expected)}"

