"""The rules of the R4 base definitions, checked on every write: invariants and required bindings.

`check_base_rules(resource)` returns the issues (errors and warnings) of a structurally valid
resource of any of the 147 R4 types, with the FHIRPath expression of each:

- every FHIRPath invariant (`constraint`) of the base StructureDefinitions, with its severity:
  those of the resource type and its backbone elements, of every datatype where it occurs
  (Period per-1, Quantity qty-3, Reference ref-1, ...), of element-specific constraints
  (Organization.telecom org-3), of the type profiles the definitions name (SimpleQuantity
  sqty-1), of contained resources and resources inside Bundles and Parameters;
- ele-1, ext-1, dom-3 and the narrative's txt-1 / txt-2 (`htmlChecks()`) natively (`native`);
- `required` bindings on code, Coding and CodeableConcept elements against the built-in R4
  terminology. A code that is not in the value set is an error only when the value set can
  decide (a Coding's system is available locally); unknown code systems or value sets are never
  an error.

The work is planned once per type (`_Plan`): which JSON properties lead to complex values, and
the checks of the type, each invariant compiled once by the compiled FHIRPath evaluator
(`fhirpath.compiler`; fhirpathpy for the odd expression it does not cover). An invariant whose
elements are all absent is not evaluated: its result on an empty element is computed once
(dom-6 `text.div.exists()` fails on every resource without a narrative, obs-6 passes when there
is no dataAbsentReason nor value). The walk then visits each complex value of the resource once.

Skipped, never an issue: ctm-1 (CareTeam.participant, `member.resolve()`: the type of the member
needs the referenced resource, which validation does not read). An evaluation error (e.g. more
than one item where FHIRPath expects one) skips that invariant for that element; see `skipped()`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhirpathpy.engine.nodes import ResourceNode

from fhir_server.definitions import R4_RESOURCE_TYPES, Kind, type_definition
from fhir_server.errors import Issue
from fhir_server.validation.fhirpath.compiler import Env, Fn, compile_expression, names
from fhir_server.validation.fhirpath.parser import Unsupported
from fhir_server.validation.native import dom3_ok, ext1_ok, html_checks
from fhir_server.validation.profiles import compiler as fhirpathpy_compiler
from fhir_server.validation.profiles.loader import base_definitions
from fhir_server.validation.terminology import Terminology

__all__ = ["check_base_rules", "skipped"]

FHIR_SD = "http://hl7.org/fhir/StructureDefinition/"
ELE_1 = "All FHIR elements must have a @value or children"
NATIVE = frozenset({"ele-1", "ext-1", "dom-3", "txt-1", "txt-2"})
_VALUE_TESTS: dict[str, Callable[[Any], bool]] = {  # native invariants of a primitive value
    "txt-1": lambda div: not isinstance(div, str) or html_checks(div)[0],
    "txt-2": lambda div: not isinstance(div, str) or html_checks(div)[1],
}
BOUND_TYPES = frozenset({"code", "Coding", "CodeableConcept"})
_COMPLEX, _RESOURCE, _COMPANION = 0, 1, 2

Check = Callable[[dict[str, Any], str, "_Walk"], None]


@dataclass(frozen=True, slots=True)
class Invariant:
    key: str
    severity: str  # "error" | "warning"
    human: str
    expression: str
    element: str  # the element id named in messages
    profile: str | None  # the profile named in messages (None: the resource's base definition)


class _Walk:
    """One resource's walk: the issues so far and what the FHIRPath variables stand for."""

    __slots__ = ("env", "issues", "label")

    def __init__(self, resource: dict[str, Any]) -> None:
        self.issues: list[Issue] = []
        self.label = FHIR_SD + resource["resourceType"]
        self.env = Env(resource, resource)

    def fail(self, rule: Invariant, path: str) -> None:
        self.add(
            rule.severity,
            "invariant",
            path,
            rule.element,
            rule.profile,
            f"constraint {rule.key} failed: {rule.human}",
        )

    def ele1(self, path: str, element: str) -> None:
        self.add("error", "invariant", path, element, None, f"constraint ele-1 failed: {ELE_1}")

    def add(
        self, severity: str, code: str, path: str, element: str, profile: str | None, text: str
    ) -> None:
        where = f" (element {element}, profile {profile or self.label})"
        self.issues.append(Issue(code, f"{path}: {text}{where}", severity, (path,)))


