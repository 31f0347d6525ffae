"""Search parameter types: each module owns both sides of its type, so they cannot drift.

- `extract(value, fhir_type) -> list[Entry]`: index entries from one FHIRPath result.
- `parse(param, modifier, value, ctx) -> Predicate`: one OR-value of a search (split from its
  comma list, still escaped); ValueError with a message fit for the client when malformed or
  when the modifier does not apply.
- `sort_key(entries, descending)`: the scalar a resource sorts by for that parameter.

Composite parameters extract through `composite.extract_composite` (they need the evaluator and
their component parameters); `special` parameters (`near`, `_text`, ...) are not supported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fhir_server.search.model import Entry, Predicate, SortValue
from fhir_server.search.types import (
    composite,
    date,
    number,
    quantity,
    reference,
    string,
    token,
    uri,
)
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    split_escaped,
    unescape,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

__all__ = [
    "DEFAULT_CONTEXT",
    "ParseContext",
    "extract",
    "parse",
    "sort_key",
    "sortable",
    "split_escaped",
    "unescape",
]

_SIMPLE = {
    "string": string,
    "token": token,
    "reference": reference,
    "date": date,
    "number": number,
    "quantity": quantity,
    "uri": uri,
}


def extract(param_type: str, value: Any, fhir_type: str) -> list[Entry]:
    """Entries of one FHIRPath result for a parameter of `param_type` (not composite)."""
    module = _SIMPLE.get(param_type)
    return module.extract(value, fhir_type) if module else []


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    if param.type == "composite":
        return composite.parse(param, modifier, value, ctx)
    module = _SIMPLE.get(param.type)
    if module is None:
        raise ValueError(f"'{param.code}' is a {param.type} parameter, which is not supported")
    return module.parse(param, modifier, value, ctx)


def sortable(param_type: str) -> bool:
    return param_type in _SIMPLE


def sort_key(param_type: str, entries: Iterable[Entry], descending: bool) -> SortValue:
    module = _SIMPLE.get(param_type)
    return module.sort_key(entries, descending) if module else None
