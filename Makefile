# The two commands of the README: `make demo` and `make test`. Each creates what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OIDC := tests/support/oidc

.PHONY: demo demo-vault test test-fast test-long lint bench clean

# -qq: errors still show; pip's own warnings (an unreachable index named in a global pip config,
# for one) do not bury them
PIP_QUIET := -qq --disable-pip-version-check

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/pip install $(PIP_QUIET) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
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

# the whole suite: lint, then every test (the load, soak and crash tests take a few minutes more)
test: lint $(OIDC)/node_modules/.installed
	$(BIN)/pytest -q

# for a quick local run: the suite without the tests marked slow
test-fast: lint $(OIDC)/node_modules/.installed
	$(BIN)/pytest -q -m "not slow"

# only the load, soak and crash tests
test-long: $(STAMP)
	$(BIN)/pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
