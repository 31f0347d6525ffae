"""Query string -> SearchRequest (search.html).

The parameters arrive URL-decoded, in order, as (name, value) pairs. Semantics:
- Repeating a parameter ANDs it (`date=ge2020&date=lt2021`); a comma list ORs within one
  (`code=a,b`); `\\,` `\\$` `\\|` `\\\\` escape (`types.common`). The comma list is split here;
  each value goes to its type module still escaped, which splits on `|` / `$` and unescapes.
- `name:modifier`; `:missing=true|false` for every type; `:not` over a comma list means "none of
  them" (`Not(Or(...))`), not "not all of them".
- Chains `subject:Patient.name=x`, `patient.organization.name=x` to any depth. Each step's target
  type is its `:Type`, else the reference's only target; with several targets the chain is an Or
  over those that have the next parameter (`DiagnosticReport?subject.name=x` searches Patient
  and Location names; Group and Device have no `name`), and an error when none has it.
- `_has:Type:ref:param=value` reverse chains, nestable (`_has:A:p:_has:B:q:r=v`), where `ref`
  must be a reference parameter of Type able to point at the searched type.
- `_id` -> IdMatch (`:not` negates); `_list=id` -> ListMatch (resolved by the search layer;
  functional lists such as `$current-allergies` are not supported); `_lastUpdated`, `_tag`,
  `_profile`, `_security`, `_source` and all others resolve through the registry.
- An empty parameter (`gender=`) is no error: it is ignored, as search.html says, and left out
  of `kept` and `ignored` alike.
- Result parameters: `_sort` (comma list, `-` descending, sortable parameters and `_id` only),
  `_count` (non-negative integer), `_total`, `_summary`, `_elements`, `_include` /
  `_revinclude` (`Type:param[:target]`, `Type:*`, `*`; `:iterate`, with R3's `:recurse` as a
  synonym), `_type` (system search only, processed before everything else, as parameters are
  then resolved on every listed type), `_cursor` (opaque, passed on). `_format` and `_pretty`
  belong to the HTTP layer and are skipped. A repeated single-valued result parameter takes its
  last value.
- System search (resource_type None): parameters must exist, with one type, on every `_type`
  type; without `_type`, only the parameters every resource has (base Resource).
- An unknown parameter or a malformed value (empty, bad date, unknown modifier, ...): under
  strict handling a 400 naming the parameter; otherwise the parameter is skipped and listed in
  `ignored`. `kept` lists what was applied, for the self link (without `_cursor`, `_format`,
  `_pretty`, which the caller adds as it sees fit).

The output holds only the model's dataclasses with str / float / bool / None leaves, whatever the
input: rendering them safely is the engines' job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from fhir_server.errors import bad_request
from fhir_server.search import types as param_types
from fhir_server.search.model import (
    And,
    Chain,
    Has,
    IdMatch,
    ListMatch,
    Missing,
    Not,
    Or,
    Predicate,
    SortKey,
)
from fhir_server.shaping import SUMMARY_MODES

if TYPE_CHECKING:
    from fhir_server.search.registry import SearchParam

TOTAL_MODES = ("none", "estimate", "accurate")
_ITERATE = ("iterate", "recurse")
_EVERY_TYPE = ("_id", "_has", "_list")
"""Chain continuations every resource type accepts."""
_RESOURCE_LEVEL_PROBE = "Basic"
"""Every type has the Resource-level parameters, so any one type answers for system search."""
_COUNT = re.compile(r"[0-9]{1,9}")  # longer is no page size, only a way to build a huge int
_ELEMENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TYPE = re.compile(r"[A-Z][A-Za-z]+")


class ParamSource(Protocol):
    """What the parser needs of `registry.Registry`."""

    def params(self, resource_type: str) -> Mapping[str, SearchParam]: ...

    def get(self, resource_type: str, code: str) -> SearchParam | None: ...


@dataclass(frozen=True)
class Include:
    source_type: str
    """Type holding the reference; "*" for a bare `*`."""
    param: str
    """Reference parameter code; "*" for all of the source type's reference parameters."""
    target_type: str | None
    iterate: bool


