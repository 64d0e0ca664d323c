"""The gateway: wiring and lifespan (placeholder until the gateway features land)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, get

from calmesh_common.service import create_service_app, run_service
from calmesh_common.settings import Settings

NAME = "gateway"


@get("/api/health")
async def api_health(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    return Response({"status": "ok"})


def create_app(settings: Settings) -> Litestar:
    return create_service_app(settings, name=NAME, schema="gateway", route_handlers=[api_health], open_paths=("/health", "/api/health"))


def main() -> None:
    run_service(NAME, create_app)
