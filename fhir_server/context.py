"""What every interaction needs to know about the request it serves, free of HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.config import Settings
from fhir_server.store.base import Store


@dataclass(frozen=True, slots=True)
class RequestContext:
    store: Store
    settings: Settings
    base_url: str
    """FHIR base URL as the client sees it, without a trailing slash."""
