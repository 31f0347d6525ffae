"""The engine-neutral vocabulary of search: index entries and predicates.

Index entries are what extraction produces from a resource at write time and what the engines
store next to it. Predicates are what a parsed query becomes; each engine renders them (SQL over
its index tables, a MongoDB filter over the `_idx` sub-document). The set is small and closed on
purpose: anything an engine must do is one of these shapes.

Conventions every producer and engine relies on:
- Strings for string search are normalised with `normalize()` (case-folded, accents removed).
- Dates are ranges [start, end) of fixed-width UTC instants (`fhirtime.INSTANT_FORMAT`), so
  comparing strings compares times. Open ends use MIN_INSTANT / MAX_INSTANT.
- Numbers and quantities are ranges [low, high] of floats (a stored point has low == high).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

MIN_INSTANT = "0001-01-01T00:00:00.000000Z"
MAX_INSTANT = "9999-12-31T23:59:59.999999Z"


def normalize(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, case-folded.

    Works for every script (Cyrillic `Й` -> `и`, as the spec's accent-insensitivity asks).
    """
    if text.isascii():
        return text.lower()  # the same result, without the Unicode work (most index values)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# ---------------------------------------------------------------------------- index entries


@dataclass(frozen=True, slots=True)
class StringEntry:
    norm: str
    """normalize(value): matched by prefix and :contains."""
    exact: str
    """The value as written: matched by :exact."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    system: str | None
    code: str | None
    text: str | None = None
    """normalize() of the display / text that goes with the code, for :text."""


@dataclass(frozen=True, slots=True)
class DateEntry:
    start: str
    end: str


@dataclass(frozen=True, slots=True)
class NumberEntry:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class QuantityEntry:
    low: float
    high: float
    system: str | None
    code: str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class ReferenceEntry:
    type: str | None
    """Target resource type of a literal reference (relative or to this server)."""
    id: str | None
    url: str | None = None
    """Absolute URL of a reference elsewhere, or a canonical (without its |version)."""


@dataclass(frozen=True, slots=True)
class UriEntry:
    value: str


Entry = (
    StringEntry | TokenEntry | DateEntry | NumberEntry | QuantityEntry | ReferenceEntry | UriEntry
)


@dataclass(frozen=True, slots=True)
class CompositeEntry:
    """One element instance of a composite parameter (e.g. one Observation.component): the
    entries of each component, in the order of the parameter's components."""

    components: tuple[tuple[Entry, ...], ...]


# Index of one resource: parameter code -> its entries (empty lists are left out).
Index = dict[str, list[Entry] | list[CompositeEntry]]


# ---------------------------------------------------------------------------- predicates

Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
ANY = "*any*"
"""TokenMatch.system / .code value meaning "whatever it is" (as opposed to None: absent)."""


@dataclass(frozen=True, slots=True)
class StringMatch:
    param: str
    value: str
    """normalize()d for prefix/contains; as written for exact."""
    mode: Literal["prefix", "exact", "contains"] = "prefix"


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """`code` -> (ANY, code); `system|code`; `|code` -> (None, code); `system|` -> (system, ANY).
    With `text` set, matches entries whose text starts with it (:text), ignoring system/code."""

    param: str
    system: str | None = ANY
    code: str | None = ANY
    text: str | None = None


@dataclass(frozen=True, slots=True)
class RangeMatch:
    """Date, number or quantity comparison of the search range [low, high) with each entry's
    range, per the prefix semantics of search.html#prefix. For quantities, system/code/unit
    narrow the entries compared (None: not constrained)."""

    param: str
    kind: Literal["date", "number", "quantity"]
    prefix: Prefix
    low: str | float
    high: str | float
    system: str | None = None
    code: str | None = None
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceMatch:
    """Literal reference to type/id (type None: any type), or an absolute/canonical url."""

    param: str
    type: str | None = None
    id: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class UriMatch:
    param: str
    value: str
    mode: Literal["exact", "below", "above"] = "exact"


@dataclass(frozen=True, slots=True)
class ValueSetMatch:
    """Token `:in` a ValueSet stored on this server (by canonical URL). The search layer
    replaces it with the TokenMatches of the expansion before an engine sees it."""

    param: str
    valueset: str


@dataclass(frozen=True, slots=True)
class ListMatch:
    """`_list=id`: the resources of `resource_type` that List/`list_id` names in its entries
    (search.html#list). The search layer replaces it with an IdMatch before an engine sees it."""

    resource_type: str
    list_id: str


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Reference `:below` / `:above` (search.html#recursive): a reference to `id` (of one of
    `types`) or to any resource below (`above` False) or above it in its type's circular
    hierarchy (Location.partOf, Encounter.partOf, ...). The search layer replaces it with the
    ReferenceMatches of the resources it finds before an engine sees it."""

    param: str
    types: tuple[str, ...]
    id: str
    above: bool


@dataclass(frozen=True, slots=True)
class Missing:
    """`param:missing=true` (missing=True) or `=false`."""

    param: str
    missing: bool


@dataclass(frozen=True, slots=True)
class IdMatch:
    """The resource's own id is one of `ids` (`_id`)."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """Resources for which `predicate` does not hold (token :not, prefix ne on whole sets)."""

    predicate: Predicate


@dataclass(frozen=True, slots=True)
class And:
    predicates: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class Or:
    predicates: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class Composite:
    """All component predicates hold within the same element instance (same CompositeEntry).
    Component predicates use the composite's param code; their position selects the component."""

    param: str
    components: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class Chain:
    """`param` (a reference) points at a resource of `target_type` for which `where` holds."""

    param: str
    target_type: str
    where: Predicate


@dataclass(frozen=True, slots=True)
class Has:
    """Reverse chain `_has:source_type:param:...`: some `source_type` resource whose reference
    `param` points at this resource satisfies `where`."""

    source_type: str
    param: str
    where: Predicate


Predicate = (
    StringMatch | TokenMatch | RangeMatch | ReferenceMatch | UriMatch | Missing | IdMatch | Not
    | And | Or | Composite | Chain | Has | ValueSetMatch | ListMatch | Hierarchy
)


@dataclass(frozen=True, slots=True)
class SortKey:
    param: str
    descending: bool = False


SortValue = str | float | None


@dataclass(frozen=True, slots=True)
class ResourceIndex:
    """Everything an engine stores to search one current resource version."""

    entries: Index
    sort: dict[str, tuple[SortValue, SortValue]]
    """Parameter code -> (key when sorting ascending, key when sorting descending)."""


EMPTY_INDEX = ResourceIndex({}, {})
