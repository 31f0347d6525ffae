"""fhir-server: a FHIR R4 interoperability server."""

__version__ = "0.1.0"
