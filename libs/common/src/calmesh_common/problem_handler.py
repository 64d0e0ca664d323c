"""The litestar side of problem details: one exception handler that maps every error a litestar app
can raise to ``application/problem+json`` (`calmesh_common.problems.Problem` as it is, litestar's
own exceptions by status, anything else an opaque 500 that is logged), and a dependency outage
(database, NATS) to a 503 with Retry-After. Apps register `problem_handler`; domain code raises
`Problem` and never imports this module."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import ClientException

from .logging import get_logger, is_database_outage, is_nats_outage, outage
from .problems import PROBLEM_JSON, TITLES, FieldError, Problem, problem_bytes
from .retryafter import retry_after

log = get_logger(__name__)


#: msgspec names an unknown or missing field in its message, not in the error's key.
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")

#: The key litestar gives an error about the request body as a whole.
_BODY_KEYS = ("data", "body")


def _validation_errors(extra: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                key = str(item.get("key") or item.get("field") or "body")
                message = str(item.get("message", "invalid value"))
                if named := _NAMED_FIELD.search(message):
                    key = named.group(1) if key in _BODY_KEYS else f"{key}.{named.group(1)}"
                errors.append(FieldError(key, message))
    return errors


def to_problem(exc: Exception) -> Problem:
    """Map any exception to a Problem; unknown ones become an opaque 500."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc.extra)
        detail = str(exc.detail or "The request is not valid.")
        if errors:
            detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return Problem(400, "validation_error", detail, errors=errors or None)
    if isinstance(exc, NotFoundException):
        return Problem(404, "not_found", "No such resource.")
    if isinstance(exc, MethodNotAllowedException):
        return Problem(405, "method_not_allowed", "This method is not allowed on this resource.")
    if isinstance(exc, NotAuthorizedException):
        return Problem(401, "unauthorized", str(exc.detail or "Authentication is required."))
    if isinstance(exc, PermissionDeniedException):
        return Problem(403, "forbidden", str(exc.detail or "Forbidden."))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = {413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited"}.get(
            status, "bad_request" if isinstance(exc, ClientException) else "error"
        )
        detail = str(exc.detail) if status < 500 else TITLES.get(status, "Error")
        # A body litestar could not parse (malformed JSON): say so where clients look for it.
        body_errors = [FieldError("body", detail)] if status == 400 else None
        return Problem(status, code, detail, errors=body_errors, headers=dict(exc.headers or {}))
    return Problem(500, "internal_error", "Something went wrong on our side; it has been logged.")


def problem_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The litestar exception handler for every exception type."""
    if is_database_outage(exc) or is_nats_outage(exc):
        # A dependency is away (a restart): 503 with Retry-After, and one log line per outage.
        what = "database" if is_database_outage(exc) else "nats"
        outage(what).failed(exc)
        problem = Problem(503, f"{what}_unavailable", "A dependency of this service is restarting; try again shortly.",
                          headers=retry_after(2))
        return Response(content=problem_bytes(problem), status_code=503, media_type=PROBLEM_JSON,
                        headers=problem.headers)
    problem = to_problem(exc)
    if problem.status >= 500:
        log.error("unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return Response(
        content=problem_bytes(problem),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )
