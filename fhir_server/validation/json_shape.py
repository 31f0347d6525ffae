"""The shape of FHIR JSON, checked against the R4 definitions (json.html).

This walk owns the element-level rules: known element names, array or single, the JSON type
of every primitive, no nulls outside primitive arrays, no empty arrays, objects or strings,
every required element present, nested resources of a known type. The R4 definitions decide,
not the R4B models: fhir.resources coerces values (`"active": "yes"` becomes True), accepts
`null` and empty arrays, reports a missing required primitive only when nothing else is wrong,
and a few of its R4B models differ from R4 (Evidence, EvidenceVariable, ResearchStudy, ...).
The models still check the formats of values (dates, ids, codes, ...).
"""

from __future__ import annotations

from typing import Any

from fhir_server.definitions import (
    R4_RESOURCE_TYPES,
    Kind,
    Property,
    primitive_pattern,
    type_definition,
)
from fhir_server.errors import Issue

_JSON_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.BOOLEAN: (bool,),
    Kind.INTEGER: (int,),
    Kind.DECIMAL: (int, float),
    Kind.STRING: (str,),
    Kind.XHTML: (str,),
}
_JSON_NAMES = {
    Kind.BOOLEAN: "a JSON boolean",
    Kind.INTEGER: "a JSON integer",
    Kind.DECIMAL: "a JSON number",
    Kind.STRING: "a JSON string",
    Kind.XHTML: "a JSON string",
}


def check_json_shape(resource: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    _resource(resource, resource.get("resourceType", "Resource"), issues)
    return issues


def _issue(issues: list[Issue], code: str, path: str, text: str) -> None:
    issues.append(Issue(code, f"{path}: {text}", expression=(path,)))


def _resource(value: Any, path: str, issues: list[Issue]) -> None:
    if not isinstance(value, dict):
        _issue(issues, "structure", path, "must be a resource (a JSON object)")
        return
    type_ = value.get("resourceType")
    if not isinstance(type_, str) or type_ not in R4_RESOURCE_TYPES:
        _issue(issues, "structure", path, f"unknown resourceType {type_!r}")
        return
    root = type_ if path == type_ else path
    _object(value, type_, root, issues)


_Shape = tuple[dict[str, Property], tuple[tuple[str, tuple[str, ...]], ...]] | None
_shapes: dict[str, _Shape] = {}


def _shape(type_name: str) -> _Shape:
    """A type's properties and its required elements as (element, (JSON names, `_`names));
    None for a type the definitions do not describe. Computed once per type."""
    try:
        return _shapes[type_name]
    except KeyError:
        pass
    try:
        properties = type_definition(type_name).properties
    except KeyError:
        shape: _Shape = None
    else:
        groups: dict[str, list[str]] = {}
        for prop in properties.values():
            if prop.mandatory:
                groups.setdefault(prop.element, []).append(prop.name)
        required = tuple(
            (element, (*names, *(f"_{n}" for n in names))) for element, names in groups.items()
        )
        shape = (properties, required)
    _shapes[type_name] = shape
    return shape


def _object(value: dict[str, Any], type_name: str, path: str, issues: list[Issue]) -> None:
    shape = _shape(type_name)
    if shape is None:
        return  # a type the definitions do not describe (e.g. xhtml); pydantic judges it
    properties, required = shape
    if not value:
        _issue(issues, "structure", path, "must not be an empty object")
    for key, item in value.items():
        if key == "resourceType":
            continue
        if key.startswith("_"):
            prop = properties.get(key[1:])
            if prop is None:
                _issue(issues, "structure", f"{path}.{key}", f"unknown element '{key}'")
            else:
                _companion(item, prop, f"{path}.{key}", issues)
            continue
        prop = properties.get(key)
        if prop is None:
            _issue(issues, "structure", f"{path}.{key}", f"unknown element '{key}'")
        elif not prop.array and prop.kind in _JSON_TYPES and _plain(item, prop):
            continue  # the common case, a well-formed single primitive: nothing to report
        else:
            _property(item, prop, f"{path}.{key}", issues, companion=value.get("_" + key))
    for element, names in required:
        if not any(n in value for n in names):
            _issue(issues, "required", f"{path}.{element}", "missing required element")


def _plain(item: Any, prop: Property) -> bool:
    """A single primitive value `_value` finds nothing wrong with."""
    kind = prop.kind
    if kind is Kind.STRING or kind is Kind.XHTML:
        return (type(item) is str and not item.isspace() and item != ""
                and _well_formed(item, prop.type))
    if kind is Kind.BOOLEAN:
        return type(item) is bool
    if kind is Kind.INTEGER:
        return type(item) is int
    return type(item) is int or type(item) is float


def _property(
    item: Any, prop: Property, path: str, issues: list[Issue], companion: Any = None
) -> None:
    if prop.array:
        if not isinstance(item, list):
            _issue(issues, "structure", path, "must be a JSON array")
            return
        if not item:
            _issue(issues, "structure", path, "must not be an empty array")
        for index, element in enumerate(item):
            # In a primitive array null is allowed where the `_name` array has the extension.
            aligned = (
                isinstance(companion, list)
                and index < len(companion)
                and (companion[index] is not None)
            )
            if element is None and prop.kind in _JSON_TYPES and aligned:
                continue
            _value(element, prop, f"{path}[{index}]", issues)
    elif isinstance(item, list):
        _issue(issues, "structure", path, "must be a single value, not an array")
    else:
        _value(item, prop, path, issues)


def _value(item: Any, prop: Property, path: str, issues: list[Issue]) -> None:
    if item is None:
        _issue(issues, "structure", path, "must not be null")
    elif prop.kind == Kind.RESOURCE:
        _resource(item, path, issues)
    elif prop.kind == Kind.COMPLEX:
        if isinstance(item, dict):
            _object(item, prop.type, path, issues)
        else:
            _issue(issues, "structure", path, f"must be a JSON object ({prop.type})")
    else:
        expected = _JSON_TYPES[prop.kind]
        # bool is an int in Python; FHIR integers and decimals are never booleans.
        if not isinstance(item, expected) or (prop.kind != Kind.BOOLEAN and isinstance(item, bool)):
            _issue(issues, "value", path, f"must be {_JSON_NAMES[prop.kind]} ({prop.type})")
        elif isinstance(item, str) and not item.strip():
            _issue(issues, "value", path, "must not be empty or only whitespace")
        elif isinstance(item, str) and not _well_formed(item, prop.type):
            _issue(issues, "value", path, f"{_show(item)} is not a valid {prop.type}")


def _companion(item: Any, prop: Property, path: str, issues: list[Issue]) -> None:
    """`_name`: the id/extensions of a primitive (an object, or an array aligned with it)."""
    items = item if isinstance(item, list) else [item]
    for index, element in enumerate(items):
        where = f"{path}[{index}]" if isinstance(item, list) else path
        if element is None and isinstance(item, list):
            continue
        if not isinstance(element, dict):
            _issue(issues, "structure", where, "must be a JSON object (Element)")
        else:
            _object(element, "Element", where, issues)


def _well_formed(text: str, type_code: str) -> bool:
    """The value matches its primitive type's format (date, id, uri, ...; see definitions)."""
    pattern = primitive_pattern(type_code)
    return pattern is None or pattern.fullmatch(text) is not None


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
