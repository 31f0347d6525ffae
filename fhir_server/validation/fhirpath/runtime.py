"""What compiled FHIRPath runs on: the evaluation environment and the navigation steps.

A collection is a list of plain JSON values (see `values`); a compiled expression is a function
`fn(focus, env) -> items` of the focus collection and the variables' values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_server.validation.fhirpath import values as v

__all__ = ["NONE", "Env", "Fn", "Items", "add", "dynamic_step", "key_step", "keys_step"]

Items = list[Any]
NONE: Items = []  # the empty result (shared: results are never mutated)


class Env:
    """What the variables of one evaluation stand for."""

    __slots__ = ("context", "resource", "root")

    def __init__(self, resource: Any = None, root: Any = None, context: Any = None) -> None:
        self.resource = resource
        self.root = root
        self.context = context


Fn = Callable[[Items, Env], Items]


def add(out: Items, value: Any) -> None:
    if type(value) is list:
        out.extend(x for x in value if x is not None)
    else:
        out.append(value)


def key_step(key: str, primitive: bool) -> Callable[[Items], Items]:
    companion = "_" + key

    def step(items: Items) -> Items:
        out: Items = []
        for item in items:
            if type(item) is dict:
                value = item.get(key)
                if value is not None:
                    if type(value) is list:
                        out.extend(x for x in value if x is not None)
                    else:
                        out.append(value)
                elif primitive and companion in item:
                    extra = item[companion]
                    if type(extra) is dict:
                        out.append(v.Valueless(extra))
        return out

    return step


def keys_step(keys: list[tuple[str, str, bool]]) -> Callable[[Items], Items]:
    if len(keys) == 1:
        return key_step(keys[0][0], keys[0][2])
    table = [(key, "_" + key, primitive) for key, _, primitive in keys]

    def step(items: Items) -> Items:
        out: Items = []
        for item in items:
            if type(item) is not dict:
                continue
            for key, companion, primitive in table:
                value = item.get(key)
                if value is not None:
                    if type(value) is list:
                        out.extend(x for x in value if x is not None)
                    else:
                        out.append(value)
                elif primitive and companion in item:
                    extra = item[companion]
                    if type(extra) is dict:
                        out.append(v.Valueless(extra))
        return out

    return step


def dynamic_step(name: str) -> Callable[[Items], Items]:
    size = len(name)

    def step(items: Items) -> Items:
        out: Items = []
        for item in items:
            if type(item) is not dict:
                continue
            value = item.get(name)
            if value is not None:
                add(out, value)
                continue
            extra = item.get("_" + name)
            if type(extra) is dict:
                out.append(v.Valueless(extra))
                continue
            for key, value in item.items():  # a choice element: valueQuantity, ...
                if key.startswith(name) and key[size : size + 1].isupper():
                    add(out, value)
        return out

    return step
