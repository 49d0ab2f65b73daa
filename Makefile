# Two commands on a fresh machine: `make run` serves, `make test` tests.
# Both create the virtualenv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The browser tests (tests/browser) drive Debian's Chromium through Playwright: installed when missing.
CHROMIUM := /usr/bin/chromium

.PHONY: run worker cluster test unit integration drills lint fmt typecheck protos check-protos bench screenshot clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## serve on 127.0.0.1:50051 with embedded Postgres and filesystem storage
	$(PY) -m server

worker: $(STAMP)  ## a standalone worker host (needs DATABASE_URL and shared storage)
	$(PY) -m worker

# docs/deployment.md on one machine: a server host with SERVING processes, WORKER_HOSTS worker hosts, one Postgres.
SERVING ?= 2
WORKER_HOSTS ?= 2
cluster: $(STAMP)
	$(PY) scripts/local_cluster.py --serving $(SERVING) --worker-hosts $(WORKER_HOSTS)

test: $(STAMP) $(CHROMIUM) check-protos lint typecheck  ## the whole suite
	$(PY) -m pytest -q -ra

$(CHROMIUM):
	apt-get update -qq && apt-get install -y -qq chromium

screenshot: $(STAMP) $(CHROMIUM)  ## docs/download-dialog.png: the demo page's download dialog during a build
	$(PY) -m tests.browser.screenshot docs/download-dialog.png

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

drills: $(STAMP)
	$(PY) -m pytest -q tests/drills

# buf (protos/ linted and checked for breaking changes, see buf.yaml), from npm,
# pinned, into .buf/ (gitignored); a new BUF_VERSION gets a new stamp, so reinstalls.
BUF_VERSION := 1.75.0
BUF_DIR := .buf
BUF := $(BUF_DIR)/node_modules/.bin/buf
BUF_STAMP := $(BUF_DIR)/.installed-$(BUF_VERSION)
PROTO_BASELINE := protos/baseline.binpb

$(BUF_STAMP):
	rm -rf $(BUF_DIR)
	npm install --no-save --ignore-scripts --no-audit --no-fund --loglevel=error \
	  --prefix $(BUF_DIR) @bufbuild/buf@$(BUF_VERSION)
	test "$$($(BUF) --version)" = $(BUF_VERSION)
	touch $@

lint: $(STAMP) $(BUF_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint
	$(BUF) breaking protos --against $(PROTO_BASELINE)

# Rewrites the API baseline that `make lint` checks breaking changes against.
# Only for a deliberate, documented API change, in the same commit as that change.
.PHONY: proto-baseline
proto-baseline: $(BUF_STAMP)
	$(BUF) build protos --exclude-source-info -o $(PROTO_BASELINE)

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

bench: $(STAMP)  ## benchmarks (minutes; baselines need Debian's vipsthumbnail and zip)
	command -v vipsthumbnail >/dev/null && command -v zip >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq libvips-tools zip)
	$(PY) -m bench.thumbnails
	$(PY) -m bench.thumbnails --size 4000x3000 --formats jpeg --images 64 --no-decode
	$(PY) -m bench.throughput
	$(PY) -m bench.bundles
	$(PY) -m bench.progress
	$(PY) -m bench.hot_paths
	$(PY) -m bench.soak
	$(PY) -m bench.render

clean:
	rm -rf $(VENV) $(BUF_DIR) .data .cluster .pytest_cache .mypy_cache .ruff_cache
