# tuili: `make run` serves the example model repository; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: run test test-slow conformance bench demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m tuili.serve.protos.build
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tuili.demo

demo: $(STAMP)
	$(PY) -m tuili.demo

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m slow -q

conformance: $(STAMP)
	$(PY) -m tests.conformance.runner

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
