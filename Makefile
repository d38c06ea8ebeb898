# The two commands of the README: `make demo` and `make test`. Each creates what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OIDC := tests/support/oidc

.PHONY: demo demo-vault test test-fast test-long test-latest lint lock bench clean

# -qq: errors still show; pip's own warnings (an unreachable index named in a global pip config,
# for one) do not bury them
PIP_QUIET := -qq --disable-pip-version-check

# Every environment installs from a lock file with hashes (requirements/*.lock, made by `make lock`):
# a fresh machine gets exactly what CI got. guard itself goes in editable, without resolving again.
$(STAMP): requirements/dev.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --require-hashes -r requirements/dev.lock
	$(BIN)/pip install $(PIP_QUIET) --no-deps -e .
	touch $(STAMP) $(DEMO_STAMP)

# the demo needs guard, the MCP SDK and the tool SDK's FastAPI (not the test and lint tools): about
# 175 MB, with pip's progress
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): requirements/demo.lock pyproject.toml
	@echo "make demo: installing guard and the demo's dependencies into $(VENV) (requirements/demo.lock)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check --progress-bar on --require-hashes -r requirements/demo.lock
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $(DEMO_STAMP)

# refresh the lock files from pyproject.toml's ranges (the package's own ranges stay ranges)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --upgrade -q -o requirements/dev.lock
	$(BIN)/uv pip compile pyproject.toml --extra demo --generate-hashes --python-version 3.11 \
	  --upgrade -q -o requirements/demo.lock
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --upgrade -q -o requirements/runtime.lock  # the image's (Dockerfile)

demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.demo

# guard brokering credentials from a real OpenBao (and PostgreSQL, when installed): a rotation, a revocation
demo-vault: $(STAMP)
	$(BIN)/python -m examples.demo_vault

lint: $(STAMP)
	$(BIN)/ruff check guard tests examples benchmarks
	$(BIN)/mypy guard tests examples benchmarks

# the test-local npm prefix of the real OAuth/OpenID provider the tests start (skipped without node/npm)
$(OIDC)/node_modules/.installed: $(OIDC)/package.json $(OIDC)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(OIDC) --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the tests that need oidc-provider will skip (CI=true fails them)"; fi

# the whole suite: lint, then every test, spread over WORKERS pytest-xdist workers. Most of an
# end-to-end test's time is spent waiting on the real processes it starts, so more workers than
# the 2 cores CI has keep both busy (4 finished sooner than 3). --dist loadgroup hands out single
# tests, except the modules tests/conftest.py keeps on one worker; --no-loadscope-reorder keeps
# its longest-first order.
WORKERS ?= 4
XDIST := -n $(WORKERS) --dist loadgroup --no-loadscope-reorder
test: lint $(OIDC)/node_modules/.installed
	$(BIN)/pytest -q $(XDIST)

# the fast tier, for every change: lint, then the unit tests, the in-process app tests (build_app on
# real sockets) and the store contract on the memory store, without the tests marked slow. No guard
# process, no Redis; the e2e tier (real processes and components) runs in `make test`. On the same
# workers as `make test`.
FAST := tests/unit tests/app tests/contract
test-fast: lint
	$(BIN)/pytest -q $(XDIST) -m "not slow and not redis" $(FAST)

# only the tests marked slow: load, soak and crash, and the in-process ones that wait out a timeout
test-long: $(STAMP)
	$(BIN)/pytest -q -m slow

# the suite against the newest releases pyproject.toml admits, resolved fresh in a venv of its own:
# finds upstream breakage on purpose (make test stays on the lock)
LATEST := .venv-latest
test-latest: $(OIDC)/node_modules/.installed
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install $(PIP_QUIET) -e '.[dev]'
	$(LATEST)/bin/ruff check guard tests examples benchmarks
	$(LATEST)/bin/mypy guard tests examples benchmarks
	$(LATEST)/bin/pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(LATEST) var .mypy_cache .ruff_cache .pytest_cache
