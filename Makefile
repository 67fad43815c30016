# Set-up and checks. `make test` is the one test command (README, CI).
PYTHON ?= python3
# torch is pinned to the CPU wheel: a looser requirement pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-dev simulate lint typecheck docs test test-slow test-all

install:
	$(PYTHON) -m pip install -q "$(TORCH)" -e .

install-dev:
	$(PYTHON) -m pip install -q "$(TORCH)" -e ".[dev]"
	# Headless Chromium renders the privacy report in tests (CI runs as root on Debian).
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)
	# nginx fronts the SuperLink in `fedpriv server start` and its tests (Debian's package; the
	# binary is in /usr/sbin, which a user's PATH may lack).
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update && apt-get install -y nginx)

simulate: install
	fedpriv simulate

lint:
	$(PYTHON) -m ruff check fedpriv clients server tests benchmarks
	$(PYTHON) -m ruff format --check fedpriv clients server tests benchmarks

typecheck:
	$(PYTHON) -m mypy

# The documentation site (docs/ and the API reference from the docstrings) into build/docs;
# --strict fails on any warning, as tests/integration/test_docs_build.py does.
docs:
	$(PYTHON) -m mkdocs build --strict

# The default suite: lint, types, and every test not marked slow (about 15 minutes on 2 cores).
test: install-dev lint typecheck
	$(PYTHON) -m pytest -m "not slow"

# The slow end-to-end tests (CI runs them after `make test`).
test-slow: install-dev
	$(PYTHON) -m pytest -m slow

test-all: test test-slow
