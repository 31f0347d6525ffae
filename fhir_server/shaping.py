"""`_summary` and `_elements`: the subsets of a resource a client may ask for (search.html#summary).

Only top-level elements are filtered; the spec's summary view of nested complex elements is
left whole, which keeps every mandatory child and never produces an invalid resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_server import errors
from fhir_server.definitions import mandatory_elements, summary_elements

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
SUMMARY_MODES = ("true", "false", "text", "data", "count")
_ALWAYS = frozenset(("resourceType", "id", "meta"))


def _matches(key: str, names: frozenset[str]) -> bool:
    """`value` names a choice element, so it also keeps `valueQuantity` and friends."""
    if key in names:
        return True
    return any(key.startswith(n) and key[len(n):len(n) + 1].isupper() for n in names)


def _keep(resource: dict[str, Any], keep: Iterable[str]) -> dict[str, Any]:
    wanted = frozenset(keep) | mandatory_elements(resource["resourceType"]) | _ALWAYS
    subset = {k: v for k, v in resource.items() if _matches(k, wanted)}
    meta = dict(subset.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    subset["meta"] = meta
    return subset


def check_summary(mode: str | None) -> None:
    if mode is not None and mode not in SUMMARY_MODES:
        raise errors.bad_request(
            f"_summary must be one of {', '.join(SUMMARY_MODES)}, not '{mode}'", "_summary"
        )


def shape(resource: dict[str, Any], summary: str | None, elements: str | None) -> dict[str, Any]:
    """The part of `resource` the client asked for; `_elements` wins over `_summary`."""
    if elements:
        return _keep(resource, (e.strip() for e in elements.split(",") if e.strip()))
    if summary == "true":
        return _keep(resource, summary_elements(resource["resourceType"]))
    if summary == "text":
        return _keep(resource, ("text",))
    if summary == "data" and "text" in resource:
        return _keep(resource, (k for k in resource if k != "text"))
    return resource
