"""The merged OpenAPI document: every row of the route table, with the services' details."""

from __future__ import annotations

from typing import Any

import msgspec

from calmesh_gateway.openapi import OpenAPIBuilder
from calmesh_gateway.routes import ROUTES, RouteTable

SERVICE_DOC = {
    "openapi": "3.1.0",
    "paths": {
        "/api/v1/calendars/{calendar_slug}/availability": {"get": {
            "summary": "service summary", "description": "Free/busy from the projection.",
            "parameters": [{"name": "date", "in": "query", "schema": {"type": "string"}},
                           {"name": "x-calmesh-user-id", "in": "header", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Availability"}}}}},
        }},
        "/internal/rebuild": {"post": {"summary": "internal only"}},
    },
    "components": {"schemas": {"Availability": {"type": "object", "properties": {
        "busy": {"type": "array", "items": {"$ref": "#/components/schemas/Interval"}}}},
        "Interval": {"type": "object"}}},
}


async def test_every_row_is_documented_and_service_details_are_merged() -> None:
    calls: list[str] = []

    async def fetch(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
        calls.append(url)
        assert headers["x-calmesh-internal-secret"] == "s3cret"
        if url.startswith("http://availability"):
            return 200, msgspec.json.encode(SERVICE_DOC)
        raise ConnectionError("not up yet")

    builder = OpenAPIBuilder(RouteTable(), "https://calmesh.example", "s3cret", fetch=fetch,
                             service_urls={"availability": "http://availability", "booking": "http://booking"})
    doc: dict[str, Any] = msgspec.json.decode(await builder.document())
    for route in ROUTES:
        assert route.method.lower() in doc["paths"][route.path]
    op = doc["paths"]["/api/v1/calendars/{slug}/availability"]["get"]
    assert op["summary"] == "Query free/busy availability for a unified calendar"  # the table wins
    assert "Free/busy from the projection." in op["description"]
    assert [p["name"] for p in op["parameters"]] == ["slug", "date"]  # no internal headers
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/availability.Availability"
    merged = doc["components"]["schemas"]["availability.Availability"]
    assert merged["properties"]["busy"]["items"]["$ref"] == "#/components/schemas/availability.Interval"
    assert "/internal/rebuild" not in doc["paths"]
    assert "503" in op["responses"] and "401" in op["responses"]
    # Operations no service has described yet keep the table's placeholder answer.
    assert "200" in doc["paths"]["/api/v1/booking-pages"]["post"]["responses"]
    assert doc["x-calmesh-services"]["booking"] == "not yet available"
    # A service that was not ready is asked again later, not on every request.
    n = len(calls)
    await builder.document()
    assert len(calls) == n
    builder._last_try -= 10
    await builder.document()
    assert len(calls) == n + 1  # only booking is asked again


def test_the_documentation_page_loads_only_calmesh_assets_and_they_are_served() -> None:
    import re

    from calmesh_gateway.openapi import DOCS_CSP, docs_asset, docs_page

    page = docs_page()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert references and all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
    assert "<script>" not in page  # no inline script: the CSP forbids it
    assert "script-src 'self'" in DOCS_CSP and "frame-ancestors 'none'" in DOCS_CSP
    assert "http" not in DOCS_CSP
    for ref in references:
        if ref.startswith("/schema/assets/"):
            asset = docs_asset(ref.rsplit("/", 1)[1])
            assert asset is not None and len(asset[0]) > 100
    assert docs_asset("../../etc/passwd") is None and docs_asset("index.html") is None
