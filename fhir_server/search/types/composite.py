"""Composite search parameters (search.html#composite).

A composite parameter (Observation `code-value-quantity`, `combo-code-value-quantity`, ...)
matches when all its components hold within the same element instance: the same Observation, or
the same Observation.component.

Extraction: `extract_composite` evaluates each component's relative expression on every element
instance the parameter's expression selected, and extracts each result with the component
parameter's type. An instance where some component has no entries cannot satisfy a search and
gives no CompositeEntry. The FHIRPath evaluator is passed in, so this module stays free of it.

Matching: the value is split on unescaped `$`, one part per component in order, and each part is
parsed by its component parameter's type (prefixes, `system|code`, ... as usual). Component
predicates carry the composite's code; their position selects the component. No modifier
applies. Composite parameters have no sort order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from fhir_server.search.model import Composite, CompositeEntry, Entry, Predicate
from fhir_server.search.types.common import (
    DEFAULT_CONTEXT,
    ParseContext,
    reject_modifier,
    split_escaped,
    unique,
)

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam


class Typed(Protocol):
    """A FHIRPath result: JSON value and FHIR type name (fhirpath.Value)."""

    @property
    def value(self) -> Any: ...

    @property
    def type(self) -> str: ...


Evaluate = Callable[[Typed, str], Iterable[Typed]]
"""Evaluates a relative FHIRPath expression on one element instance; the instance's type (say
"Observation.component") is what the expression must be compiled against."""
Lookup = Callable[[str], "SearchParam | None"]
"""Finds a component parameter by code."""


def _entries(component: SearchParam, results: Iterable[Typed]) -> tuple[Entry, ...]:
    # The package imports this module to build its dispatch table; import it back lazily.
    from fhir_server.search import types

    return tuple(unique(e for r in results for e in types.extract(component.type, r.value, r.type)))


def extract_composite(
    param: SearchParam, elements: Iterable[Typed], evaluate: Evaluate, lookup: Lookup
) -> list[CompositeEntry]:
    components: list[tuple[SearchParam, str]] = []
    for code, expression in param.components:
        component = lookup(code)
        if component is None:  # a definition we do not know: nothing can be indexed reliably
            return []
        components.append((component, expression))
    found: list[CompositeEntry] = []
    for element in elements:
        parts = tuple(_entries(c, evaluate(element, expr)) for c, expr in components)
        if parts and all(parts):
            found.append(CompositeEntry(parts))
    return unique(found)


def parse(
    param: SearchParam, modifier: str | None, value: str, ctx: ParseContext = DEFAULT_CONTEXT
) -> Predicate:
    from fhir_server.search import types  # see _entries

    reject_modifier(param, modifier)
    parts = split_escaped(value, "$")
    if len(parts) != len(param.components):
        raise ValueError(
            f"'{param.code}' takes {len(param.components)} '$'-separated values, got {len(parts)}"
        )
    predicates = []
    for (code, _), part in zip(param.components, parts, strict=True):
        component = ctx.component(code)
        if component is None:
            raise ValueError(f"component '{code}' of '{param.code}' is not a known parameter")
        predicates.append(types.parse(replace(component, code=param.code), None, part, ctx))
    return Composite(param.code, tuple(predicates))
