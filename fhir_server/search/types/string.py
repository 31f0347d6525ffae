"""String search parameters (search.html#string).

Extraction: string and markdown values are one entry each; a HumanName gives one entry per
family, given, prefix and suffix part plus its text; an Address one per line, city, district,
state, postalCode and country plus its text. Each entry keeps the value as written (for :exact)
and its `normalize()`d form (case- and accent-folded, any script: "Иванова" is found by "иван",
"Müller" by "muller"). Other types give no entries.

Matching: no modifier is a prefix match on the normalised form; :contains matches anywhere in it;
:exact compares the whole value as written (case and accents count). Other modifiers are errors.

Sorting: by the smallest normalised value ascending, the largest descending.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fhir_server.search.model import (
    Entry,
    Predicate,
    SortValue,
    StringEntry,
    StringMatch,
    normalize,
)
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    extreme,
    reject_modifier,
    required,
    unique,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

_PARTS = {
    "HumanName": ("family", "given", "prefix", "suffix", "text"),
    "Address": ("line", "city", "district", "state", "postalCode", "country", "text"),
}


def _strings(element: dict[str, Any], keys: Iterable[str]) -> list[str]:
    found: list[str] = []
    for key in keys:
        value = element.get(key)
        found.extend(
            v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)
        )
    return found


def entry(text: str) -> StringEntry:
    return StringEntry(norm=normalize(text), exact=text)


def extract(value: Any, fhir_type: str) -> list[Entry]:
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, dict) and fhir_type in _PARTS:
        texts = _strings(value, _PARTS[fhir_type])
    else:
        return []
    return unique(entry(t) for t in texts if t.strip())


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    reject_modifier(param, modifier, ("exact", "contains"))
    text = required(value, "string")
    if modifier == "exact":
        return StringMatch(param.code, text, "exact")
    return StringMatch(param.code, normalize(text), "contains" if modifier else "prefix")


def sort_key(entries: Iterable[Entry], descending: bool) -> SortValue:
    return extreme((e.norm for e in entries if isinstance(e, StringEntry)), descending)
