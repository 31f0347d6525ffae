"""The FHIRPath functions of the compiled evaluator: builders that take the compiled input and
arguments of an invocation and return its compiled function.

Iterating functions (`where`, `select`, `all`, `exists(criteria)`) evaluate their argument once
per input item, with that item as focus; the others evaluate their arguments on the focus of the
expression they appear in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from fhir_server.validation.fhirpath import values as v
from fhir_server.validation.fhirpath.parser import Unsupported
from fhir_server.validation.fhirpath.runtime import NONE, Env, Fn, Items, add, key_step

__all__ = ["FUNCTIONS", "ITERATING_FUNCTIONS", "SAME_TYPE", "extension", "iif"]

Builder = Callable[[Fn, list[Fn]], Fn]


def _where(source: Fn, criteria: list[Fn]) -> Fn:
    (criterion,) = criteria

    def fn(focus: Items, env: Env) -> Items:
        return [x for x in source(focus, env) if v.singleton_bool(criterion([x], env)) is True]

    return fn


def _select(source: Fn, criteria: list[Fn]) -> Fn:
    (projection,) = criteria

    def fn(focus: Items, env: Env) -> Items:
        out: Items = []
        for x in source(focus, env):
            out += projection([x], env)
        return out

    return fn


def _all(source: Fn, criteria: list[Fn]) -> Fn:
    (criterion,) = criteria

    def fn(focus: Items, env: Env) -> Items:
        return [all(v.singleton_bool(criterion([x], env)) is True for x in source(focus, env))]

    return fn


def _exists_where(source: Fn, criteria: list[Fn]) -> Fn:
    (criterion,) = criteria

    def fn(focus: Items, env: Env) -> Items:
        return [any(v.singleton_bool(criterion([x], env)) is True for x in source(focus, env))]

    return fn


ITERATING_FUNCTIONS: dict[str, Builder] = {
    "where": _where,
    "select": _select,
    "all": _all,
    "exists": _exists_where,
}


def iif(arguments: list[Fn]) -> Fn:
    criterion, then = arguments[0], arguments[1]
    otherwise = arguments[2] if len(arguments) == 3 else None

    def fn(focus: Items, env: Env) -> Items:
        if v.singleton_bool(criterion(focus, env)) is True:
            return then(focus, env)
        return otherwise(focus, env) if otherwise is not None else NONE

    return fn


def _single(items: Items) -> Items:
    if len(items) > 1:
        raise v.EvalError("single() on more than one item")
    return items


SAME_TYPE: dict[str, Callable[[Fn], Fn]] = {
    "trace": lambda s: s,
    "first": lambda s: lambda f, e: s(f, e)[:1],
    "last": lambda s: lambda f, e: s(f, e)[-1:],
    "tail": lambda s: lambda f, e: s(f, e)[1:],
    "distinct": lambda s: lambda f, e: v.distinct(s(f, e)),
    "single": lambda s: lambda f, e: _single(s(f, e)),
}


def extension(source: Fn, url: Fn) -> Fn:
    step = key_step("extension", False)

    def fn(focus: Items, env: Env) -> Items:
        wanted = v.single_value(url(focus, env))
        return [x for x in step(source(focus, env)) if type(x) is dict and x.get("url") == wanted]

    return fn


def _on_items(function: Callable[[Items], Any]) -> Builder:
    """A function of the input collection alone (no arguments)."""

    def builder(source: Fn, arguments: list[Fn]) -> Fn:
        if arguments:
            raise Unsupported("unexpected arguments")
        return lambda focus, env: function(source(focus, env))

    return builder


def _on_string(function: Callable[..., Any], arity: int = 0, maximum: int | None = None) -> Builder:
    """A function of a single string input and literal-like arguments; empty on empty input."""

    def builder(source: Fn, arguments: list[Fn]) -> Fn:
        if not arity <= len(arguments) <= (maximum if maximum is not None else arity):
            raise Unsupported("wrong number of arguments")

        def fn(focus: Items, env: Env) -> Items:
            value = v.single_value(source(focus, env))
            if not isinstance(value, str):
                return NONE
            params = []
            for argument in arguments:
                param = v.single_value(argument(focus, env))
                if param is None:
                    return NONE
                params.append(param)
            result = function(value, *params)
            return NONE if result is None else [result]

        return fn

    return builder


def _has_value(items: Items) -> Items:
    return [len(items) == 1 and type(items[0]) not in (dict, v.Valueless)]


def _not(items: Items) -> Items:
    if len(items) == 1 and type(items[0]) is bool:
        return [not items[0]]
    return NONE


def _to_integer(items: Items) -> Items:
    value = v.single_value(items)
    if type(value) is int:
        return [value]
    if type(value) is bool:
        return [int(value)]
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value):
        return [int(value)]
    return NONE


def _to_string(items: Items) -> Items:
    value = v.single_value(items)
    text = None if value is None else v.to_string(value)
    return NONE if text is None else [text]


def _boolean_all(expected: bool, every: bool) -> Callable[[Items], Items]:
    def fn(items: Items) -> Items:
        flags = [x is expected for x in items if type(x) is bool]
        return [all(flags)] if every else [any(flags)]

    return fn


def _children(items: Items) -> Items:
    out: Items = []
    for item in items:
        if type(item) is dict:
            for key, value in item.items():
                if key != "resourceType" and not key.startswith("_"):
                    add(out, value)
    return out


def _descendants(items: Items) -> Items:
    out: Items = []
    level = _children(items)
    while level:
        out += level
        level = _children(level)
    return out


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


def _substring(text: str, start: Any, length: Any = None) -> str | None:
    if type(start) is not int or not 0 <= start < len(text):
        return None
    if length is None:
        return text[start:]
    return text[start : start + length] if type(length) is int else None


def _binary_on_collections(
    function: Callable[[Items, Items], Items],
) -> Builder:
    def builder(source: Fn, arguments: list[Fn]) -> Fn:
        if len(arguments) != 1:
            raise Unsupported("wrong number of arguments")
        (other,) = arguments
        return lambda focus, env: function(source(focus, env), other(focus, env))

    return builder


def _intersect(a: Items, b: Items) -> Items:
    return [x for x in v.distinct(a) if any(v.equal(x, y) for y in b)]


def _exclude(a: Items, b: Items) -> Items:
    return [x for x in a if not any(v.equal(x, y) for y in b)]


def _subset_of(a: Items, b: Items) -> Items:
    return [all(any(v.equal(x, y) for y in b) for x in a)]


FUNCTIONS: dict[str, Builder] = {
    "empty": _on_items(lambda items: [not items]),
    "exists": _on_items(lambda items: [bool(items)]),
    "count": _on_items(lambda items: [len(items)]),
    "hasValue": _on_items(_has_value),
    "not": _on_items(_not),
    "isDistinct": _on_items(lambda items: [v.is_distinct(items)]),
    "allTrue": _on_items(_boolean_all(True, True)),
    "allFalse": _on_items(_boolean_all(False, True)),
    "anyTrue": _on_items(_boolean_all(True, False)),
    "anyFalse": _on_items(_boolean_all(False, False)),
    "toInteger": _on_items(_to_integer),
    "toString": _on_items(_to_string),
    "children": _on_items(_children),
    "descendants": _on_items(_descendants),
    "startsWith": _on_string(lambda s, p: s.startswith(p) if isinstance(p, str) else None, 1),
    "endsWith": _on_string(lambda s, p: s.endswith(p) if isinstance(p, str) else None, 1),
    "contains": _on_string(lambda s, p: p in s if isinstance(p, str) else None, 1),
    "matches": _on_string(
        lambda s, p: _regex(p).search(s) is not None if isinstance(p, str) else None, 1
    ),
    "replaceMatches": _on_string(
        lambda s, p, r: (
            _regex(p).sub(re.sub(r"\$(\d+)", r"\\\1", r), s)
            if isinstance(p, str) and isinstance(r, str)
            else None
        ),
        2,
    ),
    "substring": _on_string(_substring, 1, 2),
    "length": _on_string(len),
    "upper": _on_string(str.upper),
    "lower": _on_string(str.lower),
    "intersect": _binary_on_collections(_intersect),
    "exclude": _binary_on_collections(_exclude),
    "subsetOf": _binary_on_collections(_subset_of),
    "supersetOf": _binary_on_collections(lambda a, b: _subset_of(b, a)),
}