# ---------------------------------------------------------------------------- entry point


def check_base_rules(resource: dict[str, Any]) -> list[Issue]:
    """The base-definition issues of `resource` (its structure already checked)."""
    walk = _Walk(resource)
    resource_type = resource["resourceType"]
    _visit(walk, resource, resource_type, resource_type)
    return walk.issues


def _visit(walk: _Walk, obj: dict[str, Any], type_name: str, path: str) -> None:
    plan = _PLANS.get(type_name) or _plan(type_name)
    for check in plan.checks:
        check(obj, path, walk)
    children = plan.children
    for key, value in obj.items():
        child = children.get(key)
        if child is None:
            continue
        child_type, kind, element = child
        if kind == _COMPLEX:
            if type(value) is list:
                for index, item in enumerate(value):
                    if type(item) is not dict:
                        continue  # (a structural error, reported by the structure check)
                    where = f"{path}.{key}[{index}]"
                    if len(item) == 1 and "id" in item:
                        walk.ele1(where, element)
                    _visit(walk, item, child_type, where)
            elif type(value) is dict:
                where = f"{path}.{key}"
                if len(value) == 1 and "id" in value:
                    walk.ele1(where, element)
                _visit(walk, value, child_type, where)
        elif kind == _RESOURCE:
            items = value if type(value) is list else (value,)
            for index, item in enumerate(items):
                if type(item) is not dict or not isinstance(item.get("resourceType"), str):
                    continue
                where = f"{path}.{key}[{index}]" if type(value) is list else f"{path}.{key}"
                _nested_resource(walk, item, key == "contained", where)
        else:
            _companion(walk, obj, key, value, path, element)


def _nested_resource(walk: _Walk, resource: dict[str, Any], contained: bool, path: str) -> None:
    """A contained resource (%rootResource stays the container) or a resource in a Bundle
    entry or a Parameters parameter (a root of its own)."""
    env = walk.env
    saved = env.resource, env.root
    env.resource = resource
    if not contained:
        env.root = resource
    try:
        _visit(walk, resource, resource["resourceType"], path)
    finally:
        env.resource, env.root = saved


def _companion(
    walk: _Walk, obj: dict[str, Any], key: str, value: Any, path: str, element: str
) -> None:
    """`_name`: the id and extensions of a primitive (ele-1 when it has neither a value nor
    extensions)."""
    name = key[1:]
    primitive = obj.get(name)
    pairs = (
        [
            (v, primitive[i] if isinstance(primitive, list) and i < len(primitive) else None, i)
            for i, v in enumerate(value)
        ]
        if type(value) is list
        else [(value, primitive, None)]
    )
    for extra, own_value, index in pairs:
        if type(extra) is not dict:
            continue
        where = f"{path}.{name}" if index is None else f"{path}.{name}[{index}]"
        if own_value is None and not any(k != "id" for k in extra):
            walk.ele1(where, element)
        extensions = extra.get("extension")
        if type(extensions) is list:
            for i, extension in enumerate(extensions):
                if type(extension) is dict:
                    _visit(walk, extension, "Extension", f"{where}.extension[{i}]")


# ---------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class _Plan:
    checks: tuple[Check, ...]
    children: dict[str, tuple[str, int, str]]  # JSON key -> (type, kind, element id)


_PLANS: dict[str, _Plan] = {}


