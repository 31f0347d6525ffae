"""API tests use the shared fixtures of tests/conftest.py (`client` on both engines)."""

from tests.conftest import BASE, settings_for

__all__ = ["BASE", "settings_for"]
