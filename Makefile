# Quickstart: `make demo` trains DemP on the real Fashion-MNIST; `make test`
# runs the test suite. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# XLA:CPU allocates each step's temporary buffers afresh; with 4 KiB pages
# the kernel faults them in page by page on every step (about 21,600 faults
# per step of the demo's dense CNN). Transparent huge pages for malloc
# (glibc >= 2.35; older glibc ignores it) remove most of that cost: see
# "Allocator" in the README. Set GLIBC_TUNABLES yourself to override.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo dense bench test install data

demo: install data
	rm -rf runs/demo  # a fresh run each time
	$(PY) -m experiments.train --config configs/fashion_mnist_demp.py --workdir runs/demo

dense: install data
	rm -rf runs/dense
	$(PY) -m experiments.train --config configs/fashion_mnist_demp.py --workdir runs/dense --config.sparsity_config.algorithm=no_prune

# The speed benchmarks of the README's Speed section, on the demo's CNN.
bench: install data
	rm -rf runs/bench_train  # fresh runs each time
	$(PY) -m experiments.bench_step --config configs/fashion_mnist_demp.py --rounds 15 --out runs/bench_step_fmnist_cnn.json
	$(PY) -m experiments.bench_train --config configs/fashion_mnist_demp.py --out runs/bench_train/bench_train.json

# Two pytest workers (pytest-xdist), a test file to each in turn: most of
# the suite is XLA compilation, one core each (measured on 2 cores: 572 s
# against 911 s in one process).
TEST_WORKERS ?= 2
test: install data
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist package (60k/10k, IDX).
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: install it with 'sudo apt-get install dataset-fashion-mnist'," ; \
	  echo "or put the four IDX files in a directory and pass --config.dataset.data_dir=DIR."; \
	  exit 1; \
	fi
