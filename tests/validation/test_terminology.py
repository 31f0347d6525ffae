"""fhir_server.validation.terminology: expansion, $validate-code, $lookup on built-in R4 and local
content (no server, no /work/shared at run time)."""

from __future__ import annotations

import gzip
import time
from typing import Any

import orjson
import pytest

from fhir_server.validation.terminology import DATA_FILE, CodeVerdict, Terminology

CS_URL = "http://example.org/fhir/CodeSystem/animals"
FRAG_URL = "http://example.org/fhir/CodeSystem/fragment"
VS = "http://example.org/fhir/ValueSet/"
GENDER = "http://hl7.org/fhir/administrative-gender"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"


def _vs(name: str, compose: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "url": VS + name,
        "name": name,
        "status": "active",
        "compose": compose,
    }


ANIMALS: dict[str, Any] = {
    "resourceType": "CodeSystem",
    "url": CS_URL,
    "version": "1.0",
    "name": "Animals",
    "status": "active",
    "content": "complete",
    "hierarchyMeaning": "is-a",
    "concept": [
        {
            "code": "animal",
            "display": "Animal",
            "concept": [
                {
                    "code": "mammal",
                    "display": "Mammal",
                    "concept": [
                        {
                            "code": "dog",
                            "display": "Dog",
                            "designation": [{"language": "de", "value": "Hund"}],
                            "property": [{"code": "legs", "valueInteger": 4}],
                        },
                        {
                            "code": "cat",
                            "display": "Cat",
                            "property": [{"code": "legs", "valueInteger": 4}],
                        },
                        {
                            "code": "human",
                            "display": "Human",
                            "property": [{"code": "legs", "valueInteger": 2}],
                        },
                    ],
                },
                {
                    "code": "bird",
                    "display": "Bird",
                    "concept": [
                        {"code": "owl", "display": "Owl"},
                    ],
                },
            ],
        },
        # hierarchy by property instead of nesting
        {"code": "puppy", "display": "Puppy", "property": [{"code": "parent", "valueCode": "dog"}]},
    ],
}

FRAGMENT: dict[str, Any] = {
    "resourceType": "CodeSystem",
    "url": FRAG_URL,
    "name": "Fragment",
    "status": "active",
    "content": "fragment",
    "concept": [
        {"code": "a", "display": "A", "concept": [{"code": "a1", "display": "A one"}]},
        {"code": "b", "display": "B"},
    ],
}

LOCAL = [
    ANIMALS,
    FRAGMENT,
    _vs(
        "enumerated",
        {
            "include": [
                {
                    "system": CS_URL,
                    "concept": [{"code": "dog"}, {"code": "owl", "display": "Night owl"}],
                }
            ]
        },
    ),
    _vs("whole", {"include": [{"system": CS_URL}]}),
    _vs(
        "mammals",
        {
            "include": [
                {
                    "system": CS_URL,
                    "filter": [{"property": "concept", "op": "is-a", "value": "mammal"}],
                }
            ]
        },
    ),
    _vs(
        "below-mammal",
        {
            "include": [
                {
                    "system": CS_URL,
                    "filter": [{"property": "concept", "op": "descendent-of", "value": "mammal"}],
                }
            ]
        },
    ),
    _vs(
        "four-legged",
        {
            "include": [
                {"system": CS_URL, "filter": [{"property": "legs", "op": "=", "value": "4"}]}
            ]
        },
    ),
    _vs(
        "pets",
        {
            "include": [{"valueSet": [VS + "mammals"]}],
            "exclude": [{"system": CS_URL, "concept": [{"code": "human"}]}],
        },
    ),
    _vs(
        "nested",
        {
            "include": [
                {"valueSet": [VS + "pets"]},
                {"system": GENDER, "concept": [{"code": "other"}]},
            ]
        },
    ),
    _vs(
        "intersection",
        {
            "include": [
                {
                    "system": CS_URL,
                    "valueSet": [VS + "four-legged"],
                    "filter": [{"property": "concept", "op": "is-a", "value": "mammal"}],
                }
            ]
        },
    ),
    _vs(
        "not-mammal",
        {
            "include": [
                {
                    "system": CS_URL,
                    "filter": [{"property": "concept", "op": "is-not-a", "value": "mammal"}],
                }
            ]
        },
    ),
    _vs(
        "pinned", {"include": [{"system": CS_URL, "version": "0.9", "concept": [{"code": "cat"}]}]}
    ),
    _vs("all-loinc", {"include": [{"system": LOINC}]}),
    _vs(
        "loinc-filter",
        {
            "include": [
                {"system": LOINC, "filter": [{"property": "CLASS", "op": "=", "value": "CHEM"}]}
            ]
        },
    ),
    _vs(
        "external-enum",
        {
            "include": [
                {
                    "system": LOINC,
                    "concept": [{"code": "718-7", "display": "Hemoglobin [Mass/volume] in Blood"}],
                }
            ]
        },
    ),
    _vs("fragment-whole", {"include": [{"system": FRAG_URL}]}),
    _vs(
        "fragment-isa",
        {
            "include": [
                {
                    "system": FRAG_URL,
                    "filter": [{"property": "concept", "op": "is-a", "value": "a"}],
                }
            ]
        },
    ),
    _vs("imports-missing", {"include": [{"valueSet": ["http://example.org/nowhere"]}]}),
]


