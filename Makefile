# `make test` is the README's test command and exactly what CI runs (.ci/run calls it in a fresh
# virtual environment; tests/test_docs.py keeps the two equal). Run it inside a virtualenv from
# this folder, with ../shared beside it (or DEOCC_SHARED=PATH, relative or absolute).
.PHONY: test install web chromium

PYTHON ?= python
DEOCC_SHARED ?= ../shared
# Absolute, so that tests and the subprocesses they start in other folders read the same files.
export DEOCC_SHARED := $(abspath $(DEOCC_SHARED))
export DEOCC_ASSETS_DIR := $(abspath $(or $(DEOCC_ASSETS_DIR),$(DEOCC_SHARED)/models))

test: install web
	$(PYTHON) -m pytest -q tests

install:
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	@# jax2onnx, whose declared pins conflict with ours: requirements-nodeps.txt says why.
	$(PYTHON) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	@$(PYTHON) -c "import importlib.metadata as md, sys; cv = [d.metadata['Name'] for d in md.distributions() if d.metadata['Name'].lower().startswith('opencv')]; len(cv) == 1 or sys.exit(f'exactly one OpenCV distribution must be installed, found {cv}')"

# tests/test_web.py drives the page in Debian's Chromium (Playwright downloads no browser); the
# page is built from web/package-lock.json with npm (docs/web.md).
web: chromium
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && npm run --silent build

chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "the web tests need Debian's chromium: run 'sudo apt-get install chromium' once" >&2; exit 2; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
