"""Loading conformance resources: JSON files, Bundles, package tarballs; the base definitions."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import orjson

from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.profiles.generate import OUTPUT, compact_element
from fhir_server.validation.profiles.loader import base_definitions, load_directory
from tests.validation.fixtures.profile_helpers import EX, FIXTURES


def test_directory_of_json_files_and_bundles():
    registry = load_directory(FIXTURES)
    assert EX + "test-patient" in registry.structure_definitions
    assert EX + "logical" not in registry.structure_definitions
    assert "http://example.org/fhir/ValueSet/test-genders" in registry.value_sets
    assert "http://example.org/fhir/ValueSet/test-genders|1" in registry.value_sets
    assert "http://example.org/fhir/CodeSystem/colours" in registry.code_systems
    assert registry.notes == ["broken.json: not JSON, ignored"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_package_tarball(tmp_path: Path):
    sd = json.loads((FIXTURES / "ext-colour.json").read_text())
    with tarfile.open(tmp_path / "example.tgz", "w:gz") as tar:
        _add(tar, "package/package.json", b'{"name": "example", "version": "1.0.0"}')
        _add(tar, "package/StructureDefinition-ext-colour.json", json.dumps(sd).encode())
        _add(tar, "package/example/Patient-x.json", b'{"resourceType": "Patient"}')
        _add(tar, "package/bad.json", b"{")
    registry = load_directory(tmp_path)
    assert list(registry.structure_definitions) == [EX + "ext-colour"]
    assert registry.notes == ["example.tgz:package/bad.json: not JSON, ignored"]
    (tmp_path / "broken.tgz").write_bytes(b"not a tarball")
    assert any("broken.tgz" in n for n in load_directory(tmp_path).notes)


def test_missing_directory():
    validator = ProfileValidator.load(Path("/nonexistent/profiles"))
    assert validator.notes and validator.knows("http://hl7.org/fhir/StructureDefinition/Patient")


def test_base_definitions_are_compact_and_complete():
    assert OUTPUT.stat().st_size < 400_000
    definitions = base_definitions()
    urls = {sd["url"] for sd in definitions}
    for name in ("Patient", "Observation", "HumanName", "Extension", "string", "Bundle"):
        assert f"http://hl7.org/fhir/StructureDefinition/{name}" in urls
    assert "http://hl7.org/fhir/StructureDefinition/patient-birthPlace" in urls
    data = orjson.loads(gzip.decompress(OUTPUT.read_bytes()))
    assert all("snapshot" in sd and "differential" not in sd for sd in data)


def test_compact_element_keeps_only_what_validation_needs():
    element = {
        "id": "Patient.gender",
        "path": "Patient.gender",
        "short": "male | female",
        "definition": "long text",
        "min": 0,
        "max": "1",
        "type": [{"code": "code"}],
        "mustSupport": True,
        "binding": {"strength": "required", "valueSet": "http://vs", "description": "x"},
        "constraint": [
            {
                "key": "ele-1",
                "severity": "error",
                "human": "h",
                "expression": "e",
                "xpath": "@value",
            }
        ],
    }
    assert compact_element(element) == {
        "id": "Patient.gender",
        "path": "Patient.gender",
        "min": 0,
        "max": "1",
        "type": [{"code": "code"}],
        "binding": {"strength": "required", "valueSet": "http://vs"},
        "constraint": [{"key": "ele-1", "severity": "error", "human": "h", "expression": "e"}],
    }
