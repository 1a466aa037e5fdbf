"""KerasHub models built from config (nothing downloaded): backbones addressed by
layer paths and pyramid levels, and an ImageClassifier task with its preprocessor."""

import keras
import numpy as np
import pytest
from conftest import sparse_ce, to_numpy

keras_hub = pytest.importorskip("keras_hub")

from keras_gradmix import GradMixModel  # noqa: E402


def vit_task(pooling="token"):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        name="vit")
    converter = keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=4, pooling=pooling,
                                               preprocessor=preprocessor)


@pytest.fixture
def raw_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (8, 32, 32, 3)).astype("float32"), np.arange(8) % 4


def test_a_vit_classifier_task_keeps_its_preprocessing_and_predictions(raw_images):
    x, y = raw_images
    task = vit_task()
    gm = GradMixModel(task, attribution="layercam", seed=0)
    assert gm.options.value_range == (0.0, 255.0)  # KerasHub converters take raw pixels
    expected = task.predict(x, verbose=0)  # the task applies its preprocessor itself
    tolerance = 1e-5 if keras.backend.backend() == "jax" else 0.0  # tf.data vs jax ops
    np.testing.assert_allclose(gm.predict(x, verbose=0), expected, atol=tolerance)
    gm.compile(optimizer="adam", loss=sparse_ce())
    history = gm.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # Class-token pooling: the first norm of the last block, not the encoder's output.
    assert gm.layer == "vit/vit_encoder/transformer_block_2/ln_1"
    preview = gm.preview(x, y)
    assert to_numpy(preview.applied).all()
    mask, images = to_numpy(preview.mask), to_numpy(preview.images)
    noise = images[mask]  # masked in raw pixels, not in the converter's [-1, 1]
    assert noise.min() >= 0 and noise.max() <= 255 and noise.max() > 100
    np.testing.assert_array_equal(images[~mask], x[~mask])


def test_the_encoder_output_of_a_class_token_vit_is_the_trap(raw_images):
    gm = GradMixModel(vit_task(), "vit/vit_encoder", attribution="layercam", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    with pytest.warns(UserWarning, match="transformer_block_2/ln_1"):
        gm.fit(*raw_images, batch_size=8, epochs=1, verbose=0)


def test_a_mean_pooled_vit_backbone_under_a_keras_head(raw_images):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
        mlp_dim=32, use_class_token=False)
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling1D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(pooled))
    layer = f"{backbone.name}/vit_encoder/transformer_block_2"
    gm = GradMixModel(model, layer, attribution="layercam", value_range=(0, 255), seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    assert np.isfinite(gm.fit(*raw_images, batch_size=4, epochs=1, verbose=0).history["loss"]).all()
    assert to_numpy(gm.preview(*raw_images).applied).all()


def test_a_resnet_backbone_by_its_pyramid_level(raw_images):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(pooled))
    gm = GradMixModel(model, f"{backbone.name}/P3", attribution="layercam", value_range=(0, 255), seed=0)
    with gm.tap() as tap:
        gm(raw_images[0])
    (activation,) = tap.outputs[f"{backbone.name}/P3"]
    assert tuple(activation.shape) == (8, 4, 4, 64)  # stack1_block0_out
    gm.compile(optimizer="adam", loss=sparse_ce())
    assert np.isfinite(gm.fit(*raw_images, batch_size=4, epochs=1, verbose=0).history["loss"]).all()
    assert to_numpy(gm.preview(*raw_images).applied).all()
