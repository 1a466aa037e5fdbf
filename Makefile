# `make test` and `make demo` set everything up on a fresh machine (a .venv here), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# `make test` runs the suite once per backend; BACKENDS=jax narrows it.
BACKENDS ?= tensorflow jax torch
# pytest-xdist processes per pass (a test file stays on one, so its module
# fixtures run once); WORKERS=0 runs in one process.
WORKERS ?= 2
XDIST := -n $(WORKERS) --dist loadfile
# The PyTorch CPU build (a plain `torch` requirement pulls a multi-GB CUDA build).
TORCH ?= torch==2.13.0

# The lowest Keras the package supports (keras_gradmix/compat.py): `make test-keras-min`
# runs, on it, the TensorFlow tests of everything that touches Keras' private API
# (the steps, the wrapper, objectives, contrastive recipe, saving, resuming, errors),
# installed beside the newest in .keras-min/.
KERAS_MIN_TESTS ?= tests/test_compat.py tests/test_steps.py tests/test_model.py \
	tests/test_objectives.py tests/test_contrastive.py tests/test_resume.py \
	tests/test_errors.py tests/test_cost_controls.py tests/test_tokens.py
KERAS_MIN := $(shell sed -n 's/^KERAS_MIN = "\(.*\)"/\1/p' keras_gradmix/compat.py)

# The next Keras (`make test-keras-next`): the newest keras-nightly, installed
# beside the pinned Keras in .keras-next/, runs the tests of the step, saving,
# the compat layer and distribution (PyTorch DDP among them) on NEXT_BACKENDS.
KERAS_NEXT_TESTS ?= tests/test_compat.py tests/test_steps.py tests/test_model.py \
	tests/test_resume.py tests/test_deploy.py tests/test_distribute.py
NEXT_BACKENDS ?= torch

.PHONY: venv venv-demo test test-keras-min test-keras-next demo docs package clean

# `make demo` installs what the demo needs (TensorFlow and the data extras);
# `make test` adds the other backends and the test tools to the same .venv.
venv-demo: $(VENV)/.demo
venv: $(VENV)/.installed

$(VENV)/.demo: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[examples]"
	touch $@

# aeon without its dependencies: the tests read the UCR/UEA files inside its
# wheel (benchmarks/timeseries.py); its numba pin would move NumPy.
$(VENV)/.installed: $(VENV)/.demo
	$(PY) -m pip install --quiet -e ".[test,examples,jax]" "$(TORCH)"
	$(PY) -m pip install --quiet --no-deps aeon
	touch $@

$(VENV)/.docs: $(VENV)/.demo
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

# Tests marked backend_free (pure NumPy, docs, TensorFlow-only ops) run in the
# first pass only; --durations lists each pass's slowest tests.
test: venv
	@skip=; for backend in $(BACKENDS); do \
		echo "== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend SKIP_BACKEND_FREE=$$skip $(PY) -m pytest -q $(XDIST) --durations=15 tests || exit 1; \
		skip=1; \
	done

test-keras-min: venv
	$(PY) -m pip install --quiet --no-deps --upgrade --target .keras-min "keras==$(KERAS_MIN)"
	@echo "== KERAS_BACKEND=tensorflow, keras $(KERAS_MIN)"
	PYTHONPATH=.keras-min KERAS_BACKEND=tensorflow $(PY) -m pytest -q $(XDIST) $(KERAS_MIN_TESTS)

test-keras-next: venv
	$(PY) -m pip install --quiet --no-deps --upgrade --target .keras-next keras-nightly
	@for backend in $(NEXT_BACKENDS); do \
		echo "== KERAS_BACKEND=$$backend, keras $$(PYTHONPATH=.keras-next $(PY) -c 'import keras; print(keras.__version__)')"; \
		PYTHONPATH=.keras-next KERAS_BACKEND=$$backend $(PY) -m pytest -q $(XDIST) $(KERAS_NEXT_TESTS) || exit 1; \
	done

demo: venv-demo
	KERAS_BACKEND=tensorflow $(PY) examples/quickstart.py

# The documentation site from docs/ and the docstrings; broken references fail.
docs: $(VENV)/.docs
	$(VENV)/bin/mkdocs build --strict --quiet

# Wheel and sdist, twine check, and the wheel installed alone into a fresh venv
# (only the tensorflow extra) that trains a tiny model.
package: $(VENV)/.docs
	bash .ci/package-check

clean:
	rm -rf $(VENV) .keras-min .keras-next build dist site *.egg-info .pytest_cache
