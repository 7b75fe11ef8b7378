# One virtualenv at .venv; every target installs what it needs on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt requirements-dev.txt requirements-nodeps.txt | sha1sum | cut -c1-12)

.PHONY: venv demo test test-all lint bench bench-peers clean-venv system-data browser-deps

$(STAMP): pyproject.toml constraints.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps -r requirements-nodeps.txt
	-$(MAKE) --no-print-directory system-data
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## make demo: a real search on bundled data (see README)
demo: venv
	$(BIN)/quicktune demo

PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1200

## make test: lint contracts, the peers venv (Syne Tune), then every test not marked slow
## (~10 minutes on 2 cores: the one to run while working)
test: venv lint bench-peers
	$(PYTEST) -m "not slow" tests

## make test-all: the same, slow tests included (real searches through MLflow + S3, kill -9
## resumes, fake-cluster searches, the browser test; ~30 minutes on 2 cores). What CI runs.
test-all: venv lint bench-peers
	$(PYTEST) tests

## make lint: import contracts, ruff (lint + format) and mypy. The ruff and mypy lists grow as
## packages are brought up to the rules (config: [tool.ruff] and [tool.mypy] in pyproject.toml).
## ruff (lint + format) over the whole tree; mypy over the layers that are typed so far (extend per package)
LINT_PATHS := quicktune tests components pipelines benchmarks
MYPY_PATHS := quicktune/optimizer quicktune/space.py quicktune/lct.py quicktune/durations.py quicktune/data quicktune/hub \
	quicktune/storage.py quicktune/search quicktune/backends quicktune/tracking
lint: venv
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy $(MYPY_PATHS)

## make bench: each quick benchmark with small arguments (~7 min; JSON in benchmarks/results/run_all/);
## BENCH_ARGS=--all adds the long ones (hours), BENCH_ARGS="--only step" picks (benchmarks/run_all.py)
bench: venv
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

APT_DATA := dataset-fashion-mnist fonts-noto-color-emoji unicode-data \
	tuxpaint-stamps-default openclipart-png libicon-famfamfam-silk-perl oxygen-icon-theme gnome-icon-theme lxde-icon-theme elementary-xfce-icon-theme
## make system-data: optional Debian packages with real datasets (fashion-mnist, emoji, clip art,
## icon themes: quicktune/data/packaged); never fails
system-data:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		{ apt-get install -y -q --no-install-recommends $(APT_DATA) >/dev/null 2>&1 \
		  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $(APT_DATA) >/dev/null 2>&1; }; } \
		|| echo "note: optional apt packages ($(APT_DATA)) not installed"; \
	else echo "note: skipping optional apt packages (needs apt-get as root)"; fi
	-@$(MAKE) --no-print-directory browser-deps

## make browser-deps: Chromium, node and playwright-core (tests/browser/package-lock.json) for
## tests/test_browser_ui.py; never fails (the test skips without chromium or node)
browser-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		pkgs="chromium"; command -v node >/dev/null 2>&1 || pkgs="$$pkgs nodejs"; \
		command -v npm >/dev/null 2>&1 || pkgs="$$pkgs npm"; \
		{ apt-get install -y -q $$pkgs >/dev/null 2>&1 \
		  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$pkgs >/dev/null 2>&1; }; } \
		|| echo "note: $$pkgs not installed: the browser test will skip"; fi
	@if command -v npm >/dev/null 2>&1; then \
		(cd tests/browser && npm ci --no-audit --no-fund --silent) || echo "note: npm ci in tests/browser failed"; \
	else echo "note: no npm: the browser test will skip"; fi

## make bench-peers: Syne Tune 0.13.0 (needs numpy<2) in its own venv .venv-peers, plus Optuna in .venv
PEERS_VENV := .venv-peers
bench-peers: venv
	$(BIN)/python -m pip install -q -c constraints.txt optuna
	test -x $(PEERS_VENV)/bin/python || $(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -c "import syne_tune, sys; sys.exit(syne_tune.__version__ != '0.13.0')" 2>/dev/null \
		|| $(PEERS_VENV)/bin/python -m pip install -q "syne-tune[gpsearchers,kde]==0.13.0"