@pytest.fixture(scope="module")
def term() -> Terminology:
    return Terminology.load(LOCAL)


def codes(expansion: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expansion["expansion"]["contains"]]


# ---- data file


def test_data_file_is_compact_and_has_spec_content() -> None:
    assert DATA_FILE.stat().st_size < 400_000
    data = orjson.loads(gzip.decompress(DATA_FILE.read_bytes()))
    assert len(data["codeSystems"]) > 450
    assert len(data["valueSets"]) > 600
    urls = {cs["url"] for cs in data["codeSystems"]}
    assert {GENDER, V2_0203, "http://hl7.org/fhir/observation-status"} <= urls


# ---- expansion of local ValueSets


def test_expand_enumerated_uses_valueset_display(term: Terminology) -> None:
    exp = term.expand(VS + "enumerated")
    assert exp["resourceType"] == "ValueSet" and exp["url"] == VS + "enumerated"
    assert exp["expansion"]["total"] == 2
    contains = exp["expansion"]["contains"]
    assert contains[0] == {"system": CS_URL, "code": "dog", "display": "Dog", "version": "1.0"}
    assert contains[1]["display"] == "Night owl"
    assert exp["expansion"]["timestamp"] and exp["expansion"]["identifier"].startswith("urn:")


def test_expand_whole_system(term: Terminology) -> None:
    assert sorted(codes(term.expand(VS + "whole"))) == sorted(
        ["animal", "mammal", "dog", "cat", "human", "bird", "owl", "puppy"]
    )


def test_expand_is_a_and_descendent_of(term: Terminology) -> None:
    # puppy is below dog through a `parent` property, not nesting
    assert sorted(codes(term.expand(VS + "mammals"))) == ["cat", "dog", "human", "mammal", "puppy"]
    assert sorted(codes(term.expand(VS + "below-mammal"))) == ["cat", "dog", "human", "puppy"]
    assert sorted(codes(term.expand(VS + "not-mammal"))) == ["animal", "bird", "owl"]


def test_expand_property_filter(term: Terminology) -> None:
    assert sorted(codes(term.expand(VS + "four-legged"))) == ["cat", "dog"]


def test_expand_import_exclude_nested(term: Terminology) -> None:
    assert sorted(codes(term.expand(VS + "pets"))) == ["cat", "dog", "mammal", "puppy"]
    nested = term.expand(VS + "nested")["expansion"]["contains"]
    assert {(c["system"], c["code"]) for c in nested} == {
        (CS_URL, "cat"),
        (CS_URL, "dog"),
        (CS_URL, "mammal"),
        (CS_URL, "puppy"),
        (GENDER, "other"),
    }


