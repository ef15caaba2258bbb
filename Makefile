# tuili: `make run` serves the example model repository; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: run lint test test-fast test-slow test-explore test-ray conformance bench demo clean perf-analyzer peers bench-quantize

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
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

# pyflakes/bugbear/pyupgrade, types of the engine's core packages, and the layering of DESIGN.md
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src/tuili/errors.py src/tuili/dtypes.py src/tuili/ir src/tuili/passes src/tuili/runtime src/tuili/model_config
	$(VENV)/bin/lint-imports --no-cache

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow" -q

# the inner loop: engine unit and property tests, no servers, zoo models or conformance cases
test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow and not serve and not zoo and not conformance" -q

test-slow: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m slow -q

# `make test` replays hypothesis's examples (derandomized) so a green run repeats; this explores new ones.
test-explore: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow" -q --hypothesis-profile=explore --hypothesis-seed=$$RANDOM

# tuili on a 2-node Ray cluster on this machine (in private namespaces: needs root); installs the ray extra
test-ray: $(STAMP)
	$(PY) -m pip install --quiet -e '.[ray,test]'
	$(PY) -m pytest -m ray -q tests/deploy

# benchmarks/quantize.py with its comparisons: the nncf extra, and a model tuili did not export (the PP-OCRv4
# text-line recognizer shipped in rapidocr-onnxruntime's wheel, copied out of it; the package is not installed)
REC_MODEL := $(VENV)/models/ch_PP-OCRv4_rec_infer.onnx
$(REC_MODEL): $(STAMP)
	mkdir -p $(dir $@)
	$(PY) -m pip download --quiet --no-deps -d $(dir $@) rapidocr-onnxruntime==1.4.4
	$(PY) -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], 'wb').write(z.read('rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx'))" \
		$(dir $@)rapidocr_onnxruntime-1.4.4-py3-none-any.whl $@

bench-quantize: $(STAMP) $(REC_MODEL)
	$(PY) -m pip install --quiet -e '.[nncf,test,lint]'
	$(PY) benchmarks/quantize.py --suite static,recognizer --recognizer $(REC_MODEL)

conformance: $(STAMP)
	$(PY) -m tests.conformance.runner

# Triton's perf_analyzer (C++), for benchmarks/perf_agreement.py: tritonclient 2.45.0's wheel ships the
# binary; it needs Debian's libb64-0d and the CUDA runtime library from a wheel (no GPU is used).
PA_VENV := .venv-perf-analyzer
perf-analyzer:
	$(PYTHON) -m venv $(PA_VENV)
	$(PA_VENV)/bin/pip install --quiet 'tritonclient[all]==2.45.0' nvidia-cuda-runtime-cu12
	@ldconfig -p | grep -q libb64 || echo "perf_analyzer also needs libb64: apt-get install libb64-0d"

# LitServe and MLServer for benchmarks/serve_peers.py, in their own venv (their pins differ from tuili's)
PEERS_VENV := .venv-peers
peers:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet litserve mlserver onnxruntime numpy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
