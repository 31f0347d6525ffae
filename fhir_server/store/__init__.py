"""Storage engines behind one interface (see base.py); `open_store` picks one from settings."""

from __future__ import annotations

from fhir_server.config import Settings
from fhir_server.store.base import Store


def build_store(settings: Settings) -> Store:
    """MongoDB when a URL is configured, the embedded SQLite engine otherwise (not yet opened)."""
    if settings.mongodb_url:
        from fhir_server.store.mongo import MongoStore

        return MongoStore.from_url(settings.mongodb_url, settings.mongodb_db)
    from fhir_server.store.sqlite import SqliteStore

    return SqliteStore(settings.data_dir / "fhir.sqlite")
