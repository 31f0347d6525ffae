"""Finding things in the instance being validated: what lies on the way to a location, and what
a reference points at when the target travels with the resource.

The walk names every value by its FHIRPath location (`Bundle.entry[0].resource.subject`), so
`chain(root, location)` can give back the values from the root down to it (the ancestors of an
extension, for its context; the resources around a reference, for `resolve()`).

`resolve_reference` follows a reference the way R4 says a validator can without fetching
anything: `#id` to a contained resource of the containing resource (`#` alone to that resource
itself), and any other reference to an entry of an enclosing Bundle, by `fullUrl` (absolute
references, `urn:uuid:` / `urn:oid:`, relative references resolved against the base of the
referring entry's `fullUrl`, or an entry whose resource has that type and id). Anything else —
a resource on this or another server — is not available: `None`.
"""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ABSOLUTE_TAIL = re.compile(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class Step:
    """One value on the way down: the value, the JSON key and index that led to it, and its
    location."""

    __slots__ = ("index", "key", "location", "value")

    def __init__(self, value: Any, key: str | None, index: int | None, location: str) -> None:
        self.value = value
        self.key = key
        self.index = index
        self.location = location

    def __repr__(self) -> str:
        return f"Step({self.key}[{self.index}])"


def chain(root: dict[str, Any], location: str) -> list[Step] | None:
    """The values from `root` down to `location` (root first); None when it does not lead
    anywhere. A primitive without a value (`_birthDate` only) is its companion object."""
    first = location.split(".", 1)[0]
    steps = [Step(root, None, None, first)]
    if "[" in first:
        return None
    current: Any = root
    position = len(first)
    while position < len(location):
        m = _STEP.match(location, position)
        if m is None or not isinstance(current, dict):
            return None
        position = m.end()
        key, index = m.group(1), m.group(2)
        raw, extra = current.get(key), current.get("_" + key)
        if index is None:
            value = raw if raw is not None else extra
            if isinstance(value, list):
                return None
        else:
            i = int(index)
            items = raw if isinstance(raw, list) else []
            extras = extra if isinstance(extra, list) else []
            value = items[i] if i < len(items) else None
            if value is None:
                value = extras[i] if i < len(extras) else None
        if value is None:
            return None
        steps.append(Step(value, key, None if index is None else int(index), location[: m.end()]))
        current = value
    return steps


def is_resource(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("resourceType"), str)


def _container(steps: list[Step]) -> Step | None:
    """Where the resource is whose `contained` a local reference (`#id`) at the end of `steps`
    means: the nearest enclosing resource that is not itself a contained resource."""
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        if is_resource(step.value) and step.key != "contained":
            return step
    return None


def _in_bundle(bundle: Step, ref: str, referrer: Step | None) -> tuple[dict[str, Any], str] | None:
    """The entry resource of `bundle` that `ref` names (`referrer`: the entry it is made in)."""
    entries = [
        (i, e)
        for i, e in enumerate(bundle.value.get("entry") or ())
        if isinstance(e, dict) and is_resource(e.get("resource"))
    ]

    def found(i: int, entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return entry["resource"], f"{bundle.location}.entry[{i}].resource"

    for i, entry in entries:
        if entry.get("fullUrl") == ref:
            return found(i, entry)
    relative = _RELATIVE.match(ref)
    if relative is None:
        return None
    full_url = referrer.value.get("fullUrl") if referrer is not None else None
    if isinstance(full_url, str):
        tail = _ABSOLUTE_TAIL.search(full_url)
        if tail is not None:
            wanted = full_url[: tail.start()] + "/" + ref.split("/_history/", 1)[0]
            for i, entry in entries:
                if entry.get("fullUrl") == wanted:
                    return found(i, entry)
    type_, id_ = relative.group(1), relative.group(2)
    same = [
        (i, e)
        for i, e in entries
        if e["resource"]["resourceType"] == type_ and e["resource"].get("id") == id_
    ]
    return found(*same[0]) if len(same) == 1 else None


def resolve_reference(
    root: dict[str, Any], location: str, ref: str
) -> tuple[dict[str, Any], str] | None:
    """The resource `ref` (a reference made at or below `location`) points at, and where it is,
    when it is contained in the resource or an entry of an enclosing Bundle; else None."""
    steps = chain(root, location)
    if steps is None:
        return None
    if ref.startswith("#"):
        container = _container(steps)
        if container is None:
            return None
        if ref == "#":
            return container.value, container.location
        for i, resource in enumerate(container.value.get("contained") or ()):
            if is_resource(resource) and resource.get("id") == ref[1:]:
                return resource, f"{container.location}.contained[{i}]"
        return None
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        if is_resource(step.value) and step.value["resourceType"] == "Bundle":
            referrer = steps[i + 1] if i + 1 < len(steps) and steps[i + 1].key == "entry" else None
            target = _in_bundle(step, ref, referrer)
            if target is not None:
                return target
    return None


def reference_type(value: Any) -> str | None:
    """The resource type a reference names without resolving it (`Reference.type`, or the
    `Type/id` form of `Reference.reference`), or None."""
    if isinstance(value, dict):
        if isinstance(value.get("type"), str):
            type_: str = value["type"]
            return type_.rsplit("/", 1)[-1]
        value = value.get("reference")
    if not isinstance(value, str) or value.startswith(("#", "urn:")):
        return None
    m = _RELATIVE.match(value) or _ABSOLUTE_TAIL.search(value)
    return m.group(1) if m else None
