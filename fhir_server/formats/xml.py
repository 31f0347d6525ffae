"""FHIR XML <-> FHIR JSON (https://hl7.org/fhir/R4/xml.html), driven by the element definitions.

Resources live as JSON-shaped dicts everywhere in the server; XML exists only at the edges, so
this module converts whole resources both ways:

- elements are written in definition order; primitives carry their value in a `value` attribute
  and their id/extensions (the JSON `_name` companion) as an `id` attribute and children;
  `Element.id` and `Extension.url` are attributes; the narrative `div` is embedded XHTML;
  resource-typed elements (contained, Bundle.entry.resource, ...) wrap an element named after the
  resource type;
- reading restores what the JSON format would hold: arrays wherever the element repeats, JSON
  booleans and numbers for boolean/integer/decimal types, `_name` companions aligned with
  nulls for repeating primitives.

Decimals: JSON bodies are parsed with orjson, so a decimal reaches the server as an int (no
fraction or exponent) or a float. XML input gets exactly the same treatment, so both formats
store the same values; the price is that trailing zeros ("1.50" -> 1.5) are not kept, as in JSON.
On output a float is written in its shortest round-tripping form, and a `decimal.Decimal` (if one
ever reaches this module) keeps its exact digits.

Parsing is hardened against XXE and entity expansion: entities are never resolved, no DTD or
network access happens, and any DOCTYPE is refused.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from lxml import etree

from fhir_server.definitions import (
    R4_RESOURCE_TYPES,
    Kind,
    Property,
    TypeDefinition,
    type_definition,
)
from fhir_server.errors import Issue, Unprocessable, bad_request, unprocessable

__all__ = ["FHIR_NS", "XHTML_NS", "resource_to_xml", "xml_to_resource"]

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"


def _invalid(message: str, path: str | None = None) -> Unprocessable:
    """Well-formed XML that is not a valid resource: 422, like the same content in JSON."""
    return unprocessable([Issue("structure", message, expression=(path,) if path else ())])
_F = "{" + FHIR_NS + "}"
_XHTML_DIV = "{" + XHTML_NS + "}div"
_EXTENSION_TAG = _F + "extension"
# Written by hand: lxml's own declaration uses single quotes, unlike every other FHIR server.
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_PRIMITIVE = frozenset((Kind.BOOLEAN, Kind.INTEGER, Kind.DECIMAL, Kind.STRING))
# Unknown JSON properties sort after every defined element, keeping their JSON order.
_UNKNOWN_ORDER = 1 << 30
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _parser() -> etree.XMLParser:
    # A parser per call: lxml parsers must not be shared between threads.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _extension_type() -> TypeDefinition:
    return type_definition("Extension")


# ---------------------------------------------------------------------------------------------
# JSON -> XML


def resource_to_xml(resource: dict[str, Any], pretty: bool = False) -> bytes:
    """Serialize a resource (FHIR JSON as a dict) as a FHIR XML document."""
    root = _resource_element(resource, None, resource.get("resourceType", ""))
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", pretty_print=pretty)


def _resource_element(resource: Any, parent: etree._Element | None, path: str) -> etree._Element:
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if resource_type not in R4_RESOURCE_TYPES:
        raise bad_request(f"Unknown resource type {resource_type!r}", path or None)
    tag = _F + resource_type
    if parent is None:
        element = etree.Element(tag, nsmap={None: FHIR_NS})
    else:
        element = etree.SubElement(parent, tag)
    _write_object(element, resource, type_definition(resource_type), path)
    return element


def _ordered(obj: dict[str, Any], typedef: TypeDefinition) -> list[tuple[str, Property | None]]:
    """The element names present in `obj` (a value and its `_name` companion count once), in
    the order XML requires."""
    entries: dict[str, Property | None] = {}
    for key in obj:
        name = key[1:] if key.startswith("_") else key
        if name not in entries and name != "resourceType":
            entries[name] = typedef.properties.get(name)
    return sorted(entries.items(), key=lambda item: item[1].order if item[1] else _UNKNOWN_ORDER)


def _write_object(element: etree._Element, obj: Any, typedef: TypeDefinition, path: str) -> None:
    if not isinstance(obj, dict):
        raise bad_request(f"{path} must be a JSON object", path)
    for name, prop in _ordered(obj, typedef):
        value = obj.get(name)
        child_path = f"{path}.{name}"
        if prop is None:
            _write_unknown(element, name, value, obj.get("_" + name), child_path)
        elif prop.xml_attr:
            if value is not None:
                _set(element, name, value, child_path)
        elif prop.kind in _PRIMITIVE:
            _write_primitives(element, name, value, obj.get("_" + name), child_path)
        elif prop.kind is Kind.XHTML:
            _write_div(element, value, child_path)
        elif prop.kind is Kind.RESOURCE:
            for item_path, item in _items(value, child_path):
                _resource_element(item, etree.SubElement(element, _F + name), item_path)
        else:
            child_type = type_definition(prop.type)
            for item_path, item in _items(value, child_path):
                _write_object(etree.SubElement(element, _F + name), item, child_type, item_path)


def _items(value: Any, path: str) -> list[tuple[str, Any]]:
    """The occurrences of a complex element with their paths."""
    if isinstance(value, list):
        return [(f"{path}[{i}]", item) for i, item in enumerate(value) if item is not None]
    return [] if value is None else [(path, value)]


def _write_primitives(
    parent: etree._Element, name: str, value: Any, companion: Any, path: str
) -> None:
    if not isinstance(value, list) and not isinstance(companion, list):
        _write_primitive(parent, name, value, companion, path)
        return
    # Repeating primitive: values and `_name` companions are aligned, nulls filling the gaps.
    values = value if isinstance(value, list) else []
    companions = companion if isinstance(companion, list) else []
    for i in range(max(len(values), len(companions))):
        _write_primitive(
            parent,
            name,
            values[i] if i < len(values) else None,
            companions[i] if i < len(companions) else None,
            f"{path}[{i}]",
        )


def _write_primitive(
    parent: etree._Element, name: str, value: Any, companion: Any, path: str
) -> None:
    if value is None and not companion:
        # Nothing to write (an empty element is not FHIR XML); values and companions after it
        # stay aligned, as both lose the same position.
        return
    element = etree.SubElement(parent, _F + name)
    if isinstance(companion, dict):
        if companion.get("id") is not None:
            _set(element, "id", companion["id"], path)
        extension = _extension_type()
        for i, item in enumerate(companion.get("extension") or ()):
            item_path = f"{path}.extension[{i}]"
            _write_object(etree.SubElement(element, _EXTENSION_TAG), item, extension, item_path)
    if value is not None:
        _set(element, "value", value, path)


def _set(element: etree._Element, attribute: str, value: Any, path: str) -> None:
    try:
        element.set(attribute, _lexical(value))
    except ValueError:
        raise bad_request(f"The value of {path} cannot be represented in XML", path) from None


def _lexical(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)  # shortest form that parses back to the same float
    return str(value)


def _write_div(parent: etree._Element, value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise bad_request(f"{path} must be a string of XHTML", path)
    # The wrapper makes XHTML the default namespace, so a div written without xmlns still lands
    # in the right namespace; a div with its own xmlns is unaffected.
    try:
        wrapper = etree.fromstring(f'<w xmlns="{XHTML_NS}">{value}</w>', _parser())
    except etree.XMLSyntaxError as exc:
        raise bad_request(f"{path} is not well-formed XHTML: {exc}", path) from None
    divs = [child for child in wrapper if isinstance(child.tag, str)]
    if len(divs) != 1 or divs[0].tag != _XHTML_DIV:
        raise bad_request(f"{path} must be a single XHTML div element", path)
    div = divs[0]
    div.tail = None
    parent.append(div)


def _write_unknown(
    parent: etree._Element, name: str, value: Any, companion: Any, path: str
) -> None:
    """Best effort for a property the definitions do not know: objects become elements whose
    children follow JSON order, anything else a primitive."""
    first = value[0] if isinstance(value, list) and value else value
    if not isinstance(first, dict):
        _write_primitives(parent, name, value, companion, path)
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            child = etree.SubElement(parent, _F + name)
            for key, sub in item.items():
                if not key.startswith("_"):
                    _write_unknown(child, key, sub, item.get("_" + key), f"{path}.{key}")


# ---------------------------------------------------------------------------------------------
# XML -> JSON


def xml_to_resource(data: bytes) -> dict[str, Any]:
    """Parse a FHIR XML document into the resource's FHIR JSON (as a dict)."""
    root = _parse(data)
    namespace, name = _split(root.tag)
    if namespace != FHIR_NS:
        raise bad_request(
            f"The root element must be in the FHIR namespace {FHIR_NS}, "
            f"not {namespace or 'no namespace'}"
        )
    if name not in R4_RESOURCE_TYPES:
        raise bad_request(f"Unknown resource type '{name}'")
    return _read_resource(root, name, name)


