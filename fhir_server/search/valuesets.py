"""Token `:in` / `:not-in`: ValueSets stored on this server, expanded into code matches.

A ValueSet is found by its canonical URL (`ValueSet?url=`). Its codes come from
`expansion.contains` when the resource carries an expansion, otherwise from `compose`:
enumerated concepts, whole code systems (any code of that system), `is-a` / `descendent-of`
filters over a CodeSystem stored here, and other ValueSets it includes; `exclude` removes
enumerated codes. Anything else (other filters, an unknown ValueSet or CodeSystem) is an error
that names what is missing, rather than a silent partial answer.

Implicit ValueSet URLs (`[system]?fhir_vs` for every code of a system, `[system]?fhir_vs=isa/
[code]` for a code and its descendants, as SNOMED CT defines them and search.html's
`Condition?code:in=http://snomed.info/sct?fhir_vs=isa/126851005` uses) stand for that compose
when no ValueSet with the URL is stored; `isa` needs the CodeSystem (or a fragment of it) here.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server import errors
from fhir_server.context import RequestContext
from fhir_server.search.model import (
    ANY,
    IdMatch,
    Or,
    Predicate,
    TokenMatch,
    UriMatch,
    ValueSetMatch,
)
from fhir_server.store.base import SearchQuery

Code = tuple[str | None, str]
"""(system, code); code ANY means every code of the system."""
MAX_DEPTH = 8
"""ValueSets including ValueSets: deeper than this is taken for a cycle."""


_IMPLICIT = re.compile(r"(?P<system>[^?|]+)\?fhir_vs(?:=isa/(?P<code>[^/]+))?")


async def _stored(ctx: RequestContext, type_: str, url: str) -> dict[str, Any] | None:
    base, _, version = url.partition("|")
    query = SearchQuery(type_, UriMatch("url", base), limit=50)
    found = [m.version.resource() for m in await ctx.store.search(query)]
    if version:
        found = [r for r in found if r.get("version") == version]
    return max(found, key=lambda r: str(r.get("version", ""))) if found else None


async def _canonical(ctx: RequestContext, type_: str, url: str) -> dict[str, Any]:
    found = await _stored(ctx, type_, url)
    if found is None:
        raise errors.bad_request(f"No {type_} with url '{url}' is stored on this server")
    return found


def _implicit(url: str) -> dict[str, Any] | None:
    """The ValueSet an implicit URL stands for (`?fhir_vs`, `?fhir_vs=isa/code`), or None."""
    m = _IMPLICIT.fullmatch(url)
    if m is None:
        return None
    include: dict[str, Any] = {"system": m["system"]}
    if m["code"]:
        include["filter"] = [{"property": "concept", "op": "is-a", "value": m["code"]}]
    return {"resourceType": "ValueSet", "url": url, "compose": {"include": [include]}}


def _contains(items: list[dict[str, Any]]) -> list[Code]:
    codes: list[Code] = []
    for item in items:
        if item.get("code"):
            codes.append((item.get("system"), item["code"]))
        codes += _contains(item.get("contains") or [])
    return codes


def _descendants(concepts: list[dict[str, Any]], root: str, include_root: bool) -> list[str]:
    """Codes below `root` in a CodeSystem's nested concept tree."""
    for concept in concepts:
        children = concept.get("concept") or []
        if concept.get("code") == root:
            below = [c for child in children for c in _subtree(child)]
            return [root, *below] if include_root else below
        found = _descendants(children, root, include_root)
        if found:
            return found
    return []


def _subtree(concept: dict[str, Any]) -> list[str]:
    return [
        concept["code"],
        *(c for child in concept.get("concept") or [] for c in _subtree(child)),
    ]


async def _include(ctx: RequestContext, part: dict[str, Any], depth: int) -> list[Code]:
    system = part.get("system")
    codes: list[Code] = []
    for url in part.get("valueSet") or []:
        codes += await expand(ctx, url, depth + 1)
    if part.get("concept"):
        codes += [(system, c["code"]) for c in part["concept"] if c.get("code")]
    for rule in part.get("filter") or []:
        if rule.get("property") != "concept" or rule.get("op") not in ("is-a", "descendent-of"):
            raise errors.bad_request(
                f"ValueSet filter {rule.get('property')} {rule.get('op')} is not supported; "
                "only concept is-a / descendent-of over a stored CodeSystem"
            )
        code_system = await _canonical(ctx, "CodeSystem", str(system))
        below = _descendants(
            code_system.get("concept") or [], str(rule.get("value")), rule["op"] == "is-a"
        )
        codes += [(system, c) for c in below]
    if system and not part.get("concept") and not part.get("filter"):
        codes.append((system, ANY))
    return codes


async def expand(ctx: RequestContext, url: str, depth: int = 0) -> list[Code]:
    if depth > MAX_DEPTH:
        raise errors.bad_request(f"ValueSet '{url}' includes ValueSets too deeply (a cycle?)")
    valueset = await _stored(ctx, "ValueSet", url) or _implicit(url)
    if valueset is None:
        raise errors.bad_request(f"No ValueSet with url '{url}' is stored on this server")
    expansion = (valueset.get("expansion") or {}).get("contains")
    if expansion:
        return _contains(expansion)
    compose = valueset.get("compose") or {}
    codes: list[Code] = []
    for part in compose.get("include") or []:
        codes += await _include(ctx, part, depth)
    excluded: set[Code] = set()
    for part in compose.get("exclude") or []:
        excluded.update(c for c in await _include(ctx, part, depth) if c[1] is not ANY)
    return [c for c in dict.fromkeys(codes) if c not in excluded]


async def codes_match(ctx: RequestContext, p: ValueSetMatch) -> Predicate:
    """The token matches of the codes of `p`'s ValueSet (nothing, for an empty one)."""
    codes = await expand(ctx, p.valueset)
    if not codes:
        return IdMatch(())  # an empty ValueSet: nothing is in it
    return Or(tuple(TokenMatch(p.param, system, code) for system, code in codes))
