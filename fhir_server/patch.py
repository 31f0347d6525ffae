"""PATCH content: RFC 6902 JSON Patch and FHIRPath Patch, applied to plain JSON resources.

Both entry points return a new dict and never touch their input, so a failed patch leaves the stored
resource as it was. Validating the patched result (and checking that `id`/`resourceType` did not
change) is the caller's job, exactly as for an update.

Error statuses follow RFC 5789 §2.2, which FHIR's patch interaction (http.html#patch) builds on:
a patch document that is not well formed is a "malformed patch document" → 400; a well-formed
operation that cannot be applied to this particular resource (path not found or ambiguous, index out
of range, failing JSON Patch `test`) is an "unprocessable request" → 422.

Error expressions: JSON Patch problems point at the operation as `Patch[i]` (or `Patch[i].member`
for a bad member), i being its position in the array. FHIRPath Patch problems point into the
Parameters resource, e.g. `Parameters.parameter[2].part[1]` (the part at fault: usually the path,
or the index/source/destination/value part).

Locating FHIRPath results. fhirpathpy returns values, not locations, so (with `returnRawData`) we
map each result back into the tree:
- complex elements (dicts) by object identity: before each operation the tree is indexed by
  `id()` of every dict to its slot (parent dict, member name, list position), and fhirpathpy hands
  back the very dicts it navigated. A primitive's `_name` companion found this way stands for the
  primitive itself.
- primitives (str/int/bool/...) have no identity, so we follow the result node's `propName`
  (e.g. `Patient.name[0].given[1]`) from the root, resolving choice names (`value` →
  `valueQuantity`) and stepping into `_name` companions when a path continues below a primitive;
  the value found must equal the result, otherwise the operation fails rather than guess.
Results that are not elements of the resource (literals, `count()`, unions that drop the path)
are rejected.

Semantics per https://hl7.org/fhir/R4/fhirpatch.html:
- add: path selects exactly one element; `name` is appended to it (repeating elements grow a list,
  single elements may only be added when absent; a choice name such as `deceased` takes its type
  from `value[x]`). Adding `id`/`extension` to a primitive writes into its `_name` companion.
- insert / move: path selects the items of one repeating element (e.g. `Patient.identifier`); the
  list is the one holding them. Insert into a list that is still empty works when the path ends
  in a plain member name whose parent resolves to one element.
- replace: path selects exactly one element, which is swapped whole: a primitive's `_name`
  extensions are replaced by those sent with the new value (usually none).
- delete: no match is a no-op, more than one is an error; the `_name` companion goes with a
  primitive, and containers left empty are removed up the tree so no `{}` or `[]` remains.
Cardinality, choice names and primitive/complex kinds come from the fhir.resources R4B models;
where no model is known (unknown types) lists are only extended when they already exist.

Known limits: an item of a primitive list that has extensions but no value (`given: [null]`)
cannot be selected by index (fhirpathpy yields a placeholder for it), only through `.extension`;
fhirpathpy resets module-level state per evaluation, so do not evaluate on several threads at once.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonpatch
import jsonpointer
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from fhir.resources.R4B import get_fhir_model_class
from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_server.errors import FhirError, Issue, bad_request, unprocessable

# ---------------------------------------------------------------------------------------------
# Shared helpers


def _copy_json(value: Any) -> Any:
    """Deep copy of JSON data; rebuilding every container also breaks aliasing in the input."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# JSON Patch (RFC 6902)

_JSON_PATCH_MEMBERS: dict[str, tuple[str, ...]] = {
    "add": ("path", "value"),
    "remove": ("path",),
    "replace": ("path", "value"),
    "move": ("from", "path"),
    "copy": ("from", "path"),
    "test": ("path", "value"),
}


def apply_json_patch(resource: dict[str, Any], patch: object) -> dict[str, Any]:
    """Apply a JSON Patch document to a copy of `resource`."""
    operations = _json_patch_operations(patch)
    document: Any = _copy_json(resource)
    for index, operation in enumerate(operations):
        document = _apply_json_operation(document, index, operation)
    if not isinstance(document, dict):
        issue = Issue("processing", "JSON Patch result is not a JSON object", expression=("Patch",))
        raise unprocessable([issue])
    return document


