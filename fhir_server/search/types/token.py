"""Token search parameters (search.html#token).

Extraction, following the spec's table of token data types:
- code, string, id, uri (and other string primitives): `TokenEntry(None, value)`; the implicit
  system of a bound `code` is not known here, so `system|code` searches do not match plain codes.
- boolean: code "true" / "false".
- Coding: (system, code) with its display, normalised, as `text` (for :text).
- CodeableConcept: one entry per coding as above, plus a text-only entry for `.text`.
- Identifier: (system, value) with `type.text` as text (:text on an identifier searches its
  type's text). For :of-type, one more entry per `type.coding`, whose system is
  "<type system>|<type code>" and code is the identifier's value. A `|` cannot occur in a system
  given by a search (it separates system and code), so these entries never answer an ordinary
  `system|code` search, while a bare `value` search matches them only where the real entry of the
  same identifier matches anyway.
- ContactPoint: code = value, no system (the spec's table leaves the system column empty).

Matching: `code` any system; `system|code`; `|code` only entries without a system; `system|`
any code in that system. :text is a prefix match on the normalised text. :not is the resource-
level negation `Not(...)` (the parser folds `:not=a,b` into "neither a nor b"). :of-type takes
`system|code|value`; `:otype` is the same modifier under the name R4's own example uses
(`Patient?identifier:otype=...|MR|446053`). :in / :not-in name a ValueSet stored on the
server (or an implicit one, `http://snomed.info/sct?fhir_vs=isa/[code]`): they parse to a
ValueSetMatch that the search layer expands (search/valuesets.py). :above and :below need code
subsumption and are rejected.

Sorting: by the smallest code ascending, the largest descending.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fhir_server.search.model import (
    ANY,
    Entry,
    Not,
    Predicate,
    SortValue,
    TokenEntry,
    TokenMatch,
    ValueSetMatch,
    normalize,
)
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    extreme,
    reject_modifier,
    required,
    split_escaped,
    unescape,
    unique,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

_TERMINOLOGY = ("in", "not-in", "above", "below")


def _text(value: Any) -> str | None:
    return normalize(value) if isinstance(value, str) and value.strip() else None


def _coding(coding: dict[str, Any]) -> Iterator[TokenEntry]:
    system, code, text = coding.get("system"), coding.get("code"), _text(coding.get("display"))
    if system or code or text:
        yield TokenEntry(system, code, text)


def _codeable_concept(concept: dict[str, Any]) -> Iterator[TokenEntry]:
    for coding in concept.get("coding") or []:
        yield from _coding(coding)
    if text := _text(concept.get("text")):
        yield TokenEntry(None, None, text)


def of_type_system(type_system: str, type_code: str) -> str:
    """System of the entry that answers `:of-type=type_system|type_code|value`."""
    return f"{type_system}|{type_code}"


def _identifier(identifier: dict[str, Any]) -> Iterator[TokenEntry]:
    system, value = identifier.get("system"), identifier.get("value")
    id_type = identifier.get("type") or {}
    if system or value:
        yield TokenEntry(system, value, _text(id_type.get("text")))
    if value:
        for coding in id_type.get("coding") or []:
            if coding.get("code"):
                yield TokenEntry(of_type_system(coding.get("system") or "", coding["code"]), value)


def _contact_point(contact: dict[str, Any]) -> Iterator[TokenEntry]:
    if contact.get("value"):
        yield TokenEntry(None, contact["value"])


_COMPLEX = {
    "Coding": _coding,
    "CodeableConcept": _codeable_concept,
    "Identifier": _identifier,
    "ContactPoint": _contact_point,
}


def extract(value: Any, fhir_type: str) -> list[Entry]:
    if isinstance(value, bool):
        return [TokenEntry(None, "true" if value else "false")]
    if isinstance(value, str):
        return [TokenEntry(None, value)] if value else []
    if isinstance(value, dict) and fhir_type in _COMPLEX:
        return unique(_COMPLEX[fhir_type](value))
    return []


def system_code_match(code: str, value: str) -> TokenMatch:
    """`code`, `system|code`, `|code` or `system|` as a TokenMatch on parameter `code`."""
    parts = split_escaped(value, "|")
    if len(parts) == 1:
        return TokenMatch(code, ANY, required(parts[0], "code"))
    if len(parts) != 2:
        raise ValueError(f"'{value}' has more than one unescaped '|'")
    system, token = unescape(parts[0]), unescape(parts[1])
    if not system and not token:
        raise ValueError("a token needs a system, a code or both")
    return TokenMatch(code, system or None, token or ANY)


def _of_type(code: str, value: str) -> TokenMatch:
    parts = split_escaped(value, "|")
    if len(parts) != 3:
        raise ValueError(f":of-type needs 'type-system|type-code|value', got '{value}'")
    system, type_code, identifier = unescape(parts[0]), parts[1], parts[2]
    return TokenMatch(
        code,
        of_type_system(system, required(type_code, "identifier type code")),
        required(identifier, "identifier value"),
    )


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    if modifier in ("in", "not-in"):
        match = ValueSetMatch(param.code, unescape(required(value, "ValueSet URL")))
        return Not(match) if modifier == "not-in" else match
    if modifier in _TERMINOLOGY:
        raise ValueError(
            f":{modifier} on '{param.code}' needs code subsumption, which this server does not do"
        )
    if modifier == "otype":  # search.html's example spelling of :of-type
        modifier = "of-type"
    reject_modifier(param, modifier, ("text", "not", "of-type"))
    if modifier == "text":
        return TokenMatch(param.code, text=normalize(required(value, "text")))
    if modifier == "of-type":
        return _of_type(param.code, value)
    match = system_code_match(param.code, value)
    return Not(match) if modifier == "not" else match


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    return extreme((e.code for e in entries if isinstance(e, TokenEntry)), descending)
