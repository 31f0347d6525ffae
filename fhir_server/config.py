"""Server settings: one object, read from arguments or `FHIR_SERVER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_SERVER_", extra="ignore")

    data_dir: Path = Path("fhir-data")
    """Where the embedded SQLite engine keeps its database (ignored with MongoDB)."""
    mongodb_url: str | None = None
    """When set, MongoDB is the storage engine."""
    mongodb_db: str = "fhir"
    seed: bool = True
    """Load `seed_dir` into an empty database at start-up."""
    seed_dir: Path = PROJECT_ROOT / "seed_data"
    base_url: str | None = None
    """Public FHIR base URL (behind a proxy); default: derived from each request."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    history_default_count: int = 50
    history_max_count: int = 1000
    profiles_dir: Path = PROJECT_ROOT / "profiles"
    """StructureDefinitions, ValueSets and CodeSystems (JSON, Bundles, .tgz packages)."""
    require_national_core: bool = False
    """Every Patient, Practitioner, Organization, Encounter, Condition and MedicationRequest
    must meet the national-core profile of its type."""
    required_profiles: dict[str, list[str]] = {}
    """More profiles every resource of a type must meet: {"Patient": ["url", ...]}."""
    unknown_profile: Literal["warning", "error"] = "warning"
    """What a `meta.profile` the server does not know is."""
    search_default_count: int = 20
    """Page size of a search without _count."""
    search_max_count: int = 1000
    """Largest page a search returns, whatever _count asks."""
    search_total_limit: int = 1000
    """Without `_total=accurate` (or `_summary=count`), a search counts its matches up to
    this many and leaves a larger total out: counting costs no more than this many index
    entries, however many resources match."""
    max_bundle_entries: int = 10_000
    """A batch or transaction Bundle with more entries is refused with 413."""
    conditional_delete: Literal["single", "multiple"] = "single"
    """`DELETE /fhir/Type?query` matching several resources: `single` answers 412 and deletes
    nothing; `multiple` deletes every match (up to `max_bundle_entries`)."""
    audit: bool = True
    """Record every interaction as an AuditEvent (AuditEvents clients create are chained
    either way). Off only for measuring what auditing costs."""
    audit_source: str = "fhir-server"
    """This server's name in AuditEvent.source (site and observer)."""

    # --- security (fhir_server/auth)
    auth: Literal["auto", "required", "off"] = "auto"
    """`auto`: required with MongoDB or on a non-loopback address, open (with a loud warning)
    only for the embedded engine on loopback. `off` is refused on non-loopback addresses."""
    access_token_minutes: int = 15
    refresh_idle_minutes: int = 60
    """A refresh token unused this long is dead (it rotates on every use)."""
    authorization_code_seconds: int = 60
    lockout_failures: int = 3
    """More consecutive failed logins than this lock the account."""
    lockout_minutes: int = 10
    password_min_length: int = 12
    password_max_age_days: int = 90
    """An older password must be changed at the next login."""
    totp_roles: list[str] = ["admin"]
    """Roles whose accounts must log in with a TOTP code."""
    encounter_access_days: int = 30
    """A practitioner keeps access this many days after an Encounter they took part in ended."""
    auth_issuer: str | None = None
    """The `iss` of the tokens this server issues (default: urn:fhir-server:<audit_source>)."""
    external_issuer: str | None = None
    """Also accept access tokens (JWT) issued by this identity provider..."""
    external_jwks: str | None = None
    """...signed by a key of this JWKS (URL or file)..."""
    external_audience: str | None = None
    """...and naming this audience in `aud` (unchecked when unset)."""
    external_claims: dict[str, str] = {
        "fhirUser": "fhirUser", "scope": "scope", "role": "role", "sub": "sub",
    }
    """Where the external token keeps each claim the server needs (ours -> theirs)."""
