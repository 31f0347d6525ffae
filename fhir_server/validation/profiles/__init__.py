"""Validation against local profiles (StructureDefinitions) and the R4 base definitions.

    validator = ProfileValidator.load(Path("profiles"), terminology)
    issues = validator.validate(resource, ["http://example.org/StructureDefinition/my-patient"])

See `validator` for what is checked, `loader` for what is loaded, `snapshot` for snapshot
generation, `compiler` for the compiled form, `generate` for the committed base definitions.
"""

from fhir_server.validation.profiles.validator import CodeVerdict, ProfileValidator, Terminology

__all__ = ["CodeVerdict", "ProfileValidator", "Terminology"]
