"""Validate a resource against the R4 base definition of its type and against profiles.

`ProfileValidator.load(directory)` reads local conformance resources (see `loader`), adds the
committed base definitions, and compiles each profile the first time it is used (snapshot first
when the profile has only a differential). `validate(resource, profiles)` walks the resource
against the compiled trees and returns `Issue`s with a FHIRPath `expression` and a text naming
the profile and the element.

Two walks are made: the *base* walk (the resource type's definition, descending into the
definitions of datatypes and contained resources: base invariants, required bindings, extension
URLs and contexts, reference targets) and one *profile* walk per profile (what the profile
constrains: its snapshot elements, slices, and the profiles of its types and extensions).
Invariants are evaluated by the compiled FHIRPath evaluator (`fhirpath.compiler`), or by
fhirpathpy when an expression is outside what it compiles. Issues found by both are reported once.

Extension contexts (element, fhirpath, extension) are checked by `contexts`. Slicing
discriminators may go through resolve(): targets are followed to contained resources and to
entries of an enclosing Bundle (`instance.resolve_reference`); a slice match that needs a target
the validator does not have is reported as "cannot check" (information), never as an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from fhirpathpy.engine.nodes import ResourceNode

from fhir_server.errors import Issue
from fhir_server.validation.fhirpath.compiler import Env, compiled_invariant
from fhir_server.validation.native import dom3_ok, ele1_ok, ext1_ok, html_checks
from fhir_server.validation.profiles.compiler import (
    NOTES,
    CompiledProfile,
    Node,
    Slicing,
    compile_profile,
    is_primitive,
)
from fhir_server.validation.profiles.contexts import context_verdict, describe
from fhir_server.validation.profiles.instance import reference_type, resolve_reference
from fhir_server.validation.profiles.loader import Registry, base_definitions, load_directory
from fhir_server.validation.profiles.snapshot import SnapshotError, generate_snapshot

FHIR_SD = "http://hl7.org/fhir/StructureDefinition/"
_SEGMENT = re.compile(r"extension\('([^']*)'\)|resolve\(\)|ofType\((\w+)\)|\$this|[A-Za-z_]\w*")


class _Unavailable:
    """A slice match that depends on reference targets the validator does not have."""

    __slots__ = ("references",)

    def __init__(self, references: tuple[str, ...] = ()) -> None:
        self.references = references

    def __repr__(self) -> str:
        return f"Unavailable{self.references}"


_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


class CodeVerdict(Protocol):
    ok: bool | None
    message: str


class Terminology(Protocol):
    def validate_code(
        self, valueset_url: str, system: str | None, code: str, display: str | None = None
    ) -> CodeVerdict: ...


@dataclass(slots=True)
class _Run:
    root: dict[str, Any]
    label: str  # profile URL named in the messages
    base: bool  # the base walk (datatypes, extensions, references) or a profile walk
    issues: list[Issue] = field(default_factory=list)

    def add(self, severity: str, code: str, expr: str, node: Node | None, text: str) -> None:
        where = f" (element {node.id}, profile {self.label})" if node else f" ({self.label})"
        self.issues.append(Issue(code, f"{expr}: {text}{where}", severity, (expr,)))


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _contains(value: Any, pattern: Any) -> bool:
    """FHIR pattern matching: every property of the pattern is present in the value."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(k in value and _contains(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        items = _listify(value)
        return all(any(_contains(v, p) for v in items) for p in pattern)
    return value == pattern


def _fhir_type(value: Any, code: str | None) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        return value["resourceType"]
    return code


