"""The `fhir-server` command line: `load` (files, folders, NDJSON, Bundles) and `serve --help`.

`load` needs a store it can open itself, so these tests use the embedded SQLite engine in a
temporary data directory and then look at the data through the HTTP API of an app on it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from fhir_server.app import create_app
from fhir_server.cli import app
from fhir_server.config import Settings
from tests.conftest import without_audit

BASE = "http://testserver/fhir"
SUMMARY = re.compile(
    r"(\d+) created, (\d+) updated, (\d+) unchanged, (\d+) deleted, (\d+) failed"
)


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI reads FHIR_SERVER_* variables; none from the outside may leak in."""
    for name in ("MONGODB_URL", "MONGODB_DB", "DATA_DIR", "SEED", "SEED_DIR", "BASE_URL"):
        monkeypatch.delenv(f"FHIR_SERVER_{name}", raising=False)
    monkeypatch.chdir(tmp_path)


def patient(id_: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}


def observation(id_: str, value: float) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final",
            "code": {"text": "Glucose"}, "valueQuantity": {"value": value, "unit": "mmol/L"}}


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))
    return path


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in resources) + b"\n")
    return path


def good_files(folder: Path) -> list[dict[str, Any]]:
    """A JSON resource, an NDJSON file of three and a collection Bundle; returns them all."""
    single = patient("p-single", "Иванова")
    lines = [observation(f"obs-{n}", 5.0 + n) for n in range(3)]
    bundled = [patient("p-bundled", "Petrov"),
               {"resourceType": "Organization", "id": "org-1", "name": "City Hospital"}]
    write_json(folder / "patient.json", single)
    write_ndjson(folder / "observations.ndjson", lines)
    write_json(folder / "nested" / "bundle.json", {
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"fullUrl": f"urn:x:{r['id']}", "resource": r} for r in bundled],
    })
    return [single, *lines, *bundled]


def load(*args: str | Path) -> tuple[int, dict[str, int], str]:
    """Run `fhir-server load`; its exit code, summary counts and output."""
    result = CliRunner().invoke(app, ["load", *map(str, args)])
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    found = SUMMARY.findall(" ".join(output.split()))
    assert len(found) == 1, output
    names = ("created", "updated", "unchanged", "deleted", "failed")
    return result.exit_code, dict(zip(names, map(int, found[0]), strict=True)), output


def stored(data_dir: Path) -> list[dict[str, Any]]:
    """Every current (not deleted) resource in the SQLite database under data_dir, read over
    the HTTP API of an app on that directory."""

    async def fetch() -> list[dict[str, Any]]:
        server = create_app(Settings(data_dir=data_dir, seed=False))
        async with server.router.lifespan_context(server):
            transport = httpx.ASGITransport(app=server)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                history = (await client.get("/_history", params={"_count": 1000})).json()
                urls = dict.fromkeys(e["fullUrl"] for e in without_audit(history.get("entry", [])))
                found = []
                for url in urls:
                    response = await client.get(url)
                    if response.status_code == 200:
                        found.append(response.json())
                    else:
                        assert response.status_code == 410, response.text
                return found

    return asyncio.run(fetch())


def squeeze(text: str) -> str:
    """Text without any whitespace: the console wraps long lines wherever it likes."""
    return "".join(text.split())


def content(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def by_key(resources: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["resourceType"], r["id"]): content(r) for r in resources}


def test_load_folder_with_a_bad_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    expected = good_files(folder)
    (folder / "broken.json").write_bytes(b'{"resourceType": "Patient",')
    data_dir = tmp_path / "data"
    code, counts, output = load(folder, "--data-dir", data_dir)
    assert code == 1
    assert counts == {"created": len(expected), "updated": 0, "unchanged": 0, "deleted": 0,
                      "failed": 1}
    assert "broken.json" in squeeze(output)
    assert by_key(stored(data_dir)) == by_key(expected)


def test_load_good_files_exits_zero_and_again_is_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    expected = good_files(folder)
    data_dir = tmp_path / "data"
    code, counts, _ = load(folder, "--data-dir", data_dir)
    assert (code, counts["created"], counts["failed"]) == (0, len(expected), 0)
    first = stored(data_dir)
    code, counts, _ = load(folder, "--data-dir", data_dir)
    assert code == 0
    assert counts == {"created": 0, "updated": 0, "unchanged": len(expected), "deleted": 0,
                      "failed": 0}
    assert stored(data_dir) == first
    assert all(r["meta"]["versionId"] == "1" for r in first)


