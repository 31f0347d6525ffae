"""The search parameters of every resource type: the R4 definitions plus custom ones.

The standard parameters come from `parameters.json`, written by
`python -m fhir_server.search.generate` from the official definitions; the server never reads the
specification itself. Each definition becomes one `SearchParam` per base type, carrying only the
part of the expression that applies to that type, so the indexer never evaluates terms meant for
other resources.

Parameters of the abstract bases Resource and DomainResource (`_id`, `_lastUpdated`, `_tag`,
`_profile`, `_security`, `_source`) keep their base and expression (`Resource.meta.tag`); the
expression compiler treats Resource./DomainResource. as matching any resource.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from fhir_server.definitions import R4_RESOURCE_TYPES, type_definition
from fhir_server.search.fhirpath import compile_expression

PARAMETERS_FILE = Path(__file__).with_name("parameters.json")
COMPARTMENT_FILE = Path(__file__).with_name("compartment.json")

PARAM_TYPES = frozenset(
    ("string", "token", "reference", "date", "number", "quantity", "uri", "composite", "special")
)
GENERIC_BASES = frozenset(("Resource", "DomainResource"))
_EMPTY: Mapping[str, SearchParam] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str
    """string | token | reference | date | number | quantity | uri | composite | special"""
    base: str
    """The resource type this instance applies to (Resource for the generic parameters)."""
    expression: str
    """FHIRPath for this base type only."""
    url: str
    targets: tuple[str, ...] = ()
    """Reference target types."""
    components: tuple[tuple[str, str], ...] = ()
    """Composite: (component param code, expression relative to the composite's element)."""
    sortable: bool = True
    """False where sorting by it is not offered although its type would allow it."""


def _is_domain_resource(resource_type: str) -> bool:
    # Bundle, Binary and Parameters derive from Resource directly; only DomainResources have
    # a narrative, so its presence tells the two apart without another data file.
    return "text" in type_definition(resource_type).properties


def _applies_to(base: str) -> frozenset[str]:
    if base == "Resource":
        return R4_RESOURCE_TYPES
    if base == "DomainResource":
        return frozenset(t for t in R4_RESOURCE_TYPES if _is_domain_resource(t))
    return frozenset((base,))


AUDIT_EVENT_PARAMS = frozenset((
    "_id", "_lastUpdated", "date", "type", "subtype", "action", "outcome", "agent", "agent-name",
    "altid", "address", "entity", "patient",
))
"""AuditEvent's searchable standard parameters. The server writes an AuditEvent for every
request, so each parameter indexed costs every request; these answer "who did what to whose
data, when, from where, with what outcome". The others (site, source, policy, entity-role,
_tag, ...) are left out, and AuditEvents sort by time only (`date`, `_lastUpdated`); a custom
SearchParameter can still add any of them."""


def _standard(param: SearchParam, resource_type: str) -> SearchParam | None:
    """The parameter as `resource_type` offers it, or None where it does not."""
    if resource_type != "AuditEvent":
        return param
    if param.code not in AUDIT_EVENT_PARAMS:
        return None
    return param if param.type == "date" else replace(param, sortable=False)


class Registry:
    """Search parameters by resource type and code.

    Each type has an immutable mapping; `add` builds a new one and swaps it in, so a reader
    holding a mapping always sees a consistent set while parameters are added.
    """

    def __init__(self, params: Iterable[SearchParam] = ()) -> None:
        params = tuple(params)
        by_type: dict[str, dict[str, SearchParam]] = {t: {} for t in R4_RESOURCE_TYPES}
        for param in params:
            for resource_type in _applies_to(param.base):
                if offered := _standard(param, resource_type):
                    by_type[resource_type][param.code] = offered
        self._by_type: dict[str, Mapping[str, SearchParam]] = {
            t: MappingProxyType(p) for t, p in by_type.items()
        }
        self._codes_by_url = {param.url: param.code for param in params}
        self._lock = threading.Lock()

    def params(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Every parameter of the type, Resource-level ones included (empty if unknown)."""
        return self._by_type.get(resource_type, _EMPTY)

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self._by_type.get(resource_type, _EMPTY).get(code)

    def code_for_url(self, url: str) -> str | None:
        """The code of the parameter defined at `url` (to resolve composite components)."""
        return self._codes_by_url.get(url)

    def add(self, param: SearchParam) -> None:
        """Add or replace a parameter of its base type(s)."""
        with self._lock:  # writers serialise; readers never wait
            for resource_type in _applies_to(param.base):
                if resource_type not in self._by_type:
                    raise ValueError(f"unknown resource type {resource_type!r}")
                current = self._by_type[resource_type]
                self._by_type[resource_type] = MappingProxyType({**current, param.code: param})
            self._codes_by_url[param.url] = param.code

    @staticmethod
    def from_search_parameter(
        resource: dict[str, Any], component_codes: Mapping[str, str] | None = None
    ) -> list[SearchParam]:
        """One SearchParam per base of a SearchParameter resource; ValueError if unusable.

        Composite components name their parameter by definition URL; `component_codes` maps
        URLs to codes (default: the standard parameters).
        """
        url = resource.get("url")
        code = resource.get("code")
        param_type = resource.get("type")
        bases = resource.get("base")
        expression = resource.get("expression")
        if resource.get("resourceType") != "SearchParameter":
            raise ValueError("not a SearchParameter resource")
        if not isinstance(url, str) or not url:
            raise ValueError("SearchParameter.url is required")
        if not isinstance(code, str) or not code:
            raise ValueError(f"SearchParameter {url}: code is required")
        if param_type not in PARAM_TYPES:
            raise ValueError(f"SearchParameter {url}: unknown type {param_type!r}")
        if not isinstance(bases, list) or not bases:
            raise ValueError(f"SearchParameter {url}: base is required")
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"SearchParameter {url}: an expression is needed to index it")
        targets = tuple(resource.get("target") or ())
        known = R4_RESOURCE_TYPES | GENERIC_BASES
        unknown = [t for t in (*bases, *targets) if t not in known]
        if unknown:
            raise ValueError(f"SearchParameter {url}: unknown resource type(s) {unknown}")
        components = _components(resource, url, component_codes)
        out = []
        for base in bases:
            try:  # malformed expressions and unknown elements fail now, not at indexing
                compile_expression(expression, base)
            except ValueError as exc:
                raise ValueError(f"SearchParameter {url}: {exc}") from None
            out.append(
                SearchParam(
                    code=code,
                    type=param_type,
                    base=base,
                    expression=expression,
                    url=url,
                    targets=targets,
                    components=components,
                )
            )
        return out


def _components(
    resource: dict[str, Any], url: str, component_codes: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    if resource["type"] != "composite":
        return ()
    codes = _standard_codes() if component_codes is None else component_codes
    components = []
    for component in resource.get("component") or ():
        definition = component.get("definition")
        expression = component.get("expression")
        if definition not in codes:
            raise ValueError(f"SearchParameter {url}: unknown component definition {definition}")
        if not isinstance(expression, str) or not expression:
            raise ValueError(f"SearchParameter {url}: component {definition} has no expression")
        components.append((codes[definition], expression))
    if not components:
        raise ValueError(f"SearchParameter {url}: a composite parameter needs components")
    return tuple(components)


@functools.cache
def _load_params() -> tuple[SearchParam, ...]:
    data = orjson.loads(PARAMETERS_FILE.read_bytes())
    return tuple(
        SearchParam(
            code=item["code"],
            type=item["type"],
            base=base,
            expression=expression,
            url=item["url"],
            targets=tuple(item.get("target", ())),
            components=tuple((code, expr) for code, expr in item.get("component", ())),
        )
        for item in data["parameters"]
        for base, expression in item["expressions"].items()
    )


@functools.cache
def _standard_codes() -> Mapping[str, str]:
    return MappingProxyType({p.url: p.code for p in _load_params()})


def default_registry() -> Registry:
    """A new registry of the standard R4 parameters (each server has its own, as custom
    parameters are added to it)."""
    return Registry(_load_params())


@functools.cache
def patient_compartment() -> Mapping[str, tuple[str, ...]]:
    """Resource type -> codes of the parameters that link it to a Patient (its compartment)."""
    data = orjson.loads(COMPARTMENT_FILE.read_bytes())
    return MappingProxyType({t: tuple(codes) for t, codes in data.items()})
