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
	touch $(STAMP)

REPO := examples/model_repository

run: $(STAMP)
	$(PY) -m examples.build $(REPO)
	@echo
	@echo "Serving $(REPO): HTTP 127.0.0.1:8000, gRPC 127.0.0.1:8001, metrics http://127.0.0.1:8002/metrics"
	@echo "In another shell, ask it for an answer:"
	@echo "    $(PY) -m examples.client --digit 7"
	@echo "    curl -s 127.0.0.1:8000/v2/models/digits_cnn | python3 -m json.tool"
	@echo
	exec $(PY) -m tuili.cli serve --model-repository $(REPO)

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
