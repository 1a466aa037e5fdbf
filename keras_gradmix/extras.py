"""Optional dependencies: a clear error naming the extra that installs them.

Training (``GradMixModel``, the maths) needs only Keras and NumPy. Open-set
evaluation (``keras_gradmix.osr``) needs SciPy and scikit-learn (the ``osr``
extra); pictures need matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import importlib

EXTRAS = {"scipy": "osr", "sklearn": "osr", "matplotlib": "plots", "tensorboard": "tensorboard"}
PACKAGES = {"sklearn": "scikit-learn"}


def require(*modules: str, feature: str) -> None:
    """Imports ``modules`` or raises an ImportError naming the extra to install."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        extras = sorted({EXTRAS.get(m, m) for m in missing})
        packages = ", ".join(PACKAGES.get(m, m) for m in missing)
        raise ImportError(
            f"{feature} needs {packages}: pip install {packages.replace(', ', ' ')} (the "
            f"keras-gradmix extra {', '.join(f'[{e}]' for e in extras)}).")
