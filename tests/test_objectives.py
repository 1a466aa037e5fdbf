"""The classification objective's losses, against independent computations."""

import keras
import numpy as np
from reference import cross_entropy

from keras_gradmix import GradMixModel, MaskedBatch
from conftest import sequential_cnn


def test_mix_loss_mixes_labels_by_area():
    gm = GradMixModel(sequential_cnn(), "conv2", fill="mix", mode="replace")
    gm.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    kept = np.array([0.9, 0.5, 0.75, 0.6], "float32")
    partner = np.array([1, 0, 3, 2])
    masked = MaskedBatch(None, None, None, kept, 1 - kept, partner, None)
    loss = gm.gradmix_loss(None, y, None, None, logits, None, masked)
    labels = np.argmax(y, axis=1)
    expected = np.mean(
        kept * cross_entropy(logits, labels) + (1 - kept) * cross_entropy(logits, labels[partner])
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_paired_loss_weighs_only_masked_images_by_their_kept_area():
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.array([0, 2, 1])
    logits = np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
    kept = np.array([0.7, 0.6, 1.0], "float32")
    applied = np.array([True, True, False])
    masked = MaskedBatch(None, None, None, kept, None, None, applied)
    loss = gm.gradmix_loss(None, labels, None, 0.25, logits, np.array([1.0, 2.0, 1.0], "float32"), masked)
    expected = 0.25 + np.mean(np.array([0.7, 2 * 0.6, 0.0]) * cross_entropy(logits, labels))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
