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
