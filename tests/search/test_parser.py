"""Query string -> SearchRequest, against a small stand-in registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from fhir_server.errors import BadRequest
from fhir_server.fhirtime import format_instant, parse_range
from fhir_server.search.model import (
    ANY,
    And,
    Chain,
    Composite,
    Has,
    Hierarchy,
    IdMatch,
    ListMatch,
    Missing,
    Not,
    Or,
    RangeMatch,
    ReferenceMatch,
    SortKey,
    StringMatch,
    TokenMatch,
    normalize,
)
from fhir_server.search.parser import Include, SearchRequest, parse_search

BASE = "https://fhir.example/r4"


@dataclass(frozen=True, slots=True)
class P:
    """Stand-in for registry.SearchParam (same field names)."""

    code: str
    type: str
    base: str = "Resource"
    expression: str = ""
    url: str = ""
    targets: tuple[str, ...] = ()
    sortable: bool = True
    components: tuple[tuple[str, str], ...] = ()


RESOURCE_LEVEL = {
    p.code: p
    for p in (
        P("_lastUpdated", "date"),
        P("_tag", "token"),
        P("_profile", "uri"),
        P("_security", "token"),
        P("_source", "uri"),
        P("_id", "token"),
    )
}
TYPES: dict[str, list[P]] = {
    "Patient": [
        P("name", "string"),
        P("gender", "token"),
        P("birthdate", "date"),
        P("identifier", "token"),
        P("organization", "reference", targets=("Organization",)),
        P(
            "general-practitioner",
            "reference",
            targets=("Organization", "Practitioner", "PractitionerRole"),
        ),
    ],
    "Observation": [
        P("code", "token"),
        P("value-quantity", "quantity"),
        P("date", "date"),
        P("subject", "reference", targets=("Group", "Patient")),
        P("patient", "reference", targets=("Patient",)),
        P("performer", "reference", targets=("Organization", "Practitioner")),
        P(
            "code-value-quantity",
            "composite",
            components=(("code", "code"), ("value-quantity", "value.as(Quantity)")),
        ),
        P("near", "special"),
    ],
    "Organization": [P("name", "string"), P("partof", "reference", targets=("Organization",))],
    "Practitioner": [P("name", "string"), P("identifier", "token")],
    "PractitionerRole": [P("practitioner", "reference", targets=("Practitioner",))],
    "Group": [P("name", "string")],
    "AuditEvent": [P("entity", "reference"), P("type", "token")],
    "Provenance": [P("target", "reference")],
    "Basic": [P("code", "token")],
}


class Registry:
    """Stand-in for registry.Registry: Resource-level parameters on every type."""

    def params(self, resource_type: str) -> Mapping[str, P]:
        if resource_type not in TYPES:
            return {}
        own = {p.code: dataclasses.replace(p, base=resource_type) for p in TYPES[resource_type]}
        return {**RESOURCE_LEVEL, **own}

    def get(self, resource_type: str, code: str) -> P | None:
        return self.params(resource_type).get(code)


REGISTRY = Registry()


def search(
    query: list[tuple[str, str]] | str, resource_type: str | None = "Patient", strict: bool = True
) -> SearchRequest:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")] if isinstance(query, str) else query
    return parse_search(resource_type, pairs, REGISTRY, BASE, strict)  # type: ignore[arg-type]


def where(query: str, resource_type: str | None = "Patient") -> Any:
    return search(query, resource_type).where


def name(value: str) -> StringMatch:
    return StringMatch("name", normalize(value))


def year(param: str, text: str, prefix: str = "eq") -> RangeMatch:
    start, end = parse_range(text)
    return RangeMatch(param, "date", prefix, format_instant(start), format_instant(end))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- AND / OR / escaping


def test_no_parameters_means_no_condition() -> None:
    assert search([]) == SearchRequest(where=None)


def test_single_parameter_is_not_wrapped() -> None:
    assert where("name=Ann") == name("Ann")


def test_repeated_parameters_and_comma_lists_or() -> None:
    assert where("name=a,b&name=c&gender=female") == And(
        (
            Or((name("a"), name("b"))),
            name("c"),
            TokenMatch("gender", ANY, "female"),
        )
    )


def test_date_range_by_repetition() -> None:
    assert where("birthdate=ge2020&birthdate=lt2021") == And(
        (
            year("birthdate", "2020", "ge"),
            year("birthdate", "2021", "lt"),
        )
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (r"a\,b", name("a,b")),
        (r"a\\,b", Or((name("a\\"), name("b")))),
        (r"cost\$5", name("cost$5")),
        (r"x\|y", name("x|y")),
    ],
)
def test_escaping(value: str, expected: Any) -> None:
    assert search([("name", value)]).where == expected


def test_escaped_pipe_in_token_is_part_of_the_code() -> None:
    assert where(r"identifier=urn:sys|A\|B\,C") == TokenMatch("identifier", "urn:sys", "A|B,C")


# ---------------------------------------------------------------------------- modifiers


def test_modifiers_reach_the_type() -> None:
    assert where("name:exact=Ann") == StringMatch("name", "Ann", "exact")
    assert where("gender:text=Fem") == TokenMatch("gender", text="fem")


def test_missing_for_any_type() -> None:
    assert where("birthdate:missing=true") == Missing("birthdate", True)
    assert where("organization:missing=false") == Missing("organization", False)
    with pytest.raises(BadRequest):
        search("birthdate:missing=yes")


def test_not_over_a_comma_list_is_none_of_them() -> None:
    assert where("gender:not=male,female") == Not(
        Or(
            (
                TokenMatch("gender", ANY, "male"),
                TokenMatch("gender", ANY, "female"),
            )
        )
    )


def test_id() -> None:
    assert where("_id=a,b,a") == IdMatch(("a", "b"))
    assert where("_id:not=a") == Not(IdMatch(("a",)))
    with pytest.raises(BadRequest):
        search("_id:exact=a")


def test_resource_level_parameters_go_through_the_registry() -> None:
    assert where("_lastUpdated=gt2024-01-01") == year("_lastUpdated", "2024-01-01", "gt")
    assert where("_tag=http://ex.org/tags|vip") == TokenMatch("_tag", "http://ex.org/tags", "vip")


def test_composite_uses_component_parameters_of_the_type() -> None:
    assert where("code-value-quantity=http://loinc.org|8480-6$ge140", "Observation") == Composite(
        "code-value-quantity",
        (
            TokenMatch("code-value-quantity", "http://loinc.org", "8480-6"),
            RangeMatch("code-value-quantity", "quantity", "ge", 140, 140),
        ),
    )


def test_references_under_the_base_url_are_local() -> None:
    assert where(f"subject={BASE}/Patient/1", "Observation") == ReferenceMatch(
        "subject", "Patient", "1"
    )


# ---------------------------------------------------------------------------- chains


def test_chain_with_explicit_type() -> None:
    assert where("subject:Patient.name=Ann", "Observation") == Chain(
        "subject", "Patient", name("Ann")
    )


def test_chain_with_single_target_and_depth_three() -> None:
    assert where("patient.organization.partof.name=Acme", "Observation") == Chain(
        "patient",
        "Patient",
        Chain("organization", "Organization", Chain("partof", "Organization", name("Acme"))),
    )


def test_chain_keeps_the_or_list_and_modifier_of_the_last_step() -> None:
    assert where("patient.name:exact=A,B", "Observation") == Chain(
        "patient",
        "Patient",
        Or((StringMatch("name", "A", "exact"), StringMatch("name", "B", "exact"))),
    )
    assert where("patient.birthdate:missing=true", "Observation") == Chain(
        "patient", "Patient", Missing("birthdate", True)
    )


def test_chain_over_several_targets_that_all_have_the_parameter() -> None:
    assert where("subject.name=x", "Observation") == Or(
        (
            Chain("subject", "Group", name("x")),
            Chain("subject", "Patient", name("x")),
        )
    )


def test_chain_over_the_targets_that_have_the_parameter() -> None:
    # search.html: DiagnosticReport?subject.name=peter searches the subject types that have a
    # `name` parameter; here Organization has no identifier, Practitioner has.
    assert where("performer.identifier=1", "Observation") == Chain(
        "performer", "Practitioner", TokenMatch("identifier", ANY, "1")
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("performer.gender=male", "none of which has 'gender'"),
        ("subject:Practitioner.name=x", "never points at"),
        ("code.name=x", "not a reference"),
        ("patient.nickname=x", "unknown search parameter 'nickname' for Patient"),
        ("patient.=x", "unknown search parameter"),
    ],
)
def test_bad_chains(query: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        search(query, "Observation")


# ---------------------------------------------------------------------------- _has


def test_has() -> None:
    assert where("_has:Observation:patient:code=1234-5") == Has(
        "Observation", "patient", TokenMatch("code", ANY, "1234-5")
    )


def test_has_nested_and_with_chain_inside() -> None:
    assert where("_has:Observation:patient:_has:Provenance:target:_lastUpdated=ge2024") == Has(
        "Observation",
        "patient",
        Has("Provenance", "target", year("_lastUpdated", "2024", "ge")),
    )
    assert where("_has:Observation:patient:performer:Practitioner.name=Kim") == Has(
        "Observation", "patient", Chain("performer", "Practitioner", name("Kim"))
    )


@pytest.mark.parametrize(
    "query",
    [
        "_has:Observation:patient=1",
        "_has:Observation::code=1",
        "_has:Nothing:patient:code=1",
        "_has:Observation:code:code=1",  # not a reference
        "_has:Observation:performer:code=1",  # performer never points at Patient
    ],
)
def test_bad_has(query: str) -> None:
    with pytest.raises(BadRequest):
        search(query)


# ---------------------------------------------------------------------------- result parameters


def test_sort() -> None:
    request = search("_sort=-birthdate,name,_id&_sort=_lastUpdated")
    assert request.sort == (
        SortKey("birthdate", True),
        SortKey("name"),
        SortKey("_id"),
        SortKey("_lastUpdated"),
    )


@pytest.mark.parametrize("value", ["nickname", "-", "name,,gender"])
def test_sort_by_unknown_parameter(value: str) -> None:
    with pytest.raises(BadRequest, match="_sort"):
        search([("_sort", value)])


def test_sort_by_composite_or_special_is_refused() -> None:
    for code in ("code-value-quantity", "near"):
        with pytest.raises(BadRequest, match="cannot sort"):
            search(f"_sort={code}", "Observation")


@pytest.mark.parametrize(("value", "count"), [("0", 0), ("50", 50), ("007", 7)])
def test_count(value: str, count: int) -> None:
    assert search([("_count", value)]).count == count


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", "+3", "²", "9999999999"])
def test_bad_count(value: str) -> None:
    with pytest.raises(BadRequest, match="_count"):
        search([("_count", value)])


def test_total_summary_elements_and_last_value_wins() -> None:
    request = search(
        "_total=none&_total=accurate&_summary=count&_elements=name,gender&_elements=birthDate"
    )
    assert (request.total, request.summary) == ("accurate", "count")
    assert request.elements == ("name", "gender", "birthDate")
    for bad in ("_total=all", "_summary=yes", "_elements=name.family", "_elements=,"):
        with pytest.raises(BadRequest):
            search(bad)


def test_includes() -> None:
    request = search(
        "_include=Observation:subject&_include=Observation:performer:Practitioner"
        "&_include:iterate=Patient:general-practitioner&_include=*&_include=Observation:*"
        "&_revinclude=Provenance:target&_revinclude:iterate=AuditEvent:entity",
        "Observation",
    )
    assert request.includes == (
        Include("Observation", "subject", None, False),
        Include("Observation", "performer", "Practitioner", False),
        Include("Patient", "general-practitioner", None, True),
        Include("*", "*", None, False),
        Include("Observation", "*", None, False),
    )
    assert request.revincludes == (
        Include("Provenance", "target", None, False),
        Include("AuditEvent", "entity", None, True),
    )


def test_recurse_is_iterate() -> None:
    request = search("_include:recurse=Organization:partof", "Organization")
    assert request.includes == (Include("Organization", "partof", None, True),)


@pytest.mark.parametrize(
    "value",
    [
        "Observation",  # no parameter
        "Observation:code",  # not a reference
        "Observation:subject:Device",  # not a target
        "Observation:nothing",
        "Nothing:subject",
        "Patient:organization",  # from another type without :iterate
        "Observation:subject:Patient:extra",
    ],
)
def test_bad_include(value: str) -> None:
    with pytest.raises(BadRequest, match="_include"):
        search([("_include", value)], "Observation")


def test_include_modifier_must_be_iterate() -> None:
    with pytest.raises(BadRequest):
        search("_include:deep=Observation:subject", "Observation")


def test_pass_through_parameters_are_not_kept() -> None:
    request = search("name=Ann&_format=json&_pretty=true&_cursor=opaque-123&_count=5")
    assert request.cursor == "opaque-123"
    assert request.kept == (("name", "Ann"), ("_count", "5"))


# ---------------------------------------------------------------------------- system search


def test_system_search_with_type_resolves_on_every_type() -> None:
    request = search("identifier=X1&_type=Patient,Practitioner&_sort=_lastUpdated", None)
    assert request.types == ("Patient", "Practitioner")
    assert request.where == TokenMatch("identifier", ANY, "X1")
    assert request.kept == (
        ("identifier", "X1"),
        ("_type", "Patient,Practitioner"),
        ("_sort", "_lastUpdated"),
    )


def test_system_search_parameter_missing_on_one_type() -> None:
    with pytest.raises(BadRequest, match="gender"):
        search("_type=Patient,Practitioner&gender=male", None)


def test_system_search_without_type_allows_resource_level_parameters_only() -> None:
    assert search("_tag=vip", None).where == TokenMatch("_tag", ANY, "vip")
    with pytest.raises(BadRequest, match="every resource type"):
        search("code=x", None)  # Basic has it, but not as a Resource-level parameter


def test_type_is_for_system_search_only_and_must_be_known() -> None:
    with pytest.raises(BadRequest, match="system"):
        search("_type=Patient")
    with pytest.raises(BadRequest, match="Nothing"):
        search("_type=Patient,Nothing", None)


def test_include_in_system_search_checks_the_listed_types() -> None:
    request = search("_type=Observation&_include=Observation:subject", None)
    assert request.includes == (Include("Observation", "subject", None, False),)
    with pytest.raises(BadRequest):
        search("_type=Patient&_include=Observation:subject", None)


# ---------------------------------------------------------------------------- strict / lenient


@pytest.mark.parametrize(
    ("query", "bad"),
    [
        ("nickname=x", "nickname"),
        ("birthdate=2024-13-01", "birthdate"),
        ("birthdate=xx2024", "birthdate"),
        ("name:sounds-like=x", "name:sounds-like"),
        ("gender:below=male", "gender:below"),
        ("name=a,,b", "name"),
        ("_sort:asc=name", "_sort:asc"),
        ("_contained=true", "_contained"),
    ],
)
def test_strict_rejects_and_lenient_ignores(query: str, bad: str) -> None:
    with pytest.raises(BadRequest) as raised:
        search(f"{query}&name=Ann")
    assert raised.value.status == 400
    assert f"'{bad}'" in str(raised.value)
    request = search(f"{query}&name=Ann", strict=False)
    assert request.ignored == (bad,)
    assert request.where == name("Ann")
    assert request.kept == (("name", "Ann"),)


@pytest.mark.parametrize(
    "query", ["name=", "name:exact=", "_has:Observation:patient:code=", "_count=", "nickname="]
)
def test_empty_parameters_are_ignored_even_when_strict(query: str) -> None:
    # search.html#errors: "Empty parameters are not an error - they are just ignored".
    request = search(f"{query}&name=Ann")
    assert request.where == name("Ann")
    assert request.ignored == ()
    assert request.kept == (("name", "Ann"),)


def test_list() -> None:
    assert where("_list=42") == ListMatch("Patient", "42")
    assert where("_list=42,43") == Or((ListMatch("Patient", "42"), ListMatch("Patient", "43")))
    assert where("patient._list=42", "Observation") == Chain(
        "patient", "Patient", ListMatch("Patient", "42")
    )


@pytest.mark.parametrize(
    ("query", "resource_type"),
    [("_list=$current-allergies", "Patient"), ("_list:not=42", "Patient"), ("_list=42", None)],
)
def test_bad_list(query: str, resource_type: str | None) -> None:
    with pytest.raises(BadRequest, match="_list"):
        search(query, resource_type)


def test_reference_hierarchy_modifiers() -> None:
    assert where("partof:below=1", "Organization") == Hierarchy(
        "partof", ("Organization",), "1", False
    )
    assert where("general-practitioner:above=Organization/1") == Hierarchy(
        "general-practitioner", ("Organization",), "1", True
    )
    assert where(f"organization:below={BASE}/Organization/1") == Hierarchy(
        "organization", ("Organization",), "1", False
    )
    with pytest.raises(BadRequest, match="takes an id"):
        search("organization:below=http://elsewhere.org/Organization/1")


def test_lenient_keeps_the_order_of_what_it_ignored() -> None:
    request = search("b=1&_count=x&a=2", strict=False)
    assert request.ignored == ("b", "_count", "a")
    assert request.where is None and request.count is None


# ---------------------------------------------------------------------------- hostile input

HOSTILE = [
    '{"$gt": ""}',
    "' OR 1=1 --",
    "%",
    "_",
    "\\",
    "'; DROP TABLE resources; --",
    "$where: function() { return true }",
    "name[$ne]=x",
    "\x00",
]


def _leaves(node: Any) -> list[Any]:
    if dataclasses.is_dataclass(node):
        return [leaf for f in dataclasses.fields(node) for leaf in _leaves(getattr(node, f.name))]
    if isinstance(node, tuple):
        return [leaf for item in node for leaf in _leaves(item)]
    return [node]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_survive_as_plain_strings(value: str) -> None:
    assert where_of([("name:exact", value)]) == StringMatch("name", value, "exact")
    assert where_of([("name:contains", value)]) == StringMatch("name", normalize(value), "contains")
    token = where_of([("gender", value)])
    assert token == TokenMatch("gender", ANY, value)
    chained = where_of([("subject:Patient.name", value)], "Observation")
    assert chained == Chain("subject", "Patient", StringMatch("name", normalize(value)))


def where_of(pairs: list[tuple[str, str]], resource_type: str = "Patient") -> Any:
    return parse_search(resource_type, pairs, REGISTRY, BASE, strict=True).where


def test_parser_output_has_only_plain_leaves() -> None:
    request = search(
        [
            ("name", HOSTILE[0]),
            ("birthdate", "ap2020"),
            ("_has:Observation:patient:code", "%"),
            ("gender:not", "a,b"),
            ("_id", "1"),
            ("organization:missing", "true"),
        ]
    )
    assert all(
        isinstance(leaf, str | float | int | bool | type(None)) for leaf in _leaves(request.where)
    )


def test_an_ignored_sort_leaves_no_partial_keys() -> None:
    request = search("_sort=name,nickname&_sort=-birthdate", strict=False)
    assert request.sort == (SortKey("birthdate", True),)
    assert request.ignored == ("_sort",)
