# Two commands: `make demo` (set up + the main job) and `make test` (set up + the test suite).
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
PROFILE       ?= cpu-demo
OUT           ?= runs/demo
PY            := $(VENV)/bin/python

.PHONY: setup demo smoke test sync clean

setup: $(VENV)/.medkit-installed

# A torch already on the system (Kaggle, Colab, a CUDA machine) is reused through
# --system-site-packages and never reinstalled; otherwise the pinned CPU build is installed.
$(VENV)/.medkit-installed: requirements.txt pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "[setup] reusing the installed torch ($$($(PYTHON) -c 'import torch; print(torch.__version__)'))"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@$(PY) -c "import torch" 2>/dev/null || { echo "[setup] installing torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install -q torch==$(TORCH_VERSION); }
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@$(PY) -c "import torch, monai, diffusers, torchmetrics; print('[setup] torch', torch.__version__, '| monai', monai.__version__, '| diffusers', diffusers.__version__)"
	@touch $@

demo: setup
	$(PY) -m medkit run sbldm --profile $(PROFILE) --out $(OUT)

smoke: setup
	$(PY) -m medkit run sbldm --profile smoke --out runs/smoke

# Test-only packages (pytest, the reference implementations the tests compare against).
$(VENV)/.medkit-test: $(VENV)/.medkit-installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	@touch $@

test: setup $(VENV)/.medkit-test
	bash scripts/setup_browser_test.sh
	MEDKIT_REQUIRE_REFERENCES=1 $(PY) -m pytest -q tests

sync: setup
	$(VENV)/bin/jupytext --sync notebooks/*/*.py

clean:
	rm -rf runs/smoke .pytest_cache
