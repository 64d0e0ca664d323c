"""One OpenAPI 3.1 document for the whole public API.

Built from the route table, so every endpoint is in it with its summary, its scopes
(``x-calmesh-scopes``) and its security requirement, plus the gateway's own request and response
schemas; then each service's own document (its internal ``/schema/openapi.json``, fetched with the
internal secret) fills in the details of the operations that service owns. A service that is not
ready is skipped and asked again on a later request.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

from calmesh_common.logging import get_logger
from calmesh_common.service import SECRET_HEADER

from . import schemas
from .routes import GATEWAY, KEY, PUBLIC, SESSION, Route, RouteTable

log = get_logger(__name__)

RETRY_SECONDS = 5.0
FETCH_TIMEOUT = 2.0
_PARAM = re.compile(r"\{[^}/]+\}")

_GATEWAY_TYPES = (schemas.SignupRequest, schemas.LoginRequest, schemas.User, schemas.ApiKeyCreate,
                  schemas.ApiKeyCreated, schemas.ApiKey, schemas.ApiKeyList, schemas.Health,
                  schemas.ToolList, schemas.ToolCallRequest, schemas.ToolCallResult)

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "required_scope": {"type": "string", "description": "With 403 insufficient_scope"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}

DESCRIPTION = """\
CalMesh: one API over Google, Microsoft, iCloud, CalDAV and iCal calendars.

Authenticate with an API key (`Authorization: Bearer cm_live_…`) or, in the dashboard, the session
cookie; cookie-authenticated POST, PUT, PATCH and DELETE requests send the `calmesh_csrf` cookie's
value in `X-CSRF-Token`. Keys have one of four scopes — capabilities, not a hierarchy:

| scope | may |
|---|---|
| read | list/get calendars, connections, events, availability, conflicts, booking pages, bookings, polls, poll overlap |
| write | read + create/update/delete calendar events |
| book | read + create/cancel bookings, create/vote/decide polls |
| full | everything: connections, calendars and sources, booking pages, events, bookings, polls, webhooks, API keys |

Each operation lists the key scopes that may call it in `x-calmesh-scopes`; a key without one of
them gets 403 `insufficient_scope` with `required_scope`. Public endpoints need no credentials, but
a request that sends a key is held to that key's scope. Errors are `application/problem+json`.
Every response carries `X-Request-Id` and `traceparent`.

