"""Compile a StructureDefinition snapshot into a tree of checks, once per profile.

Each snapshot element becomes a `Node`: its JSON property names (a choice element `value[x]`
answers to `valueQuantity`, `valueString`, ... for the types it allows), cardinality, fixed and
pattern values, maxLength, binding, compiled FHIRPath constraints, slicing and slices, children.
The validator walks a resource against this tree; nothing is re-read or re-parsed per resource.

FHIRPath constraints are compiled with fhirpathpy once per expression (shared by all profiles);
the validator evaluates them with the compiled evaluator of `fhirpath.compiler` where it covers
the expression (all of the R4 base invariants but resolve()), fhirpathpy else. `ele-1` and
`ext-1`, which sit on nearly every element, `dom-3` (which fhirpathpy cannot evaluate: `as` on a
collection) and txt-1 / txt-2 (`htmlChecks()`) are implemented natively (see `native`).
Expressions using functions fhirpathpy lacks (`resolve`, ...) or that it cannot parse are
skipped, with a note in `NOTES`; they never produce an issue.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fhirpathpy
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.models import models

PRIMITIVES = frozenset(
    {
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)
SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
NATIVE = frozenset({"ele-1", "ext-1", "dom-3", "txt-1", "txt-2"})
NOTES: set[str] = set()  # invariants skipped, and why (process-wide, for diagnostics)


def _has_value(inputs: list[Any]) -> list[bool]:
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]


def _trace(inputs: list[Any], *_: Any) -> list[Any]:
    return inputs  # fhirpathpy's trace() prints to stdout: silenced


USER_FUNCTIONS: dict[str, Any] = {
    "hasValue": {"fn": _has_value, "arity": {0: []}},
    "trace": {"fn": _trace, "arity": {0: [], 1: ["String"], 2: ["String", "Expr"]}},
}
OPTIONS = {"userInvocationTable": USER_FUNCTIONS, "returnRawData": True}
_FUNCTION = re.compile(r"([A-Za-z_]\w*)\s*\(")
_KEYWORDS = frozenset({"in", "and", "or", "xor", "implies", "is", "as", "div", "mod", "contains"})


@dataclass(frozen=True, slots=True)
class TypeRef:
    code: str
    profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()


@dataclass(slots=True)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str
    fn: Callable[..., Any] | None  # None: native (ele-1, ext-1)


@dataclass(frozen=True, slots=True)
class Slicing:
    discriminators: tuple[tuple[str, str], ...]  # (type, path)
    rules: str  # closed | open | openAtEnd
    ordered: bool


@dataclass(slots=True)
class Node:
    id: str
    path: str
    name: str
    min: int
    max: int | None  # None: unbounded
    types: tuple[TypeRef, ...]
    keys: dict[str, str | None]  # JSON property -> type code it implies (choice) or None
    fixed: Any = None
    pattern: Any = None
    max_length: int | None = None
    binding: tuple[str, str] | None = None  # (strength, valueSet)
    constraints: list[Constraint] = field(default_factory=list)
    slicing: Slicing | None = None
    slice_name: str | None = None
    slices: list[Node] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    content_reference: str | None = None

    @property
    def is_choice(self) -> bool:
        return self.name.endswith("[x]")

    def child(self, name: str) -> Node | None:
        for c in self.children:
            if c.name == name or name in c.keys:
                return c
        return None

    def type_path(self, type_code: str | None) -> str:
        """What fhirpathpy should take this element's value to be (for `is`, `ofType`, ...)."""
        if type_code is None and len(self.types) == 1:
            type_code = self.types[0].code
        if type_code in ("BackboneElement", "Element") and "." in self.path:
            return self.path.replace("[x]", "")
        return type_code or self.path


@dataclass(slots=True)
class CompiledProfile:
    url: str
    name: str
    type: str
    kind: str
    root: Node
    contexts: tuple[tuple[str, str], ...] = ()  # extension contexts (type, expression)
    is_base: bool = False

    def label(self) -> str:
        return self.url


_compiled_expressions: dict[str, Callable[..., Any] | None] = {}


