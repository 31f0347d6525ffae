"""The shape of FHIR JSON, checked against the R4 definitions (json.html).

This walk owns the element-level rules: known element names (`resourceType` only in a
resource), array or single, the JSON type of every primitive, no nulls outside primitive
arrays, no empty arrays, objects or strings, every required element present, one type per
choice element, nested resources of a known type; a primitive's `_name` companion only for a
primitive (not for the XML attributes Element.id and Extension.url), an object (an array
aligned with the values for a repeating element) holding an Element: `id` and `extension`.

Values: the format of every primitive type — the R4 pattern (date, dateTime, instant, time,
code, id, oid, uuid, uri, ...; a resource's `id` is an id), dates that exist (no 2023-02-29),
integer ranges (integer is 32-bit, unsignedInt >= 0, positiveInt >= 1), finite decimals,
base64Binary as RFC 4648.

The R4 definitions decide, not the R4B models of fhir.resources, which this walk (with the
base rules) has replaced on the write path: the models coerce values (`"active": "yes"` becomes
True), accept `null` and empty arrays, and a few of them differ from R4 (Evidence,
EvidenceVariable, ResearchStudy, the 18 R4 types R4B lacks...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fhir_server.definitions import (
    R4_RESOURCE_TYPES,
    Kind,
    Property,
    primitive_pattern,
    type_definition,
)
from fhir_server.errors import Issue

ELEMENT = "Element"  # the type of a primitive's `_name` companion (id, extension)

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


@dataclass(frozen=True, slots=True)
class _TypeShape:
    """What the walk needs to know about one type, computed once per type."""

    properties: dict[str, Property]  # JSON name -> property (a resource's `id` typed as id)
    companions: dict[str, Property]  # "_name" -> the primitive property it extends
    choices: dict[str, str]  # JSON name (and "_name") of a choice type -> its element
    required: tuple[tuple[str, tuple[str, ...]], ...]  # (element, (JSON names, _names))
    resource: bool  # a resource type: `resourceType` is one of its members


_shapes: dict[str, _TypeShape | None] = {}
_PRIMITIVE_KINDS = frozenset(_JSON_TYPES)


def _shape(type_name: str) -> _TypeShape | None:
    """A type's shape; None for a type the definitions do not describe. Computed once."""
    try:
        return _shapes[type_name]
    except KeyError:
        pass
    if type_name == ELEMENT:
        # The `_name` companion of a primitive: an Element (id and extensions only).
        extension = type_definition("Extension").properties
        properties = {name: extension[name] for name in ("id", "extension")}
    else:
        try:
            properties = dict(type_definition(type_name).properties)
        except KeyError:
            _shapes[type_name] = None
            return None
    resource = type_name in R4_RESOURCE_TYPES
    if resource and "id" in properties:
        # Resource.id is an id (the R4 JSON schema's `id`; the definitions say System.String).
        properties["id"] = replace(properties["id"], type="id")
    groups: dict[str, list[str]] = {}
    for prop in properties.values():
        if prop.mandatory:
            groups.setdefault(prop.element, []).append(prop.name)
    required = tuple(
        (element, (*names, *(f"_{n}" for n in names))) for element, names in groups.items()
    )
    # Element.id and Extension.url (XML attributes, FHIRPath System.String) take no extensions.
    companions = {
        "_" + p.name: p
        for p in properties.values()
        if p.kind in _PRIMITIVE_KINDS and not p.xml_attr
    }
    choices: dict[str, str] = {}
    for prop in properties.values():
        if prop.element.endswith("[x]"):
            choices[prop.name] = choices["_" + prop.name] = prop.element
    shape = _TypeShape(properties, companions, choices, required, resource)
    _shapes[type_name] = shape
    return shape


