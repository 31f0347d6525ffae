"""FHIRPath invariants compiled into Python closures over plain FHIR JSON.

`compile_expression(expression, focus_type)` turns an expression into `fn(focus, env) -> items`
once; evaluating it is then a few dict lookups and function calls, no interpretation (fhirpathpy
spends 10-100 µs an invariant). The element definitions (fhir_server.definitions) type the
navigation: `value` on an Observation reads valueQuantity, valueString, ... and `x is T`,
`x as T`, `x.ofType(T)` on a choice element pick its `[x]` variant; where the type is not known
(after `descendants()`, `children()`, inside a contained resource) names are looked up as they
are, choice variants by their prefix.

Covered: paths, indexers, `$this`, `%resource`, `%rootResource`, `%context`, `%ucum`, all
operators except `~`/`!~`, and the functions the R4 invariants use (existence, filtering,
subsetting, combining, string and conversion functions, `iif`, `trace`, `children`,
`descendants`, `extension(url)`). Anything else (`resolve()`, `htmlChecks()`, `memberOf()`,
date literals, ...) raises `Unsupported`, so that the caller can fall back to fhirpathpy or skip.
`names(tree)` says which elements of the focus an expression reads, so an invariant whose
elements are all absent need not be evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from fhir_server.definitions import R4_RESOURCE_TYPES, Kind, type_definition
from fhir_server.validation.fhirpath import functions as fn_table
from fhir_server.validation.fhirpath import values as v
from fhir_server.validation.fhirpath.parser import (
    Binary,
    Call,
    Empty,
    Index,
    Literal,
    Name,
    Node,
    TypeOp,
    Unary,
    Unsupported,
    Var,
    parse,
)
from fhir_server.validation.fhirpath.runtime import (
    NONE,
    Env,
    Fn,
    Items,
    dynamic_step,
    key_step,
    keys_step,
)

__all__ = ["Env", "Fn", "compile_expression", "compiled_invariant", "names", "parse"]

Types = frozenset[str] | None  # the static types of a collection's items; None: not known


UCUM = "http://unitsofmeasure.org"
_ITERATING = frozenset({"where", "select", "all", "exists", "repeat"})
_QUANTITY_TYPES = frozenset(
    {"Quantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"}
)
_ABSTRACT = frozenset({"Resource", "DomainResource", "Element", "BackboneElement"})


# ---------------------------------------------------------------------------- entry points


@cache
def compile_expression(expression: str, focus_type: str | None) -> Fn:
    """The compiled function (called with `[focus item]`); Unsupported / ValueError."""
    tree = _strip_type_prefix(parse(expression), focus_type)
    fn, _ = _compile(tree, _types(focus_type))
    return fn


_COMPILED: dict[tuple[str, str | None], Fn | None] = {}


def compiled_invariant(expression: str, focus_type: str | None) -> Fn | None:
    """`compile_expression`, or None when the expression is outside the compiled subset (or
    not FHIRPath); the answer is remembered either way."""
    key = (expression, focus_type)
    try:
        return _COMPILED[key]
    except KeyError:
        pass
    try:
        fn: Fn | None = compile_expression(expression, focus_type)
    except (Unsupported, ValueError, RecursionError):
        fn = None
    if len(_COMPILED) < 50_000:
        _COMPILED[key] = fn
    return fn


def names(expression: str, focus_type: str | None) -> frozenset[str] | None:
    """The element names an expression navigates to from its focus (the first step of its
    paths), or None when its result may depend on anything else: the focus itself (`$this`,
    a function applied to it), or `%resource` / `%rootResource` / `%context`. When none of
    these elements is present, the result equals the result on an empty object."""
    found: set[str] = set()
    tree = _strip_type_prefix(parse(expression), focus_type)
    if not _collect_names(tree, True, found):
        return None
    return frozenset(found)


def _types(type_name: str | None) -> Types:
    return None if type_name is None else frozenset((type_name,))


def _strip_type_prefix(tree: Node, focus_type: str | None) -> Node:
    """`Appointment.status` on an Appointment is `status`."""
    if focus_type is None:
        return tree
    match tree:
        case Name(on=Name(on=None, name=first), name=name) if first == focus_type:
            return Name(None, name)
        case Name(on=on, name=name) if on is not None:
            return Name(_strip_type_prefix(on, focus_type), name)
        case Call(on=on, function=function, args=args):
            on = _strip_type_prefix(on, focus_type) if on is not None else None
            return Call(on, function, tuple(_strip_type_prefix(a, focus_type) for a in args))
        case Binary(operator=op, left=left, right=right):
            return Binary(
                op, _strip_type_prefix(left, focus_type), _strip_type_prefix(right, focus_type)
            )
        case Unary(operator=op, operand=operand):
            return Unary(op, _strip_type_prefix(operand, focus_type))
        case TypeOp(on=on, operator=op, type_name=t):
            return TypeOp(_strip_type_prefix(on, focus_type), op, t)
        case Index(on=on, index=index):
            return Index(_strip_type_prefix(on, focus_type), index)
    return tree


def _collect_names(tree: Node, top: bool, found: set[str]) -> bool:
    """Add the focus-level names of `tree` to `found`; False when it depends on more."""
    match tree:
        case Name(on=None, name=name):
            if top and name[:1].isupper():
                return False  # a type name: tests the focus itself
            if top:
                found.add(name)
            return True
        case Name(on=on) if on is not None:
            return _collect_names(on, top, found)
        case Var(name=name):
            if name == "%ucum":
                return True
            return name.startswith("$") and not (top and name == "$this")
        case Call(on=on, function=function, args=args):
            if on is None and top and function != "iif":
                return False
            if on is not None and not _collect_names(on, top, found):
                return False
            inner = top and function not in _ITERATING
            return all(_collect_names(a, inner, found) for a in args)
        case Binary(left=left, right=right):
            return _collect_names(left, top, found) and _collect_names(right, top, found)
        case Unary(operand=operand):
            return _collect_names(operand, top, found)
        case TypeOp(on=on):
            return _collect_names(on, top, found)
        case Index(on=on, index=index):
            return _collect_names(on, top, found) and _collect_names(index, top, found)
    return True


# ---------------------------------------------------------------------------- compiling


def _compile(node: Node, scope: Types) -> tuple[Fn, Types]:
    """`node` for a focus whose items have the types `scope`; its function and result types."""
    match node:
        case Literal(value=value):
            constant = [value]
            return (lambda focus, env: constant), None
        case Empty():
            return (lambda focus, env: NONE), None
        case Var(name=name):
            return _variable(name), (scope if name == "$this" else None)
        case Name(on=None, name=name):
            return _name(None, scope, name)
        case Name(on=on, name=name):
            source, types = _compile(on, scope)
            return _name(source, types, name)
        case Index(on=on, index=index):
            return _index(_compile(on, scope), _compile(index, scope)[0])
        case TypeOp(on=on, operator=op, type_name=type_name):
            return _type_operation(on, scope, op, type_name)
        case Unary(operator=op, operand=operand):
            fn, types = _compile(operand, scope)
            return (_negate(fn) if op == "-" else fn), types
        case Binary():
            return _binary(node, scope)
        case Call():
            return _call(node, scope)
    raise Unsupported(type(node).__name__)


def _variable(name: str) -> Fn:
    if name == "$this":
        return lambda focus, env: focus
    if name == "%ucum":
        constant = [UCUM]
        return lambda focus, env: constant
    if name == "%resource":
        return lambda focus, env: [env.resource]
    if name == "%rootResource":
        return lambda focus, env: [env.root]
    if name == "%context":
        return lambda focus, env: [env.context]
    raise Unsupported(name)


# --- navigation


def _is_type_name(name: str, types: Types) -> bool:
    return name[:1].isupper() and (
        name in R4_RESOURCE_TYPES or name in _ABSTRACT or (types is not None and name in types)
    )


def _element_keys(types: Types, name: str) -> list[tuple[str, str, bool]] | None:
    """(JSON key, type, primitive) of element `name` on items of `types`; None: not known."""
    if types is None:
        return None
    found: dict[str, tuple[str, bool]] = {}
    for type_name in types:
        try:
            properties = type_definition(type_name).properties
        except KeyError:
            if type_name[:1].islower():
                continue  # a primitive: no child elements navigated here
            return None  # Resource, a type only known at run time
        prop = properties.get(name)
        if prop is not None and not prop.element.endswith("[x]"):
            found[prop.name] = (prop.type, prop.kind not in (Kind.COMPLEX, Kind.RESOURCE))
            continue
        for prop in properties.values():
            if prop.element == name + "[x]":
                found[prop.name] = (prop.type, prop.kind not in (Kind.COMPLEX, Kind.RESOURCE))
    return [(key, t, primitive) for key, (t, primitive) in found.items()]


def _name(source: Fn | None, types: Types, name: str) -> tuple[Fn, Types]:
    if _is_type_name(name, types):
        fn = _type_filter(source, name)
        return fn, (types if types is not None and name in types else None)
    keys = _element_keys(types, name)
    if keys is None:
        step = dynamic_step(name)
        out_types: Types = None
    elif not keys:
        return (lambda focus, env: NONE), frozenset()
    else:
        step = keys_step(keys)
        out_types = frozenset(t for _, t, _ in keys)
        if any(t in ("Resource", *_ABSTRACT) for t in out_types):
            out_types = None
    if source is None:
        return (lambda focus, env: step(focus)), out_types
    src = source
    return (lambda focus, env: step(src(focus, env))), out_types


def _type_filter(source: Fn | None, type_name: str) -> Fn:
    """A type name as a path step: the items that are resources of that type."""

    def keep(items: Items) -> Items:
        return [i for i in items if _type_of(i, None) is not None and _matches(i, None, type_name)]

    if source is None:
        return lambda focus, env: keep(focus)
    src = source
    return lambda focus, env: keep(src(focus, env))


def _index(compiled: tuple[Fn, Types], index: Fn) -> tuple[Fn, Types]:
    source, types = compiled

    def fn(focus: Items, env: Env) -> Items:
        position = v.single_value(index(focus, env))
        items = source(focus, env)
        if type(position) is not int or not 0 <= position < len(items):
            return NONE
        return [items[position]]

    return fn, types


def _negate(fn: Fn) -> Fn:
    def negated(focus: Items, env: Env) -> Items:
        value = v.single_value(fn(focus, env))
        if value is None:
            return NONE
        if type(value) is bool or not isinstance(value, int | float):
            raise v.EvalError("unary minus on a non-number")
        return [-value]

    return negated


# --- types


def _type_of(item: Any, static: Types) -> str | None:
    if type(item) is dict:
        resource_type = item.get("resourceType")
        if isinstance(resource_type, str):
            return resource_type
    if static is not None and len(static) == 1:
        return next(iter(static))
    if type(item) is bool:
        return "boolean"
    if type(item) is int:
        return "integer"
    if type(item) is float:
        return "decimal"
    return None


def _type_matches(actual: str, wanted: str) -> bool:
    wanted = wanted.removeprefix("FHIR.").removeprefix("System.")
    if actual == wanted or actual.lower() == wanted.lower():
        return True
    if wanted in ("Resource", "DomainResource"):
        return actual in R4_RESOURCE_TYPES
    return wanted == "Quantity" and actual in _QUANTITY_TYPES


def _matches(item: Any, static: Types, wanted: str) -> bool:
    actual = _type_of(item, static)
    if actual is None:
        raise v.EvalError(f"cannot tell the type of {item!r}")
    return _type_matches(actual, wanted)


def _typed_source(on: Node, scope: Types) -> Callable[[Items, Env], list[tuple[Any, str | None]]]:
    """Items of `on` with their types: a choice element's variant types are known per key."""
    if isinstance(on, Name) and not _is_type_name(on.name, scope):
        if on.on is None:
            parent: Fn | None = None
            parent_types = scope
        else:
            parent, parent_types = _compile(on.on, scope)
        keys = _element_keys(parent_types, on.name)
        if keys:
            steps = [
                (key_step(key, primitive), None if t == "Resource" or t in _ABSTRACT else t)
                for key, t, primitive in keys
            ]

            def typed(focus: Items, env: Env) -> list[tuple[Any, str | None]]:
                items = focus if parent is None else parent(focus, env)
                # A Resource-typed element (contained, Bundle.entry.resource): its resourceType.
                return [(x, t or _type_of(x, None)) for step, t in steps for x in step(items)]

            return typed
    source, types = _compile(on, scope)
    return lambda focus, env: [(x, _type_of(x, types)) for x in source(focus, env)]


