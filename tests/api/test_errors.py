"""Every error a client can provoke is an OperationOutcome with the right status and location.

Each test checks what a FHIR client relies on: the HTTP status, an OperationOutcome body in the
negotiated format, the FHIRPath `expression` of each problem where the issue is in the content,
no Python internals leaking out, and nothing written by a request that failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.app import create_app
from tests.api.conftest import BASE, settings_for
from tests.api.test_crud import FHIR_JSON, create, patient
from tests.conftest import data_history, drop_store, make_store

TRACEBACK_MARKERS = ("Traceback", 'File "')


def outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert `response` is an error OperationOutcome with `status`; return it (JSON)."""
    assert response.status_code == status, (response.status_code, response.text)
    for marker in TRACEBACK_MARKERS:
        assert marker not in response.text, response.text
    assert response.headers["content-type"].startswith("application/fhir+json"), response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    assert all(issue["severity"] in ("error", "fatal") for issue in body["issue"]), body
    assert all(issue.get("code") for issue in body["issue"]), body
    return body


def expressions(body: dict[str, Any]) -> list[str]:
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


async def history_size(client: httpx.AsyncClient) -> int:
    return len(await data_history(client))


# --- unknown things ------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", ["Foo", "patient", "Resource", "DomainResource"])
async def test_unknown_resource_type_is_404(client: httpx.AsyncClient, rtype: str) -> None:
    outcome(await client.get(f"/{rtype}/x"), 404)
    outcome(await client.get(f"/{rtype}/x/_history"), 404)
    outcome(await client.get(f"/{rtype}/_history"), 404)
    outcome(await client.post(f"/{rtype}", json={"resourceType": rtype}, headers=FHIR_JSON), 404)
    body = {"resourceType": rtype, "id": "x"}
    outcome(await client.put(f"/{rtype}/x", json=body, headers=FHIR_JSON), 404)
    assert await history_size(client) == 0


async def test_get_on_unknown_type_is_404_not_405(client: httpx.AsyncClient) -> None:
    outcome(await client.get("/Foo"), 404)


async def test_unknown_id_and_version_are_404(client: httpx.AsyncClient) -> None:
    body = outcome(await client.get("/Patient/no-such-patient"), 404)
    assert body["issue"][0]["code"] == "not-found"
    created = await create(client, patient())
    outcome(await client.get(f"/Patient/{created['id']}/_history/2"), 404)
    outcome(await client.get(f"/Patient/{created['id']}/_history/one"), 404)


async def test_unknown_path_is_404_outcome(client: httpx.AsyncClient) -> None:
    outcome(await client.get("/Patient/x/_history/1/extra"), 404)
    outcome(await client.get("http://testserver/not-fhir-at-all"), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/Patient"), ("PUT", "/Patient"), ("PATCH", "/Patient"), ("POST", "/Patient/x"),
     ("DELETE", "/Patient/x/_history/1"), ("PUT", "/metadata")],
)
async def test_method_not_allowed_is_405_outcome(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json=patient(), headers=FHIR_JSON)
    outcome(response, 405)


# --- unparsable or mismatched bodies (400) -------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b'{"resourceType": "Patient",', b"not json", b"", b"   ", b"\xff\xfe{}", b"[]",
     b'[{"resourceType": "Patient"}]', b'"Patient"', b"42", b"null"],
)
async def test_unparsable_or_non_object_body_is_400(
    client: httpx.AsyncClient, content: bytes
) -> None:
    outcome(await client.post("/Patient", content=content, headers=FHIR_JSON), 400)
    outcome(await client.put("/Patient/p1", content=content, headers=FHIR_JSON), 400)
    assert await history_size(client) == 0


async def test_resource_type_mismatch_is_400(client: httpx.AsyncClient) -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    outcome(await client.post("/Patient", json=observation, headers=FHIR_JSON), 400)
    outcome(await client.put("/Patient/x", json={**observation, "id": "x"}, headers=FHIR_JSON),
            400)
    outcome(await client.post("/Patient", json={"name": [{"family": "X"}]}, headers=FHIR_JSON),
            400)
    assert await history_size(client) == 0