Rate limits (per key, per signed-in user, or per client address on public endpoints) hold across
every gateway replica. Each rate-limited answer carries the IETF RateLimit fields
`RateLimit-Limit` (the burst), `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the
bucket is full again); a 429 `rate_limited` adds `Retry-After`. Failed sign-ins (per account and
per address) and unknown API keys (per address) back off with 429 `too_many_failed_attempts`.
A NUL character in any field, path or query parameter is a 400 `invalid_character`; a JSON body
nested deeper than 32 levels a 400 `json_too_deep`.
"""

_RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {"description": "The bucket's size (burst)", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left now", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the bucket is full again", "schema": {"type": "integer"}},
}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _shape(path: str) -> str:
    return _PARAM.sub("{}", path)


def _operation_id(route: Route) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", route.path.replace("{", "by_").replace("}", "")).strip("_")
    return f"{route.method.lower()}_{words or 'root'}"


def _security(route: Route) -> list[dict[str, list[str]]]:
    security: list[dict[str, list[str]]] = []
    if KEY in route.auth:
        security.append({"apiKey": []})
    if SESSION in route.auth:
        security.append({"sessionCookie": []})
    if PUBLIC in route.auth:
        security.append({})
    return security


def base_operation(route: Route) -> dict[str, Any]:
    """The operation as the route table alone describes it."""
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "tags": [route.tag],
        "security": _security(route),
        "x-calmesh-scopes": sorted(route.scopes),
        "x-calmesh-auth": sorted(route.auth),
        "x-calmesh-service": route.service,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.param_names
        ],
        "responses": {},
    }
    if route.public and not (KEY in route.auth or SESSION in route.auth):
        op["description"] = "Public: no credentials."
    elif route.public:
        op["description"] = ("Public: no credentials needed; a request that sends an API key is held to these "
                             f"scopes: {', '.join(sorted(route.scopes)) or 'none'}.")
    elif KEY not in route.auth:
        op["description"] = "Dashboard session only: API keys get 403 insufficient_scope (required_scope: session)."
    responses = op["responses"]
    doc = route.doc
    status = str(doc.get("status", 200))
    if doc.get("response"):
        responses[status] = {"description": "OK", "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{doc['response']}"}}}}
    elif doc.get("html"):
        responses[status] = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
    elif route.service == GATEWAY:
        responses[status] = {"description": "Done" if status == "204" else "OK"}
    else:
        responses["200"] = {"description": f"Answered by the {route.service} service."}
    if doc.get("request"):
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{doc['request']}"}}}}
    if doc.get("list"):
        op["parameters"] += [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
        ]
    for name, values in (doc.get("query") or {}).items():
        op["parameters"].append({"name": name, "in": "query", "required": False,
                                 "schema": {"type": "string", "enum": list(values), "default": values[0]}})
    for status_code, text in (doc.get("problems") or {}).items():
        responses[str(status_code)] = _problem_response(text)
    if route.method in ("POST", "PUT", "PATCH") or doc.get("request"):
        responses["400"] = _problem_response("Malformed JSON, wrong types, missing or unknown fields, a NUL "
                                             "character (invalid_character), JSON nested too deep (json_too_deep)")
    if KEY in route.auth or SESSION in route.auth:
        if not route.public:
            responses["401"] = _problem_response("No, invalid, expired or revoked credentials")
        responses["403"] = _problem_response("insufficient_scope (with required_scope), or csrf_failed")
    if route.rate_limited:
        responses["429"] = _problem_response("rate_limited, with Retry-After")
        responses["429"]["headers"] = {**_RATE_LIMIT_HEADERS, "Retry-After": {
            "description": "Seconds until a request may go again", "schema": {"type": "integer"}}}
        for status, response in responses.items():
            if status.startswith("2"):
                response["headers"] = dict(_RATE_LIMIT_HEADERS)
    if route.service != GATEWAY:
        responses["503"] = _problem_response("The owning service is unavailable")
        responses["504"] = _problem_response("The owning service did not answer in time")
    return op


def _rewrite_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/schemas/"):
                out[k] = "#/components/schemas/" + prefix + v.rsplit("/", 1)[1]
            else:
                out[k] = _rewrite_refs(v, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, prefix) for v in node]
    return node


def merge_service_document(doc: dict[str, Any], service: str, service_doc: dict[str, Any],
                           rows: dict[tuple[str, str], Route]) -> int:
    """Fill `doc`'s operations owned by `service` with the details of its own document; returns how
    many operations were merged. The table's summary, security and scopes always win."""
    prefix = f"{service}."
    merged = 0
    for spath, item in (service_doc.get("paths") or {}).items():
        for method, sop in item.items():
            route = rows.get((method.upper(), _shape(spath)))
            if route is None or route.service != service or not isinstance(sop, dict):
                continue
            target = doc["paths"][route.path][method.lower()]
            sop = _rewrite_refs(sop, prefix)
            if sop.get("description"):
                target["description"] = (target.get("description", "") + "\n\n" + sop["description"]).strip()
            extra_params = [p for p in sop.get("parameters", [])
                            if p.get("in") in ("query", "header") and not str(p.get("name", "")).lower().startswith("x-calmesh-")]
            target["parameters"] = target["parameters"] + extra_params
            if "requestBody" in sop:
                target["requestBody"] = sop["requestBody"]
            responses = sop.get("responses") or {}
            if any(str(status).startswith("2") for status in responses):
                target["responses"].pop("200", None)  # the placeholder: the service says what it answers
            for status, response in responses.items():
                # Error answers are problem+json everywhere: the gateway's descriptions of those win.
                if str(status).startswith("2") or str(status) not in target["responses"]:
                    target["responses"][str(status)] = response
            merged += 1
    for name, schema in ((service_doc.get("components") or {}).get("schemas") or {}).items():
        doc["components"]["schemas"][prefix + name] = _rewrite_refs(schema, prefix)
    return merged


class OpenAPIBuilder:
    def __init__(self, table: RouteTable, public_base_url: str, internal_secret: str,
                 fetch: Callable[[str, dict[str, str], float], Any] | None = None,
                 service_urls: dict[str, str] | None = None) -> None:
        self.table = table
        self.public_base_url = public_base_url
        self.secret = internal_secret
        self.fetch = fetch  # async (url, headers, timeout) -> (status, body)
        self.service_urls = service_urls or {}
        self.service_docs: dict[str, dict[str, Any]] = {}
        self._last_try = -RETRY_SECONDS
        self._cached: bytes | None = None
        self._lock = asyncio.Lock()
        self.rows = {(r.method, _shape(r.path)): r for r in table.routes}

    def services(self) -> list[str]:
        return sorted({r.service for r in self.table.routes if r.service != GATEWAY})

    def build(self) -> dict[str, Any]:
        _, components = msgspec.json.schema_components(_GATEWAY_TYPES, ref_template="#/components/schemas/{name}")
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": "CalMesh API", "version": "1.0.0", "description": DESCRIPTION},
            "servers": [{"url": self.public_base_url}],
            "tags": [{"name": t} for t in sorted({r.tag for r in self.table.routes})],
            "paths": {},
            "components": {
                "schemas": {"Problem": PROBLEM_SCHEMA, **components},
                "securitySchemes": {
                    "apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "cm_live_…",
                               "description": "An API key; its scope decides what it may call."},
                    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "calmesh_session",
                                      "description": "The dashboard session (set by signup and login)."},
                },
            },
            "x-calmesh-services": {},
        }
        for route in self.table.routes:
            doc["paths"].setdefault(route.path, {})[route.method.lower()] = base_operation(route)
        for service in self.services():
            service_doc = self.service_docs.get(service)
            if service_doc is None:
                doc["x-calmesh-services"][service] = "not yet available"
                continue
            count = merge_service_document(doc, service, service_doc, self.rows)
            doc["x-calmesh-services"][service] = f"merged ({count} operations)"
        return doc

    async def _fetch_one(self, service: str) -> None:
        url = self.service_urls.get(service)
        if not url or self.fetch is None:
            return
        try:
            status, body = await self.fetch(f"{url.rstrip('/')}/schema/openapi.json", {SECRET_HEADER: self.secret},
                                            FETCH_TIMEOUT)
            if status == 200:
                self.service_docs[service] = msgspec.json.decode(body)
        except Exception as exc:  # noqa: BLE001 - a service that is not ready is asked again later
            log.debug("openapi_fetch_failed", service=service, error=repr(exc))

    async def document(self) -> bytes:
        """The merged document, re-asking services that were not ready at most every few seconds."""
        async with self._lock:
            missing = [s for s in self.services() if s not in self.service_docs and s in self.service_urls]
            now = time.monotonic()
            if self._cached is None or (missing and now - self._last_try >= RETRY_SECONDS):
                self._last_try = now
                if missing:
                    await asyncio.gather(*(self._fetch_one(s) for s in missing))
                self._cached = msgspec.json.encode(self.build())
            return self._cached


#: The interactive reference is Swagger UI, served by CalMesh itself from the pinned
#: ``swagger-ui-bundle-v2`` package (requirements.lock): no other origin is ever contacted.
DOCS_ASSETS_PATH = "/schema/assets"
#: What /schema and its assets may load: only this origin; no inline script, no framing.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

_DOCS_INIT = """\
// Starts Swagger UI on the document named by #swagger-ui's data-url (a file: CSP allows no inline script).
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: function (request) {
      // Cookie-authenticated writes carry the CSRF token (docs/api-guide.md).
      var found = document.cookie.match(/(?:^|; )calmesh_csrf=([^;]+)/);
      if (found) { request.headers["X-CSRF-Token"] = decodeURIComponent(found[1]); }
      return request;
    }
  });
});
"""

#: name -> (file in the Swagger UI package or None for CalMesh's own, content type)
_ASSETS = {
    "swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "calmesh-docs.js": (None, "text/javascript; charset=utf-8"),
}


@functools.cache
def docs_asset(name: str) -> tuple[bytes, str] | None:
    """(body, content type) of a documentation asset, read once; None for an unknown name."""
    entry = _ASSETS.get(name)
    if entry is None:
        return None
    filename, content_type = entry
    if filename is None:
        return _DOCS_INIT.encode(), content_type
    from swagger_ui_bundle import swagger_ui_path  # imported on first use: nothing at import time

    return (swagger_ui_path / filename).read_bytes(), content_type


def docs_page(spec_url: str = "/schema/openapi.json") -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>CalMesh API reference</title>
  <link rel="stylesheet" href="{DOCS_ASSETS_PATH}/swagger-ui.css">
</head>
<body>
  <noscript>The interactive reference needs JavaScript; the document itself is at
    <a href="{spec_url}">{spec_url}</a>.</noscript>
  <div id="swagger-ui" data-url="{spec_url}"></div>
  <script src="{DOCS_ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="{DOCS_ASSETS_PATH}/calmesh-docs.js"></script>
</body>
</html>
"""


__all__ = ["DOCS_CSP", "OpenAPIBuilder", "base_operation", "docs_asset", "docs_page", "merge_service_document"]
