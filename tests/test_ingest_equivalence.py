"""The faster ingest path gives the same answers as the straightforward one (issue 4).

- `check_json_shape` (cached per-type shapes, a shortcut for well-formed single primitives) is
  compared with the reference walk below — the implementation it replaced, verbatim in
  behaviour, plus the R4 checks that replaced the R4B models, written plainly — on every
  Synthea resource, on systematic mutations of them (wrong JSON types, null, empty and blank
  values, arrays for singles, unknown and `_` keys, required elements removed, malformed
  values of every primitive type, second choice types: tests/validation/fixtures/mutations.py)
  and on the odd bodies of tests/api/test_errors.py. `validate_structure` on top of it must
  raise the same issues, in the same order.
- SQLite buffers a transaction's index rows until something reads the index tables: searches
  inside the transaction, replacing a resource twice in it, and a rollback still behave as
  when every row was inserted at once.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import random
import re
import string
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.definitions import (
    R4_RESOURCE_TYPES,
    Kind,
    Property,
    primitive_pattern,
    type_definition,
)
from fhir_server.errors import FhirError, Issue
from fhir_server.search.indexer import index_resource
from fhir_server.search.model import ResourceIndex, StringEntry, TokenEntry, TokenMatch
from fhir_server.search.registry import default_registry
from fhir_server.store.base import SearchQuery, Version
from fhir_server.store.sqlite import SqliteStore
from fhir_server.validation import structure
from fhir_server.validation.json_shape import check_json_shape
from tests.api.test_errors import ODD_BODIES
from tests.validation.test_pydantic_equivalence import fixtures
from tests.validation.test_pydantic_equivalence import mutated as mutated_cases

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "synthea-r4"

# --- the reference walk (the implementation before issue 4, plus the R4 checks that took over
# from the R4B models: Resource.id an id; `_name` only for primitives that are no XML
# attribute, shaped like them, holding an Element; `resourceType` only in resources; one type
# per choice element; integer ranges, finite decimals, dates that exist, base64) -------------

_JSON_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.BOOLEAN: (bool,), Kind.INTEGER: (int,), Kind.DECIMAL: (int, float),
    Kind.STRING: (str,), Kind.XHTML: (str,),
}
_JSON_NAMES = {
    Kind.BOOLEAN: "a JSON boolean", Kind.INTEGER: "a JSON integer", Kind.DECIMAL: "a JSON number",
    Kind.STRING: "a JSON string", Kind.XHTML: "a JSON string",
}
_BASE64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")
_RANGES = {"integer": (-(2**31), 2**31 - 1), "unsignedInt": (0, 2**31 - 1),
           "positiveInt": (1, 2**31 - 1)}


def reference_shape(resource: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    _resource(resource, resource.get("resourceType", "Resource"), issues)
    return issues


def _issue(issues: list[Issue], code: str, path: str, text: str) -> None:
    issues.append(Issue(code, f"{path}: {text}", expression=(path,)))


def _resource(value: Any, path: str, issues: list[Issue]) -> None:
    if not isinstance(value, dict):
        _issue(issues, "structure", path, "must be a resource (a JSON object)")
        return
    type_ = value.get("resourceType")
    # (the one change: a non-string resourceType such as a list used to raise TypeError)
    if not isinstance(type_, str) or type_ not in R4_RESOURCE_TYPES:
        _issue(issues, "structure", path, f"unknown resourceType {type_!r}")
        return
    _object(value, type_, type_ if path == type_ else path, issues)


def _properties(type_name: str) -> dict[str, Property] | None:
    if type_name == "Element":
        extension = type_definition("Extension").properties
        return {"id": extension["id"], "extension": extension["extension"]}
    try:
        properties = dict(type_definition(type_name).properties)
    except KeyError:
        return None
    if type_name in R4_RESOURCE_TYPES and "id" in properties:
        properties["id"] = dataclasses.replace(properties["id"], type="id")
    return properties


def _object(value: dict[str, Any], type_name: str, path: str, issues: list[Issue]) -> None:
    properties = _properties(type_name)
    if properties is None:
        return
    if not value:
        _issue(issues, "structure", path, "must not be an empty object")
    chosen: dict[str, str] = {}
    for key, item in value.items():
        where = f"{path}.{key}"
        prop = properties.get(key.removeprefix("_"))
        if key == "resourceType" and type_name in R4_RESOURCE_TYPES:
            continue
        if prop is None or (key.startswith("_") and (prop.kind not in _JSON_TYPES
                                                     or prop.xml_attr)):
            _issue(issues, "structure", where, f"unknown element '{key}'")
            continue
        if key.startswith("_"):
            _companion(item, prop, where, issues)
        else:
            _property(item, prop, where, issues, companion=value.get("_" + key))
        if prop.element.endswith("[x]"):
            name = key.removeprefix("_")
            if chosen.setdefault(prop.element, name) != name:
                _issue(issues, "structure", where,
                       f"only one type of {prop.element} is allowed (also {chosen[prop.element]})")
    groups: dict[str, list[str]] = {}
    for prop in properties.values():
        if prop.mandatory:
            groups.setdefault(prop.element, []).append(prop.name)
    for element, names in groups.items():
        if not any(n in value or f"_{n}" in value for n in names):
            _issue(issues, "required", f"{path}.{element}", "missing required element")


def _property(item: Any, prop: Property, path: str, issues: list[Issue], companion: Any) -> None:
    if prop.array:
        if not isinstance(item, list):
            _issue(issues, "structure", path, "must be a JSON array")
            return
        if not item:
            _issue(issues, "structure", path, "must not be an empty array")
        for index, element in enumerate(item):
            aligned = (isinstance(companion, list) and index < len(companion)
                       and companion[index] is not None)
            if element is None and prop.kind in _JSON_TYPES and aligned:
                continue
            _value(element, prop, f"{path}[{index}]", issues)
    elif isinstance(item, list):
        _issue(issues, "structure", path, "must be a single value, not an array")
    else:
        _value(item, prop, path, issues)


def _value(item: Any, prop: Property, path: str, issues: list[Issue]) -> None:
    if item is None:
        _issue(issues, "structure", path, "must not be null")
    elif prop.kind == Kind.RESOURCE:
        _resource(item, path, issues)
    elif prop.kind == Kind.COMPLEX:
        if isinstance(item, dict):
            _object(item, prop.type, path, issues)
        else:
            _issue(issues, "structure", path, f"must be a JSON object ({prop.type})")
    else:
        expected = _JSON_TYPES[prop.kind]
        if not isinstance(item, expected) or (prop.kind != Kind.BOOLEAN and isinstance(item, bool)):
            _issue(issues, "value", path, f"must be {_JSON_NAMES[prop.kind]} ({prop.type})")
        elif isinstance(item, str) and not item.strip():
            _issue(issues, "value", path, "must not be empty or only whitespace")
        elif isinstance(item, str) and not _well_formed(item, prop.type):
            _issue(issues, "value", path, f"{_show(item)} is not a valid {prop.type}")
        elif prop.kind == Kind.INTEGER and not (
                _RANGES[prop.type][0] <= item <= _RANGES[prop.type][1]):
            low, high = _RANGES[prop.type]
            _issue(issues, "value", path, f"{item} is not a valid {prop.type} ({low}..{high})")
        elif isinstance(item, float) and not math.isfinite(item):
            _issue(issues, "value", path, f"{item} is not a valid {prop.type} (a finite number)")


def _companion(item: Any, prop: Property, path: str, issues: list[Issue]) -> None:
    if prop.array and not isinstance(item, list):
        _issue(issues, "structure", path, "must be a JSON array")
        return
    if not prop.array and isinstance(item, list):
        _issue(issues, "structure", path, "must be a single value, not an array")
        return
    if item is None:
        _issue(issues, "structure", path, "must not be null")
        return
    if item == []:
        _issue(issues, "structure", path, "must not be an empty array")
    items = item if isinstance(item, list) else [item]
    for index, element in enumerate(items):
        where = f"{path}[{index}]" if isinstance(item, list) else path
        if element is None and isinstance(item, list):
            continue
        if not isinstance(element, dict):
            _issue(issues, "structure", where, "must be a JSON object (Element)")
        else:
            _object(element, "Element", where, issues)


def reference_structure(resource: dict[str, Any]) -> list[Issue]:
    """validate_structure's issues with the reference walk in place of check_json_shape."""
    original = structure.check_json_shape
    structure.check_json_shape = reference_shape  # type: ignore[assignment]
    try:
        return _issues_of(resource)
    finally:
        structure.check_json_shape = original


