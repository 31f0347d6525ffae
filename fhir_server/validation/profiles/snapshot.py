"""Snapshot generation: a profile's full element list from its differential and its base.

The base may itself be a profile (its snapshot is generated first, by the `resolve` callback).
Differential elements are matched to snapshot elements by id (`Patient.identifier:mrn.system`);
an element the base does not list yet is created:

- a slice (`...:name`) is a copy of the sliced element and its children, inserted after the
  sliced element's last descendant or earlier slice;
- a child of an element whose type the base does not expand (`Observation.code.coding`, a child
  of a slice, a child of an extension slice with a profile) expands that element first, from its
  type's (or its type profile's, or its contentReference's) definition;
- a renamed choice (`Observation.valueQuantity`) constrains `Observation.value[x]` to that type.

Only the properties validation uses are merged (cardinality, types, fixed/pattern, maxLength,
binding, constraints, slicing; binding and slicing property by property, so that a differential
that restates part of them keeps the rest); documentation is not carried over.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

Element = dict[str, Any]
Resolver = Callable[[str], dict[str, Any] | None]

FHIR_SD = "http://hl7.org/fhir/StructureDefinition/"
MERGED = ("min", "max", "maxLength", "type", "contentReference")
PARTIAL = ("binding", "slicing")  # a differential may restate only part of them


class SnapshotError(Exception):
    """The differential cannot be applied (unknown base, element that cannot be placed)."""


def _under(element_id: str, root: str) -> bool:
    """Whether `element_id` is `root` itself, a descendant, or a slice (or its descendant)."""
    return element_id == root or element_id.startswith((root + ".", root + ":"))


def _find(elements: list[Element], element_id: str) -> int | None:
    for i, element in enumerate(elements):
        if element.get("id") == element_id:
            return i
    return None


def _segments(element_id: str) -> list[str]:
    """Split an id on '.' outside slice names (slice names may contain '.' in theory: rare)."""
    return element_id.split(".")


def _rebase(elements: list[Element], old_id: str, old_path: str, new_id: str, new_path: str):
    out = []
    for e in elements:
        e = copy.deepcopy(e)
        e["id"] = new_id + e["id"][len(old_id) :]
        e["path"] = new_path + e["path"][len(old_path) :]
        out.append(e)
    return out


def _type_definition(element: Element, resolve: Resolver) -> dict[str, Any] | None:
    """The StructureDefinition whose children an element of this type has."""
    types = element.get("type") or []
    last = element["id"].rsplit(".", 1)[-1]
    if len(types) > 1 and ":" in last:
        # value[x]:valueQuantity: the type slice names the type.
        name = last.split(":", 1)[1]
        base = last.split(":", 1)[0].removesuffix("[x]")
        suffix = name[len(base) :] if name.startswith(base) else ""
        types = [t for t in types if t["code"].lower() == suffix.lower()] or types
    if len(types) != 1:
        return None
    profiles = types[0].get("profile") or []
    if len(profiles) == 1:
        sd = resolve(profiles[0])
        if sd is not None:
            return sd
    code = types[0]["code"]
    return resolve(code if "/" in code else FHIR_SD + code)


def _expand(elements: list[Element], index: int, resolve: Resolver) -> bool:
    """Insert the children of elements[index] from its type; False when it has no known type."""
    parent = elements[index]
    if index + 1 < len(elements) and elements[index + 1]["id"].startswith(parent["id"] + "."):
        return True  # already expanded
    reference = parent.get("contentReference")
    if reference:
        target = reference.split("#", 1)[-1]
        source = [e for e in elements if _under(e["id"], target) and e["id"] != target]
        source = [e for e in source if ":" not in e["id"][len(target) :]]
        children = _rebase(source, target, target, parent["id"], parent["path"])
    else:
        sd = _type_definition(parent, resolve)
        if sd is None:
            return False
        snapshot = sd["snapshot"]["element"]
        root = snapshot[0]
        children = _rebase(snapshot[1:], root["id"], root["path"], parent["id"], parent["path"])
    elements[index + 1 : index + 1] = children
    return bool(children)


def _choice_rename(elements: list[Element], element_id: str) -> tuple[str, str] | None:
    """`X.valueQuantity` → (`X.value[x]`, `Quantity`) when the snapshot has `X.value[x]`."""
    parent, _, last = element_id.rpartition(".")
    if ":" in last:
        return None
    for e in elements:
        eid = e["id"]
        if not eid.endswith("[x]") or eid.rpartition(".")[0] != parent:
            continue
        stem = eid.rpartition(".")[2][:-3]
        if last.startswith(stem) and len(last) > len(stem):
            suffix = last[len(stem) :]
            for t in e.get("type") or []:
                if t["code"].lower() == suffix.lower():
                    return eid, t["code"]
    return None


def _locate(elements: list[Element], element_id: str, resolve: Resolver) -> int | None:
    """The index of `element_id`, creating the slice or expanding its parent as needed."""
    found = _find(elements, element_id)
    if found is not None:
        return found
    segments = _segments(element_id)
    if len(segments) == 1:
        return None
    last = segments[-1]
    if ":" in last:
        sliced_id = ".".join([*segments[:-1], last.split(":", 1)[0]])
        sliced = _locate(elements, sliced_id, resolve)
        if sliced is None:
            return None
        template = [
            e for e in elements if e["id"] == sliced_id or e["id"].startswith(sliced_id + ".")
        ]
        path = elements[sliced]["path"]
        new = _rebase(template, sliced_id, path, element_id, path)
        new[0]["sliceName"] = last.split(":", 1)[1]
        new[0].pop("slicing", None)
        end = max(i for i, e in enumerate(elements) if _under(e["id"], sliced_id))
        elements[end + 1 : end + 1] = new
        return end + 1
    parent = _locate(elements, ".".join(segments[:-1]), resolve)
    if parent is None:
        return None
    # The parent may have been found under another id (a renamed choice): use its real id.
    element_id = elements[parent]["id"] + "." + last
    found = _find(elements, element_id)
    if found is not None:
        return found
    _expand(elements, parent, resolve)
    found = _find(elements, element_id)
    if found is None:
        renamed = _choice_rename(elements, element_id)
        if renamed:
            found = _find(elements, renamed[0])
            if found is not None:
                element = elements[found]
                narrowed = [t for t in element.get("type", []) if t["code"] == renamed[1]]
                element["type"] = narrowed or element.get("type", [])
    return found


def _merge(target: Element, diff: Element) -> None:
    for key in MERGED:
        if key in diff:
            target[key] = copy.deepcopy(diff[key])
    for key in PARTIAL:
        # `slicing: {rules: closed}` keeps the base's discriminators; `binding: {strength:
        # required}` its value set.
        if isinstance(diff.get(key), dict):
            merged = dict(target[key]) if isinstance(target.get(key), dict) else {}
            merged.update(copy.deepcopy(diff[key]))
            target[key] = merged
    if "sliceName" in diff:
        target["sliceName"] = diff["sliceName"]
    if any(k.startswith(("fixed", "pattern")) for k in diff):
        for key in [k for k in target if k.startswith(("fixed", "pattern"))]:
            del target[key]
        for key, value in diff.items():
            if key.startswith(("fixed", "pattern")):
                target[key] = copy.deepcopy(value)
    if "constraint" in diff:
        existing = target.setdefault("constraint", [])
        keys = {c.get("key") for c in existing}
        for c in diff["constraint"]:
            if c.get("key") not in keys and c.get("expression"):
                existing.append(
                    {k: c[k] for k in ("key", "severity", "expression", "human") if k in c}
                )


def _differential_ids(differential: list[Element]) -> list[str]:
    """Ids of the differential elements; built from path and sliceName when absent."""
    ids = []
    current_slice: dict[str, str] = {}  # path -> id of the slice most recently declared there
    for element in differential:
        path = element["path"]
        if element.get("id"):
            ids.append(element["id"])
            continue
        parts = path.split(".")
        built = parts[0]
        for i in range(1, len(parts)):
            built += "." + parts[i]
            prefix = ".".join(parts[: i + 1])
            if i < len(parts) - 1 and prefix in current_slice:
                built = current_slice[prefix]
        if element.get("sliceName"):
            built += ":" + element["sliceName"]
            current_slice[path] = built
        ids.append(built)
    return ids


def generate_snapshot(sd: dict[str, Any], resolve: Resolver) -> list[Element]:
    """The snapshot elements of `sd` from its differential and its (resolved) base."""
    base_url = sd.get("baseDefinition")
    base = resolve(base_url) if base_url else None
    if base is None or "snapshot" not in base:
        raise SnapshotError(f"{sd.get('url')}: base definition {base_url} is not known")
    elements = copy.deepcopy(base["snapshot"]["element"])
    for e in elements:
        e.setdefault("id", e["path"])
    differential = (sd.get("differential") or {}).get("element") or []
    for element_id, diff in zip(_differential_ids(differential), differential, strict=True):
        index = _locate(elements, element_id, resolve)
        if index is None:
            raise SnapshotError(f"{sd.get('url')}: cannot place differential element {element_id}")
        _merge(elements[index], diff)
    return elements
