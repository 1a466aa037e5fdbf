"""A wrapper's weights file, loaded into the plain model in one call.

``ModelCheckpoint(save_weights_only=True)`` during ``fit`` saves the
:class:`~keras_gradmix.GradMixModel`'s weights: the wrapped model's and
GradMix's own state (seed generator, epoch), so that training resumes exactly.
That layout does not load into the plain model by itself (Keras: "expected 0
variables, but received 2"); :func:`load_wrapped_weights` does::

    plain = build_model()
    keras_gradmix.load_wrapped_weights(plain, "gradmix.weights.h5")
    plain.save_weights("classifier.weights.h5")   # a plain model's file, if wanted
"""

from __future__ import annotations

import keras

from keras_gradmix.model import GradMixModel


def load_wrapped_weights(model: keras.Model, filepath: str) -> keras.Model:
    """Loads the weights file of a ``GradMixModel`` that wrapped a model like
    ``model`` (same architecture) into ``model``; returns ``model``.

    The wrapper's own state in the file (seed generator, epoch) is read and
    dropped. Works for the ``.weights.h5`` files of ``save_weights`` and
    ``ModelCheckpoint(save_weights_only=True)``.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"load_wrapped_weights loads into a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"Build {model.name!r} first (call it on a batch, or give it an Input): its "
            f"variables must exist to receive the weights.")
    GradMixModel(model).load_weights(filepath)
    return model
