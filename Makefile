# `make run` and `make test` create .venv with the pinned dependencies when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsss-installed

.PHONY: run test smoke venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m study.run --space search_spaces/aal.yaml $(ARGS)

smoke: $(STAMP)
	$(PY) -m study.run --space search_spaces/smoke.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf studies .pytest_cache
