"""Transformer token outputs as feature maps: grids, the class-token trap, layer=None."""

import warnings

import keras
import numpy as np
import pytest
from conftest import sparse_ce, to_numpy, xla_only

from keras_gradmix import GradMixModel, maps_from_gradients
from keras_gradmix.tokens import token_grid, tokens_to_map


@pytest.mark.parametrize(
    "tokens,size,expected",
    [
        (17, (32, 32), (1, (4, 4))),  # class token + 4x4 patches
        (197, (224, 224), (1, (14, 14))),  # ViT-B/16
        (198, (224, 224), (2, (14, 14))),  # DeiT: class + distillation
        (201, (224, 224), (5, (14, 14))),  # class + 4 registers
        (49, (28, 28), (0, (7, 7))),  # mean-pooled, no prefix
        (45, (20, 36), (0, (5, 9))),  # non-square image
    ],
)
def test_token_grid_is_inferred_from_the_count_and_aspect(tokens, size, expected):
    assert token_grid(tokens, size) == expected


def test_token_grid_options_and_errors():
    assert token_grid(17, (32, 32), prefix=1) == (1, (4, 4))
    assert token_grid(26, (32, 32), grid=(5, 5)) == (1, (5, 5))
    with pytest.raises(ValueError, match=r"No patch grid fits a layer output of 12 tokens.*token_grid="):
        token_grid(12, (32, 32), prefix=1)
    with pytest.raises(ValueError, match=r"token_grid=\(4, 4\) with prefix_tokens=2 does not fit"):
        token_grid(17, (32, 32), prefix=2, grid=(4, 4))


def test_tokens_become_the_patch_grid_in_raster_order():
    tokens = np.arange(2 * 7 * 3, dtype="float32").reshape(2, 7, 3)  # 1 prefix + 2x3 grid
    out = to_numpy(tokens_to_map(tokens, 1, (2, 3)))
    np.testing.assert_array_equal(out, tokens[:, 1:].reshape(2, 2, 3, 3))
    np.testing.assert_array_equal(out[1, 1, 0], tokens[1, 4])  # row 1, column 0 = patch 3


@pytest.mark.parametrize("method", ["gradcam", "layercam", "gradcam++"])
def test_token_maps_equal_the_maps_of_the_reshaped_tokens(method):
    rng = np.random.default_rng(0)
    acts, grads = rng.random((2, 17, 5)), rng.normal(size=(2, 17, 5))
    gm = GradMixModel(tiny_vit(), "add2", attribution=method, fill=0.0, mask_area=(0.25, 0.25))
    images = np.zeros((2, 28, 28, 1), "float32")
    out = gm.masked_batch(images, [acts.astype("float32")], [grads.astype("float32")], seed=0)
    as_map = [a[:, 1:].reshape(2, 4, 4, 5).astype("float32") for a in (acts, grads)]
    expected = maps_from_gradients(*as_map, (28, 28), method)
    np.testing.assert_allclose(to_numpy(out.maps), to_numpy(expected), atol=1e-6)


def tiny_vit(classes=10, seed=0, class_token=False):
    """4x4 patches of a 28x28 image (a 7x7 grid), two attention blocks; pooled
    by the mean of the tokens, or by a class token (read from the last block)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    patches = keras.layers.Conv2D(16, 4, strides=4, name="patches")(inputs)
    x = keras.layers.Reshape((49, 16), name="tokens")(patches)
    if class_token:
        x = ClassToken(name="class_token")(x)
    for i in (1, 2):
        h = keras.layers.LayerNormalization(name=f"norm{i}")(x)
        h = keras.layers.MultiHeadAttention(2, 8, name=f"mha{i}")(h, h)
        x = keras.layers.Add(name=f"add{i}")([x, h])
    if class_token:
        x = keras.layers.Lambda(lambda t: t[:, 0], name="pool")(x)
    else:
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x), name="tiny_vit")


class ClassToken(keras.layers.Layer):
    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="random_normal")

    def call(self, x):
        token = keras.ops.broadcast_to(self.token, (keras.ops.shape(x)[0], 1, x.shape[-1]))
        return keras.ops.concatenate([token, x], axis=1)


@pytest.mark.parametrize("class_token,layer", [(False, "add2"), (True, "norm2")])
def test_a_hand_built_vit_trains_with_non_flat_maps(batch, class_token, layer):
    gm = GradMixModel(tiny_vit(class_token=class_token), layer, attribution="layercam", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="GradMix")  # no flat-map warning here
        history = gm.fit(*batch, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    preview = gm.preview(*batch)
    assert to_numpy(preview.applied).all()
    assert to_numpy(preview.mask).any(axis=(1, 2)).all()


def test_layer_none_on_token_models_picks_a_layer_with_non_flat_maps(batch):
    gm = GradMixModel(tiny_vit(), seed=0, attribution="layercam")
    gm.compile(optimizer="adam", loss=sparse_ce())
    gm.fit(*batch, batch_size=8, epochs=1, verbose=0)
    assert gm.layer == "add2"  # mean pooling: the last block's output; never 'mha2/value'
    trap = GradMixModel(tiny_vit(class_token=True), seed=0, attribution="layercam")
    trap.compile(optimizer="adam", loss=sparse_ce())
    trap.fit(*batch, batch_size=8, epochs=1, verbose=0)
    assert trap.layer == "norm2"  # class token: the input of the last block's attention


def test_the_class_token_trap_is_named_once(batch):
    gm = GradMixModel(tiny_vit(class_token=True), "add2", seed=0, attribution="layercam")
    gm.compile(optimizer="adam", loss=sparse_ce())
    with pytest.warns(UserWarning, match=r"layer='add2' is flat on the first batch.*class token.*layer='norm2'"):
        gm.fit(*batch, batch_size=8, epochs=1, verbose=0)
    assert not to_numpy(gm.preview(*batch).applied).any()  # indeed nothing masked
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="GradMix")
        gm.fit(*batch, batch_size=8, epochs=1, verbose=0)  # once


def test_several_token_layers_and_an_explicit_grid(batch):
    gm = GradMixModel(tiny_vit(class_token=True), ["norm1", "norm2"], prefix_tokens=1,
                      token_grid=(7, 7), attribution="gradcam++", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    assert np.isfinite(gm.fit(*batch, batch_size=4, epochs=1, verbose=0).history["loss"]).all()
    wrong = GradMixModel(tiny_vit(), "add2", token_grid=(5, 5), seed=0)
    wrong.compile(optimizer="adam", loss=sparse_ce())
    with pytest.raises(ValueError, match=r"token_grid=\(5, 5\)"):
        wrong.train_on_batch(*batch)


@xla_only
@pytest.mark.parametrize("method", ["gradcam", "layercam", "gradcam++"])
def test_token_models_compile_with_xla(batch, method):
    gm = GradMixModel(tiny_vit(class_token=True), ["norm1", "norm2"], attribution=method, seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce(), jit_compile=True)
    assert np.isfinite(gm.fit(*batch, batch_size=4, epochs=1, verbose=0).history["loss"]).all()
