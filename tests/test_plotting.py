import glob

import numpy as np
import pytest
import tensorflow as tf
from conftest import mnist_cnn, sequential_cnn, sparse_ce
from matplotlib.image import imread

from keras_gradmix import GradMixModel, MaskPreview, plot_masks


def test_plot_masks_writes_a_grid_of_the_promised_size(tmp_path, mnist):
    gm = GradMixModel(mnist_cnn(), "conv2", seed=0)
    path = plot_masks(gm, mnist[0][:5], mnist[1][:5], tmp_path / "sub" / "masks.png",
                      cell_inches=1.5, dpi=40)
    image = imread(path)
    assert image.shape[:2] == (5 * 60, 4 * 60)  # rows x 4 columns of 1.5 in at 40 dpi
    assert image[..., :3].std() > 0.05  # not blank


def test_plot_masks_rgb_and_max_samples(tmp_path):
    x = np.random.default_rng(0).random((12, 16, 20, 3)).astype("float32")
    gm = GradMixModel(sequential_cnn(input_shape=(16, 20, 3)), "conv2", mask="threshold")
    image = imread(plot_masks(gm, x, np.arange(12) % 10, tmp_path / "rgb.png", max_samples=3, dpi=50))
    assert image.shape[:2] == (3 * 80, 4 * 80)


def test_plot_masks_rejects_a_non_batch(tmp_path):
    gm = GradMixModel(mnist_cnn(), "conv2")
    with pytest.raises(ValueError, match="non-empty batch of images"):
        plot_masks(gm, np.zeros((28, 28, 1)), [1], tmp_path / "x.png")


def test_preview_changes_neither_model_nor_training_rng(mnist):
    model = sequential_cnn(bn=True)
    gm = GradMixModel(model, "conv2", seed=0)
    weights = [w.copy() for w in model.get_weights()]  # includes BN moving statistics
    state = gm.seed_generator.state.numpy().copy()
    gm.preview(mnist[0][:8], mnist[1][:8])
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state, gm.seed_generator.state.numpy())


def test_mask_preview_callback_writes_pngs_and_tensorboard_images(tmp_path, mnist):
    x, y = mnist[0][:64], mnist[1][:64]
    gm = GradMixModel(mnist_cnn(), "conv2", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    callback = MaskPreview(x[:4], y[:4], tmp_path / "masks", every=2, log_dir=tmp_path / "logs")
    gm.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[callback])
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["masks_epoch_002.png", "masks_epoch_004.png"]
    steps = []
    for events in glob.glob(str(tmp_path / "logs" / "events*")):
        for event in tf.compat.v1.train.summary_iterator(events):
            steps += [event.step for v in event.summary.value if v.tag == "gradmix/masks"]
    assert steps == [2, 4]


def test_mask_preview_needs_a_gradmix_model(tmp_path, batch):
    model = sequential_cnn()
    model.compile(optimizer="sgd", loss=sparse_ce())
    with pytest.raises(ValueError, match="not a GradMixModel"):
        model.fit(*batch, epochs=1, verbose=0, callbacks=[MaskPreview(*batch, tmp_path)])


def test_tensorboard_images_need_tensorboard(tmp_path, batch, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        MaskPreview(*batch, tmp_path, log_dir=tmp_path / "logs")


def test_plot_masks_captions_say_where_the_mask_sits():
    from keras_gradmix.plotting import _caption

    assert _caption(GradMixModel(sequential_cnn(), "conv2")) == (
        "layercam at conv2, 0 (blue) to 1 (red); mask: a box at the map's peak")
    control = GradMixModel(sequential_cnn(), ["conv1", "conv2"], mask="threshold", placement="random")
    assert _caption(control).endswith("conv1, conv2, 0 (blue) to 1 (red); mask: as many pixels at "
                                      "random (the control)")
