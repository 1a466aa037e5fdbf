"""The backend train steps: the only code that differentiates.

Each module mirrors Keras' built-in ``train_step`` of its backend and calls
the hooks of :class:`~keras_gradmix.GradMixModel` in the same order.
"""

import keras


def backend_step():
    """The step module of the running backend (imported on demand: only one
    backend's framework needs to be installed)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from keras_gradmix.steps import tensorflow as step
    elif backend == "jax":
        from keras_gradmix.steps import jax as step
    elif backend == "torch":
        from keras_gradmix.steps import torch as step
    else:
        raise NotImplementedError(
            f"GradMixModel trains with the TensorFlow, JAX or PyTorch backend; "
            f"KERAS_BACKEND is {backend!r}."
        )
    return step
