"""Resource -> search index: entries and sort keys for every parameter of its type.

Runs on every write, so each type's parameters are turned once into a plan of compiled
evaluators (per registry mapping: adding a custom parameter swaps the mapping and so the plan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.search import types
from fhir_server.search.fhirpath import Evaluator, Value, compile_expression
from fhir_server.search.model import Entry, ResourceIndex
from fhir_server.search.registry import Registry, SearchParam
from fhir_server.search.types.composite import extract_composite


@dataclass(frozen=True, slots=True)
class _Step:
    param: SearchParam
    evaluate: Evaluator
    sortable: bool


_plans: dict[int, tuple[Mapping[str, SearchParam], tuple[_Step, ...]]] = {}


def _plan(params: Mapping[str, SearchParam], resource_type: str) -> tuple[_Step, ...]:
    cached = _plans.get(id(params))
    if cached is not None and cached[0] is params:
        return cached[1]
    # `_id` is searched and sorted by the id itself in both engines: it needs no index.
    steps = tuple(
        _Step(
            p, compile_expression(p.expression, resource_type),
            types.sortable(p.type) and p.sortable,
        )
        for p in params.values()
        if p.type != "special" and p.expression and p.code != "_id"
    )
    _plans[id(params)] = (params, steps)  # keeps `params` alive, so its id stays unique
    return steps


def _component_evaluator(resource: dict[str, Any]) -> Callable[[Any, str], list[Value]]:
    def evaluate(element: Any, expression: str) -> list[Value]:
        return compile_expression(expression, element.type)(element.value, resource)

    return evaluate


def index_resource(resource: dict[str, Any], registry: Registry) -> ResourceIndex:
    resource_type = resource["resourceType"]
    params = registry.params(resource_type)
    entries: dict[str, Any] = {}
    sort: dict[str, Any] = {}
    for step in _plan(params, resource_type):
        values = step.evaluate(resource)
        if not values:
            continue
        param = step.param
        if param.type == "composite":
            found: list[Any] = extract_composite(
                param, values, _component_evaluator(resource),
                lambda code: registry.get(resource_type, code),
            )
        else:
            found = _unique([e for v in values for e in types.extract(param.type, v.value, v.type)])
        if not found:
            continue
        entries[param.code] = found
        if step.sortable:
            sort[param.code] = (
                types.sort_key(param.type, found, False), types.sort_key(param.type, found, True)
            )
    return ResourceIndex(entries, sort)


def _unique(entries: list[Entry]) -> list[Entry]:
    return list(dict.fromkeys(entries)) if len(entries) > 1 else entries
