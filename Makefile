# The verbs users type. Each target creates .venv and installs the project on
# first use; later runs reinstall nothing unless pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# torch and its CUDA libraries are ~4 GB. pip's HTTP cache is not reliable for them,
# so they are downloaded once into a wheelhouse and installed from it offline.
WHEELHOUSE ?= $(HOME)/.cache/cxrutils/wheels
HEAVY_PINS := $(shell sed -n 's/^ *"\(torch[a-z]*==[^"]*\)".*/\1/p' pyproject.toml)
PROFILE ?= demo

.DEFAULT_GOAL := help
.PHONY: help install demo external-demo reports metadata-report test bench gpu-check mutation rehearsal lab tensorboard clean-reports clean-demo clean-rehearsal

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --upgrade --quiet pip
	$(VENV_PYTHON) -m pip install --quiet --no-index --find-links $(WHEELHOUSE) $(HEAVY_PINS) 2>/dev/null || { \
	  echo "Downloading $(HEAVY_PINS) (~4 GB, once) into $(WHEELHOUSE)"; \
	  $(VENV_PYTHON) -m pip download --quiet --progress-bar off --dest $(WHEELHOUSE) $(HEAVY_PINS) && \
	  $(VENV_PYTHON) -m pip install --quiet --no-index --find-links $(WHEELHOUSE) $(HEAVY_PINS); }
	$(VENV_PYTHON) -m pip install --progress-bar off -e '.[dev]'
	$(VENV_PYTHON) -c "from cxrutils.publish.runner import ensure_kernel; ensure_kernel()"
	@touch $@

install: $(INSTALLED)  ## create .venv and install cxrutils with its pinned dependencies

demo: $(INSTALLED)  ## build the phantom demo data if missing, run every notebook, compare with a second seed, write reports/index.html
	$(VENV)/bin/cxrutils reports --profile demo
	$(VENV)/bin/cxrutils train --config demo --seeds 1 --resume auto
	$(VENV)/bin/cxrutils evaluate --run runs/demo_seed1
	$(VENV)/bin/cxrutils reports --profile runs_compared

EXTERNAL_DEMO_COLLECTIONS ?= chexpert padchest
external-demo: $(INSTALLED)  ## the demo run on phantom CheXpert and PadChest roots (cxrutils external, then notebook 07) -> reports/external/
	@test -f runs/demo/checkpoint_best.pt || { echo "make external-demo needs runs/demo: run make demo first" >&2; exit 2; }
	for collection in $(EXTERNAL_DEMO_COLLECTIONS); do \
	  $(VENV_PYTHON) -c "import sys; from cxrutils.demo.external_roots import ExternalRootSpec, ensure_external_root; ensure_external_root(f'data/external_demo/{sys.argv[1]}', ExternalRootSpec(sys.argv[1], n_patients=100, image_size=256))" $$collection && \
	  $(VENV)/bin/cxrutils external --run runs/demo --collection $$collection --root data/external_demo/$$collection && \
	  $(VENV)/bin/cxrutils reports --profile external --set collection=$$collection --set external_root=data/external_demo/$$collection || exit 1; \
	done

reports: $(INSTALLED)  ## run the notebooks for PROFILE (e.g. make reports PROFILE=nih ARGS="--set data_root=/data/nih")
	$(VENV)/bin/cxrutils reports --profile $(PROFILE) $(ARGS)

metadata-report: $(INSTALLED)  ## the EDA on the metadata shipped in torchxrayvision: no download needed
	$(VENV)/bin/cxrutils reports --profile metadata

# Arguments for pytest, e.g. TEST_ARGS="-k localization" (then one pytest process). Without them, two processes at
# once: the tests that start Jupyter kernels, and the rest (tests/lanes.py says why not pytest-xdist).
TEST_ARGS ?=
test: $(INSTALLED)  ## run the test suite in two lanes (TEST_ARGS="-k ..." runs one pytest with those arguments)
	$(VENV_PYTHON) tests/lanes.py $(TEST_ARGS)

mutation: $(INSTALLED)  ## mutants of stats/ and the evaluation: do the tests catch them? (~25 min) -> reports/mutation.json
	nice -n 19 $(VENV_PYTHON) benchmarks/mutation.py $(MUTATION_ARGS)

rehearsal: $(INSTALLED)  ## every notebook at the real dataset's size (112,120 NIH phantom films; notebook 07 on phantom CheXpert and PadChest roots of every listed film), measured: reports/rehearsal.html
	$(VENV)/bin/cxrutils rehearsal $(REHEARSAL_ARGS)

bench: $(INSTALLED)  ## data path and training-epoch throughput (benchmarks/; add BENCH_ARGS="--preset gpu --both" on a GPU)
	$(VENV_PYTHON) benchmarks/bench_training.py --out reports/benchmark.json $(BENCH_ARGS)

gpu-check:  ## on a GPU box, in under 5 min, no install step: training img/s, epoch tail, torchrun, inference -> reports/gpu_check.json (GPU_CHECK_ARGS="--preset cpu" elsewhere)
	@test -x $(VENV_PYTHON) || { echo "make gpu-check: $(VENV_PYTHON) is missing. It runs the project's own environment and installs nothing (a lent GPU has minutes, and often no network): run make install first, or run benchmarks/gpu_check.py with a python that has torch and the project (PYTHONPATH=.)." >&2; exit 2; }
	$(VENV_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

lab: $(INSTALLED)  ## open JupyterLab on notebooks/ with the project's kernel
	$(VENV)/bin/jupyter lab notebooks/

RUN ?= runs/demo
tensorboard: $(INSTALLED)  ## follow a run's training live: make tensorboard RUN=runs/nih (http://localhost:6006)
	$(VENV)/bin/tensorboard --logdir $(RUN)/tensorboard

clean-reports:  ## delete generated reports: every run's folder, the inference results, the index
	rm -rf reports/*.html reports/*.ipynb reports/index.json reports/[0-9][0-9]_*/ reports/inference/ reports/comparisons/ reports/external/
	for folder in reports/*/; do if [ -f "$$folder/index.json" ]; then rm -rf "$$folder"; fi; done

clean-demo:  ## delete the generated demo dataset, its image cache, the demo runs and their comparison
	rm -rf data/demo data/cache/demo_* runs/demo runs/demo_seed1 runs/comparisons/demo-vs-demo_seed1 data/external_demo

clean-rehearsal:  ## delete the rehearsal roots, their image caches, runs and reports
	rm -rf data/rehearsal_* data/cache/rehearsal_* runs/rehearsal_* reports/rehearsal reports/rehearsal.*
