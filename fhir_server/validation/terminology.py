"""Local terminology: ValueSet expansion and code validation, CodeSystem lookup.

The built-in content is the FHIR R4 specification's ValueSets and CodeSystems, read from the
committed r4-terminology.json.gz (made by `python -m fhir_server.validation.terminology_generate`);
local ValueSets / CodeSystems (the profiles/ implementation guides, ones stored on the server) are
layered on top: a local resource replaces a built-in one with the same url. Nothing is fetched
from anywhere, and a code system that is not available locally is reported, never guessed.

    terminology = Terminology.load(resources)        # CodeSystem / ValueSet dicts, or Bundles
    terminology.expand(url, filter=None, count=None, offset=0)     -> ValueSet with expansion
    terminology.validate_code(url, system, code, display=None)     -> CodeVerdict
    terminology.lookup(system, code)                               -> Parameters ($lookup)
    terminology.validate_code_in_system(system, code, display)     -> CodeVerdict

A ValueSet is compiled once, on first use, and cached per url (a Terminology is immutable: build
a new one with `load` when the local resources change). The compiled form holds:

- members: (system, code) -> display for every code the compose enumerates, directly, as a whole
  complete CodeSystem, through filters (is-a, descendent-of, is-not-a, generalizes, =, in,
  not-in, regex, exists) or through imported ValueSets, minus the excludes. validate_code is then a
  dict lookup.
- open systems: systems included *whole* whose concepts are not available locally (LOINC, UCUM,
  SNOMED CT in R4 has content "not-present", ...). Such a ValueSet cannot be expanded (expand
  raises ValueError), but validate_code accepts any code of that system with ok=True and a
  message saying the code itself was not checked: membership in such a ValueSet is membership in
  the system, and checking the system is the job of whoever owns it.
- undecided systems: systems where membership cannot be decided: a filter on a system that is not
  available (ok=None, not expandable), or a CodeSystem with content fragment / example /
  not-present whose listed codes are members but whose other codes are "cannot decide" (ok=None;
  the listed codes can still be expanded, with a warning parameter).

Version pins (include.version, `url|version` canonicals) are ignored: there is one version of
each resource; the expansion says so in a `warning` parameter and verdict messages mention it.
"""

from __future__ import annotations

import functools
import gzip
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["DATA_FILE", "CodeVerdict", "Terminology"]

DATA_FILE = Path(__file__).with_name("r4-terminology.json.gz")

HIERARCHY_PROPERTIES = frozenset(("parent", "subsumedBy"))
_VALUE_KEYS = (
    "valueCode",
    "valueString",
    "valueCoding",
    "valueBoolean",
    "valueInteger",
    "valueDecimal",
    "valueDateTime",
)


@dataclass(frozen=True)
class CodeVerdict:
    """ok: True = valid, False = invalid, None = cannot decide (unknown ValueSet or CodeSystem,
    or a code system only partly available). message explains; display is the code's display."""

    ok: bool | None
    message: str
    display: str | None = None


# --------------------------------------------------------------------------- code systems


@dataclass
class _Concept:
    code: str
    display: str | None
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    designations: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    definition: str | None = None

    @property
    def abstract(self) -> bool:
        for prop in self.properties:
            if prop.get("code") in ("abstract", "notSelectable") and prop.get("valueBoolean"):
                return True
        return False


def _property_value(prop: dict[str, Any]) -> Any:
    for key in _VALUE_KEYS:
        if key in prop:
            return prop[key]
    return None


class _CodeSystem:
    """A CodeSystem resource with its concepts indexed (lazily, on first use)."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource
        self.url: str = resource["url"]
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("name") or resource.get("title") or self.url
        self.content: str = resource.get("content", "complete")
        self.case_sensitive: bool = resource.get("caseSensitive", True) is not False

    @property
    def complete(self) -> bool:
        return self.content == "complete"

    @functools.cached_property
    def concepts(self) -> dict[str, _Concept]:
        concepts: dict[str, _Concept] = {}

        def walk(items: Iterable[dict[str, Any]], parent: str | None) -> None:
            for item in items:
                code = item["code"]
                concept = concepts.get(code)
                if concept is None:
                    concept = concepts[code] = _Concept(
                        code,
                        item.get("display"),
                        definition=item.get("definition"),
                        designations=list(item.get("designation", ())),
                        properties=list(item.get("property", ())),
                    )
                if parent is not None and parent not in concept.parents:
                    concept.parents.append(parent)
                walk(item.get("concept", ()), code)

        walk(self.resource.get("concept", ()), None)
        # Hierarchy given by properties instead of (or as well as) nesting.
        for concept in list(concepts.values()):
            for prop in concept.properties:
                value = _property_value(prop)
                if not isinstance(value, str) or value not in concepts:
                    continue
                if prop.get("code") in HIERARCHY_PROPERTIES and value not in concept.parents:
                    concept.parents.append(value)
                elif prop.get("code") == "child" and concept.code not in concepts[value].parents:
                    concepts[value].parents.append(concept.code)
        for concept in concepts.values():
            for parent in concept.parents:
                if concept.code not in concepts[parent].children:
                    concepts[parent].children.append(concept.code)
        return concepts

    @functools.cached_property
    def _folded(self) -> dict[str, _Concept]:
        return {code.casefold(): c for code, c in self.concepts.items()}

    def find(self, code: str) -> _Concept | None:
        concept = self.concepts.get(code)
        if concept is None and not self.case_sensitive:
            concept = self._folded.get(code.casefold())
        return concept

    def descendants(self, code: str) -> list[str]:
        """Every code below `code`, depth first in the order the hierarchy lists them."""
        return self._reach(code, lambda c: reversed(self.concepts[c].children))

    def ancestors(self, code: str) -> list[str]:
        return self._reach(code, lambda c: self.concepts[c].parents)

    def _reach(self, code: str, links: Callable[[str], Iterable[str]]) -> list[str]:
        """The codes reachable from `code` (not itself) through `links`, each once."""
        out: list[str] = []
        seen = {code}
        stack = list(links(code)) if code in self.concepts else []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            out.append(current)
            stack.extend(links(current))
        return out


def _display_matches(concept: _Concept, expected: str | None, display: str) -> bool:
    wanted = " ".join(display.split()).casefold()
    candidates = [expected, concept.display]
    candidates += [d.get("value") for d in concept.designations]
    return any(c is not None and " ".join(c.split()).casefold() == wanted for c in candidates)


# --------------------------------------------------------------------------- value sets


@dataclass
class _Compiled:
    """A ValueSet's compose, computed: see the module docstring."""

    members: dict[tuple[str, str], str | None] = field(default_factory=dict)
    open: dict[str, str] = field(default_factory=dict)  # system -> why not checked
    undecided: dict[str, tuple[str, bool]] = field(default_factory=dict)  # -> (why, expandable)
    notes: list[str] = field(default_factory=list)
    abstract: set[tuple[str, str]] = field(default_factory=set)

    @functools.cached_property
    def by_code(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for system, code in self.members:
            index.setdefault(code, []).append(system)
        return index

    def systems(self) -> set[str]:
        return {s for s, _ in self.members} | set(self.open) | set(self.undecided)

    def union(self, other: _Compiled) -> None:
        for key, display in other.members.items():
            if key not in self.members or self.members[key] is None:
                self.members[key] = display
        self.abstract |= other.abstract
        self.open.update(other.open)
        for system, why in other.undecided.items():
            # "Cannot decide at all" outweighs "only the listed concepts are known".
            if system not in self.undecided or not why[1]:
                self.undecided[system] = why
        self.notes.extend(n for n in other.notes if n not in self.notes)

    def intersect(self, other: _Compiled) -> _Compiled:
        out = _Compiled(notes=self.notes + [n for n in other.notes if n not in self.notes])
        for a, b in ((self, other), (other, self)):
            for key, display in a.members.items():
                system = key[0]
                if key in b.members:
                    out.members.setdefault(key, display or b.members[key])
                elif system in b.open:
                    out.members.setdefault(key, display)
                elif system in b.undecided:
                    out.undecided.setdefault(system, b.undecided[system])
        for system, why in self.open.items():
            if system in other.open:
                out.open[system] = why
            elif system in other.undecided:
                out.undecided.setdefault(system, other.undecided[system])
        for system, why in self.undecided.items():
            if system in other.open or system in other.undecided:
                out.undecided.setdefault(system, why)
        out.abstract = {k for k in self.abstract | other.abstract if k in out.members}
        return out

    def subtract(self, other: _Compiled) -> None:
        for key in other.members:
            self.members.pop(key, None)
            self.abstract.discard(key)
        for system in other.open:
            self.open.pop(system, None)
            for key in [k for k in self.members if k[0] == system]:
                del self.members[key]
        for system, (why, _) in other.undecided.items():
            if system in self.systems():
                # Some codes of the system may or may not be excluded: none can be decided.
                for key in [k for k in self.members if k[0] == system]:
                    del self.members[key]
                self.open.pop(system, None)
                self.undecided[system] = (f"exclude: {why}", False)


def _strip_version(canonical: str) -> tuple[str, str | None]:
    url, _, version = canonical.partition("|")
    return url, version or None


class _FilterError(Exception):
    pass


# --------------------------------------------------------------------------- built-in data


@functools.cache
def _builtin() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    data = orjson.loads(gzip.decompress(DATA_FILE.read_bytes()))
    return (
        {cs["url"]: cs for cs in data["codeSystems"]},
        {vs["url"]: vs for vs in data["valueSets"]},
    )


@functools.cache
def _builtin_code_system(url: str) -> _CodeSystem | None:
    resource = _builtin()[0].get(url)
    return _CodeSystem(resource) if resource is not None else None


def _iter_resources(resources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for resource in resources:
        if resource.get("resourceType") == "Bundle":
            yield from _iter_resources(
                e["resource"] for e in resource.get("entry", ()) if "resource" in e
            )
        else:
            yield resource


# --------------------------------------------------------------------------- terminology


class Terminology:
    """Built-in R4 terminology plus local CodeSystems / ValueSets. Immutable once loaded."""

    def __init__(
        self,
        code_systems: dict[str, dict[str, Any]] | None = None,
        value_sets: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._local_cs: dict[str, _CodeSystem] = {
            url: _CodeSystem(cs) for url, cs in (code_systems or {}).items()
        }
        self._local_vs: dict[str, dict[str, Any]] = dict(value_sets or {})
        self._compiled: dict[str, _Compiled] = {}

    @classmethod
    def load(cls, resources: Iterable[dict[str, Any]] = ()) -> Terminology:
        """Local ValueSets / CodeSystems (Bundles are unpacked; other resources are ignored; a
        later resource with the same url replaces an earlier one) over the built-in R4 ones."""
        code_systems: dict[str, dict[str, Any]] = {}
        value_sets: dict[str, dict[str, Any]] = {}
        for resource in _iter_resources(resources):
            kind, url = resource.get("resourceType"), resource.get("url")
            if not url:
                continue
            if kind == "CodeSystem" and resource.get("content") != "supplement":
                code_systems[url] = resource
            elif kind == "ValueSet":
                value_sets[url] = resource
        return cls(code_systems, value_sets)

    @classmethod
    def load_paths(cls, *paths: Path | str) -> Terminology:
        """load() from JSON files, or directories of *.json files (read in name order)."""
        resources: list[dict[str, Any]] = []
        for path in map(Path, paths):
            files = sorted(path.glob("*.json")) if path.is_dir() else [path]
            resources.extend(orjson.loads(f.read_bytes()) for f in files)
        return cls.load(resources)

    # ---- resolution

    def code_system(self, url: str) -> _CodeSystem | None:
        url = _strip_version(url)[0]
        local = self._local_cs.get(url)
        return local if local is not None else _builtin_code_system(url)

    def value_set(self, url: str) -> dict[str, Any] | None:
        url = _strip_version(url)[0]
        local = self._local_vs.get(url)
        return local if local is not None else _builtin()[1].get(url)

    def has_code_system(self, url: str) -> bool:
        return self.code_system(url) is not None

    def has_value_set(self, url: str) -> bool:
        return self.value_set(url) is not None

    # ---- compilation

    def _compile(self, canonical: str, stack: tuple[str, ...] = ()) -> _Compiled:
        url, version = _strip_version(canonical)
        cached = self._compiled.get(url)
        if cached is not None:
            return cached
        if url in stack:
            raise ValueError(f"ValueSet {url} imports itself (via {' -> '.join(stack)})")
        vs = self.value_set(url)
        if vs is None:
            raise KeyError(f"unknown value set {url}")
        compiled = self._compile_resource(vs, (*stack, url))
        if version and vs.get("version") and version != vs["version"]:
            compiled.notes.append(
                f"version {version} of {url} was asked for; version {vs['version']} was used"
            )
        self._compiled[url] = compiled
        return compiled

    def _compile_resource(self, vs: dict[str, Any], stack: tuple[str, ...]) -> _Compiled:
        compose = vs.get("compose")
        out = _Compiled()
        if not compose:
            contains = (vs.get("expansion") or {}).get("contains")
            if contains is None:
                raise ValueError(f"ValueSet {vs.get('url')} has neither compose nor expansion")
            for item in _flatten_contains(contains):
                if "system" in item and "code" in item:
                    out.members[(item["system"], item["code"])] = item.get("display")
            return out
        for include in compose.get("include", ()):
            out.union(self._compile_include(include, stack))
        for exclude in compose.get("exclude", ()):
            out.subtract(self._compile_include(exclude, stack))
        return out

    def _compile_include(self, include: dict[str, Any], stack: tuple[str, ...]) -> _Compiled:
        parts: list[_Compiled] = []
        system = include.get("system")
        if system:
            parts.append(self._compile_system_part(include))
        for imported in include.get("valueSet", ()):
            try:
                parts.append(self._compile(imported, stack))
            except KeyError as exc:
                part = _Compiled()
                part.notes.append(str(exc.args[0]))
                scope = system or "*"
                part.undecided[scope] = (f"imported {exc.args[0]}", False)
                parts.append(part)
        if not parts:
            return _Compiled()
        result = parts[0]
        for part in parts[1:]:
            result = result.intersect(part)
        return result

    def _compile_system_part(self, include: dict[str, Any]) -> _Compiled:
        system: str = include["system"]
        out = _Compiled()
        if include.get("version"):
            out.notes.append(
                f"version {include['version']} of {system} is pinned; the version pins are "
                "ignored (one version of each code system is available)"
            )
        cs = self.code_system(system)
        available = cs is not None and bool(cs.concepts)
        concepts = include.get("concept")
        filters = include.get("filter")
        if concepts:
            for item in concepts:
                code = item["code"]
                concept = cs.find(code) if cs is not None else None
                if cs is not None and cs.complete and available and concept is None:
                    out.notes.append(f"code {code} is not in code system {system}: left out")
                    continue
                if concept is not None:
                    code = concept.code
                    if concept.abstract:
                        out.abstract.add((system, code))
                display = item.get("display") or (concept.display if concept else None)
                out.members[(system, code)] = display
            return out
        if not available:
            reason = (
                f"unknown code system {system}"
                if cs is None
                else f"code system {system} has no concepts available (content {cs.content})"
            )
            if filters:
                out.undecided[system] = (f"filter on {reason}", False)
            else:
                out.open[system] = reason
            return out
        assert cs is not None
        codes: list[str] | None = list(cs.concepts)
        if filters:
            try:
                for flt in filters:
                    selected = set(self._apply_filter(cs, flt))
                    codes = [c for c in codes if c in selected] if codes is not None else None
            except _FilterError as exc:
                out.undecided[system] = (str(exc), False)
                return out
        for code in codes or ():
            concept = cs.concepts[code]
            out.members[(system, code)] = concept.display
            if concept.abstract:
                out.abstract.add((system, code))
        if not cs.complete:
            out.undecided[system] = (
                f"code system {system} is not complete (content {cs.content})",
                True,
            )
        return out

    @staticmethod
    def _apply_filter(cs: _CodeSystem, flt: dict[str, Any]) -> list[str]:
        prop, op, value = flt.get("property"), flt.get("op"), str(flt.get("value", ""))
        concepts = cs.concepts
        if prop in ("concept", "code"):
            if op in ("is-a", "descendent-of", "is-not-a", "generalizes"):
                concept = cs.find(value)
                if concept is None:
                    raise _FilterError(f"filter {prop} {op} {value}: {value} not in {cs.url}")
                if op == "is-a":
                    return [concept.code, *cs.descendants(concept.code)]
                if op == "descendent-of":
                    return cs.descendants(concept.code)
                if op == "generalizes":
                    return [concept.code, *cs.ancestors(concept.code)]
                excluded = {concept.code, *cs.descendants(concept.code)}
                return [c for c in concepts if c not in excluded]
            if op == "=":
                return [value] if value in concepts else []
            if op in ("in", "not-in"):
                listed = {v.strip() for v in value.split(",")}
                return [c for c in concepts if (c in listed) == (op == "in")]
            if op == "regex":
                pattern = re.compile(value)
                return [c for c in concepts if pattern.fullmatch(c)]
        elif prop in ("parent", "child") and op in ("=", "in"):
            listed = {v.strip() for v in value.split(",")}
            attr = "parents" if prop == "parent" else "children"
            return [c for c, con in concepts.items() if listed & set(getattr(con, attr))]
        elif prop == "display" and op in ("=", "regex"):
            if op == "=":
                return [c for c, con in concepts.items() if con.display == value]
            pattern = re.compile(value)
            return [c for c, con in concepts.items() if pattern.fullmatch(con.display or "")]
        elif op in ("=", "in", "not-in", "regex", "exists"):

            def values(con: _Concept) -> list[str]:
                out = []
                for p in con.properties:
                    if p.get("code") == prop:
                        v = _property_value(p)
                        if isinstance(v, dict):
                            v = v.get("code")
                        out.append(str(v).lower() if isinstance(v, bool) else str(v))
                return out

            if op == "exists":
                want = value.lower() == "true"
                return [c for c, con in concepts.items() if bool(values(con)) == want]
            if op == "regex":
                pattern = re.compile(value)
                return [
                    c
                    for c, con in concepts.items()
                    if any(pattern.fullmatch(v) for v in values(con))
                ]
            listed = {value} if op == "=" else {v.strip() for v in value.split(",")}
            return [
                c
                for c, con in concepts.items()
                if bool(listed & set(values(con))) == (op != "not-in")
            ]
        raise _FilterError(f"filter {prop} {op} {value} on {cs.url} is not supported")

    # ---- operations

    def expand(
        self,
        valueset_url: str,
        filter: str | None = None,
        count: int | None = None,
        offset: int = 0,
    ) -> dict[str, Any]:
        """ValueSet/$expand. KeyError: unknown ValueSet; ValueError: not expandable locally."""
        compiled = self._compile(valueset_url)
        problems = [
            f"it includes all of {s} ({why}); codes of {s} are accepted by "
            "$validate-code but cannot be listed"
            for s, why in compiled.open.items()
        ]
        problems += [why for why, expandable in compiled.undecided.values() if not expandable]
        if problems:
            raise ValueError(
                f"value set {_strip_version(valueset_url)[0]} cannot be expanded: "
                + "; ".join(problems)
            )
        vs = self.value_set(valueset_url) or {}
        items = list(compiled.members.items())
        if filter:
            needle = filter.casefold()
            items = [
                (k, d)
                for k, d in items
                if needle in k[1].casefold() or (d is not None and needle in d.casefold())
            ]
        total = len(items)
        offset = max(offset, 0)
        page = items[offset : offset + count] if count is not None else items[offset:]
        contains = []
        for (system, code), display in page:
            entry: dict[str, Any] = {"system": system, "code": code}
            if display is not None:
                entry["display"] = display
            if (system, code) in compiled.abstract:
                entry["abstract"] = True
            cs = self.code_system(system)
            if cs is not None and cs.version:
                entry["version"] = cs.version
            contains.append(entry)
        parameters: list[dict[str, Any]] = [{"name": "offset", "valueInteger": offset}]
        if count is not None:
            parameters.append({"name": "count", "valueInteger": count})
        if filter:
            parameters.append({"name": "filter", "valueString": filter})
        for system in sorted({s for s, _ in compiled.members}):
            cs = self.code_system(system)
            used = f"{system}|{cs.version}" if cs is not None and cs.version else system
            parameters.append({"name": "used-codesystem", "valueUri": used})
        for why, _ in compiled.undecided.values():
            parameters.append({"name": "warning", "valueString": f"incomplete: {why}"})
        parameters.extend({"name": "warning", "valueString": n} for n in compiled.notes)
        result: dict[str, Any] = {"resourceType": "ValueSet"}
        for key in ("id", "url", "version", "name", "title", "status"):
            if key in vs:
                result[key] = vs[key]
        result["expansion"] = {
            "identifier": f"urn:uuid:{uuid.uuid4()}",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "total": total,
            "offset": offset,
            "parameter": parameters,
            "contains": contains,
        }
        return result

    def validate_code(
        self, valueset_url: str, system: str | None, code: str, display: str | None = None
    ) -> CodeVerdict:
        """ValueSet/$validate-code. After the first call for a ValueSet, a dict lookup."""
        try:
            compiled = self._compile(valueset_url)
        except KeyError as exc:
            return CodeVerdict(None, str(exc.args[0]))
        except ValueError as exc:
            return CodeVerdict(None, str(exc))
        url = _strip_version(valueset_url)[0]
        if system is None:
            systems = compiled.by_code.get(code)
            if systems:
                system = systems[0]
            elif compiled.open or compiled.undecided:
                return CodeVerdict(
                    None, f"code {code} without a system: cannot tell whether it is in {url}"
                )
            else:
                return CodeVerdict(False, f"code {code} is not in value set {url}")
        key = (system, code)
        if key in compiled.members:
            return self._member_verdict(system, code, compiled.members[key], display, url)
        cs = self.code_system(system)
        concept = cs.find(code) if cs is not None else None
        if concept is not None and (system, concept.code) in compiled.members:
            return self._member_verdict(
                system, concept.code, compiled.members[(system, concept.code)], display, url
            )
        if system in compiled.open:
            if cs is not None and cs.complete and cs.concepts and concept is None:
                return CodeVerdict(False, f"unknown code {code} in code system {system}")
            return CodeVerdict(
                True,
                f"code {code} not checked: value set {url} includes all of {system}, "
                f"which is not available locally ({compiled.open[system]})",
                concept.display if concept else None,
            )
        if system in compiled.undecided:
            why, listed_only = compiled.undecided[system]
            if listed_only and concept is not None:
                # A concept the partial code system does list was judged by the compose.
                return CodeVerdict(
                    False,
                    f"code {system}#{concept.code} is not in value set {url}",
                    concept.display,
                )
            return CodeVerdict(None, f"cannot decide whether {system}#{code} is in {url}: {why}")
        if "*" in compiled.undecided:
            return CodeVerdict(None, f"cannot decide: {compiled.undecided['*'][0]}")
        if cs is None and system not in compiled.systems():
            return CodeVerdict(
                False,
                f"code {code} is not in value set {url} (which does not include code system "
                f"{system}; unknown code system {system})",
            )
        if cs is not None and cs.complete and cs.concepts and concept is None:
            return CodeVerdict(
                False, f"unknown code {code} in code system {system}; not in value set {url}"
            )
        return CodeVerdict(
            False,
            f"code {system}#{code} is not in value set {url}",
            concept.display if concept else None,
        )

    def _member_verdict(
        self, system: str, code: str, vs_display: str | None, display: str | None, url: str
    ) -> CodeVerdict:
        cs = self.code_system(system)
        concept = cs.find(code) if cs is not None else None
        expected = vs_display or (concept.display if concept else None)
        if display is None or expected is None:
            return CodeVerdict(True, f"{system}#{code} is in value set {url}", expected)
        if concept is not None and _display_matches(concept, vs_display, display):
            return CodeVerdict(True, f"{system}#{code} is in value set {url}", expected)
        if concept is None and " ".join(display.split()).casefold() == expected.casefold():
            return CodeVerdict(True, f"{system}#{code} is in value set {url}", expected)
        return CodeVerdict(
            True,
            f'display "{display}" for {system}#{code} does not match the expected display '
            f'"{expected}"',
            expected,
        )

    def validate_code_in_system(
        self, system: str, code: str, display: str | None = None
    ) -> CodeVerdict:
        """CodeSystem/$validate-code."""
        cs = self.code_system(system)
        if cs is None:
            return CodeVerdict(None, f"unknown code system {system}")
        if not cs.concepts:
            return CodeVerdict(
                None, f"code system {system} has no concepts available (content {cs.content})"
            )
        concept = cs.find(code)
        if concept is None:
            if cs.complete:
                return CodeVerdict(False, f"unknown code {code} in code system {system}")
            return CodeVerdict(
                None,
                f"code {code} is not listed in code system {system}, which is not "
                f"complete (content {cs.content})",
            )
        if display is not None and concept.display and not _display_matches(concept, None, display):
            return CodeVerdict(
                True,
                f'display "{display}" for {system}#{concept.code} does not match the expected '
                f'display "{concept.display}"',
                concept.display,
            )
        return CodeVerdict(True, f"{system}#{concept.code} is valid", concept.display)

    def lookup(self, system: str, code: str) -> dict[str, Any]:
        """CodeSystem/$lookup as a Parameters resource. KeyError: unknown system or code."""
        cs = self.code_system(system)
        if cs is None:
            raise KeyError(f"unknown code system {system}")
        concept = cs.find(code)
        if concept is None:
            raise KeyError(f"code {code} not found in code system {system}")
        params: list[dict[str, Any]] = [{"name": "name", "valueString": cs.name}]
        if cs.version:
            params.append({"name": "version", "valueString": cs.version})
        if concept.display is not None:
            params.append({"name": "display", "valueString": concept.display})
        if concept.definition:
            params.append({"name": "definition", "valueString": concept.definition})
        if concept.abstract:
            params.append({"name": "abstract", "valueBoolean": True})
        for designation in concept.designations:
            part: list[dict[str, Any]] = []
            if "language" in designation:
                part.append({"name": "language", "valueCode": designation["language"]})
            if "use" in designation:
                part.append({"name": "use", "valueCoding": designation["use"]})
            part.append({"name": "value", "valueString": designation.get("value", "")})
            params.append({"name": "designation", "part": part})
        for name, codes in (("parent", concept.parents), ("child", concept.children)):
            for related in codes:
                params.append(
                    {
                        "name": "property",
                        "part": [
                            {"name": "code", "valueCode": name},
                            {"name": "value", "valueCode": related},
                            *(
                                [
                                    {
                                        "name": "description",
                                        "valueString": cs.concepts[related].display,
                                    }
                                ]
                                if cs.concepts[related].display
                                else []
                            ),
                        ],
                    }
                )
        for prop in concept.properties:
            if prop.get("code") in ("parent", "child", "subsumedBy"):
                continue
            value_key = next((k for k in _VALUE_KEYS if k in prop), None)
            part = [{"name": "code", "valueCode": prop.get("code", "")}]
            if value_key is not None:
                part.append({"name": "value", value_key: prop[value_key]})
            params.append({"name": "property", "part": part})
        return {"resourceType": "Parameters", "parameter": params}


def _flatten_contains(contains: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in contains:
        yield item
        yield from _flatten_contains(item.get("contains", ()))
