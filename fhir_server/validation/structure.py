"""Structural validation: the JSON shape against the R4 definitions, then value formats with
fhir.resources (R4B models), then the rules of the R4 base definitions (invariants with their
severities, required bindings; see `base_rules`) — on every write, whatever profile it claims.

Pydantic reports error locations as tuples of field names and list indices; we turn them into
FHIRPath expressions (`Patient.name[0].family`) so a client can find the offending element.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_server.definitions import MODELLED_RESOURCE_TYPES
from fhir_server.errors import Issue, bad_request, unprocessable
from fhir_server.validation.base_rules import check_base_rules
from fhir_server.validation.json_shape import check_json_shape

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def fhirpath(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _NAME.fullmatch(part):
            path += f".{part}"
        # Other parts name pydantic's validator wrappers, not FHIR elements.
    return path


def _issue(resource_type: str, error: Any) -> Issue:
    loc = tuple(error.get("loc", ()))
    expression = fhirpath(resource_type, loc)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return Issue(
            "structure", f"Unknown element '{loc[-1]}' at {expression}", expression=(expression,)
        )
    if kind == "missing":
        return Issue("required", f"Missing required element {expression}", expression=(expression,))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return Issue("value", f"{expression}: {message}", expression=(expression,))


def validate_structure(resource: dict[str, Any]) -> None:
    """Raise a 422 listing every structural problem of `resource` (its type is known), or, when
    its structure is sound, every issue of the base definitions' rules if one is an error
    (warnings alone, such as dom-6 on a resource without narrative, do not refuse it)."""
    check_structure(resource)
    issues = check_base_rules(resource)
    if any(i.severity in ("error", "fatal") for i in issues):
        raise unprocessable(issues)


def check_structure(resource: dict[str, Any]) -> None:
    """Raise a 422 listing every structural problem of `resource` (shape, formats, models)."""
    issues = check_json_shape(resource)
    seen = {i.expression for i in issues}
    resource_type = resource["resourceType"]
    if resource_type not in MODELLED_RESOURCE_TYPES:
        # No R4B model (MedicinalProduct*, Substance details, *EvidenceSynthesis): the R4
        # definitions walk, formats included, is the whole structural check.
        if issues:
            raise unprocessable(issues)
        return
    try:
        _model(resource_type).model_validate(resource)
    except ValidationError as exc:
        # Element names and cardinality are judged by the R4 definitions (json_shape), so the
        # R4B models' own opinion on those is left out.
        issues += [
            i
            for i in (
                _issue(resource_type, e)
                for e in exc.errors()
                if e.get("type") not in ("extra_forbidden", "missing")
            )
            if i.expression not in seen
        ]
    except Exception as exc:
        if not issues:
            issues.append(
                Issue(
                    "structure", f"Not a valid {resource_type}: {exc}", expression=(resource_type,)
                )
            )
    if issues:
        raise unprocessable(issues)


def check_id(id_: str, where: str) -> None:
    if not FHIR_ID.fullmatch(id_):
        raise bad_request(
            f"'{id_}' is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')", where
        )
