"""docker-compose.yml and deploy/Dockerfile: a production-like run of the platform.

No Docker engine runs here, so these tests read the files: every container runs a console script
that the workspace really installs, every service can be health-checked, sync can be scaled, the
one image installs the locked dependencies, and each service's environment gives valid settings.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from calmesh_common.devstack.migrate import SERVICES
from calmesh_common.settings import SERVICE_NAMES, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: The platform's processes: the gateway and the services behind it (from the migrate command).
CALMESH_SERVICES = [name for name, _, _ in SERVICES]


def workspace_members() -> list[Path]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members: list[Path] = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        members += sorted(p for p in ROOT.glob(pattern) if (p / "pyproject.toml").exists())
    return members


def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = {}
    for member in workspace_members():
        project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
        scripts.update(project.get("scripts", {}))
    return scripts


def services() -> dict[str, dict[str, Any]]:
    return COMPOSE["services"]


def built_from_our_image(service: dict[str, Any]) -> bool:
    return "build" in service


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, against `env`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


OPERATOR_ENV = {
    "POSTGRES_PASSWORD": "pg-password",
    "CALMESH_INTERNAL_SECRET": "internal",
    "CALMESH_SESSION_SECRET": "session",
    "CALMESH_ENCRYPTION_KEYS": "k1",
    "NATS_TOKEN": "nats-token",
}


def service_env(name: str) -> dict[str, str]:
    env = services()[name].get("environment", {})
    assert isinstance(env, dict), f"{name}: environment as a mapping"
    return {k: interpolate(str(v), OPERATOR_ENV) for k, v in env.items()}


def test_every_calmesh_service_has_a_container_and_they_share_one_image() -> None:
    ours = {name: s for name, s in services().items() if built_from_our_image(s)}
    assert set(CALMESH_SERVICES) | {"migrate"} == set(ours)
    assert {s["build"]["dockerfile"] for s in ours.values()} == {"deploy/Dockerfile"}
    assert {s["build"]["context"] for s in ours.values()} == {"."}
    assert len({s["image"] for s in ours.values()}) == 1


@pytest.mark.parametrize("name", [*CALMESH_SERVICES, "migrate"])
def test_each_container_runs_an_installed_console_script(name: str) -> None:
    command = services()[name]["command"]
    assert isinstance(command, list) and command, f"{name}: command as a list"
    expected = "calmesh-migrate" if name == "migrate" else f"calmesh-{name}"
    assert command[0] == expected
    scripts = console_scripts()
    assert command[0] in scripts, f"{command[0]} is no [project.scripts] entry of the workspace"
    module_name, _, function_name = scripts[command[0]].partition(":")
    entry = getattr(importlib.import_module(module_name), function_name)
    assert callable(entry)


@pytest.mark.parametrize("name", CALMESH_SERVICES)
def test_each_service_is_health_checked_on_its_own_port(name: str) -> None:
    check = services()[name]["healthcheck"]
    test = " ".join(check["test"])
    port = service_env(name)["CALMESH_PORT"]
    path = "/api/health" if name == "gateway" else "/health"
    assert f"http://127.0.0.1:{port}{path}'" in test
    assert check["test"][0] in ("CMD", "CMD-SHELL") and "python" in test  # the image has no curl
    assert {"interval", "timeout", "retries"} <= set(check)


@pytest.mark.parametrize("name", CALMESH_SERVICES)
def test_each_services_environment_gives_valid_settings(name: str) -> None:
    env = service_env(name)
    assert env["CALMESH_SERVICE"] == name
    assert env["CALMESH_HOST"] == "0.0.0.0"
    assert env["DATABASE_URL"].startswith("postgresql://calmesh:pg-password@postgres:5432/")
    assert env["NATS_URL"] == "nats://nats-token@nats:4222"  # the token NATS's --auth asks for
    settings = Settings.from_env(env)
    settings.require("database_url", "internal_secret", "session_secret", "encryption_keys")
    assert settings.internal_secret == OPERATOR_ENV["CALMESH_INTERNAL_SECRET"]


def test_secrets_have_no_default_and_fail_fast_when_unset() -> None:
    raw = services()["gateway"]["environment"]
    for variable in ("CALMESH_INTERNAL_SECRET", "CALMESH_SESSION_SECRET", "CALMESH_ENCRYPTION_KEYS"):
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]*\}}", raw[variable]), variable
        with pytest.raises(KeyError, match=variable):
            interpolate(raw[variable], {})
    assert ":?" in services()["postgres"]["environment"]["POSTGRES_PASSWORD"]
    with pytest.raises(KeyError, match="NATS_TOKEN"):
        interpolate(raw["NATS_URL"], {})


def test_nats_refuses_clients_without_the_token_every_service_is_given() -> None:
    """NATS carries visitors' personal data (booking events): it runs with token authentication,
    the token has no default, and every CalMesh container presents it in NATS_URL."""
    command = services()["nats"]["command"]
    assert "--auth" in command
    assert re.fullmatch(r"\$\{NATS_TOKEN:\?[^}]*\}", command[command.index("--auth") + 1])
    assert interpolate(command[command.index("--auth") + 1], OPERATOR_ENV) == "nats-token"
    for name in [*CALMESH_SERVICES, "migrate"]:
        assert service_env(name)["NATS_URL"] == "nats://nats-token@nats:4222", name


def test_the_gateway_is_the_only_public_entry_and_reaches_every_service() -> None:
    published = {name for name, s in services().items() if s.get("ports")}
    assert published == {"gateway"}
    assert services()["gateway"]["ports"] == ["${CALMESH_HTTP_PORT:-8080}:8080"]
    env = service_env("gateway")
    assert env["CALMESH_PORT"] == "8080"
    urls = Settings.from_env(env).service_urls
    for name in SERVICE_NAMES:
        port = service_env(name)["CALMESH_PORT"]
        assert urls[name] == f"http://{name}:{port}", name


def test_sync_can_be_scaled() -> None:
    sync = services()["sync"]
    assert "container_name" not in sync and "ports" not in sync
    assert "deploy" not in sync or sync["deploy"].get("replicas", 1) >= 1
    assert not [name for name, s in services().items() if "container_name" in s]  # nor anything else pinned


def test_services_start_after_migrations_on_healthy_infrastructure() -> None:
    migrate = services()["migrate"]
    assert migrate["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "nats": {"condition": "service_healthy"},
    }
    assert migrate.get("restart") == "no"
    for name in CALMESH_SERVICES:
        depends = services()[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        # Directly or through the services it waits for, each one waits for healthy servers.
        for server in ("postgres", "nats"):
            chain = [depends] + [services()[d]["depends_on"] for d in depends if d in CALMESH_SERVICES]
            assert any(c.get(server) == {"condition": "service_healthy"} for c in chain), (name, server)
    assert all(services()[s].get("healthcheck") for s in ("postgres", "nats"))


def test_postgres_and_nats_keep_their_data_on_volumes() -> None:
    postgres, nats = services()["postgres"], services()["nats"]
    assert postgres["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert nats["image"].startswith("nats:2.10")
    command = nats["command"]
    assert "-js" in command and command[command.index("-sd") + 1] == "/data"
    assert any(v.endswith(":/data") for v in nats["volumes"])
    named = {v.split(":")[0] for s in services().values() for v in s.get("volumes", [])}
    assert named <= set(COMPOSE["volumes"])


def test_compose_builds_the_runtime_image() -> None:
    """Compose runs the image deploy/Dockerfile builds (tests/test_deploy_image.py checks that
    image: the runtime lock, a numeric non-root user, no writes outside its volumes)."""
    text = DOCKERFILE.read_text()
    final_stage = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER 10001(:10001)?\s*$", final_stage, re.M)
    for name in CALMESH_SERVICES:
        assert services()[name]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}


@pytest.mark.parametrize("name", [*CALMESH_SERVICES, "migrate"])
def test_containers_run_on_a_read_only_root_filesystem(name: str) -> None:
    service = services()[name]
    assert service.get("read_only") is True, name
    assert "/tmp" in service.get("tmpfs", []), name
