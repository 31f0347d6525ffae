"""FHIR errors: every failure the server reports is one of these, rendered as an OperationOutcome.

Interactions raise them without knowing about HTTP; the API layer has a single handler that turns
them into a response with the status carried here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: what is wrong and where (a FHIRPath expression)."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code}
        issue["diagnostics"] = self.diagnostics
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information_outcome(text: str) -> dict[str, Any]:
    return operation_outcome([Issue("informational", text, severity="information")])


@dataclass
class FhirError(Exception):
    """Base of all FHIR errors; `status` is the HTTP status the API layer answers with."""

    issues: list[Issue] = field(default_factory=list)
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def _single(cls: type[FhirError], status: int, code: str):
    """Build a constructor taking a message (and optional FHIRPath expression) for an error kind."""

    def make(message: str, expression: str | None = None, **headers: str) -> FhirError:
        issue = Issue(code, message, expression=(expression,) if expression else ())
        return cls(issues=[issue], status=status, headers=dict(headers))

    return make


class BadRequest(FhirError):
    """400: the request itself cannot be understood (syntax, mismatched ids, bad parameters)."""


class Unauthorized(FhirError):
    """401: no valid credentials (the WWW-Authenticate header says how to get them)."""


class Forbidden(FhirError):
    """403: the caller may not do this kind of thing (never said of one hidden resource)."""


class NotFound(FhirError):
    """404: unknown resource type, id or version."""


class Gone(FhirError):
    """410: the resource existed and was deleted."""


class MethodNotAllowed(FhirError):
    """405."""


class NotAcceptable(FhirError):
    """406: no representation the client accepts."""


class Conflict(FhirError):
    """409: the write conflicts with the current state."""


class PreconditionFailed(FhirError):
    """412: If-Match (or another precondition) does not hold."""


class PayloadTooLarge(FhirError):
    """413."""


class UnsupportedMediaType(FhirError):
    """415."""


class Unprocessable(FhirError):
    """422: the content is well-formed but is not a valid resource."""


class Unavailable(FhirError):
    """503: a dependency (storage) failed; the client may retry."""


bad_request = _single(BadRequest, 400, "invalid")
unauthorized = _single(Unauthorized, 401, "login")
forbidden = _single(Forbidden, 403, "forbidden")
not_found = _single(NotFound, 404, "not-found")
gone = _single(Gone, 410, "deleted")
method_not_allowed = _single(MethodNotAllowed, 405, "not-supported")
not_acceptable = _single(NotAcceptable, 406, "not-supported")
conflict = _single(Conflict, 409, "conflict")
precondition_failed = _single(PreconditionFailed, 412, "conflict")
payload_too_large = _single(PayloadTooLarge, 413, "too-costly")
unsupported_media_type = _single(UnsupportedMediaType, 415, "not-supported")
unavailable = _single(Unavailable, 503, "transient")


def unprocessable(issues: list[Issue]) -> Unprocessable:
    return Unprocessable(issues=issues, status=422)
