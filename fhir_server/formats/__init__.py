"""Wire formats besides FHIR JSON (which orjson handles directly)."""
