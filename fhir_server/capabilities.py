"""The CapabilityStatement: states exactly what this server does, nothing more."""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir_server import __version__
from fhir_server.context import RequestContext
from fhir_server.definitions import MODELLED_RESOURCE_TYPES

TYPE_INTERACTIONS = (
    "read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create"
)
PUBLISHED = "2026-11-23"


@cache
def _resources(conditional_delete: str) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "type": type_,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": conditional_delete,
        }
        for type_ in sorted(MODELLED_RESOURCE_TYPES)
    )


def capability_statement(ctx: RequestContext) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": PUBLISHED,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "fhir-server FHIR R4 server", "url": ctx.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "patchFormat": [
            "application/json-patch+json", "application/fhir+json", "application/fhir+xml"
        ],
        "rest": [
            {
                "mode": "server",
                "resource": list(_resources(ctx.settings.conditional_delete)),
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }
