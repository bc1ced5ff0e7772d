# nfkit developer entry points. `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test deps lint typecheck unit demo bench clean

test: deps lint typecheck unit

deps: $(VENV)/.installed
	@scripts/install-system-deps.sh test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint:
	$(BIN)/ruff check src tests bench

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest -q

demo: $(VENV)/.installed
	@scripts/install-system-deps.sh demo
	$(BIN)/nfkit demo

# Benchmarks run on compiled modules, as an installed package does.
bench: deps
	$(BIN)/python -m compileall -q src/nfkit
	$(BIN)/python bench/nflog_bench.py

.PHONY: bench-conntrack
bench-conntrack: deps
	$(BIN)/python -m compileall -q src/nfkit
	$(BIN)/python bench/conntrack_bench.py

.PHONY: bench-nfct
bench-nfct: deps
	$(BIN)/python -m compileall -q src/nfkit
	$(BIN)/python bench/nfct_bench.py

.PHONY: bench-db
bench-db: deps
	$(BIN)/python -m compileall -q src/nfkit
	$(BIN)/python bench/db_bench.py

# NetfilterQueue (the reference) is a benchmark dependency only; it builds against
# Debian's libnetfilter-queue-dev.
.PHONY: bench-queue
bench-queue: deps
	@scripts/install-system-deps.sh bench
	$(BIN)/pip install -q NetfilterQueue
	$(BIN)/python -m compileall -q src/nfkit
	$(BIN)/python bench/nfqueue_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
