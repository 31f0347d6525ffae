"""Token :in / :not-in against ValueSets stored on the server, on both engines."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_crud import FHIR_JSON

SYSTEM = "http://example.org/cs/diagnoses"
OTHER = "http://example.org/cs/other"
# A small hierarchy: A > (A1 > A11), A2; B.
CODE_SYSTEM = {
    "resourceType": "CodeSystem", "id": "diagnoses", "url": SYSTEM, "status": "active",
    "content": "complete",
    "concept": [
        {"code": "A", "concept": [{"code": "A1", "concept": [{"code": "A11"}]}, {"code": "A2"}]},
        {"code": "B"},
    ],
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "enumerated": {"compose": {"include": [{"system": SYSTEM, "concept": [{"code": "A1"},
                                                                          {"code": "B"}]}]}},
    "whole-system": {"compose": {"include": [{"system": OTHER}]}},
    "is-a": {"compose": {"include": [{"system": SYSTEM, "filter": [
        {"property": "concept", "op": "is-a", "value": "A1"}]}]}},
    "descendent-of": {"compose": {"include": [{"system": SYSTEM, "filter": [
        {"property": "concept", "op": "descendent-of", "value": "A"}]}]}},
    "nested": {"compose": {"include": [{"valueSet": ["http://example.org/vs/enumerated"]},
                                       {"system": OTHER, "concept": [{"code": "X"}]}]}},
    "excluding": {"compose": {"include": [{"system": SYSTEM, "filter": [
        {"property": "concept", "op": "is-a", "value": "A"}]}],
        "exclude": [{"system": SYSTEM, "concept": [{"code": "A2"}]}]}},
    "expanded": {"expansion": {"timestamp": "2024-01-01T00:00:00Z", "contains": [
        {"system": SYSTEM, "code": "A2"}, {"system": OTHER, "code": "Y"}]}},
}
# Which (system, code) each ValueSet holds, worked out by hand from the definitions above.
MEMBERS: dict[str, set[tuple[str, str]]] = {
    "enumerated": {(SYSTEM, "A1"), (SYSTEM, "B")},
    "is-a": {(SYSTEM, "A1"), (SYSTEM, "A11")},
    "descendent-of": {(SYSTEM, "A1"), (SYSTEM, "A11"), (SYSTEM, "A2")},
    "nested": {(SYSTEM, "A1"), (SYSTEM, "B"), (OTHER, "X")},
    "excluding": {(SYSTEM, "A"), (SYSTEM, "A1"), (SYSTEM, "A11")},
    "expanded": {(SYSTEM, "A2"), (OTHER, "Y")},
}
CONDITION_CODES = [(SYSTEM, c) for c in ("A", "A1", "A11", "A2", "B")] + [
    (OTHER, c) for c in ("X", "Y", "Z")] + [("http://elsewhere", "A1")]


def member(name: str, code: tuple[str, str]) -> bool:
    if name == "whole-system":
        return code[0] == OTHER
    return code in MEMBERS[name]


@pytest.fixture
async def data(client: httpx.AsyncClient) -> dict[str, tuple[str, str]]:
    assert (await client.put("/CodeSystem/diagnoses", json=CODE_SYSTEM,
                             headers=FHIR_JSON)).status_code == 201
    for name, body in VALUE_SETS.items():
        vs = {"resourceType": "ValueSet", "id": name, "url": f"http://example.org/vs/{name}",
              "status": "active", **body}
        assert (await client.put(f"/ValueSet/{name}", json=vs, headers=FHIR_JSON)).is_success
    conditions = {}
    for n, (system, code) in enumerate(CONDITION_CODES):
        cond = {"resourceType": "Condition", "id": f"c{n}", "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": system, "code": code}]}}
        assert (await client.put(f"/Condition/c{n}", json=cond, headers=FHIR_JSON)).is_success
        conditions[f"c{n}"] = (system, code)
    return conditions


async def found(client: httpx.AsyncClient, query: str) -> set[str]:
    response = await client.get(f"/Condition?{query}&_count=100")
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])
            if e["search"]["mode"] == "match"}


@pytest.mark.parametrize("name", [*MEMBERS, "whole-system"])
async def test_in_and_not_in(
    client: httpx.AsyncClient, data: dict[str, tuple[str, str]], name: str
) -> None:
    url = f"http://example.org/vs/{name}"
    inside = {cid for cid, code in data.items() if member(name, code)}
    assert inside  # each ValueSet covers some of the data
    assert await found(client, f"code:in={url}") == inside
    assert await found(client, f"code:not-in={url}") == set(data) - inside


async def test_unknown_valueset_is_a_clear_error(
    client: httpx.AsyncClient, data: dict[str, tuple[str, str]]
) -> None:
    response = await client.get("/Condition?code:in=http://example.org/vs/none",
                                headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    assert "http://example.org/vs/none" in response.json()["issue"][0]["diagnostics"]