async def test_put_id_must_match_url(client: httpx.AsyncClient) -> None:
    body = outcome(await client.put("/Patient/a", json=patient(id="b"), headers=FHIR_JSON), 400)
    assert "Patient.id" in expressions(body)
    body = outcome(await client.put("/Patient/a", json=patient(), headers=FHIR_JSON), 400)
    assert "Patient.id" in expressions(body)
    outcome(await client.get("/Patient/a"), 404)
    outcome(await client.get("/Patient/b"), 404)


@pytest.mark.parametrize("bad_id", ["bad id!", "a" * 65, "under_score", "ümlaut"])
async def test_invalid_id_in_url_is_400(client: httpx.AsyncClient, bad_id: str) -> None:
    body = outcome(
        await client.put(f"/Patient/{bad_id}", json=patient(id=bad_id), headers=FHIR_JSON), 400
    )
    assert "Patient.id" in expressions(body)
    assert await history_size(client) == 0


async def test_longest_valid_id_is_accepted(client: httpx.AsyncClient) -> None:
    id_ = "A-z.9" * 12 + "abcd"
    assert len(id_) == 64
    response = await client.put(f"/Patient/{id_}", json=patient(id=id_), headers=FHIR_JSON)
    assert response.status_code == 201, response.text


async def test_malformed_if_match_is_400(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    headers = {**FHIR_JSON, "If-Match": "version-one"}
    outcome(await client.put(url, json={**created, "active": True}, headers=headers), 400)
    outcome(await client.delete(url, headers={"If-Match": "nope"}), 400)
    assert (await client.get(url)).json() == created


# --- invalid resources (422 with FHIRPath expressions) -------------------------------------------


async def test_unknown_element_is_422_with_expression(client: httpx.AsyncClient) -> None:
    body = outcome(await client.post("/Patient", json=patient(foo=1), headers=FHIR_JSON), 422)
    assert expressions(body) == ["Patient.foo"]
    nested = patient(name=[{"family": "X", "nickname": "Y"}])
    body = outcome(await client.post("/Patient", json=nested, headers=FHIR_JSON), 422)
    assert expressions(body) == ["Patient.name[0].nickname"]


@pytest.mark.parametrize(
    ("element", "value"),
    [("birthDate", 5), ("birthDate", "12 April 1980"), ("gender", ["female"]),
     ("name", {"family": "X"}), ("multipleBirthInteger", "two")],
)
async def test_wrong_type_is_422_with_expression(
    client: httpx.AsyncClient, element: str, value: Any
) -> None:
    resource = patient(**{element: value})
    body = outcome(await client.post("/Patient", json=resource, headers=FHIR_JSON), 422)
    assert f"Patient.{element}" in expressions(body)
    assert await history_size(client) == 0


async def test_string_for_boolean_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/Patient", json=patient(active="yes"), headers=FHIR_JSON)
    body = outcome(response, 422)
    assert expressions(body) == ["Patient.active"]


@pytest.mark.parametrize(("element", "value"), [("active", None), ("name", [])])
async def test_null_or_empty_array_is_422(
    client: httpx.AsyncClient, element: str, value: Any
) -> None:
    body = outcome(
        await client.post("/Patient", json=patient(**{element: value}), headers=FHIR_JSON), 422
    )
    assert f"Patient.{element}" in expressions(body)


async def test_missing_required_element_is_422(client: httpx.AsyncClient) -> None:
    observation = {"resourceType": "Observation", "status": "final"}
    body = outcome(await client.post("/Observation", json=observation, headers=FHIR_JSON), 422)
    assert expressions(body) == ["Observation.code"]
    assert body["issue"][0]["code"] == "required"


async def test_every_problem_is_listed(client: httpx.AsyncClient) -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "foo": 1,
        "valueQuantity": {"value": "heavy"},
        "subject": {"reference": 7},
    }
    body = outcome(await client.post("/Observation", json=resource, headers=FHIR_JSON), 422)
    expected = {"Observation.foo", "Observation.code", "Observation.valueQuantity.value",
                "Observation.subject.reference"}
    assert set(expressions(body)) == expected, body
    assert len(body["issue"]) == len(expected)


