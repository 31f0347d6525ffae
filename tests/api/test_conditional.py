"""Conditional create, update, patch and delete over REST, on both engines, race-safe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from fhir_server.app import create_app
from tests.conftest import BASE, drop_store, make_store, settings_for

FHIR_JSON = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:oid:1.2.3"


def patient(value: str, family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": family}],
        **extra,
    }


@asynccontextmanager
async def app_client(
    engine: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings_for(tmp_path, **overrides), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http
    await drop_store(handle)


async def ids(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(f"/Patient?{query}&_count=100")
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


async def test_conditional_create_0_1_many(client: httpx.AsyncClient) -> None:
    condition = {"If-None-Exist": f"identifier={SYSTEM}|a", **FHIR_JSON}
    first = await client.post("/Patient", json=patient("a"), headers=condition)
    assert first.status_code == 201, first.text
    again = await client.post("/Patient", json=patient("a", "Other"), headers=condition)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == [{"family": "Doe"}]  # the existing resource, unchanged
    assert again.headers["etag"] == 'W/"1"'
    await client.post("/Patient", json=patient("b", "Twin"), headers=FHIR_JSON)
    await client.post("/Patient", json=patient("c", "Twin"), headers=FHIR_JSON)
    many = await client.post(
        "/Patient", json=patient("d"), headers={"If-None-Exist": "family=Twin", **FHIR_JSON}
    )
    assert many.status_code == 412
    assert many.json()["resourceType"] == "OperationOutcome"
    assert await ids(client, f"identifier={SYSTEM}|d") == []


async def test_conditional_create_bad_criteria_is_400(client: httpx.AsyncClient) -> None:
    bad = await client.post(
        "/Patient", json=patient("x"), headers={"If-None-Exist": "nonsense=1", **FHIR_JSON}
    )
    assert bad.status_code == 400
    assert await ids(client, f"identifier={SYSTEM}|x") == []


async def test_conditional_update(client: httpx.AsyncClient) -> None:
    url = f"/Patient?identifier={SYSTEM}|u"
    created = await client.put(url, json=patient("u"), headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    updated = await client.put(url, json=patient("u", "Changed"), headers=FHIR_JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == pid and updated.json()["meta"]["versionId"] == "2"
    # An id in the body that differs from the match is a 400.
    clash = await client.put(url, json=patient("u", id="someone-else"), headers=FHIR_JSON)
    assert clash.status_code == 400
    # No match with an id in the body: update as create with that id.
    with_id = await client.put(
        f"/Patient?identifier={SYSTEM}|new", json=patient("new", id="chosen"), headers=FHIR_JSON
    )
    assert with_id.status_code == 201 and with_id.json()["id"] == "chosen"
    await client.post("/Patient", json=patient("m1", "Many"), headers=FHIR_JSON)
    await client.post("/Patient", json=patient("m2", "Many"), headers=FHIR_JSON)
    many = await client.put("/Patient?family=Many", json=patient("m3"), headers=FHIR_JSON)
    assert many.status_code == 412
    # If-Match applies to the matched resource.
    stale = await client.put(
        url, json=patient("u", "X"), headers={"If-Match": 'W/"1"', **FHIR_JSON}
    )
    assert stale.status_code == 412
    fresh = await client.put(
        url, json=patient("u", "X"), headers={"If-Match": 'W/"2"', **FHIR_JSON}
    )
    assert fresh.status_code == 200


async def test_conditional_update_needs_criteria(client: httpx.AsyncClient) -> None:
    # Without criteria PUT on a type is no interaction at all (405); unusable criteria are 400.
    response = await client.put("/Patient", json=patient("z"), headers=FHIR_JSON)
    assert response.status_code == 405
    response = await client.put("/Patient?unknown=1", json=patient("z"), headers=FHIR_JSON)
    assert response.status_code == 400
    response = await client.delete("/Patient?_count=5")
    assert response.status_code == 400


async def test_conditional_patch(client: httpx.AsyncClient) -> None:
    ops = [{"op": "replace", "path": "/name/0/family", "value": "Patched"}]
    jp = {"Content-Type": "application/json-patch+json"}
    missing = await client.patch(f"/Patient?identifier={SYSTEM}|p", json=ops, headers=jp)
    assert missing.status_code == 404
    await client.post("/Patient", json=patient("p"), headers=FHIR_JSON)
    done = await client.patch(f"/Patient?identifier={SYSTEM}|p", json=ops, headers=jp)
    assert done.status_code == 200, done.text
    assert done.json()["name"][0]["family"] == "Patched"
    await client.post("/Patient", json=patient("p"), headers=FHIR_JSON)
    many = await client.patch(f"/Patient?identifier={SYSTEM}|p", json=ops, headers=jp)
    assert many.status_code == 412


async def test_conditional_delete_single(client: httpx.AsyncClient) -> None:
    none = await client.delete(f"/Patient?identifier={SYSTEM}|gone")
    assert none.status_code == 200
    made = await client.post("/Patient", json=patient("gone"), headers=FHIR_JSON)
    one = await client.delete(f"/Patient?identifier={SYSTEM}|gone")
    assert one.status_code == 200 and one.headers["etag"] == 'W/"2"'
    assert (await client.get(f"/Patient/{made.json()['id']}")).status_code == 410
    await client.post("/Patient", json=patient("d1", "Dup"), headers=FHIR_JSON)
    await client.post("/Patient", json=patient("d2", "Dup"), headers=FHIR_JSON)
    many = await client.delete("/Patient?family=Dup")
    assert many.status_code == 412
    assert len(await ids(client, "family=Dup")) == 2


async def test_conditional_delete_multiple_setting(engine: str, tmp_path: Path) -> None:
    async with app_client(engine, tmp_path, conditional_delete="multiple") as client:
        for n in range(3):
            await client.post("/Patient", json=patient(f"d{n}", "Dup"), headers=FHIR_JSON)
        response = await client.delete("/Patient?family=Dup")
        assert response.status_code == 200, response.text
        assert "Deleted 3" in response.text
        assert await ids(client, "family=Dup") == []
        statement = (await client.get("/metadata")).json()
        assert statement["rest"][0]["resource"][0]["conditionalDelete"] == "multiple"


async def test_capabilities_declare_conditionals(client: httpx.AsyncClient) -> None:
    statement = (await client.get("/metadata")).json()
    rest = statement["rest"][0]
    assert {"code": "transaction"} in rest["interaction"]
    assert {"code": "batch"} in rest["interaction"]
    first = rest["resource"][0]
    assert first["conditionalCreate"] is True and first["conditionalUpdate"] is True
    assert first["conditionalDelete"] == "single"


async def test_50_concurrent_conditional_creates_make_one(client: httpx.AsyncClient) -> None:
    headers = {"If-None-Exist": f"identifier={SYSTEM}|race", **FHIR_JSON}
    responses = await asyncio.gather(
        *(client.post("/Patient", json=patient("race"), headers=headers) for _ in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [201], statuses
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(await ids(client, f"identifier={SYSTEM}|race")) == 1


async def test_50_concurrent_conditional_updates_make_one(client: httpx.AsyncClient) -> None:
    url = f"/Patient?identifier={SYSTEM}|race-u"
    responses = await asyncio.gather(
        *(client.put(url, json=patient("race-u", f"N{n}"), headers=FHIR_JSON) for n in range(50))
    )
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    assert sum(r.status_code == 201 for r in responses) == 1
    found = await ids(client, f"identifier={SYSTEM}|race-u")
    assert len(found) == 1
    history = (await client.get(f"/Patient/{found[0]}/_history", params={"_count": 100})).json()
    assert len(history["entry"]) == 50