def _json_patch_operations(patch: object) -> list[dict[str, Any]]:
    if not isinstance(patch, list):
        raise bad_request("A JSON Patch document must be a JSON array of operations", "Patch")
    for index, operation in enumerate(patch):
        _check_json_operation(index, operation)
    return patch


def _check_json_operation(index: int, operation: object) -> None:
    where = f"Patch[{index}]"
    if not isinstance(operation, dict):
        raise bad_request(f"{where} must be a JSON object", where)
    op = operation.get("op")
    if op not in _JSON_PATCH_MEMBERS:
        expected = ", ".join(_JSON_PATCH_MEMBERS)
        raise bad_request(f"{where}.op must be one of {expected}; got {op!r}", f"{where}.op")
    for member in _JSON_PATCH_MEMBERS[op]:
        if member not in operation:
            raise bad_request(f"{where}: '{op}' needs a '{member}' member", f"{where}.{member}")
        if member != "value" and not _is_json_pointer(operation[member]):
            message = f"{where}.{member} must be a JSON Pointer (RFC 6901) such as '/name/0'"
            raise bad_request(message, f"{where}.{member}")


def _is_json_pointer(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        jsonpointer.JsonPointer(value)
    except jsonpointer.JsonPointerException:
        return False
    return True


def _apply_json_operation(document: Any, index: int, operation: dict[str, Any]) -> Any:
    where = f"Patch[{index}]"
    # One operation at a time so a failure can name the operation that caused it; copied so the
    # result never shares a value object with the caller's patch document.
    try:
        return jsonpatch.JsonPatch([_copy_json(operation)]).apply(document, in_place=True)
    except jsonpatch.InvalidJsonPatch as exc:
        raise bad_request(f"{where} is not a valid JSON Patch operation: {exc}", where) from exc
    except jsonpatch.JsonPatchTestFailed as exc:
        reason = f"test failed: {exc}"
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        reason = str(exc)
    message = (
        f"JSON Patch operation {index} ({operation['op']} {operation['path']}) failed: {reason}"
    )
    raise unprocessable([Issue("processing", message, expression=(where,))])


# ---------------------------------------------------------------------------------------------
# FHIRPath Patch: reading the Parameters resource

_REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "add": ("name", "value"),
    "insert": ("index", "value"),
    "delete": (),
    "replace": ("value",),
    "move": ("source", "destination"),
}
_PART_NAMES = ("type", "path", "name", "value", "index", "source", "destination")
_STRING_TYPES = ("valueString", "valueCode")
_INTEGER_TYPES = ("valueInteger", "valueUnsignedInt", "valuePositiveInt")


@dataclass(frozen=True, slots=True)
class _Operation:
    """One `operation` parameter, checked for shape; `part_numbers` locates parts for errors."""

    number: int
    type: str
    path: str
    name: str | None
    value: dict[str, Any] | None
    index: int | None
    source: int | None
    destination: int | None
    part_numbers: dict[str, int]

    def expression(self, part: str) -> str:
        return f"Parameters.parameter[{self.number}].part[{self.part_numbers[part]}]"

    def fail(self, problem: str, part: str = "path") -> FhirError:
        message = (
            f"FHIRPath Patch operation {self.number} ({self.type} at '{self.path}'): {problem}"
        )
        return unprocessable([Issue("processing", message, expression=(self.expression(part),))])


def _parse_parameters(parameters: object) -> list[_Operation]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise bad_request("A FHIRPath Patch document must be a Parameters resource", "Parameters")
    entries = parameters.get("parameter", [])
    if not isinstance(entries, list):
        raise bad_request("Parameters.parameter must be an array", "Parameters.parameter")
    return [_parse_operation(number, entry) for number, entry in enumerate(entries)]