async def test_missing_required_primitive_is_422(client: httpx.AsyncClient) -> None:
    observation = {"resourceType": "Observation", "code": {"text": "Glucose"}}
    body = outcome(await client.post("/Observation", json=observation, headers=FHIR_JSON), 422)
    assert expressions(body) == ["Observation.status"]
    bundle = outcome(await client.post("/Bundle", json={"resourceType": "Bundle"},
                                       headers=FHIR_JSON), 422)
    assert expressions(bundle) == ["Bundle.type"]


async def test_missing_required_primitive_is_listed_with_other_problems(
    client: httpx.AsyncClient,
) -> None:
    observation = {"resourceType": "Observation", "foo": 1}
    body = outcome(await client.post("/Observation", json=observation, headers=FHIR_JSON), 422)
    assert set(expressions(body)) == {"Observation.foo", "Observation.code", "Observation.status"}


async def test_invalid_update_leaves_current_version(client: httpx.AsyncClient) -> None:
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    outcome(await client.put(url, json={**created, "birthDate": 5}, headers=FHIR_JSON), 422)
    outcome(await client.put(url, json={**created, "foo": "bar"}, headers=FHIR_JSON), 422)
    assert (await client.get(url)).json() == created
    assert len((await client.get(f"{url}/_history")).json()["entry"]) == 1
    assert await history_size(client) == 1


async def test_failed_update_as_create_creates_nothing(client: httpx.AsyncClient) -> None:
    outcome(await client.put("/Patient/p1", json=patient(id="p1", foo=1), headers=FHIR_JSON), 422)
    outcome(await client.get("/Patient/p1"), 404)
    outcome(await client.get("/Patient/p1/_history"), 404)
    assert await history_size(client) == 0


# --- media types and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream",
                     "application/json-patch+json"],
)
async def test_unsupported_content_type_is_415(
    client: httpx.AsyncClient, content_type: str
) -> None:
    content = httpx.Request("POST", BASE, json=patient()).content
    headers = {"Content-Type": content_type}
    outcome(await client.post("/Patient", content=content, headers=headers), 415)
    outcome(await client.put("/Patient/p1", content=content, headers=headers), 415)
    assert await history_size(client) == 0


LIMIT = 512


