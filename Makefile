# Two commands on a fresh machine: `make run` serves, `make test` tests.
# Both create the virtualenv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run worker test unit integration drills lint fmt typecheck protos check-protos bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## serve on 127.0.0.1:50051 with embedded Postgres and filesystem storage
	$(PY) -m server

worker: $(STAMP)  ## a standalone worker host (needs DATABASE_URL and shared storage)
	$(PY) -m worker

test: $(STAMP) check-protos lint typecheck  ## the whole suite
	$(PY) -m pytest -q -ra

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

drills: $(STAMP)
	$(PY) -m pytest -q tests/drills

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

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
	$(PY) bench/thumbnails.py
	$(PY) bench/bundles.py
	$(PY) bench/progress.py
	$(PY) bench/hot_paths.py
	$(PY) bench/render.py

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
