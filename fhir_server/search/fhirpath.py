"""Compiled evaluation of search parameter expressions.

Indexing evaluates every parameter of a resource's type on every write, so expressions are
compiled once into plain Python closures instead of being interpreted by fhirpathpy (~10-15 µs an
expression, and no resolve()). The compiler covers the FHIRPath subset the R4 search parameters
use:

- unions `a | b` (duplicates removed, as FHIRPath does), paths with arrays flattened at every
  step, and indexers `x[0]`;
- choice elements: `Observation.effective` yields effectiveDateTime, effectivePeriod, ... each
  typed by its suffix, using the element definitions (fhir_server.definitions);
- type filters `(x as T)`, `x.as(T)`, `x.ofType(T)` and the test `x is T`, honouring the FHIR
  specialisations (an Age is a Quantity, a code is a string, a canonical is a uri);
- `where(resolve() is T)`: literal references pointing at a T (`T/id`, `http://.../T/id`,
  either with `/_history/n`, or `#id` naming a contained T);
- `where(criteria)` with `=`, `!=`, `and`, `.exists()` and literals, `%resource`.

resolve() has no data to resolve against here, so it is refused (ValueError) anywhere but in
`where(resolve() is T)`; fhirpathpy does not implement it either.

The first name of a path may be the context's type (`Observation.code`), Resource or
DomainResource (`Resource.meta.tag`, any resource), or another resource type (never matches).

Expressions are parsed by the validation's FHIRPath parser (fhir_server.validation.fhirpath.parser,
the whole grammar); this compiler takes the subset above from its syntax tree.

Anything else (custom SearchParameters) is evaluated by fhirpathpy with the R4 model. Its results
are typed by the node type fhirpathpy derives from the model when it has one; otherwise by shape:
bool -> boolean, int -> integer, float/Decimal -> decimal, a string that looks like a date or
dateTime -> date/dateTime, other strings -> string, an object with resourceType -> that type,
other objects by their keys (see `_shape_type`), falling back to "Element".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import fhirpathpy
from fhirpathpy.engine.nodes import FP_Quantity, FP_TimeBase, ResourceNode
from fhirpathpy.models import models

from fhir_server.definitions import R4_RESOURCE_TYPES, type_definition
from fhir_server.validation.fhirpath.parser import (
    Binary,
    Call,
    Index,
    Literal,
    Name,
    Node,
    TypeOp,
    Unsupported,
    Var,
    parse,
)

__all__ = ["Evaluator", "Value", "compile_expression"]


@dataclass(frozen=True, slots=True)
class Value:
    """One result of an expression."""

    value: Any
    """The JSON value: dict for complex types, str/int/float/bool for primitives."""
    type: str
    """Its FHIR type name ("CodeableConcept", "dateTime", "Observation.component", ...)."""


class Evaluator(Protocol):
    def __call__(self, node: dict[str, Any], resource: dict[str, Any] | None = None) -> list[Value]:
        """Evaluate on `node` (a resource, or the element a composite's components are relative
        to); `resource` is the resource `%resource` stands for (default: `node`)."""
        ...


@functools.cache
def compile_expression(expression: str, resource_type: str) -> Evaluator:
    """Compile `expression` for nodes of `resource_type`: a resource type, Resource or
    DomainResource (typed by each node's resourceType), or a datatype or backbone path for the
    relative expressions of composite components ("Observation.component").

    ValueError if the expression is malformed or names an element its type does not have.
    """
    dynamic = resource_type in GENERIC_TYPES
    try:
        fn, _ = _compile(
            parse(expression), None if dynamic else frozenset((resource_type,))
        )
    except Unsupported:
        return _fallback(expression, resource_type)

    def evaluate(node: dict[str, Any], resource: dict[str, Any] | None = None) -> list[Value]:
        node_type = node.get("resourceType", resource_type) if dynamic else resource_type
        root = node if resource is None else resource
        return [Value(value, type_) for value, type_ in fn([(node, node_type)], root)]

    return evaluate


# ---------------------------------------------------------------------------- types

GENERIC_TYPES = frozenset(("Resource", "DomainResource"))
# The FHIR types that specialise another one (besides Element/Resource): `as`/`ofType`/`is` on
# the general type accept them too. The definitions carry no type hierarchy, and R4 fixes it.
SUPERTYPE = {
    "code": "string",
    "id": "string",
    "markdown": "string",
    "url": "uri",
    "canonical": "uri",
    "oid": "uri",
    "uuid": "uri",
    "positiveInt": "integer",
    "unsignedInt": "integer",
    "Age": "Quantity",
    "Count": "Quantity",
    "Distance": "Quantity",
    "Duration": "Quantity",
    "MoneyQuantity": "Quantity",
    "SimpleQuantity": "Quantity",
}
PRIMITIVE_TYPES = frozenset(
    (
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "markdown", "oid", "positiveInt", "string", "time",
        "unsignedInt", "uri", "url", "uuid", "xhtml",
    )
)  # fmt: skip
# FHIRPath System types, as written in `as(DateTime)`, stand for the FHIR primitive: the R4
# composite Observation-code-value-date means valueDateTime by `value.as(DateTime)`.
SYSTEM_TYPES = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}

Item = tuple[Any, str]
"""A value during evaluation with its FHIR type."""
Fn = Callable[[list[Item], dict[str, Any]], list[Item]]
"""A compiled expression: (focus items, root resource) -> result items."""
Types = frozenset[str] | None
"""The types a compiled expression can yield, None when only known at run time."""
Candidates = tuple[tuple[str, str | None], ...]
"""An element of a type as (JSON property name, type) pairs: one per choice type; the type is
None for a resource-valued element, whose type is its resourceType."""


def _type_name(name: str) -> str:
    if name.startswith("FHIR."):
        return name[5:]
    if name.startswith("System."):
        name = name[7:]
    return SYSTEM_TYPES.get(name, name)


@functools.cache
def _accepted(type_name: str) -> frozenset[str]:
    """The types whose values are a `type_name`; ValueError for a name that is no type."""
    known = (
        type_name in PRIMITIVE_TYPES
        or type_name in GENERIC_TYPES
        or type_name in R4_RESOURCE_TYPES
        or type_name in SUPERTYPE
        or _elements(type_name)
    )
    if not known:
        raise ValueError(f"unknown type {type_name!r}")
    if type_name in GENERIC_TYPES:
        return R4_RESOURCE_TYPES
    return frozenset((type_name, *(t for t, parent in SUPERTYPE.items() if parent == type_name)))


@functools.cache
def _elements(type_name: str) -> dict[str, Candidates]:
    """Element name (choice elements without [x]) -> candidates, for a complex type; empty for
    primitives and unknown types."""
    try:
        properties = type_definition(type_name).properties
    except KeyError:
        return {}
    out: dict[str, list[tuple[str, str | None]]] = {}
    for prop in properties.values():
        name = prop.element[:-3] if prop.element.endswith("[x]") else prop.name
        prop_type = None if prop.type == "Resource" else prop.type
        out.setdefault(name, []).append((prop.name, prop_type))
    return {name: tuple(candidates) for name, candidates in out.items()}


# ---------------------------------------------------------------------------- compiling


def _compile(node: Node, types: Types) -> tuple[Fn, Types]:
    """Compile `node` for focus items of `types`; returns the function and its result types."""
    match node:
        case Name(on=None, name=name) if _is_type_filter(name, types):
            return _type_filter(_identity, types, _accepted(name))
        case Name(on=on, name=name):
            source, source_types = _compile_on(on, types)
            return _step(source, source_types, name)
        case Call(on=on, function="where", args=(criteria,)):
            source, source_types = _compile_on(on, types)
            return _where(source, source_types, criteria), source_types
        case Call(on=on, function="exists", args=()):
            source, _ = _compile_on(on, types)
            return _exists(source), frozenset(("boolean",))
        case Call(on=on, function="as" | "ofType", args=(Literal(value=str(type_name)),)):
            return _compile_as(on, types, _type_name(type_name))
        case TypeOp(on=on, operator="as", type_name=type_name):
            return _compile_as(on, types, _type_name(type_name))
        case TypeOp(on=Call(function="resolve"), operator="is"):
            raise ValueError("resolve() is only supported in where(resolve() is Type)")
        case TypeOp(on=on, operator="is", type_name=type_name):
            source, _ = _compile(on, types)
            return _is(source, _type_name(type_name)), frozenset(("boolean",))
        case Index(on=on, index=Literal(value=int(index))) if not isinstance(index, bool):
            source, source_types = _compile(on, types)
            return _index(source, index), source_types
        case Binary(operator="|"):
            return _union(node, types)
        case Binary(operator="=" | "!=" as operator, left=left, right=right):
            left_fn, _ = _compile(left, types)
            right_fn, _ = _compile(right, types)
            return _equality(left_fn, right_fn, operator == "!="), frozenset(("boolean",))
        case Binary(operator="and", left=left, right=right):
            left_fn, _ = _compile(left, types)
            right_fn, _ = _compile(right, types)
            return _and(left_fn, right_fn), frozenset(("boolean",))
        case Literal(value=value):
            literal = [(value, _literal_type(value))]
            return (lambda items, root: literal), frozenset((literal[0][1],))
        case Var(name="%resource" | "%rootResource"):
            return _root, None
        case Call(function="resolve"):
            raise ValueError("resolve() is only supported in where(resolve() is Type)")
    raise Unsupported(repr(node))


def _compile_as(on: Node | None, types: Types, type_name: str) -> tuple[Fn, Types]:
    if isinstance(on, Name) and not (on.on is None and _is_type_filter(on.name, types)):
        source, source_types = _compile_on(on.on, types)
        return _step(source, source_types, on.name, _accepted(type_name))
    source, source_types = _compile_on(on, types)
    return _type_filter(source, source_types, _accepted(type_name))


def _compile_on(on: Node | None, types: Types) -> tuple[Fn, Types]:
    return (_identity, types) if on is None else _compile(on, types)


def _identity(items: list[Item], root: dict[str, Any]) -> list[Item]:
    return items


def _root(items: list[Item], root: dict[str, Any]) -> list[Item]:
    return [(root, root.get("resourceType", "Resource"))]


def _literal_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return "decimal" if isinstance(value, float) else "string"


def _is_type_filter(name: str, types: Types) -> bool:
    """Whether a leading name is a type (`Observation` in `Observation.code`), not an element."""
    if not name[0].isupper():
        return False
    return (
        name in GENERIC_TYPES or name in R4_RESOURCE_TYPES or (types is not None and name in types)
    )


def _step(
    source: Fn, types: Types, name: str, accepted: frozenset[str] | None = None
) -> tuple[Fn, Types]:
    """Element `name` of each item. With `accepted` (from a type filter right after the step),
    only the choice types it accepts are read, which saves filtering afterwards."""

    def candidates_of(type_name: str) -> Candidates:
        candidates = _elements(type_name).get(name, ())
        if accepted is None:
            return candidates
        return tuple(c for c in candidates if c[1] is None or c[1] in accepted)

    table: dict[str, Candidates] = {}
    out_types: Types = None
    if types is not None:
        if types and not any(_elements(type_name).get(name) for type_name in types):
            raise ValueError(f"{' | '.join(sorted(types))} has no element {name!r}")
        table = {type_name: candidates_of(type_name) for type_name in types}
        prop_types = [prop_type for candidates in table.values() for _, prop_type in candidates]
        out_types = None if None in prop_types else frozenset(t for t in prop_types if t)

    if len(table) == 1 and out_types is not None:
        # The common case, one known type: no per-item lookup of the candidates.
        (candidates,) = table.values()
        step = _known_step(source, candidates)
    else:
        step = _dynamic_step(source, table, candidates_of)
    if accepted is not None and out_types is None:
        # Resource-valued elements are only typed at run time: filter them then.
        return _type_filter(step, None, accepted)
    return step, out_types


def _known_step(source: Fn, candidates: Candidates) -> Fn:
    def step(items: list[Item], root: dict[str, Any]) -> list[Item]:
        out: list[Item] = []
        for value, _ in source(items, root):
            if type(value) is not dict:
                continue
            for json_name, prop_type in candidates:
                child = value.get(json_name)
                if child is None:
                    continue
                if type(child) is list:
                    out.extend([(element, prop_type) for element in child if element is not None])
                else:
                    out.append((child, prop_type))
        return out

    return step


def _dynamic_step(
    source: Fn, table: dict[str, Candidates], candidates_of: Callable[[str], Candidates]
) -> Fn:
    def step(items: list[Item], root: dict[str, Any]) -> list[Item]:
        out: list[Item] = []
        for value, value_type in source(items, root):
            candidates = table.get(value_type)
            if candidates is None:  # only known at run time (a contained resource, ...)
                candidates = table[value_type] = candidates_of(value_type)
            if not candidates or type(value) is not dict:
                continue
            for json_name, prop_type in candidates:
                child = value.get(json_name)
                if child is None:
                    continue
                if type(child) is list:
                    for element in child:
                        if element is not None:
                            out.append((element, prop_type or _resource_type(element)))
                else:
                    out.append((child, prop_type or _resource_type(child)))
        return out

    return step


def _resource_type(value: Any) -> str:
    return value.get("resourceType", "Resource") if type(value) is dict else "Resource"


def _type_filter(source: Fn, types: Types, accepted: frozenset[str]) -> tuple[Fn, Types]:
    if types is not None:
        # Statically known types make most filters a no-op (`Observation.code`) or empty.
        if types <= accepted:
            return source, types
        if not types & accepted:
            return _nothing, frozenset()

    def type_filter(items: list[Item], root: dict[str, Any]) -> list[Item]:
        return [item for item in source(items, root) if item[1] in accepted]

    return type_filter, None if types is None else types & accepted


def _nothing(items: list[Item], root: dict[str, Any]) -> list[Item]:
    return []


def _is(source: Fn, type_name: str) -> Fn:
    accepted = _accepted(type_name)

    def is_(items: list[Item], root: dict[str, Any]) -> list[Item]:
        result = source(items, root)
        return [(result[0][1] in accepted, "boolean")] if len(result) == 1 else []

    return is_


def _index(source: Fn, index: int) -> Fn:
    def index_(items: list[Item], root: dict[str, Any]) -> list[Item]:
        result = source(items, root)
        return [result[index]] if index < len(result) else []

    return index_


def _exists(source: Fn) -> Fn:
    def exists(items: list[Item], root: dict[str, Any]) -> list[Item]:
        return [(bool(source(items, root)), "boolean")]

    return exists


def _flatten_union(node: Node) -> Iterable[Node]:
    if isinstance(node, Binary) and node.operator == "|":
        yield from _flatten_union(node.left)
        yield from _flatten_union(node.right)
    else:
        yield node


def _union(node: Binary, types: Types) -> tuple[Fn, Types]:
    compiled = [_compile(term, types) for term in _flatten_union(node)]
    fns = [fn for fn, _ in compiled]
    out_types: set[str] | None = set()
    for _, term_types in compiled:
        if term_types is None:
            out_types = None
            break
        out_types |= term_types

    def union(items: list[Item], root: dict[str, Any]) -> list[Item]:
        out: list[Item] = []
        for fn in fns:
            out.extend(fn(items, root))
        return _distinct(out) if len(out) > 1 else out

    return union, None if out_types is None else frozenset(out_types)


def _distinct(items: list[Item]) -> list[Item]:
    """FHIRPath union semantics: equal values once (pairwise, as dicts are not hashable)."""
    out: list[Item] = []
    seen: list[Any] = []
    for item in items:
        if not any(_equal(item[0], other) for other in seen):
            seen.append(item[0])
            out.append(item)
    return out


def _equal(a: Any, b: Any) -> bool:
    # Python's True == 1 is not FHIRPath equality: a boolean only equals a boolean.
    return (type(a) is bool) == (type(b) is bool) and a == b


def _equality(left: Fn, right: Fn, negate: bool) -> Fn:
    def equality(items: list[Item], root: dict[str, Any]) -> list[Item]:
        a = left(items, root)
        b = right(items, root)
        if not a or not b:
            return []
        same = len(a) == len(b) and all(_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
        return [(same != negate, "boolean")]

    return equality


def _truth(items: list[Item]) -> bool | None:
    """Singleton evaluation of a collection as a boolean (None: empty)."""
    if not items:
        return None
    value = items[0][0]
    return value if len(items) == 1 and type(value) is bool else True


def _and(left: Fn, right: Fn) -> Fn:
    def and_(items: list[Item], root: dict[str, Any]) -> list[Item]:
        a = _truth(left(items, root))
        if a is False:
            return [(False, "boolean")]
        b = _truth(right(items, root))
        if b is False:
            return [(False, "boolean")]
        return [(True, "boolean")] if a and b else []

    return and_


def _where(source: Fn, types: Types, criteria: Node) -> Fn:
    match criteria:
        case TypeOp(on=Call(on=None, function="resolve", args=()), operator="is"):
            return _where_resolves_to(source, _type_name(criteria.type_name))
        case Binary(operator="=", left=Name(on=None, name=name), right=Literal(value=literal)):
            simple = _single_primitive(types, name)
            if simple is not None:
                return _where_property_equals(source, simple, literal)
    test, _ = _compile(criteria, types)

    def where(items: list[Item], root: dict[str, Any]) -> list[Item]:
        return [item for item in source(items, root) if _truth(test([item], root)) is True]

    return where


def _single_primitive(types: Types, name: str) -> str | None:
    """The JSON name of element `name` when, in every type of `types`, it is one non-repeating
    primitive: then `where(name = literal)` is a dict lookup."""
    if not types:
        return None
    json_names = set()
    for type_name in types:
        candidates = _elements(type_name).get(name, ())
        if len(candidates) != 1 or candidates[0][1] is None:
            return None
        prop = type_definition(type_name).properties[candidates[0][0]]
        if prop.array or _elements(prop.type):
            return None
        json_names.add(prop.name)
    return json_names.pop() if len(json_names) == 1 else None


def _where_property_equals(source: Fn, json_name: str, literal: Any) -> Fn:
    def where(items: list[Item], root: dict[str, Any]) -> list[Item]:
        return [
            item
            for item in source(items, root)
            if type(item[0]) is dict
            and (value := item[0].get(json_name)) is not None
            and _equal(value, literal)
        ]

    return where


def _where_resolves_to(source: Fn, type_name: str) -> Fn:
    accepted = _accepted(type_name)

    def where(items: list[Item], root: dict[str, Any]) -> list[Item]:
        return [
            item
            for item in source(items, root)
            if type(item[0]) is dict and _reference_type(item[0], root) in accepted
        ]

    return where


def _reference_type(reference: dict[str, Any], root: dict[str, Any]) -> str | None:
    """The type a Reference's literal reference points at (None if it does not say)."""
    literal = reference.get("reference")
    if type(literal) is not str:
        return None
    if literal.startswith("#"):
        for contained in root.get("contained") or ():
            if type(contained) is dict and contained.get("id") == literal[1:]:
                return contained.get("resourceType")
        return None
    history = literal.find("/_history/")
    if history >= 0:
        literal = literal[:history]
    parts = literal.rsplit("/", 2)
    if len(parts) < 2 or not parts[-1]:
        return None
    return parts[-2]


# ---------------------------------------------------------------------------- fallback

_R4_MODEL = models["r4"]
_DATE = re.compile(r"-?\d{4}(-\d{2}(-\d{2})?)?")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?")
# Keys that tell a datatype apart when fhirpathpy gives no type, most specific first.
_SHAPES = (
    ("Reference", ("reference",)),
    ("CodeableConcept", ("coding",)),
    ("Quantity", ("value", "unit", "comparator")),
    ("Range", ("low", "high")),
    ("Period", ("start", "end")),
    ("HumanName", ("family", "given")),
    ("Address", ("line", "city", "postalCode", "country")),
    ("Attachment", ("contentType", "data", "url")),
    ("Coding", ("code", "display")),
    ("Identifier", ("system", "value")),
)


def _fallback(expression: str, resource_type: str) -> Evaluator:
    try:
        fn = fhirpathpy.compile(expression, _R4_MODEL, options={"returnRawData": True})
    except Exception as exc:  # fhirpathpy raises bare Exceptions for what it cannot parse
        raise ValueError(f"invalid FHIRPath {expression!r}: {exc}") from None
    # fhirpathpy types the elements of a backbone or datatype node only when told its path.
    element_path = None if resource_type in R4_RESOURCE_TYPES else resource_type

    def evaluate(node: dict[str, Any], resource: dict[str, Any] | None = None) -> list[Value]:
        root = node if resource is None else resource
        focus = node if element_path is None else ResourceNode.create_node(node, element_path)
        try:
            results = fn(focus, {"resource": root, "rootResource": root})
        except Exception as exc:
            raise ValueError(f"cannot evaluate {expression!r}: {exc}") from None
        return [value for item in results if (value := _from_fhirpathpy(item)) is not None]

    return evaluate


def _from_fhirpathpy(item: Any) -> Value | None:
    if isinstance(item, ResourceNode):
        data = item.data
        if data is None:  # a primitive with only an extension
            return None
        path = item.path
        return Value(_plain(data), _shape_type(data) if path is None else _type_name(path))
    if isinstance(item, FP_Quantity):
        # fhirpathpy keeps a UCUM unit in its literal quotes ('mg')
        return Value({"value": _plain(item.value), "unit": item.unit.strip("'")}, "Quantity")
    if isinstance(item, FP_TimeBase):
        text = str(item)
        return Value(text, _shape_type(text))
    return Value(_plain(item), _shape_type(item))


def _plain(value: Any) -> Any:
    """fhirpathpy's Decimals as the float/int a JSON parser gives, recursively."""
    if isinstance(value, Decimal):
        integral = value == value.to_integral_value() and "." not in str(value)
        return int(value) if integral else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _shape_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | Decimal):
        return "decimal"
    if isinstance(value, str):
        if _DATE.fullmatch(value):
            return "date"
        return "dateTime" if _DATE_TIME.fullmatch(value) else "string"
    if isinstance(value, dict):
        if "resourceType" in value:
            return value["resourceType"]
        for type_name, keys in _SHAPES:
            if any(key in value for key in keys):
                return type_name
    return "Element"