def _plan(type_name: str) -> _Plan:
    """The checks of one type (a resource, datatype or backbone element path), built once."""
    try:
        properties = type_definition(type_name).properties
    except KeyError:  # not an R4 type (the structure check reports it)
        return _Plan((), {})
    children: dict[str, tuple[str, int, str]] = {}
    for prop in properties.values():
        element = f"{type_name}.{prop.element}"
        if prop.kind == Kind.COMPLEX:
            children[prop.name] = (prop.type, _COMPLEX, element)
        elif prop.kind == Kind.RESOURCE:
            children[prop.name] = (prop.type, _RESOURCE, element)
        else:
            children["_" + prop.name] = (prop.type, _COMPANION, element)
    checks: list[Check] = []
    sd = _definitions().get(type_name.split(".", 1)[0])
    if sd is not None:
        for element in sd["snapshot"]["element"]:
            path = element["path"]
            if path == type_name:
                checks += _type_checks(type_name, element)
            elif path.rpartition(".")[0] == type_name and not _is_type(path):
                checks += _element_checks(type_name, element)
    plan = _Plan(tuple(checks), children)
    _PLANS[type_name] = plan
    return plan


@cache
def _definitions() -> dict[str, dict[str, Any]]:
    """The base StructureDefinitions of resources and datatypes, by type."""
    return {
        sd["type"]: sd
        for sd in base_definitions()
        if sd.get("derivation") == "specialization"
        and sd.get("kind") != "logical"
        and sd["url"] == FHIR_SD + sd["type"]
    }


def _is_type(path: str) -> bool:
    try:
        type_definition(path)
    except KeyError:
        return False
    return True


def _invariants(
    element: dict[str, Any],
    skip: frozenset[str],
    profile: str | None = None,
    element_id: str | None = None,
) -> list[Invariant]:
    return [
        Invariant(
            c["key"],
            "error" if c.get("severity", "error") == "error" else "warning",
            c.get("human", c["key"]),
            c["expression"],
            element_id or element.get("id") or element["path"],
            profile,
        )
        for c in element.get("constraint", ())
        if c.get("expression") and c.get("key") not in skip
    ]


def _type_checks(type_name: str, element: dict[str, Any]) -> list[Check]:
    """The invariants of a type's own element (resource, datatype or backbone root)."""
    checks: list[Check] = []
    keys = {c.get("key") for c in element.get("constraint", ())}
    if "ext-1" in keys and type_name == "Extension":
        rule = _rule(element, "ext-1")
        checks.append(lambda obj, path, walk: None if ext1_ok(obj) else walk.fail(rule, path))
    if "dom-3" in keys:
        dom3 = _rule(element, "dom-3")
        checks.append(
            lambda obj, path, walk: (
                None if "contained" not in obj or dom3_ok(obj) else walk.fail(dom3, path)
            )
        )
    for rule in _invariants(element, NATIVE):
        check = _invariant_check(rule, type_name)
        if check is not None:
            checks.append(check)
    return checks


def _rule(element: dict[str, Any], key: str) -> Invariant:
    constraint = next(c for c in element["constraint"] if c.get("key") == key)
    return Invariant(
        key,
        "error" if constraint.get("severity", "error") == "error" else "warning",
        constraint.get("human", key),
        constraint.get("expression", ""),
        element.get("id") or element["path"],
        None,
    )


def _element_checks(owner: str, element: dict[str, Any]) -> list[Check]:
    """Checks of one non-backbone element of `owner`, on each of its values: its own
    invariants, the invariants its type profiles add (SimpleQuantity), its required binding."""
    name = element["path"].rpartition(".")[2]
    keys = [
        (p.name, p.type) for p in type_definition(owner).properties.values() if p.element == name
    ]
    if not keys:
        return []
    checks: list[Check] = []
    rules = _invariants(element, NATIVE)
    for t in element.get("type", ()):
        for url in t.get("profile", ()):
            profile = next((sd for sd in base_definitions() if sd["url"] == url), None)
            base = _definitions().get(t.get("code", ""))
            if profile is None or base is None:
                continue
            inherited = {c.get("key") for c in base["snapshot"]["element"][0].get("constraint", ())}
            typed = [(k, c) for k, c in keys if c == t.get("code")]
            root = profile["snapshot"]["element"][0]
            for rule in _invariants(root, NATIVE | inherited, url):
                check = _values_check(typed, rule)
                if check is not None:
                    checks.append(check)
    for rule in rules:
        check = _values_check(keys, rule)
        if check is not None:
            checks.append(check)
    for key in _VALUE_TESTS.keys() & {c.get("key") for c in element.get("constraint", ())}:
        rule = _rule(element, key)
        check = _values_check(keys, rule, _native_fn(_VALUE_TESTS[key]))
        if check is not None:
            checks.append(check)
    binding = element.get("binding") or {}
    if binding.get("strength") == "required" and binding.get("valueSet"):
        bound = [(k, c) for k, c in keys if c in BOUND_TYPES]
        if bound:
            checks.append(_binding_check(bound, binding["valueSet"], element.get("id") or name))
    return checks