def _parse_operation(number: int, entry: object) -> _Operation:
    where = f"Parameters.parameter[{number}]"
    if not isinstance(entry, dict) or entry.get("name") != "operation":
        raise bad_request(f"{where} must be a parameter named 'operation'", f"{where}.name")
    parts = _parts_by_name(where, entry.get("part"))
    kind = _string_part(where, parts, "type")
    if kind not in _REQUIRED_PARTS:
        expected = ", ".join(_REQUIRED_PARTS)
        message = f"{where}: unknown operation type {kind!r}; expected one of {expected}"
        raise bad_request(message, _part_expression(where, parts, "type"))
    path = _string_part(where, parts, "path")
    _check_part_set(where, parts, kind)
    _check_path_syntax(where, parts, path)
    value = parts["value"][1] if "value" in parts else None
    if value is not None:
        _check_value(_part_expression(where, parts, "value"), value)
    return _Operation(
        number=number,
        type=kind,
        path=path,
        name=_string_part(where, parts, "name") if "name" in parts else None,
        value=value,
        index=_integer_part(where, parts, "index"),
        source=_integer_part(where, parts, "source"),
        destination=_integer_part(where, parts, "destination"),
        part_numbers={name: position for name, (position, _) in parts.items()},
    )


def _parts_by_name(where: str, parts: object) -> dict[str, tuple[int, dict[str, Any]]]:
    if not isinstance(parts, list) or not parts:
        raise bad_request(f"{where} has no parts", where)
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for position, part in enumerate(parts):
        at = f"{where}.part[{position}]"
        name = part.get("name") if isinstance(part, dict) else None
        if name not in _PART_NAMES:
            expected = ", ".join(_PART_NAMES)
            raise bad_request(f"{at}: unknown part {name!r}; expected one of {expected}", at)
        if name in found:
            raise bad_request(f"{at}: part {name!r} appears more than once", at)
        found[name] = (position, part)
    return found


def _part_expression(where: str, parts: dict[str, tuple[int, dict[str, Any]]], name: str) -> str:
    return f"{where}.part[{parts[name][0]}]"


def _check_part_set(where: str, parts: dict[str, tuple[int, dict[str, Any]]], kind: str) -> None:
    """Missing parts are errors, and so are parts the type ignores: they signal a confused patch."""
    for required in _REQUIRED_PARTS[kind]:
        if required not in parts:
            raise bad_request(f"{where}: a '{kind}' operation needs a '{required}' part", where)
    allowed = {"type", "path", *_REQUIRED_PARTS[kind]}
    for name in parts:
        if name not in allowed:
            message = f"{where}: part '{name}' is not used by a '{kind}' operation"
            raise bad_request(message, _part_expression(where, parts, name))


def _string_part(where: str, parts: dict[str, tuple[int, dict[str, Any]]], name: str) -> str:
    if name not in parts:
        raise bad_request(f"{where}: missing the '{name}' part", where)
    part = parts[name][1]
    for key in _STRING_TYPES:
        if isinstance(part.get(key), str) and part[key]:
            return part[key]
    message = f"{where}: part '{name}' needs a non-empty valueString or valueCode"
    raise bad_request(message, _part_expression(where, parts, name))


def _integer_part(
    where: str, parts: dict[str, tuple[int, dict[str, Any]]], name: str
) -> int | None:
    if name not in parts:
        return None
    part = parts[name][1]
    for key in _INTEGER_TYPES:
        value = part.get(key)
        # bool is an int in Python but `true` is not an index.
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    message = f"{where}: part '{name}' needs a valueInteger of 0 or more"
    raise bad_request(message, _part_expression(where, parts, name))


def _check_path_syntax(where: str, parts: dict[str, tuple[int, dict[str, Any]]], path: str) -> None:
    try:
        _compiled(path)
    except _FhirPathSyntaxError as exc:
        message = f"{where}: invalid FHIRPath {path!r}: {exc}"
        raise bad_request(message, _part_expression(where, parts, "path")) from exc