def _type_operation(on: Node, scope: Types, operator: str, type_name: str) -> tuple[Fn, Types]:
    typed = _typed_source(on, scope)
    if operator == "is":

        def is_fn(focus: Items, env: Env) -> Items:
            items = typed(focus, env)
            if not items:
                return NONE
            if len(items) > 1:
                raise v.EvalError("'is' on more than one item")
            item, actual = items[0]
            if actual is None:
                raise v.EvalError(f"cannot tell the type of {item!r}")
            return [_type_matches(actual, type_name)]

        return is_fn, None
    return _of_type(typed, type_name), _types(type_name)


def _of_type(typed: Callable[[Items, Env], list[tuple[Any, str | None]]], type_name: str) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        out = []
        for item, actual in typed(focus, env):
            if actual is None:
                raise v.EvalError(f"cannot tell the type of {item!r}")
            if _type_matches(actual, type_name):
                out.append(item)
        return out

    return fn


# --- operators


def _binary(node: Binary, scope: Types) -> tuple[Fn, Types]:
    left, left_types = _compile(node.left, scope)
    right, right_types = _compile(node.right, scope)
    op = node.operator
    if op in _LOGIC:
        return _LOGIC[op](left, right), None
    if op == "|":
        types = None if left_types is None or right_types is None else left_types | right_types
        return (lambda focus, env: v.distinct(left(focus, env) + right(focus, env))), types
    if op in ("=", "!="):
        return _equality(left, right, op == "!="), None
    if op in _ORDER:
        return _ordering(left, right, _ORDER[op]), None
    if op in ("in", "contains"):
        return _membership(left, right, op == "contains"), None
    if op == "&":
        return _concatenate(left, right), None
    if op in _ARITHMETIC:
        return _arithmetic(left, right, op), None
    raise Unsupported(op)


