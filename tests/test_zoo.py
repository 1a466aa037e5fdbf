"""The shared models: the architectures the examples and benchmarks name."""

from keras_gradmix.zoo import lean_cnn, resnet18, small_cnn


def test_resnet18_is_the_cifar_resnet18_with_named_stages():
    model = resnet18()
    assert model.count_params() == 11_181_510  # CIFAR ResNet-18, 6-class head
    assert [tuple(model.get_layer(f"layer{i}").output.shape[1:3]) for i in (1, 2, 3, 4)] == [
        (32, 32), (16, 16), (8, 8), (4, 4)]


def test_lean_cnn_stages_and_heads():
    model = lean_cnn((28, 28, 1), 6, seed=0)
    assert [tuple(model.get_layer(f"stage{i}").output.shape[1:]) for i in (1, 2, 3)] == [
        (28, 28, 16), (14, 14, 32), (7, 7, 64)]
    assert tuple(model.output.shape) == (None, 6)
    assert tuple(small_cnn(0).get_layer("conv2").output.shape[1:]) == (14, 14, 32)
    encoder = lean_cnn((28, 28, 1), 6, seed=0, projection=True)
    assert tuple(encoder.output.shape) == (None, 32) and encoder.get_layer("features")


def same(a, b):
    return all((x == y).all() for x, y in zip(a.get_weights(), b.get_weights()))


def test_builders_are_seeded_without_touching_the_global_rng():
    import random

    import keras
    import numpy as np

    def global_state():
        return np.random.get_state()[1].copy(), random.getstate(), float(keras.random.uniform(()))

    keras.utils.set_random_seed(123)
    untouched = global_state()
    for build in (lambda s: small_cnn(s), lambda s: lean_cnn((28, 28, 1), 6, seed=s),
                  lambda s: resnet18(width=4, seed=s)):
        keras.utils.set_random_seed(123)
        a = build(3)
        numpy_state, python_state, keras_draw = global_state()
        assert (numpy_state == untouched[0]).all() and python_state == untouched[1]
        assert keras_draw == untouched[2]
        assert same(a, build(3)) and not same(a, build(4))
