"""FHIRPath for validation: invariants compiled into Python closures over plain FHIR JSON.

    fn = compile_expression("start.hasValue().not() or end.hasValue().not() or (start <= end)",
                            "Period")
    fn([period], Env(resource, resource, period))   # -> [True] / [False] / []

`parser` reads FHIRPath into a syntax tree, `compiler` turns a tree into closures (typed by the
R4 element definitions) with the navigation steps of `runtime` and the function builders of
`functions`; `values` holds the FHIRPath value semantics (equality, ordering of dates with
precision, Quantities, singleton evaluation). Expressions outside the compiled subset raise
`Unsupported`; callers fall back to fhirpathpy.
"""

from fhir_server.validation.fhirpath.compiler import (
    Env,
    Fn,
    compile_expression,
    compiled_invariant,
    names,
)
from fhir_server.validation.fhirpath.parser import Unsupported

__all__ = ["Env", "Fn", "Unsupported", "compile_expression", "compiled_invariant", "names"]
