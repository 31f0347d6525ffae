"""SMART App Launch v2 scopes and their v1 aliases."""

from __future__ import annotations

import pytest

from fhir_server.auth.scopes import (
    INTERACTION_PERMS,
    Scope,
    ScopeError,
    ScopeSet,
    parse_scope,
)

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("user/Patient.write", "user/Patient.cud"),
        ("system/*.*", "system/*.cruds"),
        ("patient/*.read", "patient/*.rs"),
    ],
)
def test_v1_scopes_are_their_v2_equivalents(v1: str, v2: str) -> None:
    assert parse_scope(v1) == parse_scope(v2)
    assert str(ScopeSet.parse(v1)) == v2


def test_resource_scopes() -> None:
    assert parse_scope("patient/Observation.rs") == Scope(
        "patient", "Observation", frozenset("rs"))
    assert parse_scope("user/Encounter.cud") == Scope("user", "Encounter", frozenset("cud"))
    assert parse_scope("system/*.s") == Scope("system", "*", frozenset("s"))


def test_query_parameters_are_kept() -> None:
    text = f"patient/Observation.rs?category={LAB}&status=final"
    scope = parse_scope(text)
    assert scope == Scope(
        "patient", "Observation", frozenset("rs"), (("category", LAB), ("status", "final")))
    assert str(scope) == text
    # Percent-encoded values are decoded, and encoded again where they must be.
    scope = parse_scope("patient/Observation.rs?date=ge2020-01-01T00:00:00%2B01:00&code=a%26b")
    assert scope is not None
    assert scope.params == (("code", "a&b"), ("date", "ge2020-01-01T00:00:00+01:00"))
    assert parse_scope(str(scope)) == scope


def test_plain_scopes() -> None:
    scopes = ScopeSet.parse("openid  fhirUser launch/patient offline_access patient/*.rs")
    assert scopes.names == {"openid", "fhirUser", "launch/patient", "offline_access"}
    assert scopes.has("launch/patient") and not scopes.has("launch")
    assert [str(s) for s in scopes.resources] == ["patient/*.rs"]
    assert str(scopes) == "fhirUser launch/patient offline_access openid patient/*.rs"
    assert str(ScopeSet.parse("")) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patient/Observation.sr", "cruds in order"),
        ("patient/Observation.rr", "cruds in order"),
        ("patient/Observation.rx", "cruds in order"),
        ("patient/Observation.RS", "cruds in order"),
        ("patient/Observation.", "cruds in order"),
        ("patient/Observation.readwrite", "cruds in order"),
        ("group/Observation.rs", "context must be patient, user or system"),
        ("patient/Observations.rs", "not an R4 resource type"),
        ("patient/Resource.rs", "not an R4 resource type"),
        ("patient/Observation.rs?category", "name=value"),
        ("patient/Observation.rs?=x", "name=value"),
        ("patient/Observation.rs?a=1&&b=2", "name=value"),
    ],
)
def test_malformed_resource_scopes(text: str, message: str) -> None:
    with pytest.raises(ScopeError, match=message):
        parse_scope(text)
    with pytest.raises(ScopeError, match=message):
        ScopeSet.parse(f"openid {text}")


def test_contexts_and_granting() -> None:
    text = f"patient/*.rs user/Observation.cu patient/Observation.r?category={LAB}"
    scopes = ScopeSet.parse(text)
    assert scopes.contexts("Condition", "r") == {"patient"}
    assert scopes.contexts("Condition", "s") == {"patient"}
    assert scopes.contexts("Condition", "c") == set()
    assert scopes.contexts("Observation", "u") == {"user"}
    assert scopes.contexts("Observation", "d") == set()
    assert scopes.contexts("Observation", "r") == {"patient"}
    assert scopes.contexts("Observation", "c") == {"user"}
    assert scopes.contexts("Patient", "d") == set()
    assert [str(s) for s in scopes.granting("Observation", "r")] == [
        "patient/*.rs", f"patient/Observation.r?category={LAB}"]


def test_letters_of_the_same_scope_are_merged() -> None:
    scopes = ScopeSet.parse("user/Patient.r user/Patient.s user/Patient.read system/Patient.d")
    assert str(scopes) == "system/Patient.d user/Patient.rs"


@pytest.mark.parametrize(
    ("allowed", "requested", "granted"),
    [
        ("system/*.rs", "system/Observation.r", "system/Observation.r"),
        ("system/*.rs", "system/*.cruds", "system/*.rs"),
        ("system/Observation.rs", "system/*.read", "system/Observation.rs"),
        ("system/Observation.rs", "system/Patient.rs", ""),
        ("system/*.rs", "user/*.rs", ""),
        ("patient/*.cruds openid", "openid fhirUser patient/Patient.read",
         "openid patient/Patient.rs"),
        ("user/Observation.rs user/Patient.r", "user/*.rs",
         "user/Observation.rs user/Patient.r"),
        (f"patient/Observation.rs?category={LAB}", "patient/*.s",
         f"patient/Observation.s?category={LAB}"),
        ("patient/*.rs?status=final", "patient/Observation.r?code=x",
         "patient/Observation.r?code=x&status=final"),
    ],
)
def test_narrow_is_the_intersection(allowed: str, requested: str, granted: str) -> None:
    assert str(ScopeSet.parse(allowed).narrow(requested)) == granted


def test_narrow_refuses_malformed_requests() -> None:
    with pytest.raises(ScopeError):
        ScopeSet.parse("system/*.rs").narrow("system/*.rx")


def test_interaction_perms() -> None:
    assert INTERACTION_PERMS == {
        "create": "c", "read": "r", "vread": "r", "history-instance": "r", "update": "u",
        "patch": "u", "delete": "d", "search-type": "s", "search-system": "s",
        "history-type": "s", "history-system": "s",
    }
