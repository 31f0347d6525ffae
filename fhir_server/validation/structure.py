"""Structural validation of every write, whatever profile it claims: the JSON shape against the
R4 definitions (`json_shape`: element names, cardinality, JSON types, primitive formats,
required elements), then the rules of the R4 base definitions (`base_rules`: invariants with
their severities, required bindings). All 147 R4 types are checked the same way.

The `fhir.resources` R4B models are not consulted: the two checks refuse everything the models
refuse, apart from where R4B departs from R4 (tests/validation/test_pydantic_equivalence.py
shows it on the Synthea samples and on thousands of invalid variants of all 147 types).
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server.errors import bad_request, unprocessable
from fhir_server.validation.base_rules import check_base_rules
from fhir_server.validation.json_shape import check_json_shape

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def validate_structure(resource: dict[str, Any]) -> None:
    """Raise a 422 listing every structural problem of `resource` (its type is known), or, when
    its structure is sound, every issue of the base definitions' rules if one is an error
    (warnings alone, such as dom-6 on a resource without narrative, do not refuse it)."""
    check_structure(resource)
    issues = check_base_rules(resource)
    if any(i.severity in ("error", "fatal") for i in issues):
        raise unprocessable(issues)


def check_structure(resource: dict[str, Any]) -> None:
    """Raise a 422 listing every structural problem of `resource` (shape, formats)."""
    issues = check_json_shape(resource)
    if issues:
        raise unprocessable(issues)


def check_id(id_: str, where: str) -> None:
    if not FHIR_ID.fullmatch(id_):
        raise bad_request(
            f"'{id_}' is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')", where
        )
