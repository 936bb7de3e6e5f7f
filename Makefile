# era5latent: two commands do all set-up on a fresh machine.
#   make demo   installs into .venv and runs the main job on built-in sample data
#   make test   installs into .venv and runs the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev
DEMO_DIR ?= demo-out

.PHONY: install test demo bench docs typecheck clean fuzz

$(PY):
	$(PYTHON) -m venv $(VENV)

# What the tool needs to run (make demo, make install). torch first, so a CPU machine never
# pulls multi-GB CUDA wheels: a local wheel if pip's find-links has one (installed alone, then
# pinned in the one pip call that brings its dependencies and ours), else the CUDA build where
# an NVIDIA driver is present, else the PyTorch CPU index. pip compiles every module to bytecode
# on one core; compileall does it on all of them afterwards (failures are files pip would skip
# too, such as Python 2 test data inside packages).
INSTALL := $(PIP) install -q --no-compile
$(RUNTIME): pyproject.toml | $(PY)
	@set -e; pin=""; $(PY) -c "import torch" 2>/dev/null || \
	if $(INSTALL) --no-index --no-deps "torch>=2.2" 2>/dev/null; then \
	  pin="torch==$$($(PY) -c 'import importlib.metadata as m; print(m.version("torch"))')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(INSTALL) "torch>=2.2"; \
	else $(INSTALL) "torch>=2.2" --index-url https://download.pytorch.org/whl/cpu; fi; \
	echo "$(INSTALL) $$pin -e ."; $(INSTALL) $$pin -e .
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	@touch $@

# What the tests, the benchmark's check and mypy need besides (kept out of make demo's install,
# which it would lengthen by about 40 s)
$(DEV): $(RUNTIME)
	$(PIP) install -q -e ".[dev]"
	# xbitinfo, for the one test that checks our keepbits against its own: beside the venv, not
	# in it (it pins numpy < 2.4 and numcodecs < 0.16.4; its Python implementation runs fine)
	$(PIP) install -q --no-deps --target $(VENV)/xbitinfo "xbitinfo==0.0.7" "tqdm>=4"
	@touch $@

install: $(RUNTIME)

# one OpenMP thread per process: the suite runs subprocesses and Dask workers side by side, and
# spinning OpenMP threads on an oversubscribed 2-core machine made model steps ~20x slower.
# Two pytest-xdist workers (TEST_WORKERS=N for another count, 0 for one process): on the 2-core
# VM the suite took 905 s in one process and 473 s in two
TEST_WORKERS ?= 2
test: $(DEV)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} ERA5LATENT_XBITINFO_PATH=$(VENV)/xbitinfo $(PY) -m pytest -q \
	  -n $(TEST_WORKERS)

# generated malformed sources, stores, parquet files and command lines through every verb
# (tests/test_fuzz.py; make test runs 200 of them), printing the counts by verb and exit code;
# then encode and decode SIGKILLed at KILLS random times each (tests/test_kills.py).
# FUZZ_CASES=N for another count, FUZZ_SEED=S for other cases
fuzz: $(DEV)
	ERA5LATENT_FUZZ_CASES=$${FUZZ_CASES:-10000} ERA5LATENT_FUZZ_SEED=$${FUZZ_SEED:-0} \
	ERA5LATENT_KILLS=$${KILLS:-20} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	$(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_kills.py

demo: $(RUNTIME)
	$(PY) -m era5latent.cli.demo --out $(DEMO_DIR)

# the bench script's own end-to-end test first (about a minute; kept out of make test), then
# the benchmark
bench: $(DEV)
	ERA5LATENT_BENCH_TESTS=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q \
	  -p no:cacheprovider tests/test_performance.py -k make_bench_script
	$(PY) benchmarks/bench_pipeline.py $(BENCH_ARGS)

typecheck: $(DEV)
	$(PY) -m mypy

docs: $(RUNTIME)
	$(PY) -m era5latent.cli.docs > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