def test_expand_include_with_system_and_valueset_intersects(term: Terminology) -> None:
    assert sorted(codes(term.expand(VS + "intersection"))) == ["cat", "dog"]


def test_expand_filter_count_offset(term: Terminology) -> None:
    exp = term.expand(VS + "whole", filter="O")  # code or display, case-insensitive
    assert sorted(codes(exp)) == ["dog", "owl"]
    assert exp["expansion"]["total"] == 2
    page = term.expand(VS + "whole", count=3, offset=2)["expansion"]
    assert page["total"] == 8 and page["offset"] == 2 and len(page["contains"]) == 3
    assert {"name": "count", "valueInteger": 3} in page["parameter"]


def test_version_pin_ignored_with_note(term: Terminology) -> None:
    exp = term.expand(VS + "pinned")
    assert codes(exp) == ["cat"]
    warnings = [p["valueString"] for p in exp["expansion"]["parameter"] if p["name"] == "warning"]
    assert any("version 0.9" in w and "ignored" in w for w in warnings)


def test_expand_unknown_and_not_expandable(term: Terminology) -> None:
    with pytest.raises(KeyError, match="unknown value set"):
        term.expand("http://example.org/none")
    with pytest.raises(ValueError, match=r"includes all of http://loinc\.org"):
        term.expand(VS + "all-loinc")
    with pytest.raises(ValueError, match=r"filter on unknown code system http://loinc\.org"):
        term.expand(VS + "loinc-filter")
    # an enumerated external system expands without the system
    assert codes(term.expand(VS + "external-enum")) == ["718-7"]


def test_expand_fragment_lists_known_codes_with_warning(term: Terminology) -> None:
    exp = term.expand(VS + "fragment-isa")
    assert sorted(codes(exp)) == ["a", "a1"]
    params = exp["expansion"]["parameter"]
    assert any(p["name"] == "warning" and "fragment" in p["valueString"] for p in params)


# ---- expansion of spec ValueSets


def test_spec_administrative_gender() -> None:
    exp = Terminology.load().expand("http://hl7.org/fhir/ValueSet/administrative-gender")
    assert codes(exp) == ["male", "female", "other", "unknown"]
    assert exp["expansion"]["contains"][0]["display"] == "Male"
    assert {"name": "used-codesystem", "valueUri": GENDER + "|4.0.1"} in (
        exp["expansion"]["parameter"]
    )


