"""Where an extension may be used: the `context` of its StructureDefinition (R4
`StructureDefinition.context`), checked against the element the extension sits on.

- `element`: the element's path (`Patient`, `Patient.address`, choice names without `[x]`), its
  datatype (`Address`, `Extension` for an extension on an extension), `Element` / `Resource` /
  ... for anything, or `url#elementid` (a profile's element: matched by its path, slice names
  dropped, as which profile the instance follows cannot be told here).
- `fhirpath`: the extension may be used on the elements the expression selects. It is evaluated
  on each ancestor of the element — the resource(s) around it first — with the compiled FHIRPath
  evaluator (fhirpathpy when outside its subset); the context holds when a result is the element
  itself (same object; objects are also compared by value, since unions drop duplicates). A bare
  datatype name (`Quantity`) selects the elements of that type; a path led by one
  (`Quantity.value`) is evaluated with that type on each element around.
- `extension`: `url` — only directly on an extension with that url; `url#path` — inside that
  extension, on the element at `path` (`Extension.extension:part`, `Extension.value[x]`,
  `valueCoding`, ... relative to the named extension).

An expression that neither evaluator can evaluate makes the verdict "cannot check" (None), never
an error.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server.definitions import R4_RESOURCE_TYPES
from fhir_server.validation.fhirpath.compiler import Env, compiled_invariant
from fhir_server.validation.fhirpath.values import Valueless
from fhir_server.validation.profiles.compiler import compile_expression
from fhir_server.validation.profiles.instance import Step, chain, is_resource

ANY_CONTEXT = frozenset({"Element", "Resource", "DomainResource", "Base", "BackboneElement"})
_LEAD = re.compile(r"^\(?\s*([A-Z][A-Za-z]*)\b(\s*$)?")
EXTENSION_KEYS = ("extension", "modifierExtension")

Contexts = tuple[tuple[str, str], ...]


def describe(contexts: Contexts) -> str:
    return ", ".join(f"{kind} {expression}" for kind, expression in contexts)


def element_context_ok(contexts: Contexts, real: str, type_code: str | None) -> bool:
    """Whether an `element` context admits the element at path `real` of type `type_code`."""
    bare = real.replace("[x]", "")
    for kind, expression in contexts:
        if kind != "element":
            continue
        if "#" in expression:  # url#elementid: the element of a profile, by its path
            expression = expression.split("#", 1)[1]
            expression = ".".join(part.split(":", 1)[0] for part in expression.split("."))
        expression = expression.replace("[x]", "")
        if expression in ANY_CONTEXT or expression in (bare, type_code):
            return True
    return False


def context_verdict(
    contexts: Contexts, real: str, type_code: str | None, root: dict[str, Any], holder: str
) -> bool | None:
    """Whether the extension may sit on the element at location `holder` (path `real`, type
    `type_code`) of the instance `root`: True, False, or None when it cannot be told."""
    if element_context_ok(contexts, real, type_code):
        return True
    others = [(k, e) for k, e in contexts if k != "element"]
    if not others:
        return False
    steps = chain(root, holder)
    if steps is None:
        return None
    undecided = False
    for kind, expression in others:
        if kind == "fhirpath":
            verdict = _fhirpath_ok(expression, steps, root, type_code)
        elif kind == "extension":
            verdict = _extension_ok(expression, steps)
        else:
            verdict = None  # an unknown context type: not ours to refuse
        if verdict:
            return True
        undecided = undecided or verdict is None
    return None if undecided else False


# -- fhirpath -----------------------------------------------------------------------------------


def _same(item: Any, target: Any) -> bool:
    if item is target:
        return True
    if isinstance(item, Valueless):
        return item.element is target or item.element == target
    return isinstance(item, dict) and isinstance(target, dict) and item == target


def _fhirpath_ok(
    expression: str, steps: list[Step], root: dict[str, Any], type_code: str | None
) -> bool | None:
    """Whether the expression, on the element (of type `type_code`) or an ancestor, selects
    the element; None when it could not be evaluated on any of them."""
    target = steps[-1].value
    lead = _LEAD.match(expression)
    datatype = None
    if lead is not None and lead.group(1) not in R4_RESOURCE_TYPES:
        datatype = lead.group(1)  # `Quantity.value`, `Extension`: a datatype the walk knows
        if lead.group(2) is not None:  # the bare type name selects elements of that type
            if datatype in ANY_CONTEXT:
                return True
            return None if type_code is None else datatype == type_code
    evaluated = False
    resource: Any = root
    for step in steps:
        focus = step.value
        if is_resource(focus):
            resource = focus
            focus_type: str | None = focus["resourceType"]
        else:
            # A datatype-led path is tried on every element around (their types are not known
            # here: lenient rather than a false error); otherwise the element's own type.
            focus_type = datatype or (type_code if step is steps[-1] else None)
        fast = compiled_invariant(expression, focus_type)
        try:
            if fast is not None:
                result = fast([focus], Env(resource, root, focus))
            else:
                slow = compile_expression("extension context", expression)
                if slow is None:
                    continue
                result = slow(focus, {"resource": resource, "rootResource": root})
        except Exception:  # an evaluation failure on this focus: it selects nothing we know
            continue
        evaluated = True
        if any(_same(item, target) for item in result):
            return True
    return False if evaluated else None


# -- extension ----------------------------------------------------------------------------------


def _relative_paths(steps: list[Step]) -> set[str]:
    """The element paths of `steps[-1]` relative to the extension `steps[0]`, in the spellings an
    `extension` context may use (with or without slice names, concrete or `[x]` choices)."""
    paths = {"Extension"}
    for step in steps[1:]:
        key = step.key or ""
        names = {key}
        if key in EXTENSION_KEYS:
            url = step.value.get("url") if isinstance(step.value, dict) else None
            if isinstance(url, str):
                names.add(f"{key}:{url}")
        elif key.startswith("value") and key[5:6].isupper():
            names.add("value[x]")
        paths = {f"{p}.{n}" for p in paths for n in names}
    return paths


def _extension_ok(expression: str, steps: list[Step]) -> bool:
    url, _, path = expression.partition("#")
    if not path:
        # directly on an extension with that url
        return (
            len(steps) >= 2
            and steps[-1].key in EXTENSION_KEYS
            and isinstance(steps[-1].value, dict)
            and steps[-1].value.get("url") == url
        )
    wanted = path if path.startswith("Extension") else "Extension." + path
    for i in range(len(steps) - 1, 0, -1):
        step = steps[i]
        if step.key not in EXTENSION_KEYS:
            continue
        if isinstance(step.value, dict) and step.value.get("url") == url:
            return wanted in _relative_paths(steps[i:])
    return False
