"""History at instance, type and system level: order, _since, _at, _count and next links."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.api.test_crud import FHIR_JSON, create, patient


async def pages(client: httpx.AsyncClient, url: str, **params: Any) -> list[dict[str, Any]]:
    """Follow `next` links from `url`, returning every page."""
    bundles = []
    # httpx drops a URL's own query string when given params, even empty ones.
    response = await client.get(url, params=params) if params else await client.get(url)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["type"] == "history"
        bundles.append(bundle)
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return bundles
        response = await client.get(following[0])


def keys(bundles: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (e["fullUrl"].rsplit("/", 2)[-2] + "/" + e["fullUrl"].rsplit("/", 1)[-1],
         e["response"]["etag"])
        for b in bundles for e in b.get("entry", [])
    ]


async def test_instance_history_newest_first(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    for gender in ("male", "other"):
        await client.put(url, json={**created, "gender": gender}, headers=FHIR_JSON)
    bundle = (await client.get(f"{url}/_history")).json()
    entries = bundle["entry"]
    assert [e["resource"]["gender"] for e in entries] == ["other", "male", "female"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    times = [e["response"]["lastModified"] for e in entries]
    assert times == sorted(times, reverse=True)
    assert (await client.get("/Patient/nobody/_history")).status_code == 404


async def test_paging_covers_everything_once_despite_concurrent_writes(
    client: httpx.AsyncClient,
) -> None:
    for n in range(23):
        await create(client, patient(birthDate=f"19{50 + n}-01-01"))
    first = (await client.get("/Patient/_history", params={"_count": 5})).json()
    seen = keys([first])
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    # Writes between pages land before the first page's position: they must not shift pages.
    await asyncio.gather(*(create(client, patient()) for _ in range(4)))
    rest = await pages(client, next_url)
    seen += keys(rest)
    assert len(seen) == 23 == len(set(seen))
    assert all(len(b["entry"]) <= 5 for b in rest)


async def test_type_and_system_levels(client: httpx.AsyncClient) -> None:
    p = await create(client, patient())
    org = await create(client, {"resourceType": "Organization", "name": "City Hospital"})
    type_level = keys(await pages(client, "/Patient/_history"))
    # The audit trail's records of these requests are in the system history too.
    system_level = [k for k in keys(await pages(client, "/_history", _count=1))
                    if not k[0].startswith("AuditEvent/")]
    assert type_level == [(f"Patient/{p['id']}", 'W/"1"')]
    assert system_level == [(f"Organization/{org['id']}", 'W/"1"'), (f"Patient/{p['id']}", 'W/"1"')]


async def test_since_and_at(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    second = (await client.put(url, json={**created, "gender": "male"}, headers=FHIR_JSON)).json()
    cut = second["meta"]["lastUpdated"]
    await client.put(url, json={**created, "gender": "other"}, headers=FHIR_JSON)
    since = (await client.get(f"{url}/_history", params={"_since": cut})).json()
    assert [e["response"]["etag"] for e in since["entry"]] == ['W/"3"', 'W/"2"']
    # At the instant version 2 was written, version 2 was current; version 1 no longer was.
    at = (await client.get(f"{url}/_history", params={"_at": cut})).json()
    assert [e["response"]["etag"] for e in at["entry"]] == ['W/"2"']
    year = cut[:4]
    whole_year = (await client.get(f"{url}/_history", params={"_at": year})).json()
    assert len(whole_year["entry"]) == 3
    before = (await client.get(f"{url}/_history", params={"_at": "1999"})).json()
    assert before.get("entry", []) == []


async def test_bad_history_parameters(client: httpx.AsyncClient) -> None:
    for params in ({"_count": "many"}, {"_since": "yesterday"}, {"_at": "2024-13"},
                   {"_cursor": "garbage"}):
        response = await client.get("/Patient/_history", params=params)
        assert response.status_code == 400, params
        assert response.json()["resourceType"] == "OperationOutcome"
