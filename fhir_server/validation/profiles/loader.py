"""Load conformance resources (StructureDefinitions, ValueSets, CodeSystems) from a directory.

A directory may hold single JSON resources, Bundles of them (searchset, collection, ...), and FHIR
package tarballs (`.tgz` / `.tar.gz` with `package/*.json`). Anything else is ignored; a file
that is not valid JSON is recorded in `Registry.notes`, never fatal. Logical models are ignored.
The base R4 definitions come from the committed `base.json.gz`.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson

BASE_FILE = Path(__file__).parent / "base.json.gz"
KINDS = ("StructureDefinition", "ValueSet", "CodeSystem")


@dataclass
class Registry:
    """Conformance resources by canonical URL (also by `url|version`)."""

    structure_definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    value_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    code_systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, resource: dict[str, Any]) -> None:
        kind = resource.get("resourceType")
        url = resource.get("url")
        if kind not in KINDS or not isinstance(url, str):
            return
        if kind == "StructureDefinition":
            if resource.get("kind") == "logical":
                return
            table = self.structure_definitions
        elif kind == "ValueSet":
            table = self.value_sets
        else:
            table = self.code_systems
        table[url] = resource
        if resource.get("version"):
            table[f"{url}|{resource['version']}"] = resource

    def add_all(self, resources: Iterable[dict[str, Any]]) -> None:
        for resource in resources:
            self.add(resource)


def _resources(data: Any) -> Iterator[dict[str, Any]]:
    """The conformance resources in a parsed JSON document (a resource, a Bundle, or a list)."""
    if isinstance(data, list):
        for item in data:
            yield from _resources(item)
    elif isinstance(data, dict):
        if data.get("resourceType") == "Bundle":
            for entry in data.get("entry") or ():
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    yield from _resources(entry["resource"])
        elif data.get("resourceType") in KINDS:
            yield data


def _load_package(path: Path, registry: Registry) -> None:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or not name.endswith(".json"):
                    continue
                if not name.startswith("package/") or name.count("/") != 1:
                    continue  # package/other/*, package/example/*: not conformance content
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                try:
                    registry.add_all(_resources(orjson.loads(handle.read())))
                except orjson.JSONDecodeError:
                    registry.notes.append(f"{path.name}:{name}: not JSON, ignored")
    except (tarfile.TarError, OSError) as exc:
        registry.notes.append(f"{path.name}: unreadable package ({exc})")


def load_directory(directory: Path, registry: Registry | None = None) -> Registry:
    """Every conformance resource under `directory` (recursively), files in sorted order."""
    registry = registry or Registry()
    if not directory.is_dir():
        registry.notes.append(f"{directory}: not a directory, nothing loaded")
        return registry
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        name = path.name.lower()
        if name.endswith((".tgz", ".tar.gz")):
            _load_package(path, registry)
        elif name.endswith(".json"):
            try:
                registry.add_all(_resources(orjson.loads(path.read_bytes())))
            except orjson.JSONDecodeError:
                registry.notes.append(f"{path.name}: not JSON, ignored")
    return registry


@cache
def base_definitions() -> tuple[dict[str, Any], ...]:
    """The compact R4 base StructureDefinitions (read once per process)."""
    return tuple(orjson.loads(gzip.decompress(BASE_FILE.read_bytes())))
