# Two set-up commands do everything on a fresh machine:  make demo   and   make test
# Each creates (or reuses) the virtual environment .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.convscope-installed
EXTRAS ?= dev

.PHONY: demo test venv benchmarks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU-capable wheels this project is tested with
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/convscope demo -o convscope-demo

test: $(STAMP)
	bash scripts/ensure_chromium.sh   # the browser tests need Debian's chromium
	$(VENV)/bin/lint-imports   # the layer contract in pyproject.toml (docs/design.md)
	$(PY) -m pytest -n 2 -q

benchmarks: $(STAMP)
	# the peers measured side by side (not project dependencies); Lucent pins an old kornia
	$(PY) -m pip install -q captum "torchcam==0.5.0" lime grad-cam decorator ipython
	$(PY) -m pip install -q --no-deps torch-lucent "kornia==0.4.1"
	# zennit-crp pins zennit<=0.4.6: kept apart, on the path of its own benchmark process only
	$(PY) -m pip install -q --no-deps --target /tmp/crpenv "zennit==0.4.6" "zennit-crp==0.6.0"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) convscope-demo