@pytest.fixture
async def small_client(engine: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Like `client`, with a server that refuses bodies over LIMIT bytes."""
    store, handle = await make_store(engine, tmp_path)
    app = create_app(settings_for(tmp_path, max_body_bytes=LIMIT), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http
    await drop_store(handle)


def _big_patient() -> dict[str, Any]:
    return patient(id="big", name=[{"family": "X" * LIMIT}])


async def test_body_over_limit_is_413(small_client: httpx.AsyncClient) -> None:
    small = await small_client.post("/Patient", json=patient(), headers=FHIR_JSON)
    assert small.status_code == 201, small.text
    big = _big_patient()
    outcome(await small_client.post("/Patient", json=big, headers=FHIR_JSON), 413)
    outcome(await small_client.put("/Patient/big", json=big, headers=FHIR_JSON), 413)
    outcome(await small_client.get("/Patient/big"), 404)
    assert await history_size(small_client) == 1


async def test_streamed_body_over_limit_is_413(small_client: httpx.AsyncClient) -> None:
    """No Content-Length (chunked upload): the limit still holds."""
    content = httpx.Request("POST", BASE, json=_big_patient()).content

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 100):
            yield content[start:start + 100]

    response = await small_client.put("/Patient/big", content=chunks(), headers=FHIR_JSON)
    outcome(response, 413)
    outcome(await small_client.get("/Patient/big"), 404)


async def test_patch_over_limit_is_413(small_client: httpx.AsyncClient) -> None:
    created = (await small_client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()
    operations = [{"op": "replace", "path": "/gender", "value": "male" + " " * LIMIT}]
    response = await small_client.patch(
        f"/Patient/{created['id']}", json=operations,
        headers={"Content-Type": "application/json-patch+json"},
    )
    outcome(response, 413)
    assert (await small_client.get(f"/Patient/{created['id']}")).json() == created


# --- robustness: odd input never becomes a 5xx or leaks internals --------------------------------

ODD_BODIES: list[Any] = [
    {"resourceType": 5},
    {"resourceType": None},
    {"resourceType": ["Patient"]},
    {"resourceType": "Patient", "id": 5},
    {"resourceType": "Patient", "meta": "v1"},
    {"resourceType": "Patient", "meta": {"versionId": 5}},
    {"resourceType": "Patient", "meta": {"tag": {"code": "x"}}},
    {"resourceType": "Patient", "name": "Иванова"},
    {"resourceType": "Patient", "name": [["nested"]]},
    {"resourceType": "Patient", "contained": [{"foo": 1}]},
    {"resourceType": "Patient", "contained": [{"resourceType": "Nope"}]},
    {"resourceType": "Patient", "extension": [{"url": 5}]},
    {"resourceType": "Patient", "extension": [{"valueString": "no url"}]},
    {"resourceType": "Patient", "_birthDate": "not an object"},
    {"resourceType": "Patient", "text": {"status": "generated", "div": "<p>not xhtml"}},
    {"resourceType": "Patient", "birthDate": "1980-13-45"},
    {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020"},
    {"resourceType": "Patient", "": 1},
    {"resourceType": "Patient", "name": [{"family": "x" * 100_000}]},
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=[str(i) for i in range(len(ODD_BODIES))])
async def test_odd_bodies_never_cause_server_errors(
    client: httpx.AsyncClient, body: Any
) -> None:
    for response in (
        await client.post("/Patient", json=body, headers=FHIR_JSON),
        await client.put("/Patient/odd", json=body, headers=FHIR_JSON),
    ):
        assert response.status_code < 500, response.text
        for marker in TRACEBACK_MARKERS:
            assert marker not in response.text
        if response.status_code >= 400:
            outcome(response, response.status_code)


@pytest.mark.parametrize(
    "content",
    [b'{"resourceType": "Patient", "extension": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     b'{"resourceType": "Patient", "active": true, "multipleBirthInteger": 1e400}',
     b'{"resourceType": "Patient", "multipleBirthInteger": 123456789012345678901234567890}',
     b'{"resourceType": "Patient", "resourceType": "Observation"}'],
    ids=["deep", "infinity", "huge-int", "duplicate-key"],
)
async def test_odd_json_is_rejected_cleanly(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post("/Patient", content=content, headers=FHIR_JSON)
    assert 400 <= response.status_code < 500, response.text
    outcome(response, response.status_code)


@pytest.mark.parametrize(
    "params",
    [{"_count": "many"}, {"_count": "-1"}, {"_since": "yesterday"}, {"_at": "2024-99"},
     {"_cursor": "garbage"}, {"_since": ["2024", "2025"]}],
)
async def test_bad_history_parameters_are_400(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    outcome(await client.get("/_history", params=params), 400)
    outcome(await client.get("/Patient/_history", params=params), 400)


async def test_errors_never_include_tracebacks_in_any_format(client: httpx.AsyncClient) -> None:
    requests = [
        ("GET", "/Patient/none", None),
        ("POST", "/Patient", b"{"),
        ("POST", "/Patient", b'{"resourceType": "Patient", "foo": 1}'),
        ("GET", "/Nope/1", None),
    ]
    for accept in ("application/fhir+json", "application/fhir+xml"):
        for method, path, content in requests:
            response = await client.request(
                method, path, content=content, headers={**FHIR_JSON, "Accept": accept}
            )
            assert response.status_code >= 400
            assert response.headers["content-type"].startswith(accept)
            for marker in TRACEBACK_MARKERS:
                assert marker not in response.text
