# CalMesh: `make up` runs the whole platform; `make test` runs the whole suite.
# Needs only Python 3.11+, make and git. uv is installed into .tools/ when it is not on PATH.

PYTHON ?= python3
UV_VERSION := 0.13.9
# Resolve as of this date so a re-lock changes only what a pyproject change asks for.
LOCK_EXCLUDE_NEWER ?= 2026-11-26T00:00:00Z
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.calmesh-installed

.PHONY: up demo test install lock bench clean-data help chromium

help:
	@echo "make up      - run the platform (embedded PostgreSQL and NATS) on 127.0.0.1:$${CALMESH_HTTP_PORT:-8080}"
	@echo "make demo    - the same, plus a demo user, two sample calendars on loopback, a unified calendar and a booking page"
	@echo "make test    - run the whole test suite"
	@echo "make lock    - re-pin requirements.lock (dev) and requirements.runtime.lock (the image) after changing a pyproject.toml"
	@echo "make lint    - ruff check and mypy (make test runs them first)"
	@echo "make bench   - run the benchmarks in bench/"

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): requirements.lock $(wildcard */*/pyproject.toml) | $(UV)
	test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/calmesh-up

# `make up` with a demo user, two sample calendars served on loopback (an iCal feed and Radicale),
# a unified calendar and a booking page on them; prints the sign-in, an API key and three curl lines.
demo: install
	$(VENV)/bin/calmesh-up --demo

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work here).
# Installed only when it is missing; CI runs as root on Debian.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

chromium: $(CHROMIUM)

# mypy checks what [tool.mypy] in pyproject.toml names (every service, library and the Python client).
test: install $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Every benchmark runs, even after one misses its target; a summary table (target, measured, met or
# missed) comes at the end, and only then does a miss make `make bench` fail.
bench: install
	@summary=$$(mktemp); failed=""; for b in bench/*_bench.py; do echo "== $$b"; \
	CALMESH_BENCH_SUMMARY=$$summary $(PY) $$b || failed="$$failed $$b"; done; \
	$(PY) bench/benchkit.py summary $$summary $$failed; rc=$$?; rm -f $$summary; exit $$rc

lock: | $(UV)
	$(UV) lock --exclude-newer $(LOCK_EXCLUDE_NEWER)
	$(UV) export --quiet --format requirements-txt --all-groups --no-header -o requirements.lock
	$(UV) export --quiet --format requirements-txt --no-dev --no-header -o requirements.runtime.lock

clean-data:
	rm -rf .calmesh
