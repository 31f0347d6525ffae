"""Profile conformance on writes: each `meta.profile` the server knows, and the profiles the
settings require per resource type, checked by the profile validator; errors -> 422.

Only resources that claim or are required to meet a profile pay for the profile walk. Every
write, profiled or not, has already been checked against the base definitions' invariants and
required bindings by `structure.validate_structure` (see `base_rules`, a few hundredths of a
millisecond a resource); the profile walk repeats those checks with identical messages, so an
OperationOutcome that combines both lists each issue once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server.config import Settings
from fhir_server.errors import Issue, unprocessable
from fhir_server.validation.profiles import ProfileValidator
from fhir_server.validation.terminology import Terminology

NATIONAL_CORE = "https://ehealth.example.org/fhir/StructureDefinition/"
NATIONAL_CORE_REQUIRED = {
    "Patient": NATIONAL_CORE + "national-patient",
    "Practitioner": NATIONAL_CORE + "national-practitioner",
    "Organization": NATIONAL_CORE + "national-organization",
    "Encounter": NATIONAL_CORE + "national-encounter",
    "Condition": NATIONAL_CORE + "national-condition",
    "MedicationRequest": NATIONAL_CORE + "national-medicationrequest",
}
"""What `require_national_core` makes mandatory. The lab Observation and DiagnosticReport
profiles fit only laboratory results, so they apply through `meta.profile`."""


@dataclass(frozen=True)
class Conformance:
    validator: ProfileValidator
    required: dict[str, tuple[str, ...]]
    unknown_profile_is_error: bool

    @classmethod
    def load(cls, settings: Settings) -> Conformance:
        directory: Path | None = settings.profiles_dir if settings.profiles_dir.is_dir() else None
        probe = ProfileValidator.load(directory)
        local = [*probe.registry.value_sets.values(), *probe.registry.code_systems.values()]
        validator = ProfileValidator(probe.registry, Terminology.load(local))
        required: dict[str, list[str]] = (
            {t: [u] for t, u in NATIONAL_CORE_REQUIRED.items()}
            if (settings.require_national_core)
            else {}
        )
        for type_, urls in settings.required_profiles.items():
            required.setdefault(type_, []).extend(urls)
        return cls(
            validator,
            {t: tuple(u) for t, u in required.items()},
            settings.unknown_profile == "error",
        )

    def check(self, resource: dict[str, Any]) -> None:
        """Raise a 422 listing every issue when `resource` breaks a profile it must meet."""
        required = self.required.get(resource["resourceType"], ())
        meta = resource.get("meta")
        claimed = meta.get("profile") if isinstance(meta, dict) else None
        if not required and not claimed:
            return
        issues = self.validator.validate(resource, required)
        if self.unknown_profile_is_error:
            issues = [_as_error(i) if i.code == "not-supported" else i for i in issues]
        if any(i.severity in ("error", "fatal") for i in issues):
            raise unprocessable(issues)


def _as_error(issue: Issue) -> Issue:
    return Issue(issue.code, issue.diagnostics, "error", issue.expression)