def _object(value: dict[str, Any], type_name: str, path: str, issues: list[Issue]) -> None:
    shape = _shape(type_name)
    if shape is None:
        return  # a type the definitions do not describe
    properties = shape.properties
    choices = shape.choices
    chosen: dict[str, str] | None = None
    if not value:
        _issue(issues, "structure", path, "must not be an empty object")
    for key, item in value.items():
        prop = properties.get(key)
        if prop is None:
            companion = shape.companions.get(key)
            if companion is not None:
                _companion(item, companion, f"{path}.{key}", issues)
            elif key != "resourceType" or not shape.resource:
                _issue(issues, "structure", f"{path}.{key}", f"unknown element '{key}'")
                continue
        elif not prop.array and prop.kind in _JSON_TYPES and _plain(item, prop):
            pass  # the common case, a well-formed single primitive: nothing to report
        else:
            _property(item, prop, f"{path}.{key}", issues, companion=value.get("_" + key))
        if choices:
            element = choices.get(key)
            if element is not None:
                name = key.removeprefix("_")
                if chosen is None:
                    chosen = {element: name}
                elif chosen.setdefault(element, name) != name:
                    _issue(issues, "structure", f"{path}.{key}",
                           f"only one type of {element} is allowed (also {chosen[element]})")
    for element, names in shape.required:
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
        if type(item) is not int:
            return False
        low, high = _INTEGER_RANGES[prop.type]
        return low <= item <= high
    # A float from JSON is finite (inf - inf and nan - nan are nan, never 0).
    return type(item) is int or (type(item) is float and item - item == 0.0)


def _is_array(item: Any, path: str, issues: list[Issue]) -> bool:
    """Whether `item` is a JSON array (an empty one is reported, and still walked)."""
    if not isinstance(item, list):
        _issue(issues, "structure", path, "must be a JSON array")
        return False
    if not item:
        _issue(issues, "structure", path, "must not be an empty array")
    return True


def _property(
    item: Any, prop: Property, path: str, issues: list[Issue], companion: Any = None
) -> None:
    if prop.array:
        if not _is_array(item, path, issues):
            return
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
        elif prop.kind == Kind.INTEGER and not _in_range(item, prop.type):
            low, high = _INTEGER_RANGES[prop.type]
            _issue(issues, "value", path, f"{item} is not a valid {prop.type} ({low}..{high})")
        elif isinstance(item, float) and not math.isfinite(item):
            _issue(issues, "value", path, f"{item} is not a valid {prop.type} (a finite number)")


def _companion(item: Any, prop: Property, path: str, issues: list[Issue]) -> None:
    """`_name`: the id/extensions of a primitive: an object, or for a repeating element an
    array aligned with the values (null where an item has none)."""
    if prop.array:
        if not _is_array(item, path, issues):
            return
        for index, element in enumerate(item):
            if element is not None:
                _element(element, f"{path}[{index}]", issues)
    elif isinstance(item, list):
        _issue(issues, "structure", path, "must be a single value, not an array")
    elif item is None:
        _issue(issues, "structure", path, "must not be null")
    else:
        _element(item, path, issues)


def _element(item: Any, path: str, issues: list[Issue]) -> None:
    if isinstance(item, dict):
        _object(item, ELEMENT, path, issues)
    else:
        _issue(issues, "structure", path, "must be a JSON object (Element)")


# Value ranges of the integer types (integer is 32-bit).
_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "integer": (-(2**31), 2**31 - 1),
    "unsignedInt": (0, 2**31 - 1),
    "positiveInt": (1, 2**31 - 1),
}


def _in_range(item: int, type_code: str) -> bool:
    low, high = _INTEGER_RANGES[type_code]
    return low <= item <= high


_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _real_date(text: str) -> bool:
    """A date, dateTime or instant already matching its pattern names a day that exists
    ("Dates SHALL be valid dates": no 2023-02-29, 2024-04-31)."""
    if len(text) < 10:
        return True  # a year, or a year and month
    day = int(text[8:10])
    if day <= 28:
        return True
    month = int(text[5:7])
    if month != 2:
        return day <= _DAYS[month]
    year = int(text[:4])
    return day == 29 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# base64Binary (RFC 4648): groups of 4 characters, `=` padding at the end only; spaces, tabs
# and line breaks are allowed anywhere (the R4 pattern `(\s*([0-9a-zA-Z\+\=]){4}\s*)+` leaves
# out `/`, an erratum corrected in later versions).
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_WHITESPACE = re.compile(r"[ \t\r\n]+")


def _base64(text: str) -> bool:
    compact = _WHITESPACE.sub("", text)
    return compact != "" and _BASE64.fullmatch(compact) is not None


_FORMATS: dict[str, Callable[[str], bool]] = {
    "date": _real_date,
    "dateTime": _real_date,
    "instant": _real_date,
    "base64Binary": _base64,
}


def _well_formed(text: str, type_code: str) -> bool:
    """The value matches its primitive type's format (date, id, uri, ...; see definitions),
    and its date exists or its base64 decodes."""
    pattern = primitive_pattern(type_code)
    if pattern is not None and pattern.fullmatch(text) is None:
        return False
    check = _FORMATS.get(type_code)
    return check is None or check(text)


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
