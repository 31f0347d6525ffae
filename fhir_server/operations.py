"""Operations on validation and terminology: `$validate`, `ValueSet/$expand`,
`ValueSet/$validate-code`, `CodeSystem/$lookup`, `CodeSystem/$validate-code`. HTTP-free.

Terminology answers from local content: the built-in R4 terminology, the ValueSets and
CodeSystems under `profiles/`, and, for the instance forms (`ValueSet/[id]/$expand`), the one
stored on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server import errors, interactions
from fhir_server.context import RequestContext
from fhir_server.errors import Issue, operation_outcome
from fhir_server.validation.structure import validate_structure
from fhir_server.validation.terminology import CodeVerdict, Terminology

Params = dict[str, list[Any]]


def parameters(query: list[tuple[str, str]], body: Any) -> Params:
    """Operation inputs from the query string and a `Parameters` body (or a bare resource,
    taken as the `resource` input)."""
    found: Params = {}
    for name, value in query:
        found.setdefault(name, []).append(value)
    if isinstance(body, dict):
        if body.get("resourceType") == "Parameters":
            for p in body.get("parameter") or []:
                value = p.get("resource")
                if value is None:
                    value = next((v for k, v in p.items() if k.startswith("value")), None)
                found.setdefault(str(p.get("name")), []).append(value)
        elif body:
            found.setdefault("resource", []).append(body)
    return found


def _one(params: Params, name: str, required: bool = False) -> Any:
    values = params.get(name) or []
    if not values:
        if required:
            raise errors.bad_request(f"The operation needs the parameter '{name}'")
        return None
    return values[0]


async def validate(ctx: RequestContext, type_: str, id_: str | None, params: Params) -> dict:
    """$validate: an OperationOutcome of every issue (200 even when the resource is invalid)."""
    resource = _one(params, "resource")
    if resource is None:
        if id_ is None:
            raise errors.bad_request("$validate needs a resource (the body or 'resource')")
        resource = (await interactions.read(ctx, type_, id_)).resource()
    if not isinstance(resource, dict) or resource.get("resourceType") != type_:
        raise errors.bad_request(f"$validate on {type_} needs a {type_} resource")
    profiles = [p for p in params.get("profile") or [] if isinstance(p, str)]
    issues: list[Issue] = []
    try:
        validate_structure(resource)
    except errors.FhirError as exc:
        issues += exc.issues
    if ctx.conformance is not None:
        required = ctx.conformance.required.get(type_, ())
        issues += ctx.conformance.validator.validate(resource, [*required, *profiles])
    issues = list(dict.fromkeys(issues))
    if not issues:
        issues = [Issue("informational", "No issues found", severity="information")]
    return operation_outcome(issues)


def _terminology(ctx: RequestContext, extra: Sequence[dict[str, Any]] = ()) -> Terminology:
    if ctx.conformance is None:
        return Terminology.load(extra)
    registry = ctx.conformance.validator.registry
    local = [*registry.value_sets.values(), *registry.code_systems.values()]
    return Terminology.load([*local, *extra])


async def _stored(ctx: RequestContext, type_: str, id_: str | None) -> list[dict[str, Any]]:
    return [] if id_ is None else [(await interactions.read(ctx, type_, id_)).resource()]


def _verdict(verdict: CodeVerdict) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(verdict.ok)}]
    if verdict.message:
        out.append({"name": "message", "valueString": verdict.message})
    if verdict.display:
        out.append({"name": "display", "valueString": verdict.display})
    return {"resourceType": "Parameters", "parameter": out}


def _int(params: Params, name: str) -> int | None:
    value = _one(params, name)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise errors.bad_request(f"'{name}' must be an integer") from None


async def expand(ctx: RequestContext, id_: str | None, params: Params) -> dict[str, Any]:
    stored = await _stored(ctx, "ValueSet", id_)
    url = stored[0].get("url") if stored else _one(params, "url", required=True)
    try:
        return _terminology(ctx, stored).expand(
            str(url), _one(params, "filter"), _int(params, "count"), _int(params, "offset") or 0
        )
    except (KeyError, ValueError) as exc:
        raise errors.bad_request(f"Cannot expand {url}: {exc}") from None


async def validate_code(
    ctx: RequestContext, type_: str, id_: str | None, params: Params
) -> dict[str, Any]:
    stored = await _stored(ctx, type_, id_)
    url = stored[0].get("url") if stored else _one(params, "url", required=True)
    code = _one(params, "code", required=True)
    display = _one(params, "display")
    terminology = _terminology(ctx, stored)
    if type_ == "CodeSystem":
        return _verdict(terminology.validate_code_in_system(str(url), str(code), display))
    return _verdict(terminology.validate_code(str(url), _one(params, "system"), str(code),
                                              display))


async def lookup(ctx: RequestContext, params: Params) -> dict[str, Any]:
    system = _one(params, "system", required=True)
    code = _one(params, "code", required=True)
    try:
        return _terminology(ctx).lookup(str(system), str(code))
    except KeyError as exc:
        raise errors.not_found(f"Cannot look up {system}|{code}: {exc}") from None