@dataclass(frozen=True)
class SearchRequest:
    where: Predicate | None
    """AND over the parameters (a single one unwrapped), OR within one parameter's comma list."""
    sort: tuple[SortKey, ...] = ()
    count: int | None = None
    cursor: str | None = None
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    ignored: tuple[str, ...] = ()
    kept: tuple[tuple[str, str], ...] = ()


def parse_search(
    resource_type: str | None,
    params: list[tuple[str, str]],
    registry: ParamSource,
    base_url: str,
    strict: bool,
) -> SearchRequest:
    """Parse a search; raises `errors.BadRequest` (strict) for the first unusable parameter."""
    parser = _Parser(resource_type, registry, base_url)
    ignored: list[tuple[int, str]] = []
    kept: list[tuple[int, tuple[str, str]]] = []
    # _type decides where every other parameter is looked up, so it goes first.
    for index, (name, value) in sorted(enumerate(params), key=lambda item: item[1][0] != "_type"):
        try:
            applied = parser.apply(name, value)
        except ValueError as exc:
            if strict:
                raise bad_request(f"Search parameter '{name}': {exc}", name) from exc
            ignored.append((index, name))
            continue
        if applied:
            kept.append((index, (name, value)))
    return parser.request(
        tuple(name for _, name in sorted(ignored)), tuple(pair for _, pair in sorted(kept))
    )


def _any_of(predicates: list[Predicate]) -> Predicate:
    """OR of one parameter's values; `:not=a,b` becomes "neither a nor b"."""
    if len(predicates) == 1:
        return predicates[0]
    negated = [p.predicate for p in predicates if isinstance(p, Not)]
    if len(negated) == len(predicates):
        return Not(Or(tuple(negated)))
    return Or(tuple(predicates))


def _nonempty(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} needs a value")
    return value


