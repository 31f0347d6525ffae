"""Search at the storage level, on both engines: every predicate shape, sorting and keyset paging.

Each engine's answer is compared with a plain-Python evaluation of the same predicate over the
same index entries (`oracle`), for many generated predicates, so the SQL and MongoDB renderings
are checked against one reading of the semantics rather than against typed-in answers.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from fhir_server.search.model import (
    ANY,
    And,
    Chain,
    Composite,
    CompositeEntry,
    DateEntry,
    Has,
    IdMatch,
    Missing,
    Not,
    NumberEntry,
    Or,
    Predicate,
    QuantityEntry,
    RangeMatch,
    ReferenceEntry,
    ReferenceMatch,
    ResourceIndex,
    SortKey,
    StringEntry,
    StringMatch,
    TokenEntry,
    TokenMatch,
    UriEntry,
    UriMatch,
    normalize,
)
from fhir_server.search.ranges import range_conditions
from fhir_server.store.base import SearchQuery, Store, Version

NAMES = ["Иванова", "Ivanov", "Müller", "Mueller", "Petrova", "Smith", "Smithson", "Ölund"]
CODES = [("http://loinc.org", "4548-4"), ("http://loinc.org", "2345-7"), (None, "final"),
         ("http://snomed.info/sct", "4548-4")]
DATES = [("2024-01-01T00:00:00.000000Z", "2024-01-02T00:00:00.000000Z"),
         ("2024-06-15T10:00:00.000000Z", "2024-06-15T10:00:01.000000Z"),
         ("2023-12-31T00:00:00.000000Z", "2025-01-01T00:00:00.000000Z"),
         ("0001-01-01T00:00:00.000000Z", "2024-03-01T00:00:00.000000Z")]
NUMBERS = [1.0, 99.6, 100.0, 100.4, 250.0]
PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


def make_index(n: int, rng: random.Random) -> ResourceIndex:
    entries: dict[str, list[Any]] = {}
    if n % 5:
        name = NAMES[n % len(NAMES)]
        entries["name"] = [StringEntry(normalize(name), name)]
    entries["code"] = [TokenEntry(s, c, normalize(f"text {c}")) for s, c in
                       rng.sample(CODES, rng.randint(0, 2))]
    entries["date"] = [DateEntry(*d) for d in rng.sample(DATES, rng.randint(0, 2))]
    if n % 3:
        value = NUMBERS[n % len(NUMBERS)]
        entries["value"] = [QuantityEntry(value, value, "http://unitsofmeasure.org",
                                          "mg" if n % 2 else "g", "mg" if n % 2 else "g")]
        entries["n"] = [NumberEntry(value, value)]
    entries["subject"] = [ReferenceEntry("Patient", f"p{n % 4}")]
    entries["url"] = [UriEntry(f"http://example.org/fhir/{n % 3}")]
    entries["combo"] = [CompositeEntry(((TokenEntry(s, c),), (QuantityEntry(v, v, None, "mg",
                        None),))) for (s, c), v in zip(CODES[n % 2::2], NUMBERS[n % 3::2],
                                                       strict=False)]
    entries = {k: v for k, v in entries.items() if v}
    sort: dict[str, Any] = {}
    if "name" in entries:
        sort["name"] = (entries["name"][0].norm, entries["name"][0].norm)
    if "date" in entries:
        sort["date"] = (min(e.start for e in entries["date"]), max(e.end for e in entries["date"]))
    for param in ("code", "value", "n", "subject", "url"):
        if param in entries and param not in sort:
            sort[param] = ("x", "x")
    return ResourceIndex(entries, sort)


def patient_index(n: int) -> ResourceIndex:
    name = NAMES[n]
    return ResourceIndex({"family": [StringEntry(normalize(name), name)]},
                         {"family": (normalize(name), normalize(name))})


# ------------------------------------------------------------------------------------ oracle


def _leaf(p: Any, e: Any) -> bool:
    if isinstance(p, StringMatch):
        if not isinstance(e, StringEntry):
            return False
        return {"exact": e.exact == p.value, "contains": p.value in e.norm,
                "prefix": e.norm.startswith(p.value)}[p.mode]
    if isinstance(p, TokenMatch):
        if not isinstance(e, TokenEntry):
            return False
        if p.text is not None:
            return (e.text or "").startswith(p.text)
        code_ok = e.code is not None if p.code is ANY else e.code == p.code
        system_ok = p.system is ANY or e.system == p.system
        return code_ok and system_ok
    if isinstance(p, RangeMatch):
        low, high = (e.start, e.end) if isinstance(e, DateEntry) else (e.low, e.high)
        ops = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
               ">=": lambda a, b: a >= b}
        fields = {"low": low, "high": high}
        ok = any(all(ops[op](fields[f], v) for f, op, v in conj)
                 for conj in range_conditions(p))
        if isinstance(e, QuantityEntry):
            ok = ok and (p.code is None or e.code == p.code) and (
                p.system is None or e.system == p.system) and (
                p.unit is None or p.unit in (e.unit, e.code))
        return ok
    if isinstance(p, ReferenceMatch):
        if p.url is not None:
            return e.url == p.url
        return (p.id is None or e.id == p.id) and (p.type is None or e.type == p.type)
    if isinstance(p, UriMatch):
        return {"exact": e.value == p.value, "below": e.value.startswith(p.value),
                "above": p.value.startswith(e.value)}[p.mode]
    raise TypeError(p)


def oracle(p: Predicate, rid: str, data: dict[str, dict[str, ResourceIndex]], rtype: str) -> bool:
    index = data[rtype][rid]
    if isinstance(p, And):
        return all(oracle(c, rid, data, rtype) for c in p.predicates)
    if isinstance(p, Or):
        return any(oracle(c, rid, data, rtype) for c in p.predicates)
    if isinstance(p, Not):
        return not oracle(p.predicate, rid, data, rtype)
    if isinstance(p, IdMatch):
        return rid in p.ids
    if isinstance(p, Missing):
        return (p.param not in index.sort) == p.missing
    if isinstance(p, Composite):
        def holds(c: Predicate, e: Any) -> bool:
            return any(_leaf(x, e) for x in c.predicates) if isinstance(c, Or) else _leaf(c, e)

        return any(all(any(holds(c, e) for e in instance.components[i])
                       for i, c in enumerate(p.components))
                   for instance in index.entries.get(p.param, []))
    if isinstance(p, Chain):
        return any(e.type == p.target_type and e.id in data[p.target_type]
                   and oracle(p.where, e.id, data, p.target_type)
                   for e in index.entries.get(p.param, []))
    if isinstance(p, Has):
        return any(any(e.type == rtype and e.id == rid
                       for e in source.entries.get(p.param, []))
                   and oracle(p.where, sid, data, p.source_type)
                   for sid, source in data[p.source_type].items())
    return any(_leaf(p, e) for e in index.entries.get(p.param, []))  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ fixture


def body(type_: str, id_: str) -> bytes:
    return orjson.dumps({"resourceType": type_, "id": id_})


@pytest.fixture
async def loaded(store: Store) -> dict[str, dict[str, ResourceIndex]]:
    rng = random.Random(7)
    data: dict[str, dict[str, ResourceIndex]] = {"Observation": {}, "Patient": {}}
    async with store.transaction() as tx:
        for n in range(4):
            index = patient_index(n)
            data["Patient"][f"p{n}"] = index
            await tx.put(Version("Patient", f"p{n}", 1, f"2024-01-01T00:00:0{n}.000000Z", "PUT",
                                 body("Patient", f"p{n}")), index)
        for n in range(40):
            index = make_index(n, rng)
            data["Observation"][f"o{n:02d}"] = index
            v = Version("Observation", f"o{n:02d}", 1, f"2024-01-02T00:00:{n:02d}.000000Z",
                        "PUT", body("Observation", f"o{n:02d}"))
            await tx.put(v, index)
    return data


async def ids(store: Store, p: Predicate | None, rtype: str = "Observation") -> list[str]:
    return [m.version.id for m in await store.search(SearchQuery(rtype, p, limit=1000))]


def expected(data: dict[str, dict[str, ResourceIndex]], p: Predicate,
             rtype: str = "Observation") -> list[str]:
    return sorted(rid for rid in data[rtype] if oracle(p, rid, data, rtype))


# ------------------------------------------------------------------------------------ tests


def leaf_predicates() -> list[Predicate]:
    preds: list[Predicate] = []
    for name in ["iva", "иван", "smith", "SMITH", "mu", "ö", "olund", "x"]:
        preds += [StringMatch("name", normalize(name)), StringMatch("name", normalize(name),
                                                                    "contains")]
    preds += [StringMatch("name", "Smith", "exact"), StringMatch("name", "smith", "exact")]
    for system, code in [*CODES, ("http://loinc.org", ANY)]:
        preds += [TokenMatch("code", system, code), TokenMatch("code", ANY, code)]
    preds += [TokenMatch("code", text="text 45"), TokenMatch("code", None, "4548-4")]
    for (lo, hi), prefix in itertools.product(DATES[:3], PREFIXES):
        preds.append(RangeMatch("date", "date", prefix, lo, hi))  # type: ignore[arg-type]
    for prefix in PREFIXES:
        preds.append(RangeMatch("n", "number", prefix, 99.5, 100.5))  # type: ignore[arg-type]
        preds.append(RangeMatch("n", "number", prefix, 100.0, 100.0))  # type: ignore[arg-type]
        preds.append(RangeMatch("value", "quantity", prefix, 99.5, 100.5,  # type: ignore[arg-type]
                                "http://unitsofmeasure.org", "mg"))
    preds.append(RangeMatch("value", "quantity", "ge", 1.0, 1.0, unit="g"))
    preds += [ReferenceMatch("subject", "Patient", "p1"), ReferenceMatch("subject", None, "p2"),
              ReferenceMatch("subject", "Group", "p1")]
    preds += [UriMatch("url", "http://example.org/fhir/1"),
              UriMatch("url", "http://example.org/fhir", "below"),
              UriMatch("url", "http://example.org/fhir/2/extra", "above")]
    preds += [Missing("name", True), Missing("name", False), Missing("date", True)]
    preds += [IdMatch(("o01", "o02", "nope"))]
    return preds


@pytest.mark.parametrize("index", range(len(leaf_predicates())))
async def test_leaf_predicates_match_oracle(
    store: Store, loaded: dict[str, dict[str, ResourceIndex]], index: int
) -> None:
    p = leaf_predicates()[index]
    assert await ids(store, p) == expected(loaded, p), p


async def test_combinations_match_oracle(
    store: Store, loaded: dict[str, dict[str, ResourceIndex]]
) -> None:
    rng = random.Random(11)
    leaves = leaf_predicates()
    for _ in range(60):
        a, b, c = rng.sample(leaves, 3)
        for p in (And((a, b)), Or((a, b)), Not(a), And((Or((a, b)), Not(c))),
                  Or((TokenMatch("code", ANY, "final"), TokenMatch("code", ANY, "2345-7")))):
            assert await ids(store, p) == expected(loaded, p), p


async def test_composite_chain_has(
    store: Store, loaded: dict[str, dict[str, ResourceIndex]]
) -> None:
    composites = [
        Composite("combo", (TokenMatch("combo", ANY, "4548-4"),
                            RangeMatch("combo", "quantity", "gt", 50.0, 50.0))),
        Composite("combo", (TokenMatch("combo", "http://loinc.org", "2345-7"),
                            RangeMatch("combo", "quantity", "eq", 99.5, 100.5))),
        Composite("combo", (Or((TokenMatch("combo", ANY, "final"),
                                TokenMatch("combo", ANY, "2345-7"))),
                            RangeMatch("combo", "quantity", "lt", 200.0, 200.0))),
    ]
    for p in composites:
        found = await ids(store, p)
        assert found == expected(loaded, p), p
    assert await ids(store, composites[0])  # the data makes this one non-empty
    chains = [Chain("subject", "Patient", StringMatch("family", normalize("иван"))),
              Chain("subject", "Patient", StringMatch("family", "smith", "contains"))]
    for p in chains:
        assert await ids(store, p) == expected(loaded, p), p
    has = Has("Observation", "subject", TokenMatch("code", ANY, "final"))
    assert await ids(store, has, "Patient") == expected(loaded, has, "Patient")
    nested = Has("Observation", "subject", And((Missing("name", False),
                                                 StringMatch("name", "m"))))
    assert await ids(store, nested, "Patient") == expected(loaded, nested, "Patient")


async def test_count_matches_search(
    store: Store, loaded: dict[str, dict[str, ResourceIndex]]
) -> None:
    for p in leaf_predicates()[:20]:
        assert await store.count("Observation", p) == len(expected(loaded, p))
    assert await store.count("Observation", None) == 40


def _sort_value(index: ResourceIndex, key: SortKey) -> Any:
    pair = index.sort.get(key.param)
    return None if pair is None else pair[1 if key.descending else 0]


@pytest.mark.parametrize("sort", [
    (SortKey("name"),), (SortKey("name", True),), (SortKey("date"), SortKey("name", True)),
    (SortKey("date", True),), (SortKey("_id", True),), (SortKey("_lastUpdated", True),),
])
async def test_sorted_keyset_paging_forward_and_back(
    store: Store, loaded: dict[str, dict[str, ResourceIndex]], sort: tuple[SortKey, ...]
) -> None:
    everything = [m.version.id for m in await store.search(SearchQuery("Observation", None,
                                                                        sort, limit=1000))]
    # The expected order, computed from the sort keys: None first ascending, last descending.
    def order_key(rid: str) -> tuple[Any, ...]:
        parts: list[Any] = []
        for key in sort:
            if key.param == "_id":
                value: Any = rid
            elif key.param == "_lastUpdated":
                value = rid  # written in id order, one second apart
            else:
                value = _sort_value(loaded["Observation"][rid], key)
            missing = value is None
            if key.descending:
                parts += [missing, _Reverse(value)]
            else:
                parts += [not missing, value if not missing else ""]
        return (*parts, rid)

    assert everything == sorted(loaded["Observation"], key=order_key)
    pages: list[list[str]] = []
    after = None
    for _ in range(20):  # bounded: a cursor that does not advance must fail, not hang
        page = await store.search(SearchQuery("Observation", None, sort, limit=7, after=after))
        if not page:
            break
        pages.append([m.version.id for m in page])
        after = page[-1].position
    assert [rid for page in pages for rid in page] == everything
    # Walking back from the last page's first position gives the earlier pages in order.
    last_start = (await store.search(SearchQuery("Observation", None, sort, limit=1000)))[
        len(everything) - len(pages[-1])].position
    back = await store.search(SearchQuery("Observation", None, sort, limit=7, after=last_start,
                                          backwards=True))
    assert [m.version.id for m in back] == pages[-2]


class _Reverse:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reverse) -> bool:
        return self.value is not None and other.value is not None and self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.value == other.value


async def test_update_replaces_index_and_delete_removes_it(store: Store) -> None:
    first = ResourceIndex({"name": [StringEntry("alpha", "Alpha")]}, {"name": ("alpha", "alpha")})
    second = ResourceIndex({"name": [StringEntry("beta", "Beta")]}, {"name": ("beta", "beta")})
    async with store.transaction() as tx:
        await tx.put(Version("Patient", "a", 1, "2024-01-01T00:00:00.000000Z", "PUT",
                             body("Patient", "a")), first)
    async with store.transaction() as tx:
        await tx.put(Version("Patient", "a", 2, "2024-01-01T00:00:01.000000Z", "PUT",
                             body("Patient", "a")), second)
    assert await ids(store, StringMatch("name", "alpha"), "Patient") == []
    assert await ids(store, StringMatch("name", "beta"), "Patient") == ["a"]
    async with store.transaction() as tx:
        await tx.put(Version("Patient", "a", 3, "2024-01-01T00:00:02.000000Z", "DELETE", None))
    assert await ids(store, StringMatch("name", "beta"), "Patient") == []
    assert await ids(store, None, "Patient") == []
    assert await store.read_many([("Patient", "a")]) == []


async def test_read_many(store: Store, loaded: dict[str, dict[str, ResourceIndex]]) -> None:
    found = await store.read_many([("Patient", "p1"), ("Observation", "o03"), ("Patient", "zz")])
    assert sorted((v.type, v.id) for v in found) == [("Observation", "o03"), ("Patient", "p1")]


@pytest.mark.parametrize("value", ['{"$gt": ""}', "' OR 1=1 --", "%", "_", "\\", "a\x1fb",
                                   "$where", "\U0010ffff"])
async def test_hostile_values_are_plain_values(
    store: Store, loaded: dict[str, dict[str, ResourceIndex]], value: str
) -> None:
    for p in (StringMatch("name", value), StringMatch("name", value, "contains"),
              StringMatch("name", value, "exact"), TokenMatch("code", value, value),
              ReferenceMatch("subject", value, value), UriMatch("url", value, "above"),
              IdMatch((value,))):
        assert await ids(store, p) == [], p