def _and(left: Fn, right: Fn) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.singleton_bool(left(focus, env))
        if a is False:
            return [False]
        b = v.singleton_bool(right(focus, env))
        if b is False:
            return [False]
        return [True] if a is True and b is True else NONE

    return fn


def _or(left: Fn, right: Fn) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.singleton_bool(left(focus, env))
        if a is True:
            return [True]
        b = v.singleton_bool(right(focus, env))
        if b is True:
            return [True]
        return [False] if a is False and b is False else NONE

    return fn


def _xor(left: Fn, right: Fn) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.singleton_bool(left(focus, env))
        b = v.singleton_bool(right(focus, env))
        return NONE if a is None or b is None else [a != b]

    return fn


def _implies(left: Fn, right: Fn) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.singleton_bool(left(focus, env))
        if a is False:
            return [True]
        b = v.singleton_bool(right(focus, env))
        if b is True:
            return [True]
        if a is True:
            return NONE if b is None else [False]
        return NONE

    return fn


_LOGIC: dict[str, Callable[[Fn, Fn], Fn]] = {
    "and": _and,
    "or": _or,
    "xor": _xor,
    "implies": _implies,
}
_ORDER: dict[str, Callable[[int], bool]] = {
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
}
_ARITHMETIC = frozenset({"+", "-", "*", "/", "div", "mod"})