@dataclass
class _Parser:
    resource_type: str | None
    registry: ParamSource
    base_url: str
    clauses: list[Predicate] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    cursor: str | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    system_types: tuple[str, ...] | None = None

    def request(self, ignored: tuple[str, ...], kept: tuple[tuple[str, str], ...]) -> SearchRequest:
        where = (
            None
            if not self.clauses
            else self.clauses[0]
            if len(self.clauses) == 1
            else And(tuple(self.clauses))
        )
        return SearchRequest(
            where=where,
            sort=tuple(self.sort),
            count=self.count,
            cursor=self.cursor,
            includes=tuple(self.includes),
            revincludes=tuple(self.revincludes),
            total=self.total,
            summary=self.summary,
            elements=self.elements,
            types=self.system_types,
            ignored=ignored,
            kept=kept,
        )

    # ------------------------------------------------------------------------ dispatch

    def apply(self, name: str, value: str) -> bool:
        """Apply one parameter; True when it belongs in the self link. ValueError if unusable."""
        base, _, modifier = name.partition(":")
        if base in ("_format", "_pretty") or not value:
            return False  # an empty parameter is ignored, not an error (search.html#errors)
        handler = _RESULT_PARAMS.get(base)
        if handler is None:
            self.clauses.append(self.predicate(self.resource_type, name, _nonempty(value, name)))
            return True
        if base in ("_include", "_revinclude"):
            if modifier and modifier not in _ITERATE:
                raise ValueError(f"modifier ':{modifier}' is not supported on {base}")
        elif modifier:
            raise ValueError(f"{base} takes no modifier")
        handler(self, _nonempty(value, base), bool(modifier))
        return base != "_cursor"

    # ------------------------------------------------------------------------ result parameters

    def _sort(self, value: str, _: bool) -> None:
        keys = [SortKey(item.removeprefix("-"), item.startswith("-")) for item in value.split(",")]
        for key in keys:  # all checked before any is applied: an ignored _sort leaves no trace
            if key.param != "_id":
                param = self.param(self.resource_type, key.param)
                if not (param_types.sortable(param.type) and param.sortable):
                    raise ValueError(f"cannot sort by {param.type} parameter '{key.param}'")
        self.sort.extend(keys)

    def _count(self, value: str, _: bool) -> None:
        if not _COUNT.fullmatch(value):
            raise ValueError(f"'{value}' is not a non-negative integer")
        self.count = int(value)

    def _total(self, value: str, _: bool) -> None:
        if value not in TOTAL_MODES:
            raise ValueError(f"must be one of {', '.join(TOTAL_MODES)}")
        self.total = value

    def _summary(self, value: str, _: bool) -> None:
        if value not in SUMMARY_MODES:
            raise ValueError(f"must be one of {', '.join(SUMMARY_MODES)}")
        self.summary = value

    def _elements(self, value: str, _: bool) -> None:
        names = tuple(n.strip() for n in value.split(",") if n.strip())
        bad = [n for n in names if not _ELEMENT.fullmatch(n)]
        if bad or not names:
            raise ValueError(f"not element names: {', '.join(bad) or value}")
        self.elements = (*(self.elements or ()), *names)

    def _type(self, value: str, _: bool) -> None:
        if self.resource_type is not None:
            raise ValueError("_type applies to system-level search only")
        names = tuple(dict.fromkeys(value.split(",")))
        for name in names:
            self.known_type(name)
        self.system_types = names

    def _cursor(self, value: str, _: bool) -> None:
        self.cursor = value

    def _include(self, value: str, iterate: bool) -> None:
        include = self.include(value, iterate)
        searched = self.system_types or ((self.resource_type,) if self.resource_type else ())
        if searched and not iterate and include.source_type not in ("*", *searched):
            raise ValueError(
                f"'{include.source_type}' is not the type searched; use "
                "_include:iterate to include from included resources"
            )
        self.includes.append(include)

    def _revinclude(self, value: str, iterate: bool) -> None:
        self.revincludes.append(self.include(value, iterate))

    # ------------------------------------------------------------------------ helpers

    def known_type(self, name: str) -> str:
        if not _TYPE.fullmatch(name) or not self.registry.params(name):
            raise ValueError(f"'{name}' is not a known resource type")
        return name

    def lookup(self, resource_type: str | None, code: str) -> SearchParam | None:
        if resource_type is not None:
            return self.registry.get(resource_type, code)
        if self.system_types:
            found = [self.registry.get(t, code) for t in self.system_types]
            first = found[0]
            same = all(p is not None and first is not None and p.type == first.type for p in found)
            return first if same else None
        param = self.registry.get(_RESOURCE_LEVEL_PROBE, code)
        return param if param is not None and param.base == "Resource" else None

    def param(self, resource_type: str | None, code: str) -> SearchParam:
        param = self.lookup(resource_type, code)
        if param is None:
            scope = resource_type or ", ".join(self.system_types or ()) or "every resource type"
            raise ValueError(f"unknown search parameter '{code}' for {scope}")
        return param

    def reference_param(self, resource_type: str, code: str) -> SearchParam:
        param = self.param(resource_type, code)
        if param.type != "reference":
            raise ValueError(f"'{code}' of {resource_type} is not a reference parameter")
        return param

    def include(self, value: str, iterate: bool) -> Include:
        if value == "*":
            return Include("*", "*", None, iterate)
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"'{value}' is not Type:param or Type:param:target")
        source, code = self.known_type(parts[0]), parts[1]
        target = self.known_type(parts[2]) if len(parts) == 3 else None
        if code != "*":
            param = self.reference_param(source, code)
            if target and param.targets and target not in param.targets:
                raise ValueError(f"{source}:{code} never points at {target}")
        return Include(source, code, target, iterate)

    # ------------------------------------------------------------------------ predicates

    def predicate(self, resource_type: str | None, name: str, value: str) -> Predicate:
        """The predicate of parameter `name` (modifiers, chains, _has) on `resource_type`."""
        if name.startswith("_has:"):
            return self._has(resource_type, name, value)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return self._chain(resource_type, code, modifier or None, rest, value)
        values = param_types.split_escaped(value, ",")
        if modifier == "missing":
            return self._missing(self.param(resource_type, code).code, values)
        if code == "_id":
            return _ids(modifier or None, values)
        if code == "_list":
            return _lists(resource_type, modifier or None, values)
        param = self.param(resource_type, code)
        ctx = param_types.ParseContext(self.base_url, partial(self.lookup, resource_type))
        return _any_of([param_types.parse(param, modifier or None, v, ctx) for v in values])

    @staticmethod
    def _missing(code: str, values: list[str]) -> Predicate:
        if any(v not in ("true", "false") for v in values):
            raise ValueError(":missing takes true or false")
        return _any_of([Missing(code, v == "true") for v in dict.fromkeys(values)])

    def _chain(
        self, resource_type: str | None, code: str, type_name: str | None, rest: str, value: str
    ) -> Predicate:
        param = self.param(resource_type, code)
        if param.type != "reference":
            raise ValueError(f"'{code}' is not a reference parameter, so it cannot be chained")
        return _any_of(
            [
                Chain(param.code, target, self.predicate(target, rest, value))
                for target in self._chain_targets(param, type_name, rest)
            ]
        )

    def _chain_targets(self, param: SearchParam, type_name: str | None, rest: str) -> list[str]:
        if type_name:
            if param.targets and type_name not in param.targets:
                raise ValueError(f"'{param.code}' never points at {type_name}")
            return [self.known_type(type_name)]
        if len(param.targets) == 1:
            return list(param.targets)
        next_code = re.split(r"[.:]", rest, maxsplit=1)[0]
        having = [
            t
            for t in param.targets
            if next_code in _EVERY_TYPE or self.registry.get(t, next_code) is not None
        ]
        if having:
            return having
        raise ValueError(
            f"'{param.code}' may point at several types, none of which has '{next_code}'"
        )

    def _has(self, resource_type: str | None, name: str, value: str) -> Predicate:
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise ValueError("_has takes the form _has:Type:reference-parameter:parameter")
        source, code, rest = self.known_type(parts[1]), parts[2], parts[3]
        reference = self.reference_param(source, code)
        if resource_type and reference.targets and resource_type not in reference.targets:
            raise ValueError(f"{source}:{code} never points at {resource_type}")
        return Has(source, reference.code, self.predicate(source, rest, value))


