"""The FHIR R4 element definitions the server needs at run time, from a committed data file.

`elements.json` is produced by `python -m fhir_server.definitions.generate` from the official
StructureDefinitions; the server never reads the specification itself. The file is parsed once,
on first use, and each type's table of properties is built the first time it is asked for, so
importing this module costs nothing and every later lookup is a dict access.

A type here is a resource ("Patient"), a complex datatype ("HumanName") or a backbone element,
named by its path ("Patient.contact"). Its properties are keyed by JSON property name, which is
also the XML element name: choice elements are expanded ("value[x]" gives "valueQuantity",
"valueString", ...) and contentReference elements point at the type they reuse
("Questionnaire.item.item" has type "Questionnaire.item").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    # Provided lazily by the module __getattr__ below.
    R4_RESOURCE_TYPES: frozenset[str]
    MODELLED_RESOURCE_TYPES: frozenset[str]

__all__ = [
    "MODELLED_RESOURCE_TYPES",
    "R4_RESOURCE_TYPES",
    "Kind",
    "Property",
    "TypeDefinition",
    "mandatory_elements",
    "primitive_pattern",
    "summary_elements",
    "type_definition",
]

DATA_FILE = Path(__file__).with_name("elements.json")

# Bits of the flags integer stored with each element in the data file.
FLAG_ARRAY = 1
FLAG_SUMMARY = 2
FLAG_MANDATORY = 4
FLAG_XML_ATTR = 8


class Kind(StrEnum):
    """How a property's value is represented: the JSON type of primitives, or its structure."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    DECIMAL = "decimal"
    STRING = "string"
    XHTML = "xhtml"
    COMPLEX = "complex"
    RESOURCE = "resource"


@dataclass(frozen=True, slots=True)
class Property:
    """One JSON property of a type: a non-choice element, or one type of a choice element.

    `mandatory` means the element has min >= 1; for a choice element every expanded name carries
    it, meaning exactly one of them must be present.
    """

    name: str
    element: str
    order: int
    type: str
    kind: Kind
    array: bool
    summary: bool
    mandatory: bool
    xml_attr: bool


@dataclass(frozen=True, slots=True)
class TypeDefinition:
    name: str
    properties: Mapping[str, Property]


@functools.cache
def _data() -> dict[str, Any]:
    return orjson.loads(DATA_FILE.read_bytes())


@functools.cache
def _resource_types() -> frozenset[str]:
    return frozenset(_data()["resourceTypes"])


@functools.cache
def _modelled_resource_types() -> frozenset[str]:
    return frozenset(_data()["modelledResourceTypes"])


_LAZY = {
    "R4_RESOURCE_TYPES": _resource_types,
    "MODELLED_RESOURCE_TYPES": _modelled_resource_types,
}


def __getattr__(name: str) -> frozenset[str]:
    loader = _LAZY.get(name)
    if loader is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = loader()
    globals()[name] = value  # later accesses skip this hook
    return value


def _kind(type_code: str) -> Kind:
    primitive = _data()["primitiveTypes"].get(type_code)
    if primitive is not None:
        return Kind(primitive)
    if type_code == "Resource" or type_code in _resource_types():
        return Kind.RESOURCE
    return Kind.COMPLEX


def _expand(order: int, element: list[Any]) -> list[Property]:
    """The properties of one stored element: [name, type code(s), flags]."""
    name, types, flags = element
    common = {
        "element": name,
        "order": order,
        "array": bool(flags & FLAG_ARRAY),
        "summary": bool(flags & FLAG_SUMMARY),
        "mandatory": bool(flags & FLAG_MANDATORY),
        "xml_attr": bool(flags & FLAG_XML_ATTR),
    }
    if not name.endswith("[x]"):
        return [Property(name=name, type=types, kind=_kind(types), **common)]
    base = name[:-3]
    return [
        Property(name=base + code[0].upper() + code[1:], type=code, kind=_kind(code), **common)
        for code in types
    ]


@functools.cache
def type_definition(name: str) -> TypeDefinition:
    """The properties of a resource, datatype or backbone element path; KeyError if unknown."""
    elements = _data()["types"][name]
    properties = {
        prop.name: prop
        for order, element in enumerate(elements)
        for prop in _expand(order, element)
    }
    return TypeDefinition(name=name, properties=properties)


@functools.cache
def primitive_pattern(type_code: str) -> re.Pattern[str] | None:
    """The compiled format of a primitive type whose values are checked (date, id, uri, ...)."""
    pattern = _data().get("primitivePatterns", {}).get(type_code)
    return None if pattern is None else re.compile(pattern)


@functools.cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON property names of a resource that are part of its summary."""
    props = type_definition(resource_type).properties.values()
    return frozenset(p.name for p in props if p.summary)


@functools.cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON property names of a resource whose element has min >= 1."""
    props = type_definition(resource_type).properties.values()
    return frozenset(p.name for p in props if p.mandatory)