def _equality(left: Fn, right: Fn, negate: bool) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.values_only(left(focus, env))
        b = v.values_only(right(focus, env))
        if not a or not b:
            return NONE
        same = len(a) == len(b) and all(v.equal(x, y) for x, y in zip(a, b, strict=True))
        return [same != negate]

    return fn


def _ordering(left: Fn, right: Fn, test: Callable[[int], bool]) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.single_value(left(focus, env))
        b = v.single_value(right(focus, env))
        if a is None or b is None:
            return NONE
        result = v.compare(a, b)
        return NONE if result is None else [test(result)]

    return fn


def _membership(left: Fn, right: Fn, contains: bool) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        item_side, collection = (right, left) if contains else (left, right)
        items = v.values_only(item_side(focus, env))
        if not items:
            return NONE
        if len(items) > 1:
            raise v.EvalError("membership test of more than one item")
        return [any(v.equal(items[0], x) for x in collection(focus, env))]

    return fn


def _concatenate(left: Fn, right: Fn) -> Fn:
    def text(items: Items) -> str:
        value = v.single_value(items)
        return "" if value is None else (v.to_string(value) or "")

    return lambda focus, env: [text(left(focus, env)) + text(right(focus, env))]


def _arithmetic(left: Fn, right: Fn, op: str) -> Fn:
    def fn(focus: Items, env: Env) -> Items:
        a = v.single_value(left(focus, env))
        b = v.single_value(right(focus, env))
        if a is None or b is None:
            return NONE
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return [a + b]
        if not all(isinstance(x, int | float) and type(x) is not bool for x in (a, b)):
            raise v.EvalError(f"arithmetic on {a!r} and {b!r}")
        if op == "+":
            return [a + b]
        if op == "-":
            return [a - b]
        if op == "*":
            return [a * b]
        if b == 0:
            return NONE
        if op == "/":
            return [a / b]
        if op == "div":
            return [int(a // b)]
        return [a % b]

    return fn


# --- functions


def _call(node: Call, scope: Types) -> tuple[Fn, Types]:
    if node.on is None:
        source: Fn = _variable("$this")
        types = scope
    else:
        source, types = _compile(node.on, scope)
    name, args = node.function, node.args
    if name in ("is", "as", "ofType"):
        type_name = args[0].value if args and isinstance(args[0], Literal) else None
        if not isinstance(type_name, str):
            raise Unsupported(name)
        on = node.on if node.on is not None else Var("$this")
        if name == "is":
            return _type_operation(on, scope, "is", type_name)
        return _of_type(_typed_source(on, scope), type_name), _types(type_name)
    if name in _ITERATING and args:
        criteria = [_compile(a, types)[0] for a in args]
        builder = fn_table.ITERATING_FUNCTIONS.get(name)
        if builder is None:
            raise Unsupported(name)
        return builder(source, criteria), (types if name == "where" else None)
    if name == "iif":
        if node.on is not None or len(args) not in (2, 3):
            raise Unsupported("iif on a collection")
        return fn_table.iif([_compile(a, scope)[0] for a in args]), None
    arguments = [_compile(a, scope)[0] for a in args]
    if name in ("trace", "first", "last", "tail", "distinct", "single"):
        return fn_table.SAME_TYPE[name](source), types
    if name == "extension":
        if len(arguments) != 1:
            raise Unsupported("extension()")
        return fn_table.extension(source, arguments[0]), frozenset(("Extension",))
    if name in ("combine", "union"):
        other = arguments[0]
        if name == "union":
            return (lambda f, e: v.distinct(source(f, e) + other(f, e))), None
        return (lambda f, e: source(f, e) + other(f, e)), None
    builder = fn_table.FUNCTIONS.get(name)
    if builder is None:
        raise Unsupported(f"{name}()")
    return builder(source, arguments), None