# ---------------------------------------------------------------------------- invariants


def _compiled(rule: Invariant, focus_type: str) -> Fn | None:
    """The rule's compiled function: the compiled evaluator, else fhirpathpy, else None."""
    try:
        return compile_expression(rule.expression, focus_type)
    except (Unsupported, ValueError) as exc:
        reason = str(exc)
    fn = fhirpathpy_compiler.compile_expression(rule.key, rule.expression)
    if fn is None:
        _SKIPPED.setdefault(rule.key, f"not evaluable ({reason})")
        return None
    fallback = fn

    def evaluate(focus: list[Any], env: Env) -> list[Any]:
        item = focus[0]
        data = (
            item
            if isinstance(item, dict) and "resourceType" in item
            else (ResourceNode.create_node(item, focus_type))
        )
        return list(
            fallback(
                data, {"resource": env.resource, "rootResource": env.root, "context": env.context}
            )
        )

    return evaluate


def _not_local(reference: dict[str, Any]) -> bool:
    value = reference.get("reference")
    return not (isinstance(value, str) and value.startswith("#"))


_PASSES: dict[str, Callable[[dict[str, Any]], bool]] = {
    # ref-1 `reference.startsWith('#').not() or (...)`: true unless a local reference. The
    # most frequent invariant (every Reference), so the evident case is decided here.
    "ref-1": _not_local,
}


def _invariant_check(rule: Invariant, focus_type: str) -> Check | None:
    fn = _compiled(rule, focus_type)
    if fn is None:
        return None
    triggers: frozenset[str] | None = None
    fails_when_absent = False
    try:
        found = names(rule.expression, focus_type)
    except (Unsupported, ValueError):
        found = None
    if found is not None:
        properties = type_definition(focus_type).properties
        keys = {p.name for p in properties.values() if p.element.removesuffix("[x]") in found}
        try:
            empty = fn([{}], Env({}, {}, {}))
            triggers = frozenset(keys | {"_" + k for k in keys})
            fails_when_absent = len(empty) == 1 and empty[0] is False
        except Exception:
            triggers = None

    passes = _PASSES.get(rule.key)

    def check(obj: dict[str, Any], path: str, walk: _Walk) -> None:
        if triggers is not None and obj.keys().isdisjoint(triggers):
            if fails_when_absent:
                walk.fail(rule, path)
            return
        if passes is not None and passes(obj):
            return
        env = walk.env
        env.context = obj
        try:
            result = fn([obj], env)
        except Exception as exc:  # an evaluation error: skip, never a false error
            _note(rule.key, exc)
            return
        if len(result) == 1 and result[0] is False:
            walk.fail(rule, path)

    return check


def _native_fn(test: Callable[[Any], bool]) -> Fn:
    return lambda focus, env: [test(focus[0])]


