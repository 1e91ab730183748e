# Two commands set everything up: `make demo` and `make test`.
# Each creates .venv if missing, installs ffcv (see FFCV_ROUTE), installs the pinned
# requirements, then does its job. A second call skips what is installed.

PY        ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
FFCV_APT  := pkg-config libopencv-dev libturbojpeg0-dev
DEMO_APT  := dataset-fashion-mnist
# How ffcv is installed (install/ffcv_route.sh): "sdist" (pip builds it against FFCV_APT; as
# root with those installed) or "wheel" (make ffcv-wheel: no root, no apt install).
FFCV_ROUTE ?= $(shell sh install/ffcv_route.sh $(FFCV_APT))
APT_PKGS  := $(if $(filter sdist,$(FFCV_ROUTE)),$(FFCV_APT)) $(DEMO_APT)
WHEEL_STAMP := wheelhouse/.ffcv-1.0.2
STAMP     := $(VENV)/.installed
DEMO_OUT  ?= data/fashion-mnist
PYTEST_ARGS ?=

.PHONY: test demo test-all lint frontier apt venv results clean-venv gpu-check ffcv-wheel offline-bundle

# Two pytest workers (pytest-xdist; one module per worker at a time, so module fixtures run
# once); modules marked own_process run in a child pytest (tests/own_process.py).
XDIST     := -n 2 --dist loadscope

test: $(STAMP)
	$(VPY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-all: $(STAMP)
	$(VPY) -m pytest $(XDIST) -m "slow or not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check .

# The demo data: 1,000 train and 200 val real Fashion-MNIST images per class (converted once).
DEMO_FLAGS ?= --demo-train-per-class 1000 --demo-val-per-class 200

# The Fashion-MNIST files: the installed Debian package's, else fetched without root.
DEMO_DATA = --demo-source "$$(sh install/fashion_mnist_dir.sh)"

demo: $(STAMP)
	test -f $(DEMO_OUT)/manifest.json || \
	  $(VPY) write_dataset.py --demo fashion-mnist $(DEMO_DATA) --out-dir $(DEMO_OUT) $(DEMO_FLAGS) --num-workers 2
	$(VPY) run.py --config rules/demo.yaml

# Measure this machine's GPU (~5-8 min, no data needed): writes results/devices/<gpu>.json,
# which `run.py --dry-run` then uses for the device named in a recipe's estimate.device.
GPU_CHECK_ARGS ?=
# No apt gate and no install: the node's own Python (the project's .venv when it exists).
GPU_PY    ?= $(shell test -x $(VPY) && echo $(VPY) || echo $(PY))
gpu-check:
	$(GPU_PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

# The demo's cost-accuracy frontier (rules/sweeps/demo-frontier.yaml): one process per seed
# (1 torch thread and 1 loader worker each: one such process alone leaves the second core
# mostly idle), each logging to results/runs/demo-frontier/seed-<s>.log. Timings of the
# points on a 2-core AMD EPYC: docs/demo.md.
FRONTIER_SEEDS ?= 0 1 2
frontier: $(STAMP)
	test -f $(DEMO_OUT)/manifest.json || \
	  $(VPY) write_dataset.py --demo fashion-mnist $(DEMO_DATA) --out-dir $(DEMO_OUT) $(DEMO_FLAGS) --num-workers 2
	mkdir -p results/runs/demo-frontier
	pids=""; for s in $(FRONTIER_SEEDS); do \
	  $(VPY) run.py --sweep rules/sweeps/demo-frontier.yaml --seeds $$s \
	    > results/runs/demo-frontier/seed-$$s.log 2>&1 & pids="$$pids $$!"; \
	done; echo "seeds $(FRONTIER_SEEDS) running; logs: results/runs/demo-frontier/seed-*.log"; \
	status=0; for p in $$pids; do wait $$p || status=1; done; \
	[ $$status = 0 ] || { echo "a seed failed: see results/runs/demo-frontier/seed-*.log"; exit 1; }
	$(VPY) -m ffcv_bt.reporting.frontier

results: $(STAMP)
	$(VPY) -m ffcv_bt.reporting.tables

apt:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing apt packages:$$missing"; \
	    (apt-get install -y --no-install-recommends $$missing || \
	     (apt-get update && apt-get install -y --no-install-recommends $$missing)); \
	  elif [ "$(FFCV_ROUTE)" = sdist ]; then \
	    echo "missing system packages. Run as root:"; \
	    echo "  sudo apt-get install -y --no-install-recommends$$missing"; exit 1; \
	  else \
	    echo "not installed (no root):$$missing. Tests that need it skip; make demo fetches it."; \
	  fi; \
	fi

# The self-contained ffcv wheel (install/build_ffcv_wheel.py; Debian packages fetched with
# apt-get download, no root): wheelhouse/ffcv-1.0.2-cp310-abi3-manylinux_2_*.whl.
ffcv-wheel: $(WHEEL_STAMP)
$(WHEEL_STAMP): install/build_ffcv_wheel.py install/patch_ffcv.py $(if $(wildcard wheelhouse/ffcv-1.0.2-*.whl),,FORCE)
	nice -n 10 $(PY) install/build_ffcv_wheel.py --out wheelhouse --work build/ffcv-wheel
	touch $(WHEEL_STAMP)

# offline/: the wheel unpacked plus ffcv's pure-Python requirements, as files for PYTHONPATH
# on a node without network (bench/gpu_node.sh uses it). install/offline_bundle.py.
offline-bundle: $(WHEEL_STAMP)
	$(PY) install/offline_bundle.py --out offline wheelhouse/ffcv-1.0.2-*.whl

# The stamp depends on the requirements and project files: edit them and the next call reinstalls.
# With the wheel route the wheel is a prerequisite too: a rebuilt wheel is reinstalled.
$(STAMP): requirements.txt pyproject.toml install/patch_ffcv.py $(if $(filter wheel,$(FFCV_ROUTE)),$(WHEEL_STAMP)) | apt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet setuptools==84.2.1 wheel
	$(if $(filter wheel,$(FFCV_ROUTE)),$(VPY) -m pip install --quiet --no-deps --force-reinstall wheelhouse/ffcv-1.0.2-*.whl)
	$(VPY) -m pip install --quiet --no-build-isolation -r requirements.txt
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(VPY) install/patch_ffcv.py
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)

FORCE:
