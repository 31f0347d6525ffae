"""Sorting and paging: `_sort` orders, `_count` pages, `next`/`previous` links, and pages that
stay consistent while other writes happen between page fetches.

Orders are computed from the data with the sort semantics the server documents (search.html
leaves the details open): a resource sorts by its smallest value ascending and its largest value
descending (for dates: earliest start, latest end); resources without a value come first
ascending and last descending; ties are broken by id, ascending.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cmp_to_key
from typing import Any

import httpx
import pytest

from tests.search.conftest import (
    BASE,
    BIG,
    Loaded,
    delete,
    entries,
    link,
    put,
    search_ids,
    search_pages,
)
from tests.search.fixtures import oracle as o

pytestmark = pytest.mark.asyncio(loop_scope="module")
writes = pytest.mark.asyncio(loop_scope="function")

Resource = dict[str, Any]
Values = Callable[[Resource, bool], list[Any]]
"""Sort values of a resource for one parameter; the flag is `descending` (dates differ)."""


def _dates(*get: Callable[[Resource], Any]) -> Values:
    def values(r: Resource, descending: bool) -> list[Any]:
        ranges = o.date_ranges(*(g(r) for g in get))
        return [end if descending else start for start, end in ranges]

    return values


def _reference(r: Resource, key: str) -> list[Any]:
    found = []
    for ref in o.reference_values(r.get(key)):
        text = ref.get("reference", "")
        tail = text.split("/_history/")[0].split("/")[-2:]
        if len(tail) == 2 and tail[0][:1].isupper():
            found.append("/".join(tail))
    return found


SORT_VALUES: dict[tuple[str, str], Values] = {
    ("Patient", "birthdate"): _dates(lambda r: r.get("birthDate")),
    ("Patient", "family"): lambda r, _: [o.norm(f) for f in o.names(r, ["family"])],
    ("Patient", "gender"): lambda r, _: [r["gender"]] if "gender" in r else [],
    ("Patient", "address-city"): lambda r, _: [o.norm(c) for c in o.addresses(r, ["city"])],
    ("Observation", "date"): _dates(lambda r: r.get("effectiveDateTime"),
                                    lambda r: r.get("effectiveInstant"),
                                    lambda r: r.get("effectivePeriod")),
    ("Observation", "value-quantity"): lambda r, _: [
        o.decimal(q["value"]) for q in o.quantities(r.get("valueQuantity"))],
    ("Observation", "code"): lambda r, _: [c for _, c, _ in o.codings(r["code"]) if c],
    ("Observation", "status"): lambda r, _: [r["status"]],
    ("Observation", "subject"): lambda r, _: _reference(r, "subject"),
    ("Encounter", "date"): _dates(lambda r: r.get("period")),
    ("Condition", "onset-date"): _dates(lambda r: r.get("onsetDateTime"),
                                        lambda r: r.get("onsetPeriod")),
}


def sort_value(resource_type: str, r: Resource, param: str, descending: bool) -> Any:
    if param == "_id":
        return r["id"]
    if param == "_lastUpdated":
        return r["meta"]["lastUpdated"]
    values = SORT_VALUES[(resource_type, param)](r, descending)
    if not values:
        return None
    return max(values) if descending else min(values)


def expected_order(d: Loaded, resource_type: str, sort: str,
                   keep: Callable[[Resource], bool] = lambda r: True) -> list[str]:
    keys = [(k.removeprefix("-"), k.startswith("-")) for k in sort.split(",")]

    def compare(a: Resource, b: Resource) -> int:
        for param, descending in keys:
            va = sort_value(resource_type, a, param, descending)
            vb = sort_value(resource_type, b, param, descending)
            if va == vb:
                continue
            if va is None or vb is None:  # no value: first ascending, last descending
                first = va is None
                return (-1 if first else 1) * (-1 if descending else 1)
            smaller = va < vb
            return (-1 if smaller else 1) * (-1 if descending else 1)
        return -1 if a["id"] < b["id"] else 1 if a["id"] > b["id"] else 0

    chosen = [r for r in d.of_type(resource_type) if keep(r)]
    return [r["id"] for r in sorted(chosen, key=cmp_to_key(compare))]


SORTS: list[tuple[str, str]] = [
    ("Patient", "birthdate"), ("Patient", "-birthdate"), ("Patient", "family"),
    ("Patient", "-family"), ("Patient", "gender,-birthdate"), ("Patient", "-gender,family"),
    ("Patient", "_id"), ("Patient", "-_id"), ("Patient", "_lastUpdated"),
    ("Patient", "-_lastUpdated"), ("Patient", "address-city"), ("Patient", "birthdate,family"),
    ("Observation", "date"), ("Observation", "-date"), ("Observation", "value-quantity"),
    ("Observation", "-value-quantity"), ("Observation", "code,-date"),
    ("Observation", "subject,_id"), ("Observation", "status,-value-quantity"),
    ("Encounter", "date"), ("Encounter", "-date"), ("Condition", "-onset-date"),
]


@pytest.mark.parametrize("spec", SORTS, ids=lambda s: f"{s[0]}?_sort={s[1]}")
async def test_sort_order(loaded: Loaded, spec: tuple[str, str]) -> None:
    resource_type, sort = spec
    expected = expected_order(loaded, resource_type, sort)
    got = await search_ids(loaded.client, f"/{resource_type}", [("_sort", sort), ("_count", BIG)])
    assert got == expected
    paged = await search_ids(loaded.client, f"/{resource_type}", [("_sort", sort),
                                                                   ("_count", "3")])
    assert paged == expected


async def test_sort_with_filter(loaded: Loaded) -> None:
    def keep(r: Resource) -> bool:
        return o.token_match("8867-4,29463-7", o.codings(r["code"]))

    expected = expected_order(loaded, "Observation", "-value-quantity,date", keep)
    got = await search_ids(loaded.client, "/Observation", [
        ("code", "8867-4,29463-7"), ("_sort", "-value-quantity,date"), ("_count", "2")])
    assert len(expected) > 4 and got == expected


PAGED_SEARCHES: list[tuple[str, list[tuple[str, str]], Callable[[Resource], bool]]] = [
    ("Observation", [], lambda r: True),
    ("Patient", [], lambda r: True),
    ("Observation", [("code", "8867-4")], lambda r: o.token_match("8867-4", o.codings(r["code"]))),
    ("Patient", [("_sort", "birthdate")], lambda r: True),
    ("Observation", [("status", "final"), ("_sort", "-date")], lambda r: r["status"] == "final"),
]


@pytest.mark.parametrize("count", [1, 4, 7])
@pytest.mark.parametrize("spec", PAGED_SEARCHES,
                         ids=lambda s: f"{s[0]}-{'&'.join('='.join(p) for p in s[1])}")
async def test_pages_hold_each_match_once(
    loaded: Loaded, spec: tuple[str, list[tuple[str, str]], Callable[[Resource], bool]],
    count: int,
) -> None:
    resource_type, params, keep = spec
    expected = loaded.ids(resource_type, keep)
    pages = await search_pages(loaded.client, f"/{resource_type}",
                               [*params, ("_count", str(count))])
    got = [e["resource"]["id"] for p in pages for e in entries(p)]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert len(pages) == max(1, math.ceil(len(expected) / count))
    assert all(len(entries(p)) == count for p in pages[:-1])
    assert {p["total"] for p in pages} == {len(expected)}


@pytest.mark.parametrize("spec", [("Observation", "_id", 4), ("Patient", "-birthdate", 3),
                                  ("Observation", "code,-date", 5)])
async def test_previous_links_lead_back(loaded: Loaded, spec: tuple[str, str, int]) -> None:
    resource_type, sort, count = spec
    pages = await search_pages(loaded.client, f"/{resource_type}",
                               [("_sort", sort), ("_count", str(count))])
    assert len(pages) >= 3
    assert link(pages[0], "previous") is None
    forward = [[e["resource"]["id"] for e in entries(p)] for p in pages]
    current = pages[-1]
    for index in range(len(pages) - 2, -1, -1):
        url = link(current, "previous")
        assert url is not None, f"no previous link on page {index + 2}"
        response = await loaded.client.get(url)
        assert response.status_code == 200
        current = response.json()
        assert [e["resource"]["id"] for e in entries(current)] == forward[index]
    # From a page reached backwards, `next` leads forward again.
    url = link(current, "next")
    assert url is not None
    again = (await loaded.client.get(url)).json()
    assert [e["resource"]["id"] for e in entries(again)] == forward[1]


async def test_default_page_size_and_count_zero(loaded: Loaded) -> None:
    total = len(loaded.of_type("Observation"))
    first = (await loaded.client.get("/Observation")).json()
    assert total > 20
    assert len(entries(first)) == 20 and link(first, "next") is not None
    zero = (await loaded.client.get("/Observation", params={"_count": "0"})).json()
    assert zero["total"] == total and not entries(zero)


async def test_self_link_reproduces_the_page(loaded: Loaded) -> None:
    pages = await search_pages(loaded.client, "/Patient",
                               [("gender", "female"), ("_sort", "family"), ("_count", "2")])
    for page in pages:
        self_url = link(page, "self")
        assert self_url is not None
        again = (await loaded.client.get(self_url)).json()
        assert again["entry"] == page["entry"]


# ---------------------------------------------------------------------------- writes between pages


def member(i: int, family: str = "Pager", birth_year: int | None = None) -> Resource:
    return {"resourceType": "Patient", "id": f"pg-{i:02d}", "name": [{"family": family}],
            "birthDate": f"{birth_year or 1950 + (i * 7) % 40}-06-15"}


async def walk_with_writes(
    client: httpx.AsyncClient, params: list[tuple[str, str]],
    between: Callable[[int, set[str]], Any],
) -> list[str]:
    """Ids over all pages; `between(page_number, seen)` runs before each later page."""
    response = await client.get("/Patient", params=params)
    assert response.status_code == 200
    page = response.json()
    got = [e["resource"]["id"] for e in entries(page)]
    number = 1
    while (url := link(page, "next")) is not None:
        await between(number, set(got))
        response = await client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        got += [e["resource"]["id"] for e in entries(page)]
        number += 1
    return got


@writes
@pytest.mark.parametrize("sort", ["_id", "birthdate", "-family,_id"])
async def test_pages_stay_consistent_under_writes(client: httpx.AsyncClient, sort: str) -> None:
    for i in range(1, 25):
        await put(client, member(i))
    stable = {f"pg-{i:02d}" for i in range(1, 25)}
    removed: set[str] = set()
    added: set[str] = set()

    ran: list[int] = []

    async def between(number: int, seen: set[str]) -> None:
        if number <= 3:
            ran.append(number)
        unseen = sorted(stable - seen - removed)
        if number == 1:  # delete two not yet seen; one stops matching
            for rid in unseen[-2:]:
                await delete(client, "Patient", rid)
                removed.add(rid)
            changed = unseen[len(unseen) // 2]
            await put(client, {**member(int(changed[3:])), "name": [{"family": "Other"}]})
            removed.add(changed)
        elif number == 2:  # new matches, with ids before and after what has been seen
            for i in (0, 90, 91):
                await put(client, member(i))
                added.add(f"pg-{i:02d}")
        elif number == 3:  # change a seen resource without changing its sort values
            rid = sorted(seen)[0]
            await put(client, {**member(int(rid[3:])), "gender": "other"})

    got = await walk_with_writes(client, [("family", "pager"), ("_sort", sort),
                                          ("_count", "4")], between)
    assert len(got) == len(set(got)), f"repeated: {sorted(r for r in got if got.count(r) > 1)}"
    untouched = stable - removed
    assert untouched <= set(got), f"skipped: {sorted(untouched - set(got))}"
    assert set(got) <= stable | added  # nothing that never matched
    # Deleted or changed resources that had not been seen before the write never show up.
    assert len(removed) == 3 and set(got).isdisjoint(removed)
    assert len(added) == 3 and ran == [1, 2, 3]
    final = await search_ids(client, "/Patient", [("family", "pager"), ("_sort", sort),
                                                  ("_count", "1000")])
    assert set(final) == (stable - removed) | added


@writes
async def test_deleted_before_reaching_their_page_never_appear(client: httpx.AsyncClient) -> None:
    for i in range(1, 13):
        await put(client, member(i))
    doomed = {"pg-10", "pg-11", "pg-12"}

    async def between(number: int, seen: set[str]) -> None:
        if number == 1:
            for rid in sorted(doomed):
                await delete(client, "Patient", rid)

    got = await walk_with_writes(client, [("family", "pager"), ("_count", "3")], between)
    assert not set(got) & doomed
    assert sorted(got) == sorted({f"pg-{i:02d}" for i in range(1, 10)})


async def test_previous_links_across_types_in_system_search(loaded: Loaded) -> None:
    types = ("Organization", "Practitioner", "Group")
    pages = await search_pages(loaded.client, BASE, [("_type", ",".join(types)),
                                                     ("_count", "3")])
    forward = [[e["resource"]["id"] for e in entries(p)] for p in pages]
    assert sorted(r for page in forward for r in page) == sorted(
        r["id"] for t in types for r in loaded.of_type(t))
    backward = []
    current = pages[-1]
    while (url := link(current, "previous")) is not None:
        current = (await loaded.client.get(url)).json()
        backward.append([e["resource"]["id"] for e in entries(current)])
    assert backward == forward[-2::-1]
