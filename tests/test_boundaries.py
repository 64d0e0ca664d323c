"""The house rules between packages: services meet only through events and HTTP, and a domain is pure.

No service imports another service's package (``calmesh_<service>``), no library under ``libs/`` and
no client under ``clients/`` imports a service package, and no ``pyproject.toml`` of a service or a
library names a service as a dependency. What two services share lives in a library
(``calmesh_common``, ``calmesh_providers``, ``calmesh_tools``). Every import is read with ``ast``,
including the ones inside functions, so a lazy import cannot hide a crossing.

A service's ``domain`` module knows nothing of the web, the database or the bus: importing it in a
fresh interpreter loads none of litestar, asyncpg, httpx or nats, directly or through an import.
The same holds for the kits of ``calmesh_common`` that domains use (problems, time formats,
Retry-After, cursors).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"node_modules", ".venv", "__pycache__", "tests"}


def service_packages(root: Path) -> dict[str, str]:
    """Each service's top-level package, mapped to the service directory that owns it."""
    owners = {}
    for service in sorted(p for p in (root / "services").iterdir() if (p / "src").is_dir()):
        for package in (service / "src").iterdir():
            if package.is_dir() and (package / "__init__.py").exists():
                owners[package.name] = service.name
    return owners


def _python_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(base).parts))


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def crossings(root: Path) -> list[str]:
    """Every import that crosses a boundary, as ``file:line: what``, relative to `root`."""
    owners = service_packages(root)
    # (directory to walk, the service that owns it or None for a library or client, what it is)
    places: list[tuple[Path, str | None, str]] = []
    for service in sorted((root / "services").glob("*/src")):
        places.append((service, service.parent.name, f"service {service.parent.name}"))
    for lib in sorted((root / "libs").glob("*/src")):
        places.append((lib, None, f"library libs/{lib.parent.name}"))
    for client in sorted(p for p in (root / "clients").iterdir() if p.is_dir()):
        places.append((client, None, f"client clients/{client.name}"))
    problems = []
    for base, owner, what in places:
        for path in _python_files(base):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, module in _imported_modules(tree):
                top = module.split(".")[0]
                target = owners.get(top)
                if target is not None and target != owner:
                    problems.append(f"{path.relative_to(root)}:{line}: {what} imports {module} (service {target})")
    return problems


def dependency_crossings(root: Path) -> list[str]:
    """Every service or library pyproject.toml that names a service as a dependency."""
    services = {f"calmesh-{p.name}": p.name for p in (root / "services").iterdir() if (p / "pyproject.toml").exists()}
    problems = []
    for pyproject in sorted([*root.glob("services/*/pyproject.toml"), *root.glob("libs/*/pyproject.toml")]):
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        own = project.get("name")
        for requirement in project.get("dependencies", []):
            name = requirement.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            if name in services and name != own:
                problems.append(f"{pyproject.relative_to(root)}: depends on the service {name}")
    return problems


def test_no_service_library_or_client_imports_another_service() -> None:
    problems = crossings(ROOT)
    assert not problems, "imports that cross a service boundary:\n" + "\n".join(problems)


def test_no_pyproject_names_another_service() -> None:
    problems = dependency_crossings(ROOT)
    assert not problems, "\n".join(problems)


def test_the_walk_names_file_and_line_of_a_crossing(tmp_path: Path) -> None:
    """The walk itself: a lazy import of another service inside a function, a library importing a
    service and a client importing one are each reported with file and line; a service importing
    its own package or a library is not."""
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    write("services/alpha/src/calmesh_alpha/__init__.py", "")
    write("services/alpha/src/calmesh_alpha/app.py",
          "from calmesh_alpha import x\nfrom calmesh_lib import y\n\n\ndef start():\n    from calmesh_beta.engine import z\n")
    write("services/beta/src/calmesh_beta/__init__.py", "import calmesh_alpha.app\n")
    write("libs/lib/src/calmesh_lib/__init__.py", "from . import y\nimport json\nfrom calmesh_beta import engine\n")
    write("clients/cli/src/calmesh_cli/main.py", "\n\nimport calmesh_alpha\n")
    write("services/alpha/pyproject.toml", '[project]\nname = "calmesh-alpha"\ndependencies = ["calmesh-lib", "calmesh-beta>=0.1"]\n')
    write("services/beta/pyproject.toml", '[project]\nname = "calmesh-beta"\ndependencies = ["calmesh-lib"]\n')

    assert sorted(crossings(tmp_path)) == [
        "clients/cli/src/calmesh_cli/main.py:3: client clients/cli imports calmesh_alpha (service alpha)",
        "libs/lib/src/calmesh_lib/__init__.py:3: library libs/lib imports calmesh_beta (service beta)",
        "services/alpha/src/calmesh_alpha/app.py:6: service alpha imports calmesh_beta.engine (service beta)",
        "services/beta/src/calmesh_beta/__init__.py:1: service beta imports calmesh_alpha.app (service alpha)",
    ]
    assert dependency_crossings(tmp_path) == ["services/alpha/pyproject.toml: depends on the service calmesh-beta"]


#: What a pure module must not load, directly or through what it imports.
IMPURE = ("litestar", "asyncpg", "httpx", "nats")
#: The calmesh_common modules a domain may import.
PURE_KITS = ("calmesh_common.problems", "calmesh_common.timefmt", "calmesh_common.retryafter", "calmesh_common.cursors",
              "calmesh_common.addresses")


def domain_modules(root: Path) -> list[str]:
    """Each service's ``domain`` module (a ``domain.py`` or a ``domain/`` package), by import name."""
    found = []
    for src in sorted(root.glob("services/*/src")):
        for package in sorted(p for p in src.iterdir() if (p / "__init__.py").exists()):
            if (package / "domain.py").exists() or (package / "domain" / "__init__.py").exists():
                found.append(f"{package.name}.domain")
    return found


def impure_imports(module: str, extra_path: Path | None = None) -> list[str]:
    """The packages of `IMPURE` that importing `module` in a fresh interpreter loads."""
    probe = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(n for n in {IMPURE!r} if n in sys.modules)))\n"
    )
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr}"
    return json.loads(done.stdout.splitlines()[-1])


def test_every_domain_module_and_the_kits_it_may_use_are_pure() -> None:
    modules = domain_modules(ROOT)
    assert {"calmesh_availability.domain", "calmesh_billing.domain", "calmesh_booking.domain", "calmesh_connections.domain"} <= set(modules)
    loaded = {m: impure_imports(m) for m in (*modules, *PURE_KITS)}
    assert all(not v for v in loaded.values()), "modules that are not pure: " + ", ".join(
        f"{m} loads {', '.join(v)}" for m, v in loaded.items() if v)


def test_the_purity_probe_sees_an_import_of_the_web_layer(tmp_path: Path) -> None:
    """A domain that raises `Problem` is pure; one that reaches for the litestar handler is not."""
    package = tmp_path / "calmesh_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "domain.py").write_text("from calmesh_common.problems import Problem\n")
    (package / "web.py").write_text("from calmesh_common.problem_handler import problem_handler\n")
    assert impure_imports("calmesh_probe.domain", tmp_path) == []
    assert "litestar" in impure_imports("calmesh_probe.web", tmp_path)