def _values_check(
    keys: list[tuple[str, str]], rule: Invariant, native: Fn | None = None
) -> Check | None:
    """An invariant on each value of an element (whatever its type)."""
    compiled = [(key, native or _compiled(rule, type_code)) for key, type_code in keys]
    present = [(key, fn) for key, fn in compiled if fn is not None]
    if not present:
        return None

    def check(obj: dict[str, Any], path: str, walk: _Walk) -> None:
        for key, fn in present:
            value = obj.get(key)
            if value is None:
                continue
            items = value if type(value) is list else [value]
            for index, item in enumerate(items):
                where = f"{path}.{key}[{index}]" if type(value) is list else f"{path}.{key}"
                walk.env.context = item
                try:
                    result = fn([item], walk.env)
                except Exception as exc:
                    _note(rule.key, exc)
                    continue
                if len(result) == 1 and result[0] is False:
                    walk.fail(rule, where)

    return check


_SKIPPED: dict[str, str] = {}


def _note(key: str, exc: Exception) -> None:
    if key not in _SKIPPED:
        reason = re.sub(r"\s+", " ", str(exc))[:120]
        _SKIPPED[key] = f"evaluation failed, skipped there ({type(exc).__name__}: {reason})"


def skipped() -> dict[str, str]:
    """Invariants not evaluated (everywhere, or where their evaluation failed), and why."""
    return dict(_SKIPPED)


# ---------------------------------------------------------------------------- bindings


@cache
def _terminology() -> Terminology:
    return Terminology.load()


_VERDICTS: dict[tuple[str, str | None, str], tuple[bool | None, str]] = {}


_TYPE_VALUE_SETS = frozenset(
    "http://hl7.org/fhir/ValueSet/" + name
    for name in ("resource-types", "all-types", "defined-types")
)


def _verdict(valueset: str, system: str | None, code: str) -> tuple[bool | None, str]:
    """True: in the value set; False: not in it, and the value set can tell (for a Coding: its
    system is available locally); None: cannot tell."""
    key = (valueset, system, code)
    cached = _VERDICTS.get(key)
    if cached is None and code in R4_RESOURCE_TYPES and valueset.split("|")[0] in _TYPE_VALUE_SETS:
        # The server's resource types are resource types (SubscriptionStatus, which the
        # definitions have and the R4 resource-types code system lacks, included).
        cached = (True, f"{code} is a resource type of this server")
    if cached is None:
        terminology = _terminology()
        try:
            verdict = terminology.validate_code(valueset, system, code)
            ok = verdict.ok
            if ok is False and system is not None and terminology.code_system(system) is None:
                ok = None  # an unknown code system: never an error
            cached = (ok, verdict.message)
        except Exception as exc:  # a terminology failure must not fail validation
            cached = (None, f"terminology error: {exc}")
        if len(_VERDICTS) < 100_000:
            _VERDICTS[key] = cached
    return cached


def _binding_check(keys: list[tuple[str, str]], valueset: str, element: str) -> Check:
    def check(obj: dict[str, Any], path: str, walk: _Walk) -> None:
        for key, type_code in keys:
            value = obj.get(key)
            if value is None:
                continue
            if type(value) is list:
                for index, item in enumerate(value):
                    _bound(walk, valueset, element, type_code, item, f"{path}.{key}[{index}]")
            else:
                _bound(walk, valueset, element, type_code, value, f"{path}.{key}")

    return check


def _bound(walk: _Walk, valueset: str, element: str, type_code: str, value: Any, path: str) -> None:
    if type_code == "code":
        if not isinstance(value, str):
            return
        codes = [(None, value)]
    elif type_code == "Coding":
        codes = [(value.get("system"), value["code"])] if isinstance(value.get("code"), str) else []
    else:
        codings = value.get("coding")
        codes = [
            (c.get("system"), c["code"])
            for c in (codings if type(codings) is list else ())
            if type(c) is dict and isinstance(c.get("code"), str)
        ]
    if not codes:
        return
    verdicts = []
    for system, code in codes:
        if type_code != "code" and system is None:
            return  # a code without its system: cannot tell
        ok, message = _verdict(valueset, system, code)
        if ok is not False:
            return
        verdicts.append(message)
    shown = ", ".join(f"{s}#{c}" if s else c for s, c in codes)
    walk.add(
        "error",
        "code-invalid",
        path,
        element,
        None,
        f"{shown} is not in the required value set {valueset} ({'; '.join(verdicts)})",
    )