def test_spec_observation_status_hierarchy() -> None:
    term = Terminology.load()
    exp = term.expand("http://hl7.org/fhir/ValueSet/observation-status")
    assert set(codes(exp)) == {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
    ok = term.validate_code(
        "http://hl7.org/fhir/ValueSet/observation-status",
        "http://hl7.org/fhir/observation-status",
        "final",
    )
    assert ok.ok is True and ok.display == "Final"


def test_spec_identifier_type_v2_0203() -> None:
    term = Terminology.load()
    url = "http://hl7.org/fhir/ValueSet/identifier-type"
    exp = term.expand(url)
    assert "MR" in codes(exp) and "DL" in codes(exp) and len(codes(exp)) == 18
    mr = term.validate_code(url, V2_0203, "MR", "Medical record number")
    assert mr == CodeVerdict(True, mr.message, "Medical record number")
    # NI is a real v2-0203 code, not in the R4 identifier-type ValueSet (extensible binding)
    assert term.validate_code(url, V2_0203, "NI").ok is False
    assert term.validate_code_in_system(V2_0203, "NI").ok is True


# ---- validate-code


def test_validate_code_member_and_not(term: Terminology) -> None:
    assert term.validate_code(VS + "mammals", CS_URL, "dog").ok is True
    bird = term.validate_code(VS + "mammals", CS_URL, "owl")
    assert bird.ok is False and "not in value set" in bird.message
    bogus = term.validate_code(VS + "mammals", CS_URL, "unicorn")
    assert bogus.ok is False and "unknown code unicorn" in bogus.message
    assert term.validate_code(VS + "pets", CS_URL, "human").ok is False  # excluded
    assert term.validate_code(VS + "nested", GENDER, "other").ok is True
    assert term.validate_code(VS + "nested", GENDER, "male").ok is False


def test_validate_code_without_system(term: Terminology) -> None:
    assert term.validate_code(VS + "mammals", None, "cat").ok is True
    assert term.validate_code(VS + "mammals", None, "owl").ok is False
    assert term.validate_code(VS + "all-loinc", None, "718-7").ok is None


def test_validate_code_display(term: Terminology) -> None:
    good = term.validate_code(VS + "mammals", CS_URL, "dog", "Dog")
    assert good.ok is True and "does not match" not in good.message
    assert term.validate_code(VS + "mammals", CS_URL, "dog", " dog ").ok is True  # case, space
    assert "does not match" not in term.validate_code(VS + "whole", CS_URL, "dog", "Hund").message
    bad = term.validate_code(VS + "mammals", CS_URL, "dog", "Wolf")
    assert bad.ok is True and "does not match" in bad.message and bad.display == "Dog"
    # the ValueSet's own display is accepted too
    assert (
        "does not match"
        not in term.validate_code(VS + "enumerated", CS_URL, "owl", "Night owl").message
    )


def test_validate_code_whole_external_system_is_accepted_unchecked(term: Terminology) -> None:
    verdict = term.validate_code(VS + "all-loinc", LOINC, "99999-9")
    assert verdict.ok is True and "not checked" in verdict.message
    # ...but only for that system
    assert term.validate_code(VS + "all-loinc", "http://snomed.info/sct", "1").ok is False


def test_validate_code_filter_on_unknown_system_is_undecided(term: Terminology) -> None:
    verdict = term.validate_code(VS + "loinc-filter", LOINC, "2345-7")
    assert verdict.ok is None and "unknown code system http://loinc.org" in verdict.message


def test_validate_code_enumerated_external_system(term: Terminology) -> None:
    assert term.validate_code(VS + "external-enum", LOINC, "718-7").ok is True
    assert term.validate_code(VS + "external-enum", LOINC, "2345-7").ok is False


def test_validate_code_fragment(term: Terminology) -> None:
    assert term.validate_code(VS + "fragment-whole", FRAG_URL, "b").ok is True
    unknown = term.validate_code(VS + "fragment-whole", FRAG_URL, "zzz")
    assert unknown.ok is None and "fragment" in unknown.message
    # a concept the fragment lists, which the filter leaves out, is decidably out
    assert term.validate_code(VS + "fragment-isa", FRAG_URL, "b").ok is False
    assert term.validate_code(VS + "fragment-isa", FRAG_URL, "zzz").ok is None


def test_validate_code_unknown_value_set(term: Terminology) -> None:
    verdict = term.validate_code("http://example.org/none", CS_URL, "dog")
    assert verdict.ok is None and "unknown value set" in verdict.message
    imported = term.validate_code(VS + "imports-missing", CS_URL, "dog")
    assert imported.ok is None


def test_spec_ucum_whole_system_accepted() -> None:
    verdict = Terminology.load().validate_code(
        "http://hl7.org/fhir/ValueSet/ucum-units", "http://unitsofmeasure.org", "mmol/L"
    )
    assert verdict.ok is True and "not checked" in verdict.message


def test_spec_snomed_not_present() -> None:
    term = Terminology.load()
    verdict = term.validate_code_in_system("http://snomed.info/sct", "26643006")
    assert verdict.ok is None and "not-present" in verdict.message


# ---- CodeSystem/$validate-code and $lookup


def test_validate_code_in_system(term: Terminology) -> None:
    assert term.validate_code_in_system(CS_URL, "owl") == CodeVerdict(
        True, f"{CS_URL}#owl is valid", "Owl"
    )
    assert term.validate_code_in_system(CS_URL, "unicorn").ok is False
    mismatch = term.validate_code_in_system(CS_URL, "owl", "Eagle")
    assert mismatch.ok is True and "does not match" in mismatch.message
    assert term.validate_code_in_system(FRAG_URL, "zzz").ok is None
    unknown = term.validate_code_in_system("http://example.org/unknown", "x")
    assert unknown == CodeVerdict(None, "unknown code system http://example.org/unknown")


def test_lookup_parent_children_designation(term: Terminology) -> None:
    result = term.lookup(CS_URL, "dog")
    assert result["resourceType"] == "Parameters"
    params = result["parameter"]
    by_name = {p["name"]: p for p in params if "part" not in p}
    assert by_name["name"]["valueString"] == "Animals"
    assert by_name["version"]["valueString"] == "1.0"
    assert by_name["display"]["valueString"] == "Dog"
    props = [
        {q["name"]: next(v for k, v in q.items() if k != "name") for q in p["part"]}
        for p in params
        if p["name"] == "property"
    ]
    assert {"code": "parent", "value": "mammal", "description": "Mammal"} in props
    assert {"code": "child", "value": "puppy", "description": "Puppy"} in props
    assert {"code": "legs", "value": 4} in props
    designation = next(p for p in params if p["name"] == "designation")
    assert {"name": "value", "valueString": "Hund"} in designation["part"]


def test_lookup_spec_and_unknown() -> None:
    term = Terminology.load()
    params = term.lookup("http://hl7.org/fhir/observation-status", "corrected")["parameter"]
    assert {"name": "display", "valueString": "Corrected"} in params
    parents = [
        p["part"][1]["valueCode"]
        for p in params
        if p["name"] == "property" and p["part"][0]["valueCode"] == "parent"
    ]
    assert parents == ["amended"]
    with pytest.raises(KeyError, match="unknown code system"):
        term.lookup("http://example.org/unknown", "x")
    with pytest.raises(KeyError, match="not found"):
        term.lookup(GENDER, "nope")


# ---- local content over built-in, caching, loading


def test_local_overrides_builtin_and_bundles() -> None:
    local_gender = {
        "resourceType": "CodeSystem",
        "url": GENDER,
        "name": "Local",
        "content": "complete",
        "concept": [{"code": "x", "display": "X"}],
    }
    term = Terminology.load([{"resourceType": "Bundle", "entry": [{"resource": local_gender}]}])
    assert term.validate_code_in_system(GENDER, "x").ok is True
    assert term.validate_code_in_system(GENDER, "male").ok is False
    assert Terminology.load().validate_code_in_system(GENDER, "male").ok is True


def test_import_cycle_is_reported() -> None:
    term = Terminology.load(
        [
            _vs("a", {"include": [{"valueSet": [VS + "b"]}]}),
            _vs("b", {"include": [{"valueSet": [VS + "a"]}]}),
        ]
    )
    with pytest.raises(ValueError, match="imports itself"):
        term.expand(VS + "a")
    assert term.validate_code(VS + "a", CS_URL, "dog").ok is None


def test_spec_value_sets_mostly_expandable() -> None:
    term = Terminology.load()
    data = orjson.loads(gzip.decompress(DATA_FILE.read_bytes()))
    expanded = not_expandable = 0
    for vs in data["valueSets"]:
        try:
            term.expand(vs["url"])
            expanded += 1
        except ValueError:
            not_expandable += 1
    assert expanded > 500
    assert expanded + not_expandable == len(data["valueSets"])


def test_validate_code_is_a_dict_lookup_after_first_expansion(term: Terminology) -> None:
    url = "http://hl7.org/fhir/ValueSet/administrative-gender"
    fresh = Terminology.load()
    start = time.perf_counter()
    fresh.validate_code(url, GENDER, "female")
    first = time.perf_counter() - start
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        fresh.validate_code(url, GENDER, "female", "Female")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per validate_code"
    assert first < 1.0
