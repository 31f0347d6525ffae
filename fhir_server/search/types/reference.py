"""Reference search parameters (search.html#reference).

Extraction from a Reference:
- relative `Type/id` or `Type/id/_history/n`: (type, id); the version is dropped, a reference to
  a version is a reference to the resource.
- absolute URL: its url, and also (type, id) when it ends in `Type/id[/_history/n]`. Whether an
  absolute URL is this server's cannot be decided at write time (the server may be reached
  under several base URLs), so a `Type/id` search also finds absolute references ending in
  `Type/id`; a search by full URL matches the url exactly.
- `urn:uuid:` / `urn:oid:` (unresolved bundle-local ids): url only.
- `#id` (contained) and anything else unparseable: nothing.
- `Reference.identifier`: a TokenEntry(system, value) in the same parameter, which is what the
  `:identifier` modifier matches (a logical reference with no literal reference gives only this).
A canonical or uri value gives its url without `|version` (canonical references are matched by
url, not by type/id).

Matching: `id` (any type, or the parameter's only target type), `Type/id`, `Type/id/_history/n`
(the resource), absolute URLs under `ctx.base_url` (as `Type/id`), other absolute URLs and
canonicals by url (a `|version` suffix is dropped, as it is at extraction). `:Type` restricts the
type (it must be one of the parameter's targets); `:identifier` takes `system|value` and is a
TokenMatch on the same parameter. `:below` / `:above` with an `id` or `Type/id` search a
circular hierarchy (search.html#recursive: `Procedure?location:below=42` also finds procedures
in locations part of Location 42): they parse to a Hierarchy that the search layer resolves
(search/resolve.py); with an absolute URL (canonical versions) they are rejected, as is :text.
Chains are the parser's business.

Sorting: by the smallest `Type/id` (or url) ascending, the largest descending.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fhir_server.search.model import (
    Entry,
    Hierarchy,
    Predicate,
    ReferenceEntry,
    ReferenceMatch,
    SortValue,
    TokenEntry,
)
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    extreme,
    required,
    split_escaped,
    unescape,
    unique,
)
from fhir_server.search.types.token import system_code_match

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

_TYPE = r"[A-Z][A-Za-z]+"
_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE = re.compile(rf"(?P<type>{_TYPE})/(?P<id>{_ID})(?:/_history/{_ID})?")
_TAIL = re.compile(rf"(?:^|/)(?P<type>{_TYPE})/(?P<id>{_ID})(?:/_history/{_ID})?$")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
"""A URI scheme: `http:`, `urn:` ... (a relative reference never contains a colon before `/`)."""
_CANONICALS = frozenset({"canonical", "uri", "url"})


def _literal(reference: str) -> ReferenceEntry | None:
    if reference.startswith("#"):
        return None
    if m := _RELATIVE.fullmatch(reference):
        return ReferenceEntry(m["type"], m["id"])
    if _ABSOLUTE.match(reference):
        tail = _TAIL.search(reference)
        return ReferenceEntry(
            tail["type"] if tail else None, tail["id"] if tail else None, reference
        )
    return None


def _reference(reference: dict[str, Any]) -> Iterator[Entry]:
    literal = reference.get("reference")
    if isinstance(literal, str) and (entry := _literal(literal)):
        yield entry
    identifier = reference.get("identifier") or {}
    if identifier.get("value"):
        yield TokenEntry(identifier.get("system"), identifier["value"])


def extract(value: Any, fhir_type: str) -> list[Entry]:
    if isinstance(value, str) and fhir_type in _CANONICALS:
        return [ReferenceEntry(None, None, value.split("|", 1)[0])] if value else []
    if isinstance(value, dict) and fhir_type == "Reference":
        return unique(_reference(value))
    return []


def _type_modifier(param: SearchParam, modifier: str) -> str:
    if not re.fullmatch(_TYPE, modifier):
        raise ValueError(f"modifier ':{modifier}' is not supported on reference '{param.code}'")
    if param.targets and modifier not in param.targets:
        raise ValueError(
            f"'{modifier}' is not a target type of '{param.code}' ({', '.join(param.targets)})"
        )
    return modifier


def _local(param: SearchParam, text: str, type_hint: str | None) -> ReferenceMatch:
    if m := _RELATIVE.fullmatch(text):
        if type_hint and m["type"] != type_hint:
            raise ValueError(f"'{text}' is not a {type_hint} reference")
        return ReferenceMatch(param.code, m["type"], m["id"])
    if "/" in text:
        raise ValueError(f"'{text}' is not an id, Type/id or absolute URL")
    only_target = param.targets[0] if len(param.targets) == 1 else None
    return ReferenceMatch(param.code, type_hint or only_target, text)


def _hierarchy(param: SearchParam, text: str, ctx: ParseContext, above: bool) -> Hierarchy:
    base = ctx.base_url.rstrip("/") + "/"
    if ctx.base_url and text.startswith(base):
        text = text[len(base) :]
    if _ABSOLUTE.match(text):
        raise ValueError(
            f":{'above' if above else 'below'} on '{param.code}' takes an id or Type/id here"
        )
    local = _local(param, text, None)
    if local.type and param.targets and local.type not in param.targets:
        raise ValueError(f"'{param.code}' never points at {local.type}")
    types = (local.type,) if local.type else param.targets
    if not types:
        raise ValueError(f"'{param.code}' names no target type to search a hierarchy of")
    return Hierarchy(param.code, types, str(local.id), above)


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    if modifier == "identifier":
        return system_code_match(param.code, value)
    if modifier in ("above", "below"):
        return _hierarchy(param, required(value, "reference"), ctx, modifier == "above")
    type_hint = _type_modifier(param, modifier) if modifier else None
    text = required(value, "reference")
    base = ctx.base_url.rstrip("/") + "/"
    if ctx.base_url and text.startswith(base):
        return _local(param, text[len(base) :], type_hint)
    if _ABSOLUTE.match(text):
        return ReferenceMatch(param.code, url=unescape(split_escaped(value, "|")[0]))
    return _local(param, text, type_hint)


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    keys = (
        f"{e.type}/{e.id}" if e.type else e.url for e in entries if isinstance(e, ReferenceEntry)
    )
    return extreme(keys, descending)
