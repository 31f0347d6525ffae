"""URI search parameters (search.html#uri).

Extraction: uri, url, canonical, oid and uuid values (any string) are kept exactly as written;
a canonical keeps its `|version`, since a uri parameter compares whole values.

Matching: no modifier compares the whole value exactly (case-sensitive, as URIs are). :below
matches stored values that start with the search value (`http://acme.org/fhir/` finds every
URL under it); :above matches stored values the search value starts with (stored
`http://acme.org/fhir/` is above `http://acme.org/fhir/ValueSet/123`). Other modifiers are
rejected.

Sorting: by the smallest value ascending, the largest descending.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from fhir_server.search.model import Entry, Predicate, SortValue, UriEntry, UriMatch
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    extreme,
    reject_modifier,
    required,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

_MODES: dict[str | None, Literal["exact", "below", "above"]] = {
    None: "exact",
    "below": "below",
    "above": "above",
}


def extract(value: Any, fhir_type: str) -> list[Entry]:
    return [UriEntry(value)] if isinstance(value, str) and value else []


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    reject_modifier(param, modifier, ("below", "above"))
    return UriMatch(param.code, required(value, "uri"), _MODES[modifier])


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    return extreme((e.value for e in entries if isinstance(e, UriEntry)), descending)
