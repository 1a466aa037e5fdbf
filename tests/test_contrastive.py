"""Contrastive losses against a straightforward NumPy loop over anchors."""

import numpy as np
import pytest
from conftest import to_numpy

from keras_gradmix.contrastive import l2_normalize, supcon_loss


def numpy_supcon(z, labels=None, t=0.07, base=0.07, z_pos=None):
    """The authors' definition, one anchor at a time, float64."""
    b, v, _ = z.shape
    flat = np.concatenate([z[:, i] for i in range(v)]).astype(np.float64)
    pos_flat = flat if z_pos is None else np.concatenate([z_pos[:, i] for i in range(v)]).astype(np.float64)
    ids = np.tile(np.arange(b), v)
    cls = ids if labels is None else np.tile(np.asarray(labels), v)
    losses = []
    for a in range(b * v):
        others = [k for k in range(b * v) if k != a]
        denominator = np.log(sum(np.exp(flat[a] @ flat[k] / t) for k in others))
        positives = [p for p in others if cls[p] == cls[a]]
        log_probs = [flat[a] @ pos_flat[p] / t - denominator for p in positives]
        losses.append(-(t / base) * np.mean(log_probs))
    return np.mean(losses)


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 2, 5)).astype("float32")
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def test_l2_normalize():
    z = to_numpy(l2_normalize(np.array([[3.0, 4.0], [0.0, 2.0]], "float32")))
    np.testing.assert_allclose(z, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1, 0]])
def test_supcon_and_simclr_match_the_definition(features, labels):
    got = float(to_numpy(supcon_loss(features, labels, temperature=0.1)))
    assert got == pytest.approx(numpy_supcon(features, labels, t=0.1), rel=1e-5)


def test_simclr_with_identical_views_is_smaller_than_with_random_views(features):
    same = np.repeat(features[:, :1], 2, axis=1)
    assert float(to_numpy(supcon_loss(same, temperature=0.1))) < float(
        to_numpy(supcon_loss(features, temperature=0.1)))


@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1, 0]])
def test_masked_positive_term_uses_the_clean_denominator(features, labels):
    rng = np.random.default_rng(1)
    mixed = rng.normal(size=features.shape).astype("float32")
    mixed /= np.linalg.norm(mixed, axis=-1, keepdims=True)
    got = float(to_numpy(supcon_loss(features, labels, temperature=0.05, base_temperature=0.07,
                                     positive_features=mixed)))
    expected = numpy_supcon(features, labels, t=0.05, base=0.07, z_pos=mixed)
    assert got == pytest.approx(expected, rel=1e-5)
    # Not the loss of the mixed features alone, nor of the clean ones.
    assert abs(got - numpy_supcon(features, labels, t=0.05, base=0.07)) > 1e-3


def test_bad_input_is_refused(features):
    with pytest.raises(ValueError, match=r"\(batch, views, dim\)"):
        supcon_loss(features[:, 0])
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(features, temperature=0.0)