class ProfileValidator:
    """Validation against the base R4 definitions and local profiles (thread-safe once warm)."""

    def __init__(self, registry: Registry, terminology: Terminology | None = None) -> None:
        self.registry = registry
        self.terminology = terminology
        self._definitions: dict[str, dict[str, Any]] = {}
        for sd in base_definitions():
            self._definitions[sd["url"]] = sd
        self.local_urls = set(registry.structure_definitions)
        self._definitions.update(registry.structure_definitions)
        self._compiled: dict[str, CompiledProfile | None] = {}
        self._snapshots: dict[str, dict[str, Any] | None] = {}
        self._verdicts: dict[tuple[str, str | None, str], tuple[bool | None, str]] = {}
        self._type_names = {  # as they appear in choice property names (valueString)
            sd["type"][0].upper() + sd["type"][1:]
            for sd in base_definitions()
            if sd.get("derivation") == "specialization"
        }
        self.notes: list[str] = list(registry.notes)

    @classmethod
    def load(
        cls, directory: Path | None, terminology: Terminology | None = None
    ) -> ProfileValidator:
        registry = load_directory(directory) if directory is not None else Registry()
        return cls(registry, terminology)

    # -- definitions -------------------------------------------------------------------------

    def knows(self, profile_url: str) -> bool:
        return self._definition(profile_url) is not None

    def _definition(self, url: str) -> dict[str, Any] | None:
        sd = self._definitions.get(url)
        if sd is None and "|" in url:
            sd = self._definitions.get(url.split("|", 1)[0])
        return sd

    def structure_definition(self, url: str) -> dict[str, Any] | None:
        """The definition with a snapshot (generated from its differential when it has none)."""
        if url in self._snapshots:
            return self._snapshots[url]
        sd = self._definition(url)
        self._snapshots[url] = None  # guards against a cycle of base definitions
        if sd is not None and "snapshot" not in sd:
            try:
                elements = generate_snapshot(sd, self.structure_definition)
                sd = {**sd, "snapshot": {"element": elements}}
            except SnapshotError as exc:
                self.notes.append(str(exc))
                sd = None
        self._snapshots[url] = sd
        return sd

    def compiled(self, url: str) -> CompiledProfile | None:
        if url not in self._compiled:
            sd = self.structure_definition(url)
            self._compiled[url] = (
                compile_profile(sd, is_base=url not in self.local_urls) if sd else None
            )
        return self._compiled[url]

    def _base(self, type_code: str) -> CompiledProfile | None:
        return self.compiled(FHIR_SD + type_code)

    # -- entry point -------------------------------------------------------------------------

    def validate(self, resource: dict[str, Any], profiles: Iterable[str] = ()) -> list[Issue]:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return [Issue("structure", "Resource has no resourceType", "error")]
        base = self._base(resource_type)
        if base is None:
            return [Issue("not-supported", f"Unknown resource type {resource_type}", "error")]
        run = _Run(resource, base.url, True)
        self._element(run, base.root, resource, resource_type, resource_type, resource_type)
        issues = run.issues
        wanted = list(profiles)
        meta = resource.get("meta")
        if isinstance(meta, dict):
            wanted += [p for p in _listify(meta.get("profile")) if isinstance(p, str)]
        for url in dict.fromkeys(wanted):
            if url == base.url:
                continue
            profile = self.compiled(url)
            if profile is None:
                issues.append(
                    Issue(
                        "not-supported",
                        f"Profile {url} is not known to this server; not validated against it",
                        "warning",
                        (resource_type,),
                    )
                )
                continue
            if profile.type != resource_type:
                issues.append(
                    Issue(
                        "invalid",
                        f"Profile {url} is for {profile.type}, not {resource_type}",
                        "error",
                        (resource_type,),
                    )
                )
                continue
            run = _Run(resource, url, False)
            self._element(run, profile.root, resource, resource_type, resource_type, resource_type)
            issues += run.issues
        return list(dict.fromkeys(issues))

    # -- the walk ----------------------------------------------------------------------------

    def _element(
        self, run: _Run, node: Node, value: Any, code: str | None, expr: str, real: str
    ) -> None:
        """Checks of one value against its node, then its children (`real`: its path)."""
        if value is None:
            return
        if node.fixed is not None and value != node.fixed:
            run.add("error", "value", expr, node, f"value must be exactly {_show(node.fixed)}")
        if node.pattern is not None and not _contains(value, node.pattern):
            run.add("error", "value", expr, node, f"value must match {_show(node.pattern)}")
        if node.max_length is not None and isinstance(value, str) and len(value) > node.max_length:
            run.add("error", "too-long", expr, node, f"longer than {node.max_length}")
        if node.binding is not None and self.terminology is not None:
            self._binding(run, node, value, code, expr)
        if node.constraints:
            self._constraints(run, node, value, code, expr)
        if not isinstance(value, dict):
            return
        type_code = code or (node.types[0].code if len(node.types) == 1 else None)
        if type_code == "Reference":
            self._reference(run, node, value, expr)
        if node.children:
            self._children(run, node, value, expr, real, type_code)
            if run.base or not node.types:
                return
        elif node.content_reference:
            target = self._content_target(run, node)
            if target is not None:
                self._children(run, target, value, expr, real, type_code)
            return
        if type_code is None:
            return
        profiles = next((t.profiles for t in node.types if t.code == type_code), ())
        if type_code == "Resource" or (type_code and value.get("resourceType") == type_code):
            resource_type = value.get("resourceType")
            if not isinstance(resource_type, str):
                return
            type_code = resource_type
        if run.base and not node.children:
            base = self._base(type_code)
            if base is not None and base.root is not node:
                self._element(run, base.root, value, type_code, expr, real)
        for url in profiles:
            profile = self.compiled(url)
            if profile is None or profile.root is node:
                continue
            sub = _Run(run.root, url, False)
            self._element(sub, profile.root, value, type_code, expr, real)
            run.issues += sub.issues

    def _content_target(self, run: _Run, node: Node) -> Node | None:
        target_path = (node.content_reference or "").split("#", 1)[-1]
        resource_type = target_path.split(".", 1)[0]
        base = self._base(resource_type)
        if base is None:
            return None
        found = base.root
        for part in target_path.split(".")[1:]:
            nxt = next((c for c in found.children if c.name == part), None)
            if nxt is None:
                return None
            found = nxt
        return found

    def _children(
        self, run: _Run, node: Node, obj: dict[str, Any], expr: str, real: str, code: str | None
    ) -> None:
        for child in node.children:
            values: list[tuple[Any, str | None, str]] = []  # (value, type code, expression)
            companions: list[tuple[Any, str]] = []
            if child.is_choice:
                stem = child.name[:-3]
                for key in obj:
                    suffix = key[len(stem) :]
                    if (
                        key.startswith(stem)
                        and suffix[:1].isupper()
                        and key not in child.keys
                        and suffix in self._type_names
                        and node.child(key) is None
                    ):
                        run.add(
                            "error",
                            "structure",
                            f"{expr}.{key}",
                            child,
                            f"type {suffix} is not allowed here",
                        )
                for key, type_code in child.keys.items():
                    self._collect(obj, key, type_code, expr, values, companions)
                name = stem
            else:
                type_code = child.types[0].code if len(child.types) == 1 else None
                self._collect(obj, child.name, type_code, expr, values, companions)
                name = child.name
            count = len(values)
            if count < child.min:
                where = f"{expr}.{name}"
                run.add(
                    "error",
                    "required",
                    where,
                    child,
                    f"minimum required = {child.min}, but only found {count}",
                )
            if child.max is not None and count > child.max:
                where = f"{expr}.{name}"
                run.add(
                    "error",
                    "structure",
                    where,
                    child,
                    f"maximum allowed = {child.max}, but found {count}",
                )
            if not values:
                continue
            child_real = f"{real}.{name}"
            if child.slices:
                self._slices(run, child, values, child_real)
            for value, type_code, where in values:
                self._element(run, child, value, type_code, where, child_real)
            if run.base:
                if child.name in ("extension", "modifierExtension"):
                    for value, _, where in values:
                        self._extension(run, value, where, real, code, child.name, expr)
                for companion, where in companions:
                    type_code = child.types[0].code if len(child.types) == 1 else None
                    for i, ext in enumerate(_listify(companion.get("extension"))):
                        self._extension(
                            run,
                            ext,
                            f"{where}.extension[{i}]",
                            child_real,
                            type_code,
                            "extension",
                            where,
                        )

    @staticmethod
    def _collect(
        obj: dict[str, Any],
        key: str,
        type_code: str | None,
        expr: str,
        values: list[tuple[Any, str | None, str]],
        companions: list[tuple[Any, str]],
    ) -> None:
        raw = obj.get(key)
        extra = obj.get("_" + key)
        if raw is None and extra is None:
            return
        if isinstance(raw, list) or isinstance(extra, list):
            items = raw if isinstance(raw, list) else []
            extras = extra if isinstance(extra, list) else []
            for i in range(max(len(items), len(extras))):
                item = items[i] if i < len(items) else None
                ext = extras[i] if i < len(extras) else None
                if item is None and ext is None:
                    continue
                where = f"{expr}.{key}[{i}]"
                values.append((item, type_code, where))
                if isinstance(ext, dict):
                    companions.append((ext, where))
        else:
            where = f"{expr}.{key}"
            values.append((raw, type_code, where))
            if isinstance(extra, dict):
                companions.append((extra, where))

    # -- slicing -----------------------------------------------------------------------------

    def _slices(
        self, run: _Run, node: Node, values: list[tuple[Any, str | None, str]], real: str
    ) -> None:
        slicing = node.slicing or Slicing((), "open", False)
        matched: list[int | None] = []
        unchecked: list[list[int]] = []  # per value: the slices it may match (resolve())
        missing: list[tuple[str, ...]] = []  # per value: the references not available
        for value, type_code, where in values:
            index = None
            maybe: list[int] = []
            refs: tuple[str, ...] = ()
            for i, slice_node in enumerate(node.slices):
                verdict = self._matches(run, slice_node, slicing, value, type_code, where)
                if verdict is True:
                    index = i
                    break
                if isinstance(verdict, _Unavailable):
                    maybe.append(i)
                    refs += tuple(r for r in verdict.references if r not in refs)
            matched.append(index)
            unchecked.append(maybe if index is None else [])
            missing.append(refs)
        for i, slice_node in enumerate(node.slices):
            count = matched.count(i)
            where = values[0][2].rsplit("[", 1)[0] if values else real
            if count < slice_node.min:
                could = sum(1 for maybe in unchecked if i in maybe)
                if count + could >= slice_node.min:
                    run.add(
                        "information",
                        "not-found",
                        where,
                        slice_node,
                        f"slice '{slice_node.slice_name}': minimum required = {slice_node.min}, "
                        f"found {count}; cannot check {could} more whose reference targets are "
                        "not available",
                    )
                else:
                    run.add(
                        "error",
                        "required",
                        where,
                        slice_node,
                        f"slice '{slice_node.slice_name}': minimum required = "
                        f"{slice_node.min}, but only found {count}",
                    )
            if slice_node.max is not None and count > slice_node.max:
                run.add(
                    "error",
                    "structure",
                    where,
                    slice_node,
                    f"slice '{slice_node.slice_name}': maximum allowed = {slice_node.max}, "
                    f"but found {count}",
                )
        seen_unmatched = False
        last = -1
        rows = zip(values, matched, unchecked, missing, strict=True)
        for (value, type_code, where), index, maybe, refs in rows:
            if index is None:
                if maybe:
                    names = ", ".join(f"'{node.slices[i].slice_name}'" for i in maybe)
                    shown = " ".join(refs) + " " if refs else ""
                    run.add(
                        "information",
                        "not-found",
                        where,
                        node,
                        f"cannot check whether it matches slice {names}: the reference target "
                        f"{shown}is not available to resolve() (neither contained nor in the "
                        "same Bundle)",
                    )
                    continue
                seen_unmatched = True
                if slicing.rules == "closed":
                    run.add(
                        "error",
                        "structure",
                        where,
                        node,
                        "does not match any slice and the slicing is closed",
                    )
                continue
            if slicing.rules == "openAtEnd" and seen_unmatched:
                run.add(
                    "error",
                    "structure",
                    where,
                    node,
                    "matches a slice but follows unsliced content (slicing is openAtEnd)",
                )
            if slicing.ordered and index < last:
                run.add(
                    "error",
                    "structure",
                    where,
                    node,
                    "slices are out of order (slicing is ordered)",
                )
            last = max(last, index)
            slice_node = node.slices[index]
            self._element(run, slice_node, value, type_code, where, real)

    def _matches(
        self,
        run: _Run,
        slice_node: Node,
        slicing: Slicing,
        value: Any,
        code: str | None,
        where: str,
    ) -> bool | _Unavailable:
        """Whether the value belongs to the slice; _Unavailable when that depends on reference
        targets the validator does not have."""
        if not slicing.discriminators:
            return self._conforms(run, slice_node, value, code, where)
        undecided = False
        unavailable: _Unavailable | None = None
        for kind, path in slicing.discriminators:
            verdict = self._discriminate(run, slice_node, kind, path, value, code, where)
            if verdict is False:
                return False
            if isinstance(verdict, _Unavailable):
                unavailable = verdict
            elif verdict is None:
                undecided = True
        if unavailable is not None:
            return unavailable
        if undecided:
            return self._conforms(run, slice_node, value, code, where)
        return True

    def _conforms(self, run: _Run, node: Node, value: Any, code: str | None, where: str) -> bool:
        sub = _Run(run.root, run.label, False)
        self._element(sub, node, value, code, where, where)
        return not any(i.severity in ("error", "fatal") for i in sub.issues)

    def _discriminate(
        self,
        run: _Run,
        slice_node: Node,
        kind: str,
        path: str,
        value: Any,
        code: str | None,
        where: str,
    ) -> bool | _Unavailable | None:
        """Whether the value belongs to the slice by one discriminator; None: the discriminator
        cannot tell (the caller checks the whole slice); _Unavailable: a reference target that
        resolve() needs is not available."""
        segments, resolves = _path_segments(path)
        if resolves:
            return self._discriminate_resolved(run, slice_node, kind, segments, value, code, where)
        targets = self._instance_at(value, code, segments)
        node = self._node_at(slice_node, segments)
        if node is None:
            return None
        return self._verdict_on(run, node, kind, segments, targets, where)

    def _verdict_on(
        self,
        run: _Run,
        node: Node,
        kind: str,
        segments: list[re.Match[str]],
        targets: list[tuple[Any, str | None]],
        where: str,
    ) -> bool | None:
        """One discriminator: the instance values at its path against the slice's node there."""
        if kind in ("value", "pattern"):
            if node.fixed is not None:
                return any(v == node.fixed for v, _ in targets)
            if node.pattern is not None:
                return any(_contains(v, node.pattern) for v, _ in targets)
            return None
        if kind == "type":
            allowed = {t.code for t in node.types}
            if len(segments) and segments[-1].group(2):
                allowed = {segments[-1].group(2)}
            return any(_fhir_type(v, c) in allowed for v, c in targets)
        if kind == "profile":
            urls = [p for t in node.types for p in (t.profiles or t.target_profiles)]
            if not urls:
                return None
            for url in urls:
                profile = self.compiled(url)
                if profile is None:
                    return None
                for v, c in targets:
                    if self._conforms(run, profile.root, v, _fhir_type(v, c), where):
                        return True
            return False
        if kind == "exists":
            if node.min >= 1:
                return bool(targets)
            if node.max == 0:
                return not targets
            return None
        return None

    def _discriminate_resolved(
        self,
        run: _Run,
        slice_node: Node,
        kind: str,
        segments: list[re.Match[str]],
        value: Any,
        code: str | None,
        where: str,
    ) -> bool | _Unavailable | None:
        """A discriminator whose path goes through resolve(): each hop follows the references to
        their targets (contained resources, entries of the same Bundle); on the slice's side, to
        the roots of its target profiles. A target that is not available makes the verdict
        _Unavailable unless another target already decides it (for `type` with resolve() last,
        the type a reference names — `Patient/1`, `Reference.type` — is enough)."""
        groups: list[list[re.Match[str]]] = [[]]
        for m in segments:
            if m.group(0) == "resolve()":
                groups.append([])
            else:
                groups[-1].append(m)
        # (value, its type code, where it is, the type of the resource it was reached in)
        items: list[tuple[Any, str | None, str, str | None]] = [
            (v, c, where, None) for v, c in self._instance_at(value, code, groups[0])
        ]
        first = self._node_at(slice_node, _to_reference(groups[0]))
        nodes: list[tuple[str | None, Node]] = [] if first is None else [(None, first)]
        missing: list[str] = []
        named_types: list[str] = []
        for hop, group in enumerate(groups[1:], start=1):
            last_hop = hop == len(groups) - 1
            targets: list[tuple[Any, str | None, str, str | None]] = []
            for v, _, location, _ in items:
                ref = v.get("reference") if isinstance(v, dict) else v
                found = resolve_reference(run.root, location, ref) if isinstance(ref, str) else None
                if found is not None:
                    resource, at = found
                    type_ = resource["resourceType"]
                    targets += [
                        (x, c, at, type_) for x, c in self._instance_at(resource, type_, group)
                    ]
                    continue
                named = reference_type(v) if last_hop and not group else None
                if kind == "type" and named is not None:
                    named_types.append(named)
                else:
                    missing.append(ref if isinstance(ref, str) else "(no reference)")
            items = targets
            roots: list[tuple[str | None, Node]] = []
            for _, n in nodes:
                for url in dict.fromkeys(p for t in n.types for p in t.target_profiles):
                    profile = self.compiled(url)
                    if profile is None:
                        continue
                    following = group if last_hop else _to_reference(group)
                    found_node = self._node_at(profile.root, following)
                    if found_node is not None:
                        roots.append((profile.type, found_node))
            nodes = roots
        if not nodes:
            return None
        decided: list[bool | None] = []
        if kind == "type" and not groups[-1]:
            allowed = {t for t, _ in nodes if t}
            checked = [_fhir_type(v, c) for v, c, _, _ in items] + named_types
            decided.append(any(t in allowed for t in checked) if checked else False)
        elif kind == "profile" and not groups[-1]:
            ok = any(
                self._conforms(run, n, v, _fhir_type(v, c), at)
                for t, n in nodes
                for v, c, at, _ in items
                if t in (_fhir_type(v, c), "Resource")
            )
            decided.append(ok)
        else:
            for t, n in nodes:
                mine = [(v, c) for v, c, _, r in items if t in (r, "Resource")]
                decided.append(self._verdict_on(run, n, kind, groups[-1], mine, where))
        if any(d is True for d in decided):
            return True
        if missing:
            return _Unavailable(tuple(missing))
        if any(d is None for d in decided):
            return None
        return False

    @staticmethod
    def _instance_at(
        value: Any, code: str | None, segments: list[re.Match[str]]
    ) -> list[tuple[Any, str | None]]:
        items: list[tuple[Any, str | None]] = [(value, code)]
        for m in segments:
            token = m.group(0)
            if token == "$this":
                continue
            if token == "resolve()":  # handled by _discriminate_resolved
                return []
            if m.group(2):  # ofType(X)
                items = [(v, c) for v, c in items if _fhir_type(v, c) == m.group(2)]
                continue
            found: list[tuple[Any, str | None]] = []
            for v, _ in items:
                if not isinstance(v, dict):
                    continue
                if m.group(1) is not None:  # extension('url')
                    found += [
                        (e, "Extension")
                        for e in _listify(v.get("extension"))
                        if isinstance(e, dict) and e.get("url") == m.group(1)
                    ]
                elif token in v:
                    found += [(x, None) for x in _listify(v[token])]
                else:
                    for key, x in v.items():
                        if key.startswith(token) and key[len(token) : len(token) + 1].isupper():
                            found += [(y, key[len(token) :]) for y in _listify(x)]
            items = found
        return items

    def _node_at(self, node: Node, segments: list[re.Match[str]]) -> Node | None:
        current: Node | None = node
        for m in segments:
            token = m.group(0)
            if current is None:
                return None
            if token == "$this" or m.group(2):
                continue
            if token == "resolve()":
                return None
            name = "extension" if m.group(1) is not None else token
            nxt = current.child(name) or current.child(name + "[x]")
            if nxt is None and not current.children:
                for t in current.types:
                    for url in t.profiles:
                        profile = self.compiled(url)
                        if profile is not None:
                            nxt = profile.root.child(name) or profile.root.child(name + "[x]")
            if nxt is not None and m.group(1) is not None:
                url = m.group(1)
                nxt = next(
                    (
                        s
                        for s in nxt.slices
                        if any(url in t.profiles for t in s.types)
                        or any(c.name == "url" and c.fixed == url for c in s.children)
                    ),
                    None,
                )
            current = nxt
        return current

    # -- bindings, invariants, references, extensions ----------------------------------------

    def _binding(self, run: _Run, node: Node, value: Any, code: str | None, expr: str) -> None:
        assert node.binding is not None and self.terminology is not None
        strength, valueset = node.binding
        type_code = code or (node.types[0].code if len(node.types) == 1 else None)
        codes: list[tuple[str | None, str, str | None]]
        if type_code == "CodeableConcept" and isinstance(value, dict):
            codes = [
                (c.get("system"), c["code"], c.get("display"))
                for c in _listify(value.get("coding"))
                if isinstance(c, dict) and isinstance(c.get("code"), str)
            ]
        elif type_code == "Coding" and isinstance(value, dict):
            if not isinstance(value.get("code"), str):
                return
            codes = [(value.get("system"), value["code"], value.get("display"))]
        elif isinstance(value, str) and type_code in ("code", "string", "uri"):
            codes = [(None, value, None)]
        else:
            return
        if not codes:
            return
        verdicts = [self._verdict(valueset, s, c, d) for s, c, d in codes]
        if any(ok for ok, _ in verdicts):
            return
        shown = ", ".join(f"{s}#{c}" if s else c for s, c, _ in codes)
        message = "; ".join(m for _, m in verdicts if m)
        if all(ok is False for ok, _ in verdicts):
            severity = "error" if strength == "required" else "warning"
            run.add(
                severity,
                "code-invalid",
                expr,
                node,
                f"{shown} is not in the {strength} value set {valueset}"
                + (f" ({message})" if message else ""),
            )
        else:
            severity = "warning" if strength == "required" else "information"
            run.add(
                severity,
                "not-found",
                expr,
                node,
                f"cannot check {shown} against the {strength} value set {valueset}: unknown"
                + (f" ({message})" if message else ""),
            )

    def _verdict(
        self, valueset: str, system: str | None, code: str, display: str | None
    ) -> tuple[bool | None, str]:
        key = (valueset, system, code)
        cached = self._verdicts.get(key)
        if cached is None:
            assert self.terminology is not None
            try:
                verdict = self.terminology.validate_code(valueset, system, code, display)
                cached = (verdict.ok, verdict.message)
            except Exception as exc:  # a terminology failure must not fail validation
                cached = (None, f"terminology error: {exc}")
            if len(self._verdicts) < 100_000:
                self._verdicts[key] = cached
        return cached

    def _constraints(self, run: _Run, node: Node, value: Any, code: str | None, expr: str) -> None:
        for c in node.constraints:
            if c.fn is None:
                ok = _native(c.key, value)
            else:
                type_path = node.type_path(code)
                fast = compiled_invariant(c.expression, type_path)
                try:
                    if fast is not None:
                        result = fast([value], Env(run.root, run.root, value))
                    else:
                        data = value
                        if not (isinstance(value, dict) and "resourceType" in value):
                            data = ResourceNode.create_node(value, type_path)
                        result = c.fn(data, {"resource": run.root, "rootResource": run.root})
                except Exception as exc:  # evaluation failure: skip, never a false error
                    _note_failure(c.key, exc)
                    continue
                ok = not (len(result) == 1 and result[0] is False)
            if not ok:
                severity = "error" if c.severity == "error" else "warning"
                run.add(severity, "invariant", expr, node, f"constraint {c.key} failed: {c.human}")

    def _reference(self, run: _Run, node: Node, value: dict[str, Any], expr: str) -> None:
        targets = [p for t in node.types if t.code == "Reference" for p in t.target_profiles]
        if not targets:
            return
        ref = value.get("reference")
        target_type = value.get("type") if isinstance(value.get("type"), str) else None
        if isinstance(ref, str) and target_type is None:
            if ref.startswith("#"):
                contained = [
                    r
                    for r in _listify(run.root.get("contained"))
                    if isinstance(r, dict) and r.get("id") == ref[1:]
                ]
                target_type = contained[0].get("resourceType") if contained else None
            else:
                m = _REFERENCE.search(ref)
                target_type = m.group(1) if m else None
        if target_type is None:
            return  # urn:uuid:, logical references: the target is not known
        allowed = set()
        for url in targets:
            profile = self.compiled(url)
            if profile is None:
                return  # an unknown target profile: cannot tell
            allowed.add(profile.type)
        if target_type not in allowed and "Resource" not in allowed:
            run.add(
                "error",
                "structure",
                f"{expr}.reference",
                node,
                f"reference to {target_type} is not allowed here "
                f"(allowed: {', '.join(sorted(allowed))})",
            )

    def _extension(
        self,
        run: _Run,
        ext: Any,
        expr: str,
        real: str,
        context_type: str | None,
        kind: str,
        holder: str,
    ) -> None:
        """Check one extension at `expr`, on the element at location `holder` (path `real`)."""
        if not isinstance(ext, dict) or not isinstance(ext.get("url"), str):
            return
        url = ext["url"]
        if ":" not in url:
            return  # a sub-extension of a complex extension: checked by that extension
        profile = self.compiled(url)
        if profile is None or profile.type != "Extension":
            severity = "error" if kind == "modifierExtension" else "warning"
            run.add(severity, "extension", expr, None, f"unknown extension {url}")
            return
        if profile.contexts:
            verdict = context_verdict(profile.contexts, real, context_type, run.root, holder)
            if verdict is not True:
                allowed = describe(profile.contexts)
                if verdict is False:
                    run.add(
                        "error",
                        "extension",
                        expr,
                        None,
                        f"extension {url} is not allowed on {holder} ({real}); "
                        f"its contexts: {allowed}",
                    )
                else:
                    run.add(
                        "information",
                        "informational",
                        expr,
                        None,
                        f"cannot check whether extension {url} is allowed on {holder} ({real}); "
                        f"its contexts: {allowed}",
                    )
        sub = _Run(run.root, url, False)
        self._element(sub, profile.root, ext, "Extension", expr, real)
        run.issues += sub.issues


