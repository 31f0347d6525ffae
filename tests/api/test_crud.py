"""Create, read, vread, update, delete over HTTP, with their headers and preconditions."""

from __future__ import annotations

import asyncio
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import httpx

from tests.api.conftest import BASE

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Иванова", "given": ["Мария"]}],
            "gender": "female", "birthDate": "1980-04-12", **extra}


async def create(client: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_assigns_id_version_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.post("/Patient", json=patient(id="client-chosen"), headers=FHIR_JSON)
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["name"] == patient()["name"]
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"{BASE}/Patient/{body['id']}/_history/1"
    assert response.headers["content-type"].startswith("application/fhir+json")
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert body["meta"]["lastUpdated"].startswith(modified.strftime("%Y-%m-%dT%H:%M:%S"))


async def test_read_returns_what_create_stored(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    response = await client.get(f"/Patient/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == 'W/"1"'


async def test_update_versions_and_vread_each(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    changed = {**created, "gender": "other"}
    response = await client.put(f"/Patient/{created['id']}", json=changed, headers=FHIR_JSON)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'
    first = (await client.get(f"/Patient/{created['id']}/_history/1")).json()
    second = (await client.get(f"/Patient/{created['id']}/_history/2")).json()
    assert (first["gender"], second["gender"]) == ("female", "other")
    assert second["meta"]["lastUpdated"] > first["meta"]["lastUpdated"]
    missing = await client.get(f"/Patient/{created['id']}/_history/3")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


async def test_update_as_create_with_client_id(client: httpx.AsyncClient) -> None:
    response = await client.put("/Patient/pat-1", json=patient(id="pat-1"), headers=FHIR_JSON)
    assert response.status_code == 201
    assert response.headers["location"].endswith("/Patient/pat-1/_history/1")
    assert (await client.get("/Patient/pat-1")).json()["id"] == "pat-1"


async def test_update_with_identical_content_creates_no_version(
    client: httpx.AsyncClient,
) -> None:
    first = await client.put("/Patient/same", json=patient(id="same"), headers=FHIR_JSON)
    again = await client.put("/Patient/same", json=first.json(), headers=FHIR_JSON)
    assert again.status_code == 200
    assert again.json()["meta"] == first.json()["meta"]
    history = (await client.get("/Patient/same/_history")).json()
    assert len(history["entry"]) == 1


async def test_delete_leaves_tombstone_then_recreate(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    deleted = await client.delete(url)
    assert deleted.status_code == 200
    assert deleted.headers["etag"] == 'W/"2"'
    gone = await client.get(url)
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert (await client.get(f"{url}/_history/2")).status_code == 410
    assert (await client.get(f"{url}/_history/1")).status_code == 200
    again = await client.delete(url)
    assert again.status_code == 200
    assert "etag" not in again.headers
    without_meta = {k: v for k, v in created.items() if k != "meta"}
    recreated = await client.put(url, json=without_meta, headers=FHIR_JSON)
    assert recreated.status_code == 201
    assert recreated.json()["meta"]["versionId"] == "3"
    entries = (await client.get(f"{url}/_history")).json()["entry"]
    assert [e["request"]["method"] for e in entries] == ["PUT", "DELETE", "POST"]
    assert "resource" not in entries[1]


async def test_delete_unknown_resource_is_harmless(client: httpx.AsyncClient) -> None:
    response = await client.delete("/Patient/never-was")
    assert response.status_code == 200
    assert (await client.get("/Patient/never-was")).status_code == 404


async def test_if_match(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    stale = await client.put(url, json=created, headers={**FHIR_JSON, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    ok = await client.put(url, json={**created, "active": True},
                          headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    assert (await client.delete(url, headers={"If-Match": 'W/"1"'})).status_code == 412
    assert (await client.get(url)).status_code == 200


async def test_conditional_read(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    assert (await client.get(url, headers={"If-None-Match": 'W/"1"'})).status_code == 304
    assert (await client.get(url, headers={"If-None-Match": 'W/"0"'})).status_code == 200
    modified = (await client.get(url)).headers["last-modified"]
    assert (await client.get(url, headers={"If-Modified-Since": modified})).status_code == 304
    earlier = parsedate_to_datetime(modified).replace(year=2000)
    older = format_datetime(earlier, usegmt=True)
    assert (await client.get(url, headers={"If-Modified-Since": older})).status_code == 200


async def test_prefer_return(client: httpx.AsyncClient) -> None:
    minimal = await client.post(
        "/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"}
    )
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"]
    outcome = await client.post(
        "/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"}
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"
    assert outcome.json()["issue"][0]["severity"] == "information"


async def test_concurrent_updates_with_same_if_match(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"

    async def attempt(n: int) -> int:
        body = {**created, "name": [{"family": f"Name{n}"}]}
        response = await client.put(url, json=body, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
        return response.status_code

    statuses = await asyncio.gather(*(attempt(n) for n in range(50)))
    assert sorted(statuses) == [200] + [412] * 49
    assert (await client.get(url)).json()["meta"]["versionId"] == "2"


async def test_concurrent_updates_without_if_match_lose_nothing(
    client: httpx.AsyncClient,
) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"

    async def attempt(n: int) -> int:
        body = {**created, "name": [{"family": f"Name{n}"}]}
        return (await client.put(url, json=body, headers=FHIR_JSON)).status_code

    statuses = await asyncio.gather(*(attempt(n) for n in range(50)))
    assert statuses == [200] * 50
    entries = (await client.get(f"{url}/_history", params={"_count": 100})).json()["entry"]
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in entries)
    assert versions == list(range(1, 52))
    families = {e["resource"]["name"][0]["family"] for e in entries[:-1]}
    assert families == {f"Name{n}" for n in range(50)}
