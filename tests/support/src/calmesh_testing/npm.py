"""npm for the tests: the MCP Inspector CLI and axe-core (from tests/npm/package.json) and `@calmesh/mcp-server`
packed with `npm pack` and installed from its tarball, both installed by the test itself into a
cache directory keyed by what was installed, so a second run reuses them (the suite stays fast).

The cache is `$CALMESH_TEST_NPM_CACHE`, else `<tmp>/calmesh-test-npm`; npm's own download cache is
kept there too. Nothing here is committed; no lock file is written into the repository.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[4]  # tests/support/src/calmesh_testing/npm.py
TEST_TOOLS = REPO / "tests" / "npm" / "package.json"
NODE_PACKAGE = REPO / "clients" / "mcp-node"


def cache_root() -> Path:
    root = Path(os.environ.get("CALMESH_TEST_NPM_CACHE") or Path(tempfile.gettempdir()) / "calmesh-test-npm")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _npm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
    env.update(npm_config_cache=str(cache_root() / "npm-cache"), npm_config_audit="false", npm_config_fund="false",
               npm_config_update_notifier="false", npm_config_package_lock="false")
    return env


def _run(args: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(args, cwd=cwd, env=_npm_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


@contextmanager
def _locked(name: str) -> Iterator[None]:
    with open(cache_root() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _install(name: str, key: str, package_json: dict[str, object], extra: list[str] | None = None) -> Path:
    """A directory with `npm install` done for package_json (and `extra` specs), reused while `key` holds."""
    target = cache_root() / f"{name}-{key}"
    with _locked(name):
        if (target / ".installed").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cache_root()))
        (work / "package.json").write_text(json.dumps(package_json, indent=2))
        _run(["npm", "install", "--no-save" if extra else "--no-package-lock", "--prefer-offline", *(extra or [])], work)
        (work / ".installed").write_text("ok")
        work.rename(target)
        return target


def test_tools() -> Path:
    """tests/npm/package.json installed, once for each version of that file."""
    spec = json.loads(TEST_TOOLS.read_text())
    spec.pop("description", None)
    return _install("test-tools", _digest(TEST_TOOLS.read_bytes()), spec)


def inspector() -> list[str]:
    """The command that runs the MCP Inspector CLI: `[node, cli, "--cli"]`."""
    return [str(test_tools() / "node_modules" / ".bin" / "mcp-inspector"), "--cli"]


def axe_core() -> str:
    """The source of axe-core (its minified browser build), to inject into a page under test."""
    return (test_tools() / "node_modules" / "axe-core" / "axe.min.js").read_text()


def packed_server() -> Path:
    """`npm pack` of clients/mcp-node installed from the tarball into a prefix of its own; returns
    the directory where `npx @calmesh/mcp-server` runs that installed copy."""
    files = sorted(p for p in NODE_PACKAGE.rglob("*") if p.is_file() and "node_modules" not in p.parts)
    key = _digest(*(p.relative_to(NODE_PACKAGE).as_posix().encode() + b"\0" + p.read_bytes() for p in files))
    packs = cache_root() / "packs"
    packs.mkdir(exist_ok=True)
    with _locked("pack"):
        tarball_name = _run(["npm", "pack", "--pack-destination", str(packs)], NODE_PACKAGE).strip().splitlines()[-1]
    tarball = packs / tarball_name
    return _install("mcp-server", key, {"name": "calmesh-mcp-server-test-prefix", "private": True}, [str(tarball)])
