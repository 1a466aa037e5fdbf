"""The contrastive recipe: losses against a per-anchor NumPy loop, and the trainer."""

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keras_gradmix.contrastive import GradMixContrastive, SupConModel, l2_normalize, supcon_loss


def numpy_supcon(z, labels=None, t=0.07, base=0.07, z_pos=None, weights=None):
    """The authors' definition, one anchor at a time, float64; ``weights``
    (per image) scale the terms of that image's anchors."""
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
        weight = 1.0 if weights is None else weights[a % b]
        losses.append(-(t / base) * weight * np.mean(log_probs))
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


# ------------------------------------------------------------ the trainer
def small_encoder(seed=0, regularizer=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(16, kernel_regularizer=regularizer),
    ])


@pytest.fixture(scope="module")
def views(mnist):
    rng = np.random.default_rng(0)
    x, y = mnist[0][:256], mnist[1][:256]
    noisy = [np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1) for _ in range(2)]
    return np.stack(noisy, axis=1).astype("float32"), y


@pytest.mark.parametrize("supcon_positives", [False, True])
def test_one_step_loss_is_the_recipe(views, supcon_positives):
    x, y = views[0][:8], views[1][:8]
    options = dict(mask_area=(0.25, 0.25), fill=0.5, temperature=0.1, base_temperature=0.07,
                   supcon_weight=0.7, ssl_weight=1.3, supcon_positives=supcon_positives)
    gm = GradMixContrastive(small_encoder(), "conv2", seed=0, **options)
    gm.compile(optimizer=keras.optimizers.SGD(0.0))
    loss = gm.train_on_batch(x, y, return_dict=True)["loss"]

    # By hand: features of both views, masks from preview (no BatchNorm, a fixed
    # area and a constant fill, so they are the step's masks).
    flat = np.concatenate([x[:, 0], x[:, 1]])
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    two = lambda z: np.stack([z[:8], z[8:]], axis=1)  # noqa: E731
    z = two(unit(to_numpy(gm.model(flat))))
    preview = gm.preview(x, y)
    mask = to_numpy(preview.mask)
    assert mask[:8].any() and not mask[8:].any()  # view 1 masked, view 2 clean
    z_mixed = two(unit(to_numpy(gm.model(to_numpy(preview.images)))))
    kept = 1 - mask[:8].mean(axis=(1, 2))  # each image's anchors, weighted by view 1's kept area
    expected = 0.7 * numpy_supcon(z, y, t=0.1) + 1.3 * (
        numpy_supcon(z, t=0.1) + numpy_supcon(z, t=0.1, z_pos=z_mixed, weights=kept))
    if supcon_positives:
        expected += 0.7 * numpy_supcon(z, y, t=0.1, z_pos=z_mixed, weights=kept)
    assert loss == pytest.approx(expected, rel=1e-4)


def test_attribution_target_is_the_unsupervised_loss_of_the_clean_views(views):
    x, y = views[0][:8], views[1][:8]
    gm = GradMixContrastive(small_encoder(), "conv2", attribution_temperature=0.2)
    gm.compile(optimizer="sgd")
    y_pred = gm(x)
    assert tuple(y_pred.shape) == (16, 16)
    z = to_numpy(y_pred)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    score = float(to_numpy(gm.attribution_score(y, y_pred, None)))
    assert score == pytest.approx(numpy_supcon(np.stack([z[:8], z[8:]], 1), t=0.2), rel=1e-5)


