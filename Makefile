# `make test` and `make demo` set everything up on a fresh machine (a .venv here), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,examples]"
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) examples/quickstart.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
