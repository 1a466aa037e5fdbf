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
    encoder = lean_cnn((28, 28, 1), 6, seed=0, projection=True)
    assert tuple(encoder.output.shape) == (None, 32) and encoder.get_layer("features")


def test_small_cnn_is_seeded():
    a, b = small_cnn(3), small_cnn(3)
    assert all((x == y).all() for x, y in zip(a.get_weights(), b.get_weights()))
    assert tuple(a.get_layer("conv2").output.shape[1:]) == (14, 14, 32)