def test_contrastive_training_loss_falls_on_real_digits(views):
    gm = GradMixContrastive(small_encoder(), "conv2", seed=0)
    gm.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = gm.fit(*views, batch_size=64, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.3


def test_contrastive_errors_and_config(views):
    with pytest.raises(ValueError, match="fill='mix'"):
        GradMixContrastive(small_encoder(), "conv2", fill="mix")
    with pytest.raises(ValueError, match=r"trains with .*'mode': 'paired'.*got \{'mode': 'replace'\}"):
        GradMixContrastive(small_encoder(), "conv2", mode="replace")
    gm = GradMixContrastive(small_encoder(), "conv2")
    gm.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="compile with an optimizer only"):
        gm.train_on_batch(*[v[:4] for v in views])
    with pytest.raises(ValueError, match="attribution_temperature must be > 0"):
        GradMixContrastive(small_encoder(), "conv2", attribution_temperature=0)
    gm = GradMixContrastive(small_encoder(), "conv2", supcon_positives=True, temperature=0.2)
    gm.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"two views per image, shape \(batch, 2"):
        gm.train_on_batch(views[0][:4, 0], views[1][:4])
    again = GradMixContrastive.from_config(gm.get_config())
    assert again.get_config() == gm.get_config() and again.objective.temperature == 0.2


def test_supcon_baseline_step_loss_and_training(views):
    x, y = views
    model = SupConModel(small_encoder(), temperature=0.1, supcon_weight=0.7, ssl_weight=1.3)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    loss = model.train_on_batch(x[:8], y[:8], return_dict=True)["loss"]
    flat = np.concatenate([x[:8, 0], x[:8, 1]])
    z = to_numpy(model.model(flat))
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    z = np.stack([z[:8], z[8:]], axis=1)
    expected = 0.7 * numpy_supcon(z, y[:8], t=0.1) + 1.3 * numpy_supcon(z, t=0.1)
    assert loss == pytest.approx(expected, rel=1e-4)
    model = SupConModel(small_encoder())
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(x, y, batch_size=64, epochs=3, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.3


def test_unmasked_images_add_no_masked_positive_term(views):
    """During warm-up nothing is masked: the loss is exactly SupConModel's."""
    x, y = views[0][:16], views[1][:16]
    options = dict(temperature=0.1, supcon_weight=0.7, ssl_weight=1.3)
    gm = GradMixContrastive(small_encoder(), "conv2", seed=0, warmup_epochs=1,
                            supcon_positives=True, **options)
    gm.compile(optimizer=keras.optimizers.SGD(0.0))
    baseline = SupConModel(small_encoder(), **options)
    baseline.compile(optimizer=keras.optimizers.SGD(0.0))
    for a, b in zip(gm.model.get_weights(), baseline.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    loss = gm.train_on_batch(x, y, return_dict=True)["loss"]
    assert loss == pytest.approx(baseline.train_on_batch(x, y, return_dict=True)["loss"], rel=1e-6)
    # Past the warm-up the masked-positive terms count.
    gm.epoch.assign(1)
    assert gm.train_on_batch(x, y, return_dict=True)["loss"] > loss + 1e-3


def test_evaluate_and_predict_a_compiled_contrastive_model(views):
    x, y = views[0][:16], views[1][:16]
    gm = GradMixContrastive(small_encoder(), "conv2", seed=0)
    gm.compile(optimizer=keras.optimizers.SGD(0.0))
    baseline = SupConModel(small_encoder())
    baseline.compile(optimizer=keras.optimizers.SGD(0.0))
    value = gm.evaluate(x, y, batch_size=16, verbose=0)
    assert value == pytest.approx(baseline.evaluate(x, y, batch_size=16, verbose=0), rel=1e-6)
    assert gm.predict(x[:, 0], verbose=0).shape == (16, 16)  # features of single images


def test_regularisation_losses_enter_the_contrastive_loss(views):
    x, y = views[0][:8], views[1][:8]
    encoder = small_encoder(regularizer=keras.regularizers.L2(1.0))
    plain = SupConModel(small_encoder())
    with_reg = SupConModel(encoder)
    for model in (plain, with_reg):
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    kernel = encoder.layers[-1].kernel
    penalty = float(np.sum(to_numpy(kernel) ** 2))
    difference = with_reg.train_on_batch(x, y) - plain.train_on_batch(x, y)
    assert difference == pytest.approx(penalty, rel=1e-4)
