import numpy as np
import pytest
from conftest import functional_cnn, nested_cnn, sequential_cnn, subclassed_cnn, to_numpy

from keras_gradmix import LayerTap, iter_layers, resolve_layer


def test_iter_layers_walks_into_nested_models():
    paths = [p for p, _ in iter_layers(nested_cnn())]
    assert paths == [
        "backbone",
        "backbone/conv1",
        "backbone/pool",
        "backbone/conv2",
        "gap",
        "logits",
    ]


def test_resolve_nested_path():
    model = nested_cnn()
    layer = resolve_layer(model, "backbone/conv2")
    assert layer is model.get_layer("backbone").get_layer("conv2")


def test_unknown_layer_lists_4d_candidates():
    with pytest.raises(ValueError) as err:
        resolve_layer(nested_cnn(), "backbone/conv9")
    message = str(err.value)
    assert "'conv9'" in message and "backbone/conv2" in message and "'gap'" not in message


def test_unknown_layer_in_subclassed_model_lists_all_layers():
    with pytest.raises(ValueError, match=r"Its layers: \['conv1', 'pool', 'conv2'"):
        resolve_layer(subclassed_cnn(), "conv3")


def mobilenet():
    """A keras.applications backbone inside a model: its layers sit under an
    auto-generated name ('mobilenetv2_0.35_32/block_13_expand_relu')."""
    import keras

    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                              include_top=False)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(h)), backbone


def test_a_bare_name_unique_anywhere_finds_the_nested_layer():
    model, backbone = mobilenet()
    assert resolve_layer(model, "block_13_expand_relu") is backbone.get_layer("block_13_expand_relu")
    model = nested_cnn()
    assert resolve_layer(model, "conv2") is model.get_layer("backbone").get_layer("conv2")


def test_an_ambiguous_bare_name_lists_its_paths():
    import keras

    inputs = keras.Input((28, 28, 1))
    a, b = sequential_cnn(), sequential_cnn()
    a.name, b.name = "left", "right"
    model = keras.Model(inputs, keras.layers.Add()([a(inputs), b(inputs)]))
    with pytest.raises(ValueError, match=r"'conv2' is ambiguous .*\['left/conv2', 'right/conv2'\]"):
        resolve_layer(model, "conv2")


def test_an_unknown_name_lists_ten_candidates_near_the_output():
    model, backbone = mobilenet()
    with pytest.raises(ValueError) as err:
        resolve_layer(model, "block_13_expand_reluu")
    message = str(err.value)
    assert len(message) < 1200, len(message)  # was 6.5 kB: 154 paths
    assert "Did you mean ['block_13_expand_relu'" in message
    shown = message.split("layers with a map: ")[1].split("]")[0]
    assert shown.count("'") == 20 and "out_relu" in shown and "iter_layers(model)" in message


def test_feature_layer_errors_name_features_not_maps():
    from keras_gradmix.osr.features import collect

    with pytest.raises(ValueError) as err:
        collect(sequential_cnn(), (np.zeros((2, 28, 28, 1), "float32"), None), feature_layer="gapp")
    message = str(err.value)
    assert "feature_layer='gapp'" in message and "2-D" in message and "layer=None" not in message
    assert "'gap'" in message  # every layer is a candidate for features


@pytest.mark.parametrize("factory", [sequential_cnn, functional_cnn, nested_cnn, subclassed_cnn])
def test_tap_records_the_layer_output_and_restores_the_layer(factory):
    model = factory()
    path = "backbone/conv2" if factory is nested_cnn else "conv2"
    layer = resolve_layer(model, path)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    with LayerTap({path: layer}) as tap:
        y = model(x)
    (recorded,) = tap.outputs[path]
    assert tuple(recorded.shape) == (2, 14, 14, 8)
    pooled = to_numpy(recorded).mean(axis=(1, 2))
    expected = model.get_layer("logits")(pooled)
    np.testing.assert_allclose(to_numpy(y), to_numpy(expected), rtol=1e-5, atol=1e-6)
    assert "call" not in layer.__dict__  # class method restored
    with LayerTap({path: layer}) as tap2:
        pass
    model(x)
    assert tap2.outputs[path] == []  # not recording once closed


def test_on_output_can_replace_the_activation():
    model = sequential_cnn()
    x = np.zeros((1, 28, 28, 1), "float32")
    with LayerTap({"conv2": model.get_layer("conv2")}, on_output=lambda a: a * 0.0 + 1.0):
        y = model(x)
    expected = model.get_layer("logits")(np.ones((1, 8), "float32"))
    np.testing.assert_allclose(to_numpy(y), to_numpy(expected), rtol=1e-6)


def test_a_bare_name_trains_exactly_like_its_full_path(mnist):
    import keras
    from conftest import sparse_ce

    from keras_gradmix import GradMixModel

    x, y = mnist[0][:16], mnist[1][:16]
    weights = []
    for layer in ("conv2", "backbone/conv2"):
        model = nested_cnn()
        gm = GradMixModel(model, layer, seed=0)
        gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
        gm.train_on_batch(x, y)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def shrinking_cnn():
    """8x8 -> c1 4x4 -> c2 2x2 -> pad 3x3 (a padded row and column) -> c3 1x1:
    the shape of MobileNetV2 (block_13_pad) and ResNet50 (conv5) at 32x32."""
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c2"),
        keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad"),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="c3"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])


def test_layer_none_picks_no_padding_layer_and_no_1x1_map():
    import keras

    from keras_gradmix import GradMixModel
    from keras_gradmix.tap import candidate_layers, pick_layer

    model = shrinking_cnn()
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype="float32")
    with LayerTap(candidate_layers(model)) as tap:
        model(x)
    assert pick_layer(tap, (8, 8), model.name) == "c2"  # without data: the last spatial map
    gm = GradMixModel(model)
    gm.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gm.inspect_batch(x, np.array([0, 1, 2, 0]))
    assert gm.layer == "c2"  # from the first batch: the last non-flat one


def test_a_layer_with_1x1_maps_is_named_with_the_last_larger_layer():
    import keras

    from keras_gradmix import GradMixModel, attribution_maps

    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype="float32")
    gm = GradMixModel(shrinking_cnn(), layer="c3")
    gm.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"Layer 'c3' gives 1x1 maps at 8x8 inputs: .* The last "
                                         r"layer whose maps are larger is 'c2' \(2x2\)"):
        gm.fit(x, np.array([0, 1, 2, 0]), verbose=0)
    with pytest.raises(ValueError, match="Layer 'c3' gives 1x1 maps at 8x8 inputs"):
        attribution_maps(gm.model, x, layer="c3")  # no first-batch look: the step's own check