def _parse(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise bad_request(f"The body is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise bad_request("DOCTYPE declarations are not allowed in FHIR XML")
    return root


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _read_resource(element: etree._Element, resource_type: str, path: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": resource_type}
    _read_object(element, type_definition(resource_type), path, resource)
    return resource


def _read_object(
    element: etree._Element, typedef: TypeDefinition, path: str, out: dict[str, Any]
) -> dict[str, Any]:
    props = typedef.properties
    for attribute, value in element.attrib.items():
        prop = props.get(attribute)
        if prop is not None and prop.xml_attr:
            out[attribute] = value
        elif not attribute.startswith("{"):  # namespaced ones (xsi:schemaLocation) carry no data
            raise _invalid(f"Unexpected attribute '{attribute}' on {path}", path)
    _check_text(element.text, path)
    counts: dict[str, int] = {}
    companions: dict[str, list[Any]] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        _check_text(child.tail, path)
        prop = _child_property(child.tag, props, path)
        name = prop.name
        index = counts.get(name, 0)
        counts[name] = index + 1
        if index and not prop.array:
            raise _invalid(f"Element '{name}' may occur only once in {path}", f"{path}.{name}")
        child_path = f"{path}.{name}[{index}]" if prop.array else f"{path}.{name}"
        if prop.kind in _PRIMITIVE:
            value, companion = _read_primitive(child, prop.kind, child_path)
            if prop.array:
                out.setdefault(name, []).append(value)
                companions.setdefault(name, []).append(companion)
            else:
                _store_primitive(out, name, value, companion)
        else:
            _store(out, prop, _read_child(child, prop, child_path))
    for name, items in companions.items():
        _align(out, name, items)
    return out


def _check_text(text: str | None, path: str) -> None:
    if text and not text.isspace():
        raise _invalid(f"Unexpected text content in {path}: {text.strip()[:40]!r}", path)


def _child_property(tag: str, props: dict[str, Property], path: str) -> Property:
    namespace, name = _split(tag)
    prop = props.get(name)
    if prop is None or prop.xml_attr:
        raise _invalid(f"Unknown element '{name}' in {path}", f"{path}.{name}")
    expected = XHTML_NS if prop.kind is Kind.XHTML else FHIR_NS
    if namespace != expected:
        raise _invalid(
            f"Element '{name}' in {path} must be in the namespace {expected}", f"{path}.{name}"
        )
    return prop


def _store(out: dict[str, Any], prop: Property, value: Any) -> None:
    if prop.array:
        out.setdefault(prop.name, []).append(value)
    else:
        out[prop.name] = value


def _store_primitive(out: dict[str, Any], name: str, value: Any, companion: Any) -> None:
    if value is not None:
        out[name] = value
    if companion is not None:
        out["_" + name] = companion


def _align(out: dict[str, Any], name: str, companions: list[Any]) -> None:
    """Finish a repeating primitive: drop an all-null value list, add `_name` if needed."""
    if all(value is None for value in out[name]):
        del out[name]
    if any(companion is not None for companion in companions):
        out["_" + name] = companions


def _read_child(element: etree._Element, prop: Property, path: str) -> Any:
    if prop.kind is Kind.XHTML:
        return _read_div(element)
    if prop.kind is Kind.RESOURCE:
        return _read_contained(element, path)
    return _read_object(element, type_definition(prop.type), path, {})


def _read_primitive(element: etree._Element, kind: Kind, path: str) -> tuple[Any, Any]:
    """The JSON value of a primitive element and its `_name` companion (None when absent)."""
    text: str | None = None
    companion: dict[str, Any] = {}
    for attribute, value in element.attrib.items():
        if attribute == "value":
            text = value
        elif attribute == "id":
            companion["id"] = value
        elif not attribute.startswith("{"):
            raise _invalid(f"Unexpected attribute '{attribute}' on {path}", path)
    _check_text(element.text, path)
    extension = _extension_type()
    extensions = []
    for child in element:
        if not isinstance(child.tag, str):
            continue
        _check_text(child.tail, path)
        if child.tag != _EXTENSION_TAG:
            name = _split(child.tag)[1]
            raise _invalid(f"Unknown element '{name}' in {path}", f"{path}.{name}")
        item_path = f"{path}.extension[{len(extensions)}]"
        extensions.append(_read_object(child, extension, item_path, {}))
    if extensions:
        companion["extension"] = extensions
    if text is None and not companion:
        raise _invalid(f"{path} has neither a value nor extensions", path)
    value = None if text is None else _primitive_value(text, kind, path)
    return value, companion or None


def _primitive_value(text: str, kind: Kind, path: str) -> Any:
    if kind is Kind.STRING:
        return text
    if kind is Kind.BOOLEAN:
        if text in ("true", "false"):
            return text == "true"
    elif kind is Kind.INTEGER:
        if _INTEGER.fullmatch(text):
            return int(text)
    elif _DECIMAL.fullmatch(text):
        # Same as orjson would give for the JSON number: int unless there is a fraction/exponent.
        return int(text) if _INTEGER.fullmatch(text) else float(text)
    raise _invalid(f"Invalid {kind} value {text!r} at {path}", path)


def _read_div(element: etree._Element) -> str:
    """The narrative as FHIR JSON holds it: a div string declaring XHTML as default namespace."""
    # A fresh root re-declares only the XHTML namespace, unprefixed: serializing the element in
    # place would drag along every namespace declared on its ancestors (and any prefix).
    div = etree.Element(_XHTML_DIV, dict(element.attrib), nsmap={None: XHTML_NS})
    div.text = element.text
    div.extend(copy.deepcopy(child) for child in element)
    etree.cleanup_namespaces(div)
    return etree.tostring(div, encoding="unicode", with_tail=False)


def _read_contained(element: etree._Element, path: str) -> dict[str, Any]:
    if any(not attribute.startswith("{") for attribute in element.attrib):
        raise _invalid(f"Unexpected attribute on {path}", path)
    _check_text(element.text, path)
    children = [child for child in element if isinstance(child.tag, str)]
    if len(children) != 1:
        raise _invalid(f"{path} must contain exactly one resource", path)
    child = children[0]
    _check_text(child.tail, path)
    namespace, resource_type = _split(child.tag)
    if namespace != FHIR_NS or resource_type not in R4_RESOURCE_TYPES:
        raise _invalid(f"Unknown resource type '{resource_type}' in {path}", path)
    return _read_resource(child, resource_type, path)
