# Two commands a new user needs: `make demo` and `make test`. Both create or reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/xr3d simulate --n 2 --seed 900001 --out $(DEMO_OUT) --workers 2
	@echo "Demo output in $(DEMO_OUT)/ (films as DICOM + PNG previews, CT + labels as NIfTI, truth.json)"

lint: $(STAMP)
	$(BIN)/ruff check appliance engines export gui tests bench tools
	$(BIN)/ruff format --check appliance engines export gui tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy appliance engines export gui

test: lint typecheck
	$(BIN)/python -m pytest -n 2 -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
