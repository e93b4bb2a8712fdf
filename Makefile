# The README's two commands: `make demo` and `make test` (each sets up .venv on first use).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements/cpu.lock requirements/reference.txt pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo test test-slow clean-demo

install: $(STAMP)

$(STAMP): requirements/cpu.lock requirements/reference.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/cpu.lock
	$(BIN)/python -m pip install -q --no-deps -r requirements/reference.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	test -d demo-data/phantoms || $(BIN)/mrseg-cohort phantom demo-data/phantoms --participants 4 --layout ukbb --seed 1000
	$(BIN)/mrseg-cohort run configs/demo.yaml

# the default run leaves out tests marked slow (pyproject's addopts); CI (.ci/run) runs both
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean-demo:
	rm -rf demo-data demo-output
