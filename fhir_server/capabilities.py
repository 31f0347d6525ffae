"""The CapabilityStatement: states exactly what this server does, nothing more."""

from __future__ import annotations

from typing import Any

from fhir_server import __version__
from fhir_server.context import RequestContext
from fhir_server.definitions import R4_RESOURCE_TYPES
from fhir_server.search.registry import Registry
from fhir_server.store.base import APPEND_ONLY_TYPES

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
APPEND_ONLY_REFUSED = frozenset(("update", "patch", "delete"))
PUBLISHED = "2026-11-23"
REINDEX = {"name": "reindex", "definition": "http://fhir-server.dev/OperationDefinition/reindex"}
VALIDATE = {
    "name": "validate",
    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
}
TERMINOLOGY = {
    "ValueSet": [
        {"name": "expand", "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"},
        {
            "name": "validate-code",
            "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
        },
    ],
    "CodeSystem": [
        {
            "name": "lookup",
            "definition": "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup",
        },
        {
            "name": "validate-code",
            "definition": "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code",
        },
    ],
}


def _search_params(registry: Registry, type_: str) -> list[dict[str, Any]]:
    return [
        {"name": p.code, "definition": p.url, "type": p.type}
        for p in sorted(registry.params(type_).values(), key=lambda p: p.code)
        if p.type != "special"
    ]


def _resource(ctx: RequestContext, type_: str) -> dict[str, Any]:
    params = _search_params(ctx.registry, type_)
    references = [p["name"] for p in params if p["type"] == "reference"]
    # AuditEvents are append-only: no update, patch or delete, conditional or not.
    mutable = type_ not in APPEND_ONLY_TYPES
    interactions = [c for c in TYPE_INTERACTIONS if mutable or c not in APPEND_ONLY_REFUSED]
    return {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": mutable,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": mutable,
        "conditionalDelete": ctx.settings.conditional_delete if mutable else "not-supported",
        "searchInclude": ["*", *(f"{type_}:{r}" for r in references)],
        "searchRevInclude": ["*"],
        "searchParam": params,
        "operation": [REINDEX, VALIDATE, *TERMINOLOGY.get(type_, [])],
    }


def _security(root: str) -> dict[str, Any]:
    """SMART App Launch: where to get tokens (also in .well-known/smart-configuration)."""
    uris = [("authorize", "authorize"), ("token", "token"), ("revoke", "revoke")]
    return {
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
        }]}],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": name, "valueUri": f"{root}/auth/{path}"} for name, path in uris],
        }],
    }


def capability_statement(ctx: RequestContext) -> dict[str, Any]:
    """Built per request: custom search parameters switch on while the server runs."""
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
            "application/json-patch+json",
            "application/fhir+json",
            "application/fhir+xml",
        ],
        "rest": [
            {
                "mode": "server",
                "security": _security(ctx.base_url.removesuffix("/fhir")),
                "resource": [_resource(ctx, t) for t in sorted(R4_RESOURCE_TYPES)],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                    {"code": "history-system"},
                ],
                # Every type has the Resource-level parameters; any one type lists them.
                "searchParam": [
                    p for p in _search_params(ctx.registry, "Basic") if p["name"].startswith("_")
                ],
            }
        ],
    }