_FAILED: set[str] = set()


def _note_failure(key: str, exc: Exception) -> None:
    if key not in _FAILED:  # one note per invariant: the first failure's reason
        _FAILED.add(key)
        reason = re.sub(r"\[<.*", "[...]", str(exc))[:120]
        NOTES.add(f"{key}: evaluation failed, skipped there ({type(exc).__name__}: {reason})")


def _native(key: str, value: Any) -> bool:
    if key == "ele-1":
        return ele1_ok(value)
    if key == "ext-1" and isinstance(value, dict):
        return ext1_ok(value)
    if key == "dom-3" and isinstance(value, dict):
        return dom3_ok(value)
    if key in ("txt-1", "txt-2") and isinstance(value, str):
        return html_checks(value)[key == "txt-2"]
    return True


@cache
def _path_segments(path: str) -> tuple[list[re.Match[str]], bool]:
    """A discriminator path's steps, and whether one of them is resolve() (once per path)."""
    segments = list(_SEGMENT.finditer(path))
    return segments, any(m.group(0) == "resolve()" for m in segments)


def _to_reference(segments: list[re.Match[str]]) -> list[re.Match[str]]:
    """The path to the Reference element whose target profiles a resolve() follows
    (`item.reference.resolve()`: `item`)."""
    if segments and segments[-1].group(0) == "reference":
        return segments[:-1]
    return segments


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict | list) else str(value)
    return text if len(text) < 120 else text[:117] + "..."


__all__ = ["CodeVerdict", "ProfileValidator", "Terminology", "is_primitive"]
