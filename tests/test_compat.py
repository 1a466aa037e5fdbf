"""Keras' private API is reached through keras_gradmix.compat only, and the
supported Keras range is declared once."""

import re
from pathlib import Path

import keras

from keras_gradmix import compat

PACKAGE = Path(__file__).resolve().parents[1] / "keras_gradmix"
PRIVATE = re.compile(
    r"keras\.src|\._compile_loss|_loss_tracker|_update_metrics_variables|_flatten_layers"
    r"|_losses_override|\._compute_loss\b|_keras_history|_outbound_nodes"
)


def test_private_keras_api_only_in_the_compat_module():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "compat.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert offenders == []


def test_the_declared_keras_range_is_pyproject_s():
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'"keras{compat.KERAS_RANGE}"' in pyproject
    assert compat._version(keras.__version__) >= compat._version(compat.KERAS_MIN)
