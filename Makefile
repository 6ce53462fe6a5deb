# Two commands do all the set-up: `make run` opens the studio, `make test` runs the tests.
# Each creates the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel keeps CI fast; users with a GPU may pass TORCH_SPEC=torch (a CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lowbit-installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lowbit-studio

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/lowbit bench kernels

clean:
	rm -rf $(VENV) build dist *.egg-info
