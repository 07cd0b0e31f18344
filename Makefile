# Two commands a new user needs: `make demo` and `make test`. Both create or reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow lint typecheck bench bench-peers clean tools

# Shared libraries Qt (the gui extra) loads even offscreen; installed only when missing, as root with apt.
GUI_DEBS := libegl1 libgl1 libxkbcommon0 libfontconfig1 libglib2.0-0 libdbus-1-3 fonts-dejavu-core

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@missing=$$(for p in $(GUI_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train,gui]'
	touch $(STAMP)

venv: $(STAMP)

# Two sample studies (demo seeds 900001-900002, simulated on the first run and cached in $(DEMO_OUT)/samples)
# go through the service's own pipeline; the table and the outbox path are printed.
demo: $(STAMP)
	$(BIN)/xr3d demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check appliance engines export gui tests bench tools
	$(BIN)/ruff format --check appliance engines export gui tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy appliance engines export gui

# dcmtk's dsrdump checks the DICOM SR in tests/test_outputs_*.py (those tests skip when it is missing).
tools:
	@command -v dsrdump >/dev/null || (apt-get update && apt-get install -y dcmtk) || \
		echo "warning: could not install dcmtk (dsrdump); the SR dsrdump checks will be skipped"

test: lint typecheck tools
	$(BIN)/python -m pytest -n 2 -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Benchmarks write their numbers to stdout; BENCHMARKS.md records them with command, machine and date.
bench: $(STAMP)
	$(BIN)/python bench/bench_simulate.py --n 3
	$(BIN)/python bench/bench_drr.py --case all $(if $(wildcard .venv-peers/bin/python),,--no-peer)
	$(BIN)/python bench/bench_engines.py --iters 20 --threads 1 0

# Peers used only for comparison (DiffDRR pulls torchvision and a CUDA build of torch) live in their own
# virtual environment, never in the project's.
bench-peers:
	bash bench/peers/make_venv.sh

clean:
	rm -rf $(VENV) .venv-peers $(DEMO_OUT) build *.egg-info