def _ids(modifier: str | None, values: list[str]) -> Predicate:
    if modifier not in (None, "not"):
        raise ValueError(f"modifier ':{modifier}' is not supported on _id")
    ids = tuple(dict.fromkeys(param_types.unescape(_nonempty(v, "_id")) for v in values))
    return Not(IdMatch(ids)) if modifier else IdMatch(ids)


def _lists(resource_type: str | None, modifier: str | None, values: list[str]) -> Predicate:
    if modifier is not None:
        raise ValueError(f"modifier ':{modifier}' is not supported on _list")
    if resource_type is None:
        raise ValueError("_list needs a resource type to search")
    ids = [param_types.unescape(_nonempty(v, "_list")) for v in dict.fromkeys(values)]
    if any(i.startswith("$") for i in ids):
        raise ValueError("functional lists ($current-allergies, ...) are not supported")
    return _any_of([ListMatch(resource_type, i) for i in ids])


_RESULT_PARAMS: dict[str, Callable[[_Parser, str, bool], None]] = {
    "_sort": _Parser._sort,
    "_count": _Parser._count,
    "_total": _Parser._total,
    "_summary": _Parser._summary,
    "_elements": _Parser._elements,
    "_type": _Parser._type,
    "_cursor": _Parser._cursor,
    "_include": _Parser._include,
    "_revinclude": _Parser._revinclude,
}