def test_load_individual_files_and_updates(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = write_json(tmp_path / "a.json", patient("p1", "Old"))
    assert load(first, "--data-dir", data_dir)[:2] == (
        0, {"created": 1, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0})
    changed = write_json(tmp_path / "b.json", patient("p1", "New"))
    lines = write_ndjson(tmp_path / "c.ndjson", [patient("p2", "Other")])
    code, counts, _ = load(changed, lines, "--data-dir", data_dir)
    assert (code, counts["created"], counts["updated"]) == (0, 1, 1)
    current = by_key(stored(data_dir))
    assert current[("Patient", "p1")]["name"] == [{"family": "New"}]
    assert set(current) == {("Patient", "p1"), ("Patient", "p2")}


def test_load_resource_without_id_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = write_json(tmp_path / "anon.json", {"resourceType": "Patient", "active": True})
    code, counts, _ = load(path, "--data-dir", data_dir)
    assert (code, counts["created"]) == (0, 1)
    (resource,) = stored(data_dir)
    assert resource["active"] is True
    assert resource["id"]


def test_load_transaction_bundle_with_delete(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    load(write_json(tmp_path / "p.json", patient("gone", "X")), "--data-dir", data_dir)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/gone"}},
        {"resource": patient("kept", "Y"), "request": {"method": "PUT", "url": "Patient/kept"}},
    ]}
    code, counts, _ = load(write_json(tmp_path / "tx.json", bundle), "--data-dir", data_dir)
    assert (code, counts["deleted"], counts["created"]) == (0, 1, 1)
    assert set(by_key(stored(data_dir))) == {("Patient", "kept")}


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("invalid.json", patient("p", "X") | {"foo": 1}, "Patient.foo"),
        ("unknown.json", {"resourceType": "Nope", "id": "x"}, "Nope"),
        ("not-resource.json", [1, 2], "not a FHIR resource"),
        ("bad-id.json", patient("bad id!", "X"), "bad id!"),
    ],
)
def test_load_reports_each_failure(
    tmp_path: Path, name: str, data: Any, problem: str
) -> None:
    data_dir = tmp_path / "data"
    good = write_json(tmp_path / "good.json", patient("ok", "Fine"))
    bad = write_json(tmp_path / name, data)
    code, counts, output = load(good, bad, "--data-dir", data_dir)
    assert (code, counts["created"], counts["failed"]) == (1, 1, 1)
    assert squeeze(problem) in squeeze(output)
    assert set(by_key(stored(data_dir))) == {("Patient", "ok")}


def test_load_ndjson_with_a_bad_line_keeps_the_good_lines(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b"\n".join([
        orjson.dumps(patient("l1", "A")), b"{not json", b"", orjson.dumps(patient("l3", "C")),
    ]))
    code, counts, output = load(path, "--data-dir", data_dir)
    assert (code, counts["created"], counts["failed"]) == (1, 2, 1)
    assert "mixed.ndjson:2" in squeeze(output)
    assert set(by_key(stored(data_dir))) == {("Patient", "l1"), ("Patient", "l3")}


def test_load_missing_path_fails(tmp_path: Path) -> None:
    code, counts, _ = load(tmp_path / "nothing.json", "--data-dir", tmp_path / "data")
    assert (code, counts["failed"]) == (1, 1)


def test_data_dir_is_respected(tmp_path: Path) -> None:
    data_dir = tmp_path / "somewhere" / "else"
    path = write_json(tmp_path / "p.json", patient("p1", "X"))
    assert load(path, "--data-dir", data_dir)[0] == 0
    assert (data_dir / "fhir.sqlite").is_file()
    # Nothing landed in the default ./fhir-data of the working directory.
    assert not (tmp_path / "fhir-data").exists()
    assert [r["id"] for r in stored(data_dir)] == ["p1"]


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "from-env"
    monkeypatch.setenv("FHIR_SERVER_DATA_DIR", str(data_dir))
    assert load(write_json(tmp_path / "p.json", patient("p1", "X")))[0] == 0
    assert (data_dir / "fhir.sqlite").is_file()


def test_serve_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--data-dir", "--mongodb-url", "--no-seed"):
        assert option in result.output


def test_load_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["load", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--data-dir", "--mongodb-url"):
        assert option in result.output


def test_serve_passes_settings_to_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` runs the app with the options given, without binding a port here."""
    import uvicorn

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: calls.append((app_, kw)))
    data_dir = tmp_path / "srv"
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9191",
                                      "--data-dir", str(data_dir), "--no-seed"])
    assert result.exit_code == 0, result.output
    ((server, options),) = calls
    assert (options["host"], options["port"]) == ("0.0.0.0", 9191)
    settings = server.state.settings
    assert (settings.data_dir, settings.seed, settings.mongodb_url) == (data_dir, False, None)
    assert "http://0.0.0.0:9191/fhir" in squeeze(result.output)
