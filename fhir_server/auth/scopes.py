"""SMART App Launch v2 scopes, with the v1 forms read as their v2 equivalents.

A resource scope is `context/Type.perms[?query]`: context patient, user or system; Type an R4
resource type or `*`; perms the v2 letters `cruds` (any subset, in that order) or v1 `read`
(rs), `write` (cud), `*` (cruds); the query (v2 only in the spec, accepted on both) restricts
the resources it grants to those matching those search parameters. Every other scope (openid,
fhirUser, launch/patient, offline_access...) is a plain name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from fhir_server.definitions import R4_RESOURCE_TYPES

CONTEXTS = frozenset({"patient", "user", "system"})
PERMS = "cruds"
V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
INTERACTION_PERMS = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search-type": "s",
    "search-system": "s",
    "history-type": "s",
    "history-system": "s",
}
"""Which letter a FHIR interaction needs (SMART v2: type- and system-level history count as
search, instance history as read)."""

_RESOURCE_SCOPE = re.compile(
    r"(?P<context>[A-Za-z]+)/(?P<type>[A-Za-z]+|\*)\.(?P<perms>[A-Za-z*]*)(?:\?(?P<query>.*))?"
)
_V2_PERMS = re.compile(r"(?=.)c?r?u?d?s?")
_QUERY_SAFE = ":/|,"
"""Kept as they are in a normalised query value; anything else outside the unreserved
characters is percent-encoded, so the text parses back to the same parameters."""


class ScopeError(ValueError):
    pass


@dataclass(frozen=True)
class Scope:
    context: str
    type: str
    """A resource type, or `*` for every type."""
    perms: frozenset[str]
    params: tuple[tuple[str, str], ...] = ()
    """Search parameters the granted resources must match (sorted; all of them apply)."""

    def grants(self, type_: str, perm: str) -> bool:
        return self.type in ("*", type_) and perm in self.perms

    def __str__(self) -> str:
        letters = "".join(p for p in PERMS if p in self.perms)
        text = f"{self.context}/{self.type}.{letters}"
        if self.params:
            pairs = (f"{quote(n, _QUERY_SAFE)}={quote(v, _QUERY_SAFE)}" for n, v in self.params)
            text += "?" + "&".join(pairs)
        return text


def parse_scope(text: str) -> Scope | None:
    """The resource scope `text` is; None if it is a plain scope. Raises ScopeError when it has
    the shape of a resource scope but is not a valid one."""
    match = _RESOURCE_SCOPE.fullmatch(text)
    if match is None:
        return None
    context, type_, perms, query = match.group("context", "type", "perms", "query")
    if context not in CONTEXTS:
        raise ScopeError(f"{text}: context must be patient, user or system")
    if type_ != "*" and type_ not in R4_RESOURCE_TYPES:
        raise ScopeError(f"{text}: {type_} is not an R4 resource type")
    letters = V1_PERMS.get(perms, perms)
    if not _V2_PERMS.fullmatch(letters):
        raise ScopeError(f"{text}: permissions must be read, write, * or letters of cruds in order")
    params = () if query is None else _parse_query(text, query)
    return Scope(context, type_, frozenset(letters), params)


def _parse_query(text: str, query: str) -> tuple[tuple[str, str], ...]:
    params = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if not name or not equals:
            raise ScopeError(f"{text}: the query must be name=value pairs joined by &")
        params.append((unquote(name), unquote(value)))
    return tuple(sorted(set(params)))


@dataclass(frozen=True)
class ScopeSet:
    resources: tuple[Scope, ...] = ()
    names: frozenset[str] = frozenset()
    """The plain scopes."""

    @classmethod
    def parse(cls, text: str) -> ScopeSet:
        """The scopes of a space-separated scope string; raises ScopeError on a malformed one."""
        resources: list[Scope] = []
        names: set[str] = set()
        for token in text.split():
            scope = parse_scope(token)
            if scope is None:
                names.add(token)
            else:
                resources.append(scope)
        return cls(_merged(resources), frozenset(names))

    def granting(self, type_: str, perm: str) -> list[Scope]:
        """The scopes that grant `perm` on `type_`; access is the union of what each allows
        (its context, its query parameters)."""
        return [s for s in self.resources if s.grants(type_, perm)]

    def contexts(self, type_: str, perm: str) -> set[str]:
        """The contexts (patient, user, system) in which some scope grants `perm` on `type_`."""
        return {s.context for s in self.granting(type_, perm)}

    def has(self, name: str) -> bool:
        return name in self.names

    def narrow(self, requested: str) -> ScopeSet:
        """What of `requested` this set allows: for each requested scope, its intersection with
        each scope here of the same context (types, letters and query parameters all
        combined); plain scopes in both. Raises ScopeError if `requested` is malformed."""
        asked = ScopeSet.parse(requested)
        granted = [
            common
            for wanted in asked.resources
            for allowed in self.resources
            if (common := _intersection(wanted, allowed)) is not None
        ]
        return ScopeSet(_merged(granted), asked.names & self.names)

    def __str__(self) -> str:
        return " ".join([*sorted(self.names), *(str(s) for s in self.resources)])


def _intersection(a: Scope, b: Scope) -> Scope | None:
    if a.context != b.context:
        return None
    if a.type == "*":
        type_ = b.type
    elif b.type in ("*", a.type):
        type_ = a.type
    else:
        return None
    perms = a.perms & b.perms
    if not perms:
        return None
    # Both scopes' restrictions apply; repeated search parameters are ANDed too.
    return Scope(a.context, type_, perms, tuple(sorted(set(a.params + b.params))))


def _merged(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    """One scope per (context, type, params), with the letters of all; in text order."""
    letters: dict[tuple[str, str, tuple[tuple[str, str], ...]], frozenset[str]] = {}
    for s in scopes:
        key = (s.context, s.type, s.params)
        letters[key] = letters.get(key, frozenset()) | s.perms
    merged = (Scope(c, t, perms, params) for (c, t, params), perms in letters.items())
    return tuple(sorted(merged, key=str))
