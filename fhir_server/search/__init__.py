"""FHIR search: parameter registry, expression evaluation, index entries and predicates."""
