"""The sync service: wiring and lifespan."""

from __future__ import annotations

from litestar import Litestar

from calmesh_common.service import create_service_app, run_service
from calmesh_common.settings import Settings

NAME = "sync"
SCHEMA = "sync"


def create_app(settings: Settings) -> Litestar:
    return create_service_app(settings, name=NAME, schema=SCHEMA)


def main() -> None:
    run_service(NAME, create_app)


if __name__ == "__main__":
    main()
