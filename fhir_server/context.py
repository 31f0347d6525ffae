"""What every interaction needs to know about the request it serves, free of HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fhir_server.config import Settings
from fhir_server.search.registry import Registry
from fhir_server.store.base import Store, Transaction
from fhir_server.validation.conformance import Conformance

if TYPE_CHECKING:
    from fhir_server.audit.trail import AuditScope
    from fhir_server.auth.access import Access


@dataclass(frozen=True, slots=True)
class RequestContext:
    store: Store
    settings: Settings
    registry: Registry
    base_url: str
    """FHIR base URL as the client sees it, without a trailing slash."""
    tx: Transaction | None = None
    """Set while the interaction is one entry of a transaction bundle: writes join it."""
    conformance: Conformance | None = None
    """Profile checks on writes (None: structure only)."""
    indexing: Registry | None = None
    """Parameters writes index, when not `registry`: during a reindex it already holds the
    custom parameters that searches may not use yet."""
    audit: AuditScope | None = None
    """Where the interaction notes what the audit trail records of it (None: not audited)."""
    access: Access | None = None
    """What the caller may see and do (None: no limits — authentication off, or the server's
    own work such as loading and seeding)."""