def _value_carriers(part: dict[str, Any]) -> list[str]:
    """Members that carry a part's value: `valueX` or `resource` (nested parts carry none)."""
    return [
        key for key in part if (key.startswith("value") and key != "value") or key == "resource"
    ]


def _value_key(part: dict[str, Any]) -> str | None:
    carriers = _value_carriers(part)
    return carriers[0] if len(carriers) == 1 else None


def _check_value(at: str, part: dict[str, Any]) -> None:
    """A value is one value[x] (or resource), or nested named parts building a complex value."""
    carriers = _value_carriers(part)
    nested = part.get("part")
    if len(carriers) > 1 or (carriers and nested is not None):
        raise bad_request(f"{at}: a value part must carry exactly one value", at)
    if carriers:
        return
    if not isinstance(nested, list) or not nested:
        raise bad_request(f"{at}: a value part needs a value[x] or nested parts", at)
    for position, sub in enumerate(nested):
        sub_at = f"{at}.part[{position}]"
        if not isinstance(sub, dict) or not isinstance(sub.get("name"), str) or not sub["name"]:
            raise bad_request(f"{sub_at}: a nested part needs a name", sub_at)
        _check_value(sub_at, sub)


# ---------------------------------------------------------------------------------------------
# FHIRPath evaluation


class _FhirPathSyntaxError(ValueError):
    pass


class _CollectErrors(ErrorListener):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def syntaxError(  # ANTLR calls this name
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        self.messages.append(f"column {column + 1}: {msg}")


def _syntax_errors(expression: str) -> list[str]:
    """fhirpathpy's parser silently recovers from syntax errors, so check with a strict parse."""
    listener = _CollectErrors()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.entireExpression()
    return listener.messages


_R4_MODEL = fhirpath_models["r4"]
# Type suffixes a choice element's JSON name may carry (valueQuantity, deceasedBoolean, ...).
_CHOICE_SUFFIXES = frozenset(t for ts in _R4_MODEL["choiceTypePaths"].values() for t in ts)


@lru_cache(maxsize=512)
def _compiled(expression: str) -> Callable[..., list[Any]]:
    errors = _syntax_errors(expression)
    if errors:
        raise _FhirPathSyntaxError("; ".join(errors))
    return compile_fhirpath(expression, model=_R4_MODEL, options={"returnRawData": True})


# ---------------------------------------------------------------------------------------------
# Locations in the JSON tree


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where an element lives: `parent[key]`, at `index` when the element repeats."""

    parent: dict[str, Any]
    key: str
    index: int | None

    def get(self) -> Any:
        value = self.parent.get(self.key)
        if self.index is None or value is None:
            return value
        return value[self.index] if self.index < len(value) else None

    def identity(self) -> tuple[int, str, int | None]:
        return (id(self.parent), self.key, self.index)


class _Tree:
    """The resource under a holder dict, so even the root has a slot, indexed by dict identity."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.holder = {"resource": root}
        self._slots: dict[int, _Slot] = {id(root): _Slot(self.holder, "resource", None)}
        self._index(root)

    def _index(self, node: dict[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                self._slots[id(value)] = _Slot(node, key, None)
                self._index(value)
            elif isinstance(value, list):
                for position, item in enumerate(value):
                    if isinstance(item, dict):
                        self._slots[id(item)] = _Slot(node, key, position)
                        self._index(item)

    def slot_of(self, node: dict[str, Any]) -> _Slot | None:
        return self._slots.get(id(node))

    def is_root(self, slot: _Slot) -> bool:
        return slot.parent is self.holder

    def model_of(self, container: dict[str, Any]) -> type | None:
        """The fhir.resources model of a dict in the tree, from the member names leading to it."""
        keys: list[str] = []
        node = container
        while "resourceType" not in node:
            slot = self.slot_of(node)
            if slot is None or self.is_root(slot):
                return None
            keys.append(slot.key)
            node = slot.parent
        return _model_at(str(node["resourceType"]), tuple(reversed(keys)))


def _select(tree: _Tree, op: _Operation, expression: str | None = None) -> list[_Slot]:
    """Evaluate a path and map each result to its slot, deduplicated, in result order."""
    root = tree.root
    try:
        nodes = _compiled(expression or op.path)(root, {"resource": root, "rootResource": root})
    except Exception as exc:  # fhirpathpy raises bare Exceptions, e.g. for unknown functions
        raise op.fail(f"FHIRPath evaluation failed: {exc}") from exc
    found: dict[tuple[int, str, int | None], _Slot] = {}
    for node in nodes:
        slot = _locate(tree, node, op)
        if slot is not None:
            found.setdefault(slot.identity(), slot)
    return list(found.values())


def _locate(tree: _Tree, node: object, op: _Operation) -> _Slot | None:
    if not isinstance(node, ResourceNode):
        raise op.fail("the path selects a computed value, not an element of the resource")
    if node.data is None:
        return None  # placeholder fhirpathpy emits for a null in a `_name` companion array
    if isinstance(node.data, dict):
        slot = tree.slot_of(node.data)
        if slot is None:
            raise op.fail("the path selects something that is not part of the resource")
        return _element_slot(slot)
    return _locate_primitive(tree, node, op)


def _element_slot(slot: _Slot) -> _Slot:
    """A `_name` companion stands for the primitive element `name` it extends."""
    if slot.key.startswith("_"):
        return _Slot(slot.parent, slot.key[1:], slot.index)
    return slot


_STEP = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?$")


def _prop_steps(prop_name: str | None) -> list[tuple[str, int | None]] | None:
    """`Patient.name[0].given[1]` → [("Patient", None), ("name", 0), ("given", 1)]."""
    steps: list[tuple[str, int | None]] = []
    for text in (prop_name or "").split("."):
        match = _STEP.match(text)
        if match is None:
            return None
        steps.append((match[1], int(match[2]) if match[2] is not None else None))
    return steps


def _locate_primitive(tree: _Tree, node: ResourceNode, op: _Operation) -> _Slot:
    steps = _prop_steps(node.propName)
    lost = op.fail("cannot map a result of the path back to the resource")
    if steps is None or len(steps) < 2:
        raise lost
    slot: _Slot | None = None
    for name, position in steps[1:]:  # the first step is the resource type
        container = tree.root if slot is None else _descend(slot)
        if not isinstance(container, dict):
            raise lost
        slot = _Slot(container, _member_key(container, name), position)
    if slot is None or slot.get() != node.data:
        raise lost
    return slot


def _descend(slot: _Slot) -> Any:
    """The dict a path continues into: the element, or a primitive's `_name` companion."""
    value = slot.get()
    if isinstance(value, dict):
        return value
    return _Slot(slot.parent, "_" + slot.key, slot.index).get()


def _member_key(container: dict[str, Any], name: str) -> str:
    """JSON name for a FHIRPath member name: fhirpathpy reports `value` for `valueQuantity`."""
    if name in container or "_" + name in container:
        return name
    for key in container:
        bare = key.lstrip("_")
        if bare.startswith(name) and bare[len(name) :] in _CHOICE_SUFFIXES:
            return bare
    return name


# ---------------------------------------------------------------------------------------------
# Element definitions from the fhir.resources R4B models


@dataclass(frozen=True, slots=True)
class _Field:
    """What the model says about one JSON member; None where no model is known."""

    key: str
    repeats: bool | None
    complex: bool | None
    model: type | None
    choice: str | None


def _unknown_field(key: str) -> _Field:
    return _Field(key, repeats=None, complex=None, model=None, choice=None)


@lru_cache(maxsize=1024)
def _fields(model: type) -> dict[str, _Field]:
    fields: dict[str, _Field] = {}
    for info in model.model_fields.values():  # type: ignore[attr-defined]
        key = info.alias
        if not key or key == "fhir_comments":
            continue
        repeats, inner = _unwrap(info.annotation)
        element_model = inner.get_model_klass() if hasattr(inner, "get_model_klass") else None
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        choice = extra.get("one_of_many")
        fields[key] = _Field(
            key=key,
            repeats=repeats,
            complex=element_model is not None,
            model=element_model,
            choice=choice if isinstance(choice, str) else None,
        )
    return fields


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """Strip Optional/Annotated from a field annotation, noting whether a List was on the way."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
        elif origin is list:
            repeats, annotation = True, args[0]
        elif origin is typing.Annotated:
            annotation = args[0]
        else:
            return repeats, annotation


def _existing_field(model: type | None, key: str) -> _Field:
    field = _fields(model).get(key) if model is not None else None
    return field or _unknown_field(key)


@lru_cache(maxsize=1024)
def _model_at(resource_type: str, keys: tuple[str, ...]) -> type | None:
    try:
        model: type | None = get_fhir_model_class(resource_type)
    except ValueError:
        return None
    for key in keys:
        field = _fields(model).get(key) if model is not None else None
        model = field.model if field is not None else None
    return model


def _resolve_field(
    model: type | None, name: str, suffix: str | None, op: _Operation, part: str = "value"
) -> _Field:
    """The member `name` of `model`; a choice name gets its type suffix from the value[x]."""
    if model is None:
        return _unknown_field(name)
    fields = _fields(model)
    if name in fields and not name.startswith("_"):
        return fields[name]
    if not any(field.choice == name for field in fields.values()):
        raise op.fail(f"{model.__name__} has no element '{name}'", part=part)
    chosen = fields.get(name + suffix) if suffix else None
    if chosen is None or chosen.choice != name:
        raise op.fail(f"'{name}[x]' needs a value[x] of one of its allowed types", part="value")
    return chosen


# ---------------------------------------------------------------------------------------------
# Writing values


@dataclass(frozen=True, slots=True)
class _Value:
    """JSON to write, plus the `_name` companion sent with a primitive value (if any)."""

    json: Any
    companion: dict[str, Any] | None


def _type_suffix(part: dict[str, Any]) -> str | None:
    key = _value_key(part)
    return key[len("value") :] if key is not None and key.startswith("value") else None


def _build_value(part: dict[str, Any], model: type | None, op: _Operation) -> _Value:
    key = _value_key(part)
    if key is not None:
        companion = part.get("_" + key)
        return _Value(_copy_json(part[key]), _copy_json(companion) if companion else None)
    element: dict[str, Any] = {}
    for sub in part["part"]:
        field = _resolve_field(model, sub["name"], _type_suffix(sub), op)
        _add_member(element, model, field, _build_value(sub, field.model, op), op, "value")
    return _Value(element, None)


def _check_kind(field: _Field, value: _Value, op: _Operation) -> None:
    if field.complex is None or field.complex == isinstance(value.json, dict):
        return
    kind = "a complex datatype" if field.complex else "a primitive value"
    raise op.fail(f"'{field.key}' takes {kind}", part="value")


def _add_member(
    container: dict[str, Any],
    model: type | None,
    field: _Field,
    value: _Value,
    op: _Operation,
    part: str,
) -> None:
    """Append to a repeating member, or set a single one that is still absent."""
    _check_kind(field, value, op)
    existing = container.get(field.key)
    if field.repeats or (field.repeats is None and isinstance(existing, list)):
        _list_insert(container, field.key, len(existing or []), value)
        return
    if _is_present(container, model, field):
        raise op.fail(f"'{field.key}' already has a value; use replace", part=part)
    _set_single(container, field.key, value)


def _is_present(container: dict[str, Any], model: type | None, field: _Field) -> bool:
    """Whether the member (or, for a choice, any of its typed variants) is already there."""
    keys = {field.key}
    if field.choice is not None and model is not None:
        keys |= {f.key for f in _fields(model).values() if f.choice == field.choice}
    return any(key in container or "_" + key in container for key in keys)


def _set_single(container: dict[str, Any], key: str, value: _Value) -> None:
    container[key] = value.json
    if value.companion is not None:
        container["_" + key] = value.companion
    else:
        container.pop("_" + key, None)


def _companions(container: dict[str, Any], key: str, create: bool) -> list[Any] | None:
    """The `_name` array parallel to a primitive list, padded with nulls to the list's length."""
    companions = container.get("_" + key)
    if not isinstance(companions, list):
        if not create:
            return None
        companions = container["_" + key] = []
    companions.extend([None] * (len(container.get(key, [])) - len(companions)))
    return companions


def _tidy_companions(container: dict[str, Any], key: str) -> None:
    companions = container.get("_" + key)
    if isinstance(companions, list) and all(item is None for item in companions):
        del container["_" + key]


def _list_insert(container: dict[str, Any], key: str, position: int, value: _Value) -> None:
    items = container.setdefault(key, [])
    companions = _companions(container, key, create=value.companion is not None)
    items.insert(position, value.json)
    if companions is not None:
        companions.insert(position, value.companion)
        _tidy_companions(container, key)


def _list_set(container: dict[str, Any], key: str, position: int, value: _Value) -> None:
    container[key][position] = value.json
    companions = _companions(container, key, create=value.companion is not None)
    if companions is not None:
        companions[position] = value.companion
        _tidy_companions(container, key)


def _list_move(container: dict[str, Any], key: str, source: int, destination: int) -> None:
    items = container[key]
    items.insert(destination, items.pop(source))
    companions = _companions(container, key, create=False)
    if companions is not None:
        companions.insert(destination, companions.pop(source))


def _remove(slot: _Slot) -> None:
    """Remove an element with its `_name` companion; an emptied list goes too."""
    container, key = slot.parent, slot.key
    if slot.index is None:
        container.pop(key, None)
        container.pop("_" + key, None)
        return
    if key.startswith("_"):
        container[key][slot.index] = None  # companion arrays stay parallel to their primitive list
        _tidy_companions(container, key[1:])
        return
    items = container[key]
    companions = _companions(container, key, create=False)
    items.pop(slot.index)
    if companions is not None:
        companions.pop(slot.index)
    _tidy_companions(container, key)
    # Nulls in a primitive list only hold places for companions; with none left they are noise.
    if all(item is None for item in items) and "_" + key not in container:
        del container[key]


def _prune(tree: _Tree, container: dict[str, Any]) -> None:
    """Remove containers a delete left empty, walking up until one still has content."""
    while not container:
        slot = tree.slot_of(container)
        if slot is None or tree.is_root(slot):
            return
        if slot.key.startswith("_") and _element_slot(slot).get() is None:
            slot = _element_slot(slot)  # an emptied companion of a null value: the item is gone
        _remove(slot)
        container = slot.parent


# ---------------------------------------------------------------------------------------------
# FHIRPath Patch operations


def apply_fhirpath_patch(resource: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Apply a FHIRPath Patch (a Parameters resource) to a copy of `resource`."""
    operations = _parse_parameters(parameters)
    document: dict[str, Any] = _copy_json(resource)
    for op in operations:
        # Re-indexed per operation: earlier operations move and replace dicts.
        _APPLY[op.type](_Tree(document), op)
    return document


def _single(tree: _Tree, op: _Operation) -> _Slot:
    slots = _select(tree, op)
    if len(slots) != 1:
        raise op.fail(f"the path must match exactly one element but matched {len(slots)}")
    return slots[0]


def _add(tree: _Tree, op: _Operation) -> None:
    assert op.name is not None and op.value is not None  # guaranteed by _check_part_set
    target = _single(tree, op)
    element = target.get()
    if isinstance(element, dict):
        container, model = element, tree.model_of(element)
    elif op.name in ("id", "extension"):
        container, model = _companion_element(target), get_fhir_model_class("Element")
    else:
        raise op.fail(f"cannot add '{op.name}' to a primitive element", part="name")
    field = _resolve_field(model, op.name, _type_suffix(op.value), op, part="name")
    _add_member(container, model, field, _build_value(op.value, field.model, op), op, "name")


def _companion_element(slot: _Slot) -> dict[str, Any]:
    """The `_name` object holding a primitive's id and extensions, created when missing."""
    if slot.index is None:
        companion = slot.parent.setdefault("_" + slot.key, {})
        return companion
    companions = _companions(slot.parent, slot.key, create=True)
    assert companions is not None
    if companions[slot.index] is None:
        companions[slot.index] = {}
    return companions[slot.index]


def _insert(tree: _Tree, op: _Operation) -> None:
    assert op.index is not None and op.value is not None
    container, key = _list_location(tree, op, allow_empty=True)
    size = len(container.get(key, []))
    if op.index > size:
        raise op.fail(f"index {op.index} is out of range for a list of {size}", part="index")
    field = _existing_field(tree.model_of(container), key)
    value = _build_value(op.value, field.model, op)
    _check_kind(field, value, op)
    _list_insert(container, key, op.index, value)


def _move(tree: _Tree, op: _Operation) -> None:
    assert op.source is not None and op.destination is not None
    container, key = _list_location(tree, op, allow_empty=False)
    size = len(container[key])
    for part, position in (("source", op.source), ("destination", op.destination)):
        if position >= size:
            raise op.fail(f"{part} {position} is out of range for a list of {size}", part=part)
    _list_move(container, key, op.source, op.destination)


def _replace(tree: _Tree, op: _Operation) -> None:
    assert op.value is not None
    target = _single(tree, op)
    if tree.is_root(target):
        raise op.fail("cannot replace the resource itself")
    container = target.parent
    model = tree.model_of(container)
    field = _existing_field(model, target.key)
    if field.choice is not None:
        # Replacing valueQuantity with a valueString must rename the member too.
        field = _resolve_field(model, field.choice, _type_suffix(op.value), op)
    value = _build_value(op.value, field.model, op)
    _check_kind(field, value, op)
    if target.index is not None:
        _list_set(container, target.key, target.index, value)
        return
    if field.key != target.key:
        _remove(target)
    _set_single(container, field.key, value)


def _delete(tree: _Tree, op: _Operation) -> None:
    slots = _select(tree, op)
    if not slots:
        return  # the spec deletes "if found"
    if len(slots) > 1:
        raise op.fail(f"the path must match at most one element but matched {len(slots)}")
    target = slots[0]
    if tree.is_root(target):
        raise op.fail("cannot delete the resource itself")
    _remove(target)
    _prune(tree, target.parent)


def _list_location(tree: _Tree, op: _Operation, allow_empty: bool) -> tuple[dict[str, Any], str]:
    """The (container, member) of the repeating element whose items the path selects."""
    slots = _select(tree, op)
    if not slots and allow_empty:
        return _empty_list_location(tree, op)
    if not slots:
        raise op.fail("the path matched no element")
    first = slots[0]
    same_list = all(s.parent is first.parent and s.key == first.key for s in slots)
    if first.index is None or not same_list:
        raise op.fail("the path must select the items of one repeating element")
    return first.parent, first.key


_LAST_MEMBER = re.compile(r"^(?P<parent>.+)\.(?P<name>[A-Za-z][A-Za-z0-9]*)$")


def _empty_list_location(tree: _Tree, op: _Operation) -> tuple[dict[str, Any], str]:
    """For `X.name` where `name` is still absent, the list goes under the one element `X`."""
    match = _LAST_MEMBER.match(op.path.strip())
    parents = _select(tree, op, match["parent"]) if match else []
    element = parents[0].get() if len(parents) == 1 else None
    if match is None or not isinstance(element, dict):
        raise op.fail("the path matched no element")
    name = match["name"]
    model = tree.model_of(element)
    field = _fields(model).get(name) if model is not None else _unknown_field(name)
    if field is None or field.repeats is False:
        raise op.fail(f"'{name}' is not a repeating element here")
    return element, name


_APPLY: dict[str, Callable[[_Tree, _Operation], None]] = {
    "add": _add,
    "insert": _insert,
    "delete": _delete,
    "replace": _replace,
    "move": _move,
}
