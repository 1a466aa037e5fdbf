# `make test` and `make demo` set everything up on a fresh machine (a .venv here), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# `make test` runs the suite once per backend; BACKENDS=jax narrows it.
BACKENDS ?= tensorflow jax torch
# The PyTorch CPU build (a plain `torch` requirement pulls a multi-GB CUDA build).
TORCH ?= torch==2.13.0

# The lowest Keras the package supports (keras_gradmix/compat.py): `make test-keras-min`
# runs the TensorFlow suite on it, installed beside the newest in .keras-min/.
KERAS_MIN := $(shell sed -n 's/^KERAS_MIN = "\(.*\)"/\1/p' keras_gradmix/compat.py)

.PHONY: venv test test-keras-min demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,examples,jax]" "$(TORCH)"
	touch $@

test: venv
	@for backend in $(BACKENDS); do \
		echo "== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend $(PY) -m pytest -q tests || exit 1; \
	done

test-keras-min: venv
	$(PY) -m pip install --quiet --no-deps --upgrade --target .keras-min "keras==$(KERAS_MIN)"
	@echo "== KERAS_BACKEND=tensorflow, keras $(KERAS_MIN)"
	PYTHONPATH=.keras-min KERAS_BACKEND=tensorflow $(PY) -m pytest -q tests

demo: venv
	KERAS_BACKEND=tensorflow $(PY) examples/quickstart.py

clean:
	rm -rf $(VENV) .keras-min build *.egg-info .pytest_cache
