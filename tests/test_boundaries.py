"""The house rule between packages: services meet only through events and HTTP.

No service imports another service's package (``calmesh_<service>``), no library under ``libs/`` and
no client under ``clients/`` imports a service package, and no ``pyproject.toml`` of a service or a
library names a service as a dependency. What two services share lives in a library
(``calmesh_common``, ``calmesh_providers``, ``calmesh_tools``). Every import is read with ``ast``,
including the ones inside functions, so a lazy import cannot hide a crossing.
"""

from __future__ import annotations

import ast
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
