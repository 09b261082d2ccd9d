# quantlab_pipeline — `make demo` sets up and runs a backtest on sample data; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)

.PHONY: install demo test lint bench bench-scale dev clean deploy-test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else "quantlab_pipeline needs Python 3.11, 3.12 or 3.13; $(PYTHON) is " + sys.version.split()[0] + " (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m quantlab_pipeline.warm.prebuild
	touch $(STAMP)

install: $(STAMP)

# vectorbt (the optional `bench` extra, never a runtime dependency): the benchmark's peer sections,
# and the tests that hold the portfolio to vectorbt's Portfolio.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)


demo: install
	$(BIN)/quantlab sample-data --out data/alerts.duckdb --months 2024-01..2024-03
	$(BIN)/quantlab backtest path-only --calls-from-duckdb data/alerts.duckdb \
		--interval 5m --from 2024-01-01 --to 2024-01-31
	$(BIN)/quantlab backtest policy --calls-from-duckdb data/alerts.duckdb \
		--policy-id fixed-stop-5pct --policy '{"kind":"fixed_stop","stop_loss_bps":500}' \
		--interval 5m --from 2024-01-01 --to 2024-01-31
	$(BIN)/quantlab backtest catalog-sync --stats

lint: install
	$(BIN)/ruff check quantlab_pipeline quantlab_pipeline_tests bench
	$(BIN)/ruff format --check quantlab_pipeline quantlab_pipeline_tests bench
	$(BIN)/mypy

test: lint $(BENCH_STAMP)
	$(BIN)/python -m pytest -q

# The deploy rehearsal alone (docs/deployment.md): a real PostgreSQL server, the daemon
# and the webserver with deploy/dagster.yaml, a 4-month backtest, a UI-style backfill, a killed worker.
deploy-test: install
	$(BIN)/python -m pytest -q -m deploy quantlab_pipeline_tests/deploy


bench: install $(BENCH_STAMP)
	$(BIN)/python bench/run.py --docs docs/performance.md

# A lab's scale (docs/performance.md "At a lab's scale"): 1,000 real CLI runs, then synthesised
# ones up to 10,000, measured at 100, 1,000 and 10,000. Long (about 20 minutes on a quiet 2-core
# machine, half of it the real runs); resumes where it stopped. BENCH_SCALE_ARGS adds flags, e.g.
# `--data-dir DIR`, `--browser`, `--postgres`.
BENCH_SCALE_ARGS ?=
bench-scale: install
	$(BIN)/python bench/scale.py $(BENCH_SCALE_ARGS)

dev: install
	$(BIN)/dagster dev

clean:
	rm -rf runs data .dagster
