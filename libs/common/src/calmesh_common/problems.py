"""RFC 9457 problem details: the one exception type domain code raises (`Problem`) and its body.

Pure: no web framework, database or network import, so a service's `domain` module may raise it and
stay importable on its own. The litestar side (mapping every exception an app can raise to
``application/problem+json``, never a stack trace in a body) is `calmesh_common.problem_handler`."""

from __future__ import annotations

from typing import Any

import msgspec

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://calmesh.xyz/problems/"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(Exception):
    """A domain error with its HTTP status and a stable machine-readable `code`."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or TITLES.get(status, "Error")
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": TYPE_BASE + self.code.replace("_", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            doc["instance"] = instance
        if self.errors:
            doc["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        doc.update(self.extra)
        return doc


def problem_bytes(problem: Problem, instance: str | None = None) -> bytes:
    return msgspec.json.encode(problem.body(instance))


def not_found(what: str = "resource") -> Problem:
    return Problem(404, "not_found", f"No such {what}.")


class ProblemDocument(msgspec.Struct, kw_only=True):
    """The shape of a problem+json body, for services' OpenAPI `responses` (what `Problem.body()` writes)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None
