"""Search parameter types: extraction, value parsing and sort keys, module by module."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from fhir_server.fhirtime import format_instant
from fhir_server.search import types
from fhir_server.search.model import (
    ANY,
    MAX_INSTANT,
    MIN_INSTANT,
    Composite,
    CompositeEntry,
    DateEntry,
    Not,
    NumberEntry,
    Or,
    QuantityEntry,
    RangeMatch,
    ReferenceEntry,
    ReferenceMatch,
    StringEntry,
    StringMatch,
    TokenEntry,
    TokenMatch,
    UriEntry,
    UriMatch,
    ValueSetMatch,
    normalize,
)
from fhir_server.search.types import (
    composite,
    date,
    number,
    quantity,
    reference,
    string,
    token,
    uri,
)
from fhir_server.search.types.common import (
    MAX_NUMBER,
    MIN_NUMBER,
    ParseContext,
    split_escaped,
    unescape,
)


@dataclass(frozen=True, slots=True)
class P:
    """Stand-in for registry.SearchParam (same field names)."""

    code: str
    type: str
    base: str = "Observation"
    expression: str = ""
    url: str = ""
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class V:
    """Stand-in for fhirpath.Value."""

    value: Any
    type: str


NAME = P("name", "string")
CODE = P("code", "token")
DATE = P("date", "date")
PROBABILITY = P("probability", "number")
VALUE_QUANTITY = P("value-quantity", "quantity")
URL = P("url", "uri")
SUBJECT = P("subject", "reference", targets=("Patient", "Group"))
PATIENT = P("patient", "reference", targets=("Patient",))


def instant(text: str) -> str:
    return format_instant(datetime.fromisoformat(text))


# ---------------------------------------------------------------------------- escaping


def test_split_escaped_keeps_escapes_and_splits_only_on_bare_separators() -> None:
    assert split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert split_escaped(r"a\\,b", ",") == [r"a\\", "b"]  # escaped backslash, then a separator
    assert split_escaped("a,,b", ",") == ["a", "", "b"]
    assert split_escaped("trailing\\", ",") == ["trailing\\"]


def test_unescape_resolves_only_the_four_escapes() -> None:
    assert unescape(r"a\,b\$c\|d\\e") == "a,b$c|d\\e"
    assert unescape(r"C:\path\n") == r"C:\path\n"


# ---------------------------------------------------------------------------- string


def test_string_extracts_plain_values_with_normalised_and_exact_forms() -> None:
    assert string.extract("Müller", "string") == [StringEntry("muller", "Müller")]
    assert string.extract("# Notes", "markdown") == [StringEntry("# notes", "# Notes")]
    assert string.extract("   ", "string") == []
    assert string.extract(12, "integer") == []


def test_string_extracts_every_human_name_part() -> None:
    name = {
        "family": "Иванова",
        "given": ["Анна", "Мария"],
        "prefix": ["Dr."],
        "suffix": ["PhD"],
        "text": "Dr. Анна Мария Иванова",
        "use": "official",
    }
    exact = [e.exact for e in string.extract(name, "HumanName")]
    assert exact == ["Иванова", "Анна", "Мария", "Dr.", "PhD", "Dr. Анна Мария Иванова"]


def test_string_extracts_every_address_part_once() -> None:
    address = {
        "line": ["1 Rue de l'Église", "Bât. B"],
        "city": "Genève",
        "district": "GE",
        "state": "GE",
        "postalCode": "1201",
        "country": "CH",
        "text": "1 Rue de l'Église, Genève",
        "use": "home",
    }
    entries = string.extract(address, "Address")
    assert [e.exact for e in entries] == [
        "1 Rue de l'Église",
        "Bât. B",
        "Genève",
        "GE",
        "1201",
        "CH",
        "1 Rue de l'Église, Genève",
    ]
    assert StringEntry("geneve", "Genève") in entries


@pytest.mark.parametrize(
    ("stored", "search"),
    [
        ("Иванова", "иван"),
        ("Müller", "muller"),
        ("Йорк", "ЙО"),
        ("ÅSA", "asa"),
        ("Straße", "STRASSE"),
    ],
)
def test_string_prefix_search_is_case_and_accent_insensitive(stored: str, search: str) -> None:
    [entry] = string.extract(stored, "string")
    match = string.parse(NAME, None, search)
    assert isinstance(match, StringMatch) and match.mode == "prefix"
    assert entry.norm.startswith(match.value)


def test_string_modifiers() -> None:
    assert string.parse(NAME, "exact", "Müller") == StringMatch("name", "Müller", "exact")
    assert string.parse(NAME, "contains", "ÜLL") == StringMatch("name", "ull", "contains")
    assert string.parse(NAME, None, r"a\,b") == StringMatch("name", "a,b")


@pytest.mark.parametrize(("modifier", "value"), [("text", "x"), ("below", "x"), (None, "")])
def test_string_rejects_bad_modifiers_and_empty_values(modifier: str | None, value: str) -> None:
    with pytest.raises(ValueError):
        string.parse(NAME, modifier, value)


def test_string_sort_key_is_smallest_ascending_largest_descending() -> None:
    entries = string.extract({"family": "Zorn", "given": ["Ängel"]}, "HumanName")
    assert string.sort_key(entries, descending=False) == "angel"
    assert string.sort_key(entries, descending=True) == "zorn"
    assert string.sort_key([], descending=False) is None


# ---------------------------------------------------------------------------- token


def test_token_extracts_primitives() -> None:
    assert token.extract("male", "code") == [TokenEntry(None, "male")]
    assert token.extract(True, "boolean") == [TokenEntry(None, "true")]
    assert token.extract(False, "boolean") == [TokenEntry(None, "false")]
    assert token.extract("", "string") == []


def test_token_extracts_coding_and_codeable_concept_with_text() -> None:
    concept = {
        "coding": [
            {"system": "http://loinc.org", "code": "8480-6", "display": "Systolic BP"},
            {"system": "http://snomed.info/sct", "code": "271649006"},
        ],
        "text": "Blutdruck systolisch",
    }
    assert token.extract(concept, "CodeableConcept") == [
        TokenEntry("http://loinc.org", "8480-6", "systolic bp"),
        TokenEntry("http://snomed.info/sct", "271649006"),
        TokenEntry(None, None, "blutdruck systolisch"),
    ]
    assert token.extract(concept["coding"][0], "Coding") == [
        TokenEntry("http://loinc.org", "8480-6", "systolic bp")
    ]


def test_token_extracts_identifier_with_type_entries_for_of_type() -> None:
    identifier = {
        "system": "urn:oid:1.2.36.146.595.217.0.1",
        "value": "12345",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
            "text": "Medical record number",
        },
    }
    entries = token.extract(identifier, "Identifier")
    assert entries == [
        TokenEntry("urn:oid:1.2.36.146.595.217.0.1", "12345", "medical record number"),
        TokenEntry("http://terminology.hl7.org/CodeSystem/v2-0203|MR", "12345"),
    ]
    of_type = token.parse(
        P("identifier", "token"),
        "of-type",
        "http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345",
    )
    assert of_type == TokenMatch("identifier", entries[1].system, "12345")


def test_token_extracts_contact_point_value_without_system() -> None:
    contact = {"system": "phone", "value": "+41 22 555 01 01", "use": "work"}
    assert token.extract(contact, "ContactPoint") == [TokenEntry(None, "+41 22 555 01 01")]
    assert token.extract({"system": "phone"}, "ContactPoint") == []


def test_token_ignores_types_it_does_not_know() -> None:
    assert token.extract({"value": 5}, "Quantity") == []


@pytest.mark.parametrize(
    ("value", "system", "code"),
    [
        ("8480-6", ANY, "8480-6"),
        ("http://loinc.org|8480-6", "http://loinc.org", "8480-6"),
        ("|8480-6", None, "8480-6"),
        ("http://loinc.org|", "http://loinc.org", ANY),
        (r"urn:x\|y|a\,b", "urn:x|y", "a,b"),
    ],
)
def test_token_value_forms(value: str, system: str | None, code: str) -> None:
    assert token.parse(CODE, None, value) == TokenMatch("code", system, code)


def test_token_in_and_not_in_name_a_valueset() -> None:
    url = "http://example.org/ValueSet/x"
    assert token.parse(CODE, "in", url) == ValueSetMatch("code", url)
    assert token.parse(CODE, "not-in", url) == Not(ValueSetMatch("code", url))


def test_token_text_not_and_of_type() -> None:
    assert token.parse(CODE, "text", "Blutdrück") == TokenMatch("code", text="blutdruck")
    assert token.parse(CODE, "not", "a|b") == Not(TokenMatch("code", "a", "b"))
    assert token.parse(CODE, "of-type", "|MR|7") == TokenMatch("code", "|MR", "7")


@pytest.mark.parametrize(
    ("modifier", "value", "message"),
    [
        ("in", "", "empty"),
        ("below", "a|b", "subsumption"),
        ("exact", "a", "not supported"),
        (None, "a|b|c", "more than one"),
        (None, "|", "system, a code"),
        (None, "", "empty"),
        ("of-type", "a|b", "of-type"),
        ("of-type", "a||c", "empty"),
    ],
)
def test_token_rejects(modifier: str | None, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        token.parse(CODE, modifier, value)


def test_token_sort_key_uses_codes() -> None:
    entries = [TokenEntry("s", "b"), TokenEntry(None, None, "text"), TokenEntry("s", "a")]
    assert token.sort_key(entries, descending=False) == "a"
    assert token.sort_key(entries, descending=True) == "b"


# ---------------------------------------------------------------------------- reference


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("Patient/123", ReferenceEntry("Patient", "123")),
        ("Patient/123/_history/4", ReferenceEntry("Patient", "123")),
        (
            "http://other.org/fhir/Patient/9/_history/2",
            ReferenceEntry("Patient", "9", "http://other.org/fhir/Patient/9/_history/2"),
        ),
        ("http://other.org/people/9", ReferenceEntry(None, None, "http://other.org/people/9")),
        (
            "urn:uuid:3e5c1a6e-0a0b-4e4b-9c3a-0e6b2b0c9f10",
            ReferenceEntry(None, None, "urn:uuid:3e5c1a6e-0a0b-4e4b-9c3a-0e6b2b0c9f10"),
        ),
        ("urn:oid:1.2.3", ReferenceEntry(None, None, "urn:oid:1.2.3")),
    ],
)
def test_reference_extracts_literal_references(literal: str, expected: ReferenceEntry) -> None:
    assert reference.extract({"reference": literal}, "Reference") == [expected]


@pytest.mark.parametrize("literal", ["#contained-1", "Patient?identifier=x|1", "not a reference"])
def test_reference_skips_contained_and_unresolvable(literal: str) -> None:
    assert reference.extract({"reference": literal}, "Reference") == []


def test_reference_identifier_is_a_token_entry_matched_by_identifier_modifier() -> None:
    ref = {"identifier": {"system": "http://ns.example/mrn", "value": "M-1"}, "display": "Ann"}
    entries = reference.extract(ref, "Reference")
    assert entries == [TokenEntry("http://ns.example/mrn", "M-1")]
    assert reference.parse(SUBJECT, "identifier", "http://ns.example/mrn|M-1") == TokenMatch(
        "subject", "http://ns.example/mrn", "M-1"
    )


def test_reference_extracts_canonicals_without_version() -> None:
    url = "http://example.org/Questionnaire/phq-9"
    assert reference.extract(f"{url}|2.1", "canonical") == [ReferenceEntry(None, None, url)]
    assert reference.extract(url, "uri") == [ReferenceEntry(None, None, url)]


@pytest.mark.parametrize(
    ("param", "modifier", "value", "expected"),
    [
        (SUBJECT, None, "Patient/1", ReferenceMatch("subject", "Patient", "1")),
        (SUBJECT, None, "Patient/1/_history/3", ReferenceMatch("subject", "Patient", "1")),
        (SUBJECT, None, "1", ReferenceMatch("subject", None, "1")),
        (PATIENT, None, "1", ReferenceMatch("patient", "Patient", "1")),
        (SUBJECT, "Group", "g1", ReferenceMatch("subject", "Group", "g1")),
        (SUBJECT, "Patient", "Patient/1", ReferenceMatch("subject", "Patient", "1")),
        (
            SUBJECT,
            None,
            "https://fhir.example/r4/Patient/7",
            ReferenceMatch("subject", "Patient", "7"),
        ),
        (
            SUBJECT,
            None,
            "http://other.org/fhir/Patient/7",
            ReferenceMatch("subject", url="http://other.org/fhir/Patient/7"),
        ),
        (
            SUBJECT,
            None,
            "http://example.org/Questionnaire/q|2.0",
            ReferenceMatch("subject", url="http://example.org/Questionnaire/q"),
        ),
        (SUBJECT, None, "urn:uuid:abc", ReferenceMatch("subject", url="urn:uuid:abc")),
    ],
)
def test_reference_value_forms(
    param: P, modifier: str | None, value: str, expected: ReferenceMatch
) -> None:
    ctx = ParseContext(base_url="https://fhir.example/r4/")
    assert reference.parse(param, modifier, value, ctx) == expected


@pytest.mark.parametrize(
    ("modifier", "value"),
    [
        ("Device", "1"),
        ("Patient", "Group/1"),
        (None, "a/b/c"),
        ("below", "http://elsewhere.org/x"),
        ("above", "a/b/c"),
        ("text", "x"),
        (None, ""),
    ],
)
def test_reference_rejects(modifier: str | None, value: str) -> None:
    with pytest.raises(ValueError):
        reference.parse(SUBJECT, modifier, value)


def test_reference_parse_matches_what_extraction_stored() -> None:
    [stored] = reference.extract({"reference": "Patient/123/_history/4"}, "Reference")
    match = reference.parse(SUBJECT, None, "Patient/123")
    assert isinstance(match, ReferenceMatch)
    assert (match.type, match.id) == (stored.type, stored.id)


def test_reference_sort_key() -> None:
    entries = [
        ReferenceEntry("Patient", "b"),
        ReferenceEntry(None, None, "urn:uuid:1"),
        ReferenceEntry("Group", "z"),
        TokenEntry("s", "v"),
    ]
    assert reference.sort_key(entries, descending=False) == "Group/z"
    assert reference.sort_key(entries, descending=True) == "urn:uuid:1"


# ---------------------------------------------------------------------------- date


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2024", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
        ("2024-02", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
        ("2024-12-31", "2024-12-31T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
        ("2024-03-01T10:00+02:00", "2024-03-01T08:00:00+00:00", "2024-03-01T08:01:00+00:00"),
        ("2024-03-01T10:00:05-05:30", "2024-03-01T15:30:05+00:00", "2024-03-01T15:30:06+00:00"),
        ("2024-03-01T10:00:05.25Z", "2024-03-01T10:00:05.25+00:00", "2024-03-01T10:00:05.26+00:00"),
        ("2024-03-01T10:00:05", "2024-03-01T10:00:05+00:00", "2024-03-01T10:00:06+00:00"),
    ],
)
def test_date_extracts_precision_ranges_in_utc(value: str, start: str, end: str) -> None:
    assert date.extract(value, "dateTime") == [DateEntry(instant(start), instant(end))]


def test_date_period_open_ends() -> None:
    closed = {"start": "2024-01-10", "end": "2024-01-12"}
    assert date.extract(closed, "Period") == [
        DateEntry(instant("2024-01-10T00:00:00+00:00"), instant("2024-01-13T00:00:00+00:00"))
    ]
    assert date.extract({"start": "2024"}, "Period") == [
        DateEntry(instant("2024-01-01T00:00:00+00:00"), MAX_INSTANT)
    ]
    assert date.extract({"end": "2024"}, "Period") == [
        DateEntry(MIN_INSTANT, instant("2025-01-01T00:00:00+00:00"))
    ]
    assert date.extract({"start": "2024", "end": "9999-12-31"}, "Period") == [
        DateEntry(instant("2024-01-01T00:00:00+00:00"), MAX_INSTANT)
    ]
    assert date.extract({}, "Period") == []


def test_date_timing_events_and_bounds() -> None:
    timing = {
        "event": ["2024-05-01", "2024-05-02"],
        "repeat": {"boundsPeriod": {"start": "2024-05-01"}, "frequency": 1},
    }
    assert date.extract(timing, "Timing") == [
        DateEntry(instant("2024-05-01T00:00:00+00:00"), instant("2024-05-02T00:00:00+00:00")),
        DateEntry(instant("2024-05-02T00:00:00+00:00"), instant("2024-05-03T00:00:00+00:00")),
        DateEntry(instant("2024-05-01T00:00:00+00:00"), MAX_INSTANT),
    ]


@pytest.mark.parametrize(
    ("value", "fhir_type"),
    [
        ({"value": 42, "unit": "a"}, "Age"),
        ({"value": 3, "unit": "d"}, "Duration"),
        ("2024-13", "date"),
        ("yesterday", "dateTime"),
    ],
)
def test_date_ignores_non_dates(value: Any, fhir_type: str) -> None:
    assert date.extract(value, fhir_type) == []


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])
def test_date_prefixes_keep_the_value_range(prefix: str) -> None:
    match = date.parse(DATE, None, f"{prefix}2024-03")
    assert match == RangeMatch(
        "date",
        "date",
        prefix,  # type: ignore[arg-type]
        instant("2024-03-01T00:00:00+00:00"),
        instant("2024-04-01T00:00:00+00:00"),
    )


def test_date_without_prefix_is_eq_and_space_is_plus() -> None:
    assert date.parse(DATE, None, "2024-03-01T10:00 02:00") == date.parse(
        DATE, None, "eq2024-03-01T10:00+02:00"
    )


def test_date_ap_widens_by_a_tenth_of_the_gap_to_now() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    match = date.parse(DATE, None, "ap2014-01-01", ParseContext(now=now))
    start = datetime(2014, 1, 1, tzinfo=UTC)
    margin = (now - start) / 10
    assert match == RangeMatch(
        "date",
        "date",
        "ap",
        format_instant(start - margin),
        format_instant(start + timedelta(days=1) + margin),
    )


def test_date_ap_near_the_beginning_of_time_stays_in_range() -> None:
    match = date.parse(DATE, None, "ap0001", ParseContext(now=datetime(2024, 1, 1, tzinfo=UTC)))
    assert isinstance(match, RangeMatch) and match.low == MIN_INSTANT


@pytest.mark.parametrize(
    ("modifier", "value"),
    [(None, "2024-13"), (None, "xx2024"), (None, ""), ("exact", "2024"), (None, "9999")],
)
def test_date_rejects(modifier: str | None, value: str) -> None:
    with pytest.raises(ValueError):
        date.parse(DATE, modifier, value)


def test_date_sort_key_earliest_start_latest_end() -> None:
    entries = date.extract({"start": "2020", "end": "2021"}, "Period") + date.extract(
        "2019-06", "date"
    )
    assert date.sort_key(entries, descending=False) == instant("2019-06-01T00:00:00+00:00")
    assert date.sort_key(entries, descending=True) == instant("2022-01-01T00:00:00+00:00")


# ---------------------------------------------------------------------------- number


@pytest.mark.parametrize(
    ("value", "fhir_type", "expected"),
    [
        (5, "integer", [NumberEntry(5.0, 5.0)]),
        (0.25, "decimal", [NumberEntry(0.25, 0.25)]),
        (Decimal("1.5"), "decimal", [NumberEntry(1.5, 1.5)]),
        (True, "boolean", []),
        ("5", "string", []),
        ({"low": {"value": 0.1}, "high": {"value": 0.3}}, "Range", [NumberEntry(0.1, 0.3)]),
        ({"low": {"value": 0.1}}, "Range", [NumberEntry(0.1, MAX_NUMBER)]),
        ({"high": {"value": 0.3}}, "Range", [NumberEntry(MIN_NUMBER, 0.3)]),
        ({}, "Range", []),
    ],
)
def test_number_extract(value: Any, fhir_type: str, expected: list[NumberEntry]) -> None:
    assert number.extract(value, fhir_type) == expected


@pytest.mark.parametrize(
    ("value", "prefix", "low", "high"),
    [
        ("100", "eq", 99.5, 100.5),
        ("100.00", "eq", 99.995, 100.005),
        ("1e2", "eq", 50, 150),
        ("1.0e2", "eq", 95, 105),
        ("2.0", "eq", 1.95, 2.05),
        ("-5.5", "eq", -5.55, -5.45),
        ("ne100", "ne", 99.5, 100.5),
        ("gt100", "gt", 100, 100),
        ("lt100", "lt", 100, 100),
        ("ge100", "ge", 100, 100),
        ("le1e-3", "le", 0.001, 0.001),
        ("sa7", "sa", 7, 7),
        ("eb7", "eb", 7, 7),
        ("ap100", "ap", 90, 110),
        ("ap0", "ap", -0.5, 0.5),
    ],
)
def test_number_precision_and_prefixes(value: str, prefix: str, low: float, high: float) -> None:
    match = number.parse(PROBABILITY, None, value)
    assert isinstance(match, RangeMatch)
    assert (match.kind, match.prefix) == ("number", prefix)
    assert (match.low, match.high) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize(
    ("modifier", "value"),
    [
        (None, "abc"),
        (None, "1.5e"),
        (None, "1e999"),
        (None, "1e-99999999999"),
        (None, "0x10"),
        (None, "NaN"),
        (None, "1_000"),
        (None, "gt"),
        ("missing", "1"),
    ],
)
def test_number_rejects(modifier: str | None, value: str) -> None:
    with pytest.raises(ValueError):
        number.parse(PROBABILITY, modifier, value)


def test_number_sort_key() -> None:
    entries = [NumberEntry(3, 3), NumberEntry(1, 9)]
    assert number.sort_key(entries, descending=False) == 1
    assert number.sort_key(entries, descending=True) == 9


# ---------------------------------------------------------------------------- quantity

UCUM = "http://unitsofmeasure.org"


@pytest.mark.parametrize(
    ("value", "fhir_type", "expected"),
    [
        (
            {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            "Quantity",
            QuantityEntry(120, 120, UCUM, "mm[Hg]", "mmHg"),
        ),
        (
            {"value": 5, "comparator": "<", "system": UCUM, "code": "mg"},
            "Quantity",
            QuantityEntry(MIN_NUMBER, 5, UCUM, "mg", None),
        ),
        (
            {"value": 5, "comparator": ">=", "code": "mg"},
            "SimpleQuantity",
            QuantityEntry(5, MAX_NUMBER, None, "mg", None),
        ),
        (
            {"value": 42, "unit": "yr", "system": UCUM, "code": "a"},
            "Age",
            QuantityEntry(42, 42, UCUM, "a", "yr"),
        ),
        ({"value": 3, "code": "d"}, "Duration", QuantityEntry(3, 3, None, "d", None)),
        ({"value": 2}, "Count", QuantityEntry(2, 2, None, None, None)),
        ({"value": 9.5, "code": "km"}, "Distance", QuantityEntry(9.5, 9.5, None, "km", None)),
        (
            {"value": 10.5, "currency": "EUR"},
            "Money",
            QuantityEntry(10.5, 10.5, quantity.CURRENCY_SYSTEM, "EUR", None),
        ),
        (
            {"low": {"value": 1, "code": "mg", "system": UCUM}, "high": {"value": 2}},
            "Range",
            QuantityEntry(1, 2, UCUM, "mg", None),
        ),
        (
            {"high": {"value": 2, "unit": "g"}},
            "Range",
            QuantityEntry(MIN_NUMBER, 2, None, None, "g"),
        ),
        (7, "decimal", QuantityEntry(7, 7, None, None, None)),
    ],
)
def test_quantity_extract(value: Any, fhir_type: str, expected: QuantityEntry) -> None:
    assert quantity.extract(value, fhir_type) == [expected]


@pytest.mark.parametrize(
    ("value", "fhir_type"),
    [
        ({"origin": {"value": 0}, "data": "1 2 3"}, "SampledData"),
        ({"unit": "mg"}, "Quantity"),
        ({}, "Range"),
        ({"value": 1}, "CodeableConcept"),
        ("5", "string"),
    ],
)
def test_quantity_ignores(value: Any, fhir_type: str) -> None:
    assert quantity.extract(value, fhir_type) == []


def test_quantity_value_forms() -> None:
    q = VALUE_QUANTITY
    assert quantity.parse(q, None, f"5.4|{UCUM}|mg") == RangeMatch(
        "value-quantity",
        "quantity",
        "eq",
        pytest.approx(5.35),
        pytest.approx(5.45),  # type: ignore[arg-type]
        system=UCUM,
        code="mg",
    )
    assert quantity.parse(q, None, "gt5.4||mg") == Or(
        (
            RangeMatch("value-quantity", "quantity", "gt", 5.4, 5.4, code="mg"),
            RangeMatch("value-quantity", "quantity", "gt", 5.4, 5.4, unit="mg"),
        )
    )
    assert quantity.parse(q, None, "le5") == RangeMatch("value-quantity", "quantity", "le", 5, 5)
    assert quantity.parse(q, None, f"lt5|{UCUM}|") == RangeMatch(
        "value-quantity", "quantity", "lt", 5, 5, system=UCUM
    )
    assert quantity.parse(q, None, r"1|urn:x|a\|b") == RangeMatch(
        "value-quantity", "quantity", "eq", 0.5, 1.5, system="urn:x", code="a|b"
    )


@pytest.mark.parametrize("value", ["5|mg", "x|s|c", "|s|c", "1|2|3|4", ""])
def test_quantity_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        quantity.parse(VALUE_QUANTITY, None, value)


def test_quantity_sort_key_ignores_units() -> None:
    entries = [QuantityEntry(5, 5, UCUM, "g", None), QuantityEntry(MIN_NUMBER, 2, UCUM, "mg", None)]
    assert quantity.sort_key(entries, descending=False) == MIN_NUMBER
    assert quantity.sort_key(entries, descending=True) == 5


# ---------------------------------------------------------------------------- uri


def test_uri_extract_keeps_values_verbatim() -> None:
    for fhir_type in ("uri", "url", "canonical", "oid", "uuid"):
        assert uri.extract("http://a.org/X|1.0", fhir_type) == [UriEntry("http://a.org/X|1.0")]
    assert uri.extract("", "uri") == []
    assert uri.extract({"reference": "x"}, "Reference") == []


def test_uri_modes() -> None:
    assert uri.parse(URL, None, "http://a.org/fhir") == UriMatch("url", "http://a.org/fhir")
    assert uri.parse(URL, "below", "http://a.org/") == UriMatch("url", "http://a.org/", "below")
    assert uri.parse(URL, "above", "http://a.org/x/y") == UriMatch(
        "url", "http://a.org/x/y", "above"
    )
    with pytest.raises(ValueError):
        uri.parse(URL, "contains", "a")


def test_uri_sort_key() -> None:
    entries = [UriEntry("urn:b"), UriEntry("http://a")]
    assert uri.sort_key(entries, descending=False) == "http://a"
    assert uri.sort_key(entries, descending=True) == "urn:b"


# ---------------------------------------------------------------------------- composite

COMBO_CODE = P("combo-code", "token")
COMBO_VALUE = P("combo-value-quantity", "quantity")
COMBO = P(
    "combo-code-value-quantity",
    "composite",
    components=(("combo-code", "code"), ("combo-value-quantity", "value.as(Quantity)")),
)
COMPONENTS = {p.code: p for p in (COMBO_CODE, COMBO_VALUE)}


def _evaluate(element: V, expression: str) -> list[V]:
    """Just enough FHIRPath for the two component expressions."""
    node = element.value
    if expression == "code":
        return [V(node["code"], "CodeableConcept")] if "code" in node else []
    return [V(node["valueQuantity"], "Quantity")] if "valueQuantity" in node else []


def test_composite_extracts_one_entry_per_complete_element_instance() -> None:
    systolic = {
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "valueQuantity": {"value": 120, "system": UCUM, "code": "mm[Hg]"},
    }
    no_value = {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}}
    elements = [V(systolic, "Observation.component"), V(no_value, "Observation.component")]
    entries = composite.extract_composite(COMBO, elements, _evaluate, COMPONENTS.get)
    assert entries == [
        CompositeEntry(
            (
                (TokenEntry("http://loinc.org", "8480-6"),),
                (QuantityEntry(120, 120, UCUM, "mm[Hg]", None),),
            )
        )
    ]


def test_composite_with_unknown_component_extracts_nothing() -> None:
    elements = [V({"code": {"text": "x"}}, "Observation")]
    assert composite.extract_composite(COMBO, elements, _evaluate, lambda code: None) == []


def test_composite_parse_splits_on_unescaped_dollar() -> None:
    ctx = ParseContext(component=COMPONENTS.get)
    assert composite.parse(COMBO, None, f"http://loinc.org|8480-6$gt100|{UCUM}|mm[Hg]", ctx) == (
        Composite(
            "combo-code-value-quantity",
            (
                TokenMatch("combo-code-value-quantity", "http://loinc.org", "8480-6"),
                RangeMatch(
                    "combo-code-value-quantity",
                    "quantity",
                    "gt",
                    100,
                    100,
                    system=UCUM,
                    code="mm[Hg]",
                ),
            ),
        )
    )
    match = composite.parse(COMBO, None, r"a\$b$1", ctx)
    assert isinstance(match, Composite)
    assert match.components[0] == TokenMatch("combo-code-value-quantity", ANY, "a$b")


@pytest.mark.parametrize(
    ("modifier", "value"), [(None, "a"), (None, "a$1$2"), ("exact", "a$1"), (None, "a$x")]
)
def test_composite_rejects(modifier: str | None, value: str) -> None:
    with pytest.raises(ValueError):
        composite.parse(COMBO, modifier, value, ParseContext(component=COMPONENTS.get))


def test_composite_parse_needs_its_components() -> None:
    with pytest.raises(ValueError, match="component"):
        composite.parse(COMBO, None, "a$1")


# ---------------------------------------------------------------------------- dispatch


def test_dispatch_by_parameter_type() -> None:
    assert types.extract("string", "Ann", "string") == string.extract("Ann", "string")
    assert types.extract("composite", {}, "Observation") == []
    assert types.parse(NAME, None, "Ann") == StringMatch("name", normalize("Ann"))
    assert types.sort_key("number", [NumberEntry(1, 2)], descending=True) == 2
    assert types.sortable("date") and not types.sortable("composite")
    with pytest.raises(ValueError, match="special"):
        types.parse(P("near", "special"), None, "1|2|3|km")
