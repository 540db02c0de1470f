# evalkit: `make demo` (set-up + the micro grid end to end), `make test` (set-up + all fast tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test embedded demo test test-all test-slurm test-browser lint bench clean

# evalkit and its runtime dependencies: all `make demo` needs. --no-compile: byte-compiling torch's
# thousands of modules at install took ~20 s of CPU; Python compiles the few it imports on first use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-compile torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-compile -e .
	touch $@

# plus the test-only references and tools (clip_benchmark, torchmetrics, datasets, scikit-image, pytest,
# ruff, submitit): a third of the set-up time, which the demo does not pay
$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-compile -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

embedded: install
	$(PY) -m evalkit.embedded.build

demo: embedded
	$(PY) -m evalkit.embedded.demo

lint: install-test
	$(VENV)/bin/ruff check evalkit tests bench

test: embedded lint
	$(PY) -m pytest -q

# every test: the fast and slow ones, then the SLURM ones on their own cluster and the browser ones
test-all: embedded lint
	$(PY) -m pytest -q -m "not slurm and not browser"
	$(MAKE) test-slurm
	$(MAKE) test-browser

# the tests marked `slurm`, against a one-node SLURM cluster on localhost that this starts and stops
# (.ci/slurm_cluster.sh: installs slurmctld/slurmd/slurm-client/munge with apt-get when missing; root)
test-slurm: embedded install-test
	.ci/slurm_cluster.sh run $(PY) -m pytest -q -m slurm

# the tests marked `browser`: the report of the embedded grid (and a synthetic one) opened in headless
# Chromium with the network off; writes docs/img/report.png (.ci/chromium.sh: installs Debian's chromium
# with apt-get when missing; root)
test-browser: embedded install-test
	.ci/chromium.sh run $(PY) -m pytest -q -m browser

bench: embedded install-test
	$(PY) bench/run_all.py

clean:
	rm -rf .cache results/units results/*.parquet results/*.csv