def compile_expression(key: str, expression: str) -> Callable[..., Any] | None:
    """fhirpathpy's compiled function, or None (recorded in NOTES) when it cannot evaluate it."""
    if expression in _compiled_expressions:
        return _compiled_expressions[expression]
    fn: Callable[..., Any] | None = None
    missing = [
        f
        for f in _FUNCTION.findall(expression)
        if f not in invocation_registry and f not in USER_FUNCTIONS and f not in _KEYWORDS
    ]
    if missing:
        NOTES.add(f"{key}: skipped, fhirpathpy lacks {', '.join(sorted(set(missing)))}()")
    else:
        try:
            fn = fhirpathpy.compile(expression, models["r4"], OPTIONS)
        except Exception as exc:  # parse errors of the expression: skip the invariant
            NOTES.add(f"{key}: skipped, fhirpathpy cannot parse it ({exc})")
    _compiled_expressions[expression] = fn
    return fn


def _type_code(t: dict[str, Any]) -> str:
    code = t.get("code", "")
    if code.startswith(SYSTEM_PREFIX):
        return {"String": "string", "Boolean": "boolean", "Integer": "integer"}.get(
            code.removeprefix(SYSTEM_PREFIX), "string"
        )
    return code


def _keys(name: str, types: tuple[TypeRef, ...]) -> dict[str, str | None]:
    if not name.endswith("[x]"):
        return {name: None}
    stem = name[:-3]
    return {stem + t.code[0].upper() + t.code[1:]: t.code for t in types if t.code}


def _max(value: str | None) -> int | None:
    if value is None or value == "*":
        return None
    return int(value)


def _node(element: dict[str, Any]) -> Node:
    path = element["path"]
    name = path.rsplit(".", 1)[-1]
    types = tuple(
        TypeRef(_type_code(t), tuple(t.get("profile", ())), tuple(t.get("targetProfile", ())))
        for t in element.get("type", ())
    )
    node = Node(
        id=element.get("id") or path,
        path=path,
        name=name,
        min=int(element.get("min", 0)),
        max=_max(element.get("max")),
        types=types,
        keys=_keys(name, types),
        max_length=element.get("maxLength"),
        slice_name=element.get("sliceName"),
        content_reference=element.get("contentReference"),
    )
    for key, value in element.items():
        if key.startswith("fixed"):
            node.fixed = value
        elif key.startswith("pattern"):
            node.pattern = value
    binding = element.get("binding")
    strength = (binding or {}).get("strength")
    if binding and binding.get("valueSet") and strength in ("required", "extensible"):
        node.binding = (binding["strength"], binding["valueSet"])
    for c in element.get("constraint", ()):
        key, expression = c.get("key", "?"), c.get("expression")
        if not expression:
            continue
        fn = None if key in NATIVE else compile_expression(key, expression)
        if fn is None and key not in NATIVE:
            continue
        node.constraints.append(
            Constraint(key, c.get("severity", "error"), c.get("human", key), expression, fn)
        )
    slicing = element.get("slicing")
    if slicing:
        discriminators = slicing.get("discriminator", ())
        node.slicing = Slicing(
            tuple((d.get("type", "value"), d.get("path", "$this")) for d in discriminators),
            slicing.get("rules", "open"),
            bool(slicing.get("ordered", False)),
        )
    return node


def compile_profile(sd: dict[str, Any], is_base: bool = False) -> CompiledProfile:
    """The check tree of a StructureDefinition that has a snapshot."""
    elements = sd["snapshot"]["element"]
    nodes: dict[str, Node] = {}
    root: Node | None = None
    for element in elements:
        node = _node(element)
        if root is None:
            root = node
            nodes[node.id] = node
            continue
        parent_id, _, last = node.id.rpartition(".")
        if ":" in last:
            owner_id = f"{parent_id}.{last.split(':', 1)[0]}" if parent_id else last
            base_last = last.split(":", 1)[0]
            if "/" in last.split(":", 1)[1]:  # re-slice: a slice of the slice it refines
                owner_id = f"{parent_id}.{base_last}:{last.split(':', 1)[1].rsplit('/', 1)[0]}"
            owner = nodes.get(owner_id)
            if owner is not None:
                owner.slices.append(node)
        else:
            parent = nodes.get(parent_id)
            if parent is not None:
                parent.children.append(node)
        nodes[node.id] = node
    assert root is not None
    contexts = tuple(
        (c.get("type", "element"), c.get("expression", "")) for c in sd.get("context", ())
    )
    return CompiledProfile(
        url=sd.get("url", ""),
        name=sd.get("name", ""),
        type=sd.get("type", root.path),
        kind=sd.get("kind", ""),
        root=root,
        contexts=contexts,
        is_base=is_base,
    )


def is_primitive(code: str) -> bool:
    return code in PRIMITIVES or code.startswith(SYSTEM_PREFIX)
