"""deploy/Dockerfile: one runtime image for every process, without the test packages.

No Docker engine runs here, so the test reads the Dockerfile the way the builder would: its stages,
the file it installs the pinned packages from, the user it runs as, and what that file holds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

#: Development and test packages that must never reach the image (the dev group and their kin).
TEST_PACKAGES = {
    "pytest", "pytest-asyncio", "pytest-timeout", "pytest-xdist", "hypothesis", "schemathesis",
    "testcontainers", "playwright", "radicale", "standardwebhooks", "kubernetes-validate",
    "axe-playwright-python", "py-spy",
}


def stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into build stages."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    result: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def locked_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def installed_requirements_file() -> Path:
    """The requirements file the Dockerfile copies and installs with hashes required."""
    text = DOCKERFILE.read_text()
    build = stages(text)[0]
    install = next(i for i in build if i.startswith("RUN") and "--require-hashes" in i)
    copied = [i.split()[1] for i in build if i.startswith("COPY ") and "--from" not in i]
    lock = next(c for c in copied if c.endswith(".lock"))
    assert lock in install, f"the hashed install reads {lock}"
    return ROOT / lock


def test_the_image_installs_a_runtime_only_lock_without_test_packages() -> None:
    lock = installed_requirements_file()
    assert lock.name == "requirements.runtime.lock"
    names = locked_names(lock)
    assert not names & TEST_PACKAGES, f"test packages in the image: {sorted(names & TEST_PACKAGES)}"
    dev_group = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    # pyyaml is in the dev group for the tests and also a dependency of litestar at run time.
    dev_names = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in dev_group} - {"pyyaml"}
    assert not names & dev_names, f"dev-group packages in the image: {sorted(names & dev_names)}"
    # What the services import at run time is there, pinned with hashes.
    for needed in ("litestar", "nats-py", "asyncpg", "uvicorn", "opentelemetry-exporter-otlp-proto-http", "prometheus-client"):
        assert needed in names, needed
    text = lock.read_text()
    assert text.count("--hash=sha256:") >= len(names)
    assert "://" not in text, "no index or registry address in the lock"


def test_the_runtime_lock_is_the_dev_lock_less_the_dev_group() -> None:
    """Both locks come from one resolution (`make lock`): every runtime pin is the dev lock's pin."""
    pins = lambda p: dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", p.read_text(), re.M))  # noqa: E731
    runtime, dev = pins(ROOT / "requirements.runtime.lock"), pins(ROOT / "requirements.lock")
    assert runtime and all(dev.get(name) == version for name, version in runtime.items())
    assert set(dev) - set(runtime) >= {"pytest", "radicale", "playwright"}
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"export [^\n]*--no-dev[^\n]*-o requirements\.runtime\.lock", makefile)


def test_the_image_is_multi_stage_with_a_numeric_non_root_user() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    assert len(all_stages) >= 2, "a build stage and a runtime stage"
    runtime = all_stages[-1]
    assert re.match(r"FROM python:3\.11-slim( AS \w+)?$", runtime[0])
    # The runtime stage takes the built environment, not the sources or the build tools.
    assert any(i.startswith("COPY --from=build /opt/calmesh") for i in runtime)
    assert not any(re.match(r"COPY (?!--from)", i) for i in runtime)
    users = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert users, "the image sets its user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric and not root, so runAsNonRoot can be checked"


def test_the_image_needs_no_writable_root_filesystem() -> None:
    runtime = stages(DOCKERFILE.read_text())[-1]
    env = " ".join(i for i in runtime if i.startswith("ENV "))
    volume = next(i for i in runtime if i.startswith("VOLUME "))
    # Data and temporary files live on volumes; no byte-code is written next to the code.
    assert "CALMESH_DATA_DIR=/var/lib/calmesh" in env and "TMPDIR=/tmp" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert '"/var/lib/calmesh"' in volume and '"/tmp"' in volume
    build = stages(DOCKERFILE.read_text())[0]
    assert any("compileall" in i for i in build), "byte-code compiled at build time"


def test_one_image_runs_every_process() -> None:
    """Each process of the platform is a console script of the workspace the image installs."""
    lock = (ROOT / "requirements.runtime.lock").read_text()
    members = re.findall(r"^-e \./(\S+)$", lock, re.M)
    scripts: set[str] = set()
    for member in members:
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        scripts |= set(project.get("scripts", {}))
    expected = {"calmesh-migrate", "calmesh-gateway", "calmesh-connections", "calmesh-sync", "calmesh-availability",
                "calmesh-booking", "calmesh-billing", "calmesh-webhooks"}
    assert expected <= scripts
    text = DOCKERFILE.read_text()
    for top in {m.split("/")[0] for m in members}:
        assert re.search(rf"^COPY {top} {top}$", text, re.M), f"{top}/ is copied into the build stage"


def test_the_image_carries_no_test_support() -> None:
    """Test support (the `calmesh_testing` package of tests/support/: fakes, the Radicale harness,
    in-process servers) is installed for development only: the runtime lock does not name it, the
    build context leaves tests/ out, and no package the image installs holds a testing module or
    imports the test support."""
    runtime = (ROOT / "requirements.runtime.lock").read_text()
    members = re.findall(r"^-e \./(\S+)$", runtime, re.M)
    assert members and not [m for m in members if m.split("/")[0] == "tests"], members
    assert "calmesh-testing" not in locked_names(ROOT / "requirements.runtime.lock")
    # The development environment installs it editable, the way it installs the services.
    assert re.search(r"^-e \./tests/support$", (ROOT / "requirements.lock").read_text(), re.M)
    ignored = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "tests" in ignored and "**/tests" in ignored, "tests/ (and services/*/tests) stay out of the build context"
    found = []
    for member in members:
        config = tomllib.loads((ROOT / member / "pyproject.toml").read_text())
        assert not [d for d in config["project"].get("dependencies", []) if d.startswith("calmesh-testing")], member
        for package in config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
            for path in (ROOT / member / package).rglob("*"):
                if path.stem in {"testing", "conftest", "fakes"} or path.name.startswith("test_"):
                    found.append(str(path.relative_to(ROOT)))
                elif path.suffix == ".py" and re.search(r"^\s*(from|import) calmesh_testing\b", path.read_text(), re.M):
                    found.append(f"{path.relative_to(ROOT)} imports calmesh_testing")
    assert not found, f"test support in the image: {found}"