def _issues_of(resource: dict[str, Any]) -> list[Issue]:
    try:
        structure.validate_structure(copy.deepcopy(resource))
    except FhirError as exc:
        return list(exc.issues)
    return []


# --- inputs --------------------------------------------------------------------------------


def synthea() -> list[dict[str, Any]]:
    if not SAMPLES.is_dir():
        pytest.skip(f"no Synthea samples at {SAMPLES}")
    return [e["resource"] for p in sorted(SAMPLES.glob("*.json"))
            for e in orjson.loads(p.read_bytes())["entry"]]


REPLACEMENTS: list[Any] = [None, "", "   ", "\u2003", 5, 2.5, True, "x", [], {}, ["x"], [None],
                           {"x": 1}, [{}], "  padded  ", -0.0, 10**20]


def _slots(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a resource."""
    found: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*path, key))
            found += _slots(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*path, index))
            found += _slots(value, (*path, index))
    return found


def mutations(resources: list[dict[str, Any]], per_resource: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for resource in resources:
        slots = [s for s in _slots(resource) if s != ("resourceType",)]
        for _ in range(per_resource):
            mutated = copy.deepcopy(resource)
            slot = rng.choice(slots)
            parent = mutated
            for part in slot[:-1]:
                parent = parent[part]
            last = slot[-1]
            action = rng.randrange(5)
            if action == 0 and isinstance(parent, dict):
                del parent[last]  # may remove a required element
            elif action == 1 and isinstance(parent, dict):
                parent[rng.choice(["", "_" + str(last), "bogus", "_bogus", "resourceType"])] = (
                    rng.choice(REPLACEMENTS))
            elif action == 2:
                parent[last] = [parent[last]]  # a single wrapped in an array
            else:
                parent[last] = rng.choice(REPLACEMENTS)
            out.append(mutated)
    return out


def _key(issues: list[Issue]) -> list[tuple[Any, ...]]:
    return [(i.code, i.diagnostics, i.severity, i.expression) for i in issues]


# --- validation ----------------------------------------------------------------------------


def test_json_shape_same_issues_on_synthea_and_mutations() -> None:
    resources = synthea()
    assert len(resources) > 1000
    for resource in resources:
        assert _key(check_json_shape(resource)) == _key(reference_shape(resource)) == []
    rejected = 0
    for mutated in mutations(resources, 6, seed=4):
        got = check_json_shape(mutated)
        assert _key(got) == _key(reference_shape(mutated)), mutated
        rejected += bool(got)
    assert rejected > 3000  # the mutations do exercise the error paths


def test_json_shape_same_issues_on_typed_mutations() -> None:
    """The typed mutations (every primitive type malformed, choices, companions, contained
    resources...) of the repository's fixtures and of a sample of Synthea."""
    named = fixtures()
    if SAMPLES.is_dir():
        named += [(f"synthea {i}", r) for i, r in enumerate(synthea()[::5])]
    rejected = 0
    for name, mutated in mutated_cases(named, {"*": 12}):
        got = check_json_shape(mutated)
        assert _key(got) == _key(reference_shape(mutated)), name
        rejected += bool(got)
    assert rejected > 2000


@pytest.mark.parametrize("body", ODD_BODIES, ids=[str(i) for i in range(len(ODD_BODIES))])
def test_json_shape_same_issues_on_odd_bodies(body: Any) -> None:
    if isinstance(body, dict):
        assert _key(check_json_shape(body)) == _key(reference_shape(body))
        if isinstance(body.get("resourceType"), str):  # as check_body guarantees
            assert _key(_issues_of(body)) == _key(reference_structure(body))


def test_validate_structure_same_verdicts_and_issues() -> None:
    resources = synthea()
    sample = resources[::7]
    for resource in sample:
        assert _issues_of(resource) == []
    for mutated in mutations(sample, 3, seed=11):
        if isinstance(mutated.get("resourceType"), str):
            assert _key(_issues_of(mutated)) == _key(reference_structure(mutated)), mutated


# --- SQLite: buffered index rows -----------------------------------------------------------


def _version(id_: str, number: int) -> Version:
    body = orjson.dumps({"resourceType": "Patient", "id": id_})
    return Version("Patient", id_, number, f"2024-01-01T00:00:0{number}.000000Z", "PUT", body)


def _name(name: str) -> ResourceIndex:
    return ResourceIndex({"name": [StringEntry(name, name)],
                          "identifier": [TokenEntry("s", name)]}, {"name": (name, name)})


def _by_code(code: str) -> SearchQuery:
    return SearchQuery("Patient", TokenMatch("identifier", "s", code))


async def test_sqlite_transaction_searches_see_buffered_rows(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.put(_version("a", 1), _name("anna"))
            assert [m.version.id for m in await tx.search(_by_code("anna"))] == ["a"]
            assert await tx.count("Patient", TokenMatch("identifier", "s", "anna")) == 1
            await tx.put(_version("b", 1), _name("bert"))
            await tx.put(_version("b", 2), _name("bob"))  # replaces b's buffered rows
            assert await tx.search(_by_code("bert")) == []
            assert [m.version.id for m in await tx.search(_by_code("bob"))] == ["b"]
        assert [m.version.id for m in await store.search(_by_code("bob"))] == ["b"]
        assert await store.search(_by_code("bert")) == []

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.put(_version("c", 1), _name("carl"))
                raise Boom
        assert await store.search(_by_code("carl")) == []
        async with store.transaction() as tx:
            await tx.put(_version("d", 1), _name("dora"))
        assert [m.version.id for m in await store.search(_by_code("dora"))] == ["d"]
        rows = store._read_conn.execute(
            "SELECT count(*) FROM idx_token WHERE rid IN ('a', 'b', 'c', 'd')").fetchone()
        assert rows[0] == 3
    finally:
        await store.close()


async def test_sqlite_index_rows_of_synthea_are_those_of_the_index(tmp_path: Path) -> None:
    """Every Synthea resource's stored rows are exactly index_rows of its index."""
    from fhir_server.store.sqlite_search import INDEX_TABLES, index_rows

    registry = default_registry()
    resources = synthea()[:400]
    store = SqliteStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        expected: dict[str, list[tuple[Any, ...]]] = {}
        async with store.transaction() as tx:
            for n, resource in enumerate(resources):
                index = index_resource(resource, registry)
                v = Version(resource["resourceType"], f"r{n}", 1, "2024-01-01T00:00:00.000000Z",
                            "POST", orjson.dumps(resource))
                await tx.put(v, index)
                for table, row in index_rows(v.type, v.id, index):
                    expected.setdefault(table, []).append(row)
        for table in (*INDEX_TABLES, "sort_keys"):
            stored = store._read_conn.execute(f"SELECT * FROM {table}").fetchall()
            assert sorted(map(repr, stored)) == sorted(map(repr, expected.get(table, [])))
    finally:
        await store.close()
    assert store._checkpointer is None


def test_new_ids_are_time_ordered_uuid7() -> None:
    import time
    import uuid

    from fhir_server.interactions import new_id
    from fhir_server.validation.structure import FHIR_ID

    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for id_ in ids:
        value = uuid.UUID(id_)
        assert str(value) == id_ and FHIR_ID.fullmatch(id_)
        assert value.version == 7 and value.variant == uuid.RFC_4122
    now = time.time_ns() // 1_000_000
    assert abs(int(ids[-1].replace("-", "")[:12], 16) - now) < 5_000
    earlier = new_id()
    time.sleep(0.002)
    assert new_id() > earlier


def _well_formed(text: str, type_code: str) -> bool:
    """The value matches its primitive type's format (date, id, uri, ...; see definitions), its
    date exists, its base64 decodes."""
    pattern = primitive_pattern(type_code)
    if pattern is not None and pattern.fullmatch(text) is None:
        return False
    if type_code in ("date", "dateTime", "instant") and len(text) >= 10:
        try:
            datetime.date(int(text[:4]), int(text[5:7]), int(text[8:10]))
        except ValueError:
            return False
    if type_code == "base64Binary":  # RFC 4648, spaces and line breaks aside
        compact = re.sub(r"[ \t\r\n]", "", text)
        data = compact.rstrip("=")
        padding = len(compact) - len(data)
        return (compact != "" and len(compact) % 4 == 0 and padding <= 2
                and all(c in _BASE64_ALPHABET for c in data))
    return True


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
