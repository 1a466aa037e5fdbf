"""The benchmarks' shared recipes (keras_gradmix.experiments)."""

import numpy as np
import pytest
from conftest import tf_only

pytestmark = tf_only("the recipes build tf.data pipelines")


@pytest.mark.parametrize("method", ["cutmix", "mixup"])
def test_cutmix_and_mixup_batches_repeat_with_the_seed(method):
    import tensorflow as tf

    from keras_gradmix.experiments import one_hot_batches

    x = np.random.RandomState(0).rand(512, 8, 8, 1).astype("float32")
    y = np.random.RandomState(1).randint(0, 6, 512)

    def batches(seed):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
        return [np.concatenate([b[i].numpy().ravel() for b in one_hot_batches(ds, 6, method, seed)])
                for i in (0, 1)]

    first, again, other = batches(0), batches(0), batches(1)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert not np.array_equal(first[0], x.ravel())  # the images were mixed


def test_open_set_arrays_keep_the_first_images_of_each_known_class():
    from keras_gradmix.data import load_arrays, osr_classes
    from keras_gradmix.experiments import open_set_arrays

    data = open_set_arrays("mnist5k", 0, per_class=3)
    known, _ = osr_classes("mnist5k", 0)
    raw = load_arrays("mnist5k")
    x, y = data["train"]
    assert x.shape == (3 * len(known), 28, 28, 1) and x.dtype == np.float32 and x.max() <= 1.0
    expected = np.sort(np.concatenate([np.flatnonzero(raw["y_train"] == c)[:3] for c in known]))
    np.testing.assert_array_equal(x[..., 0] * 255.0, raw["x_train"][expected].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(known)[y], raw["y_train"][expected])
    unknown_count = int((~np.isin(raw["y_test"], known)).sum())
    assert len(data["unknown_test"]) == unknown_count
    assert set(np.unique(data["known_test"][1])) == set(range(len(known)))


def test_shuffled_batches_depend_on_the_seed_alone():
    import keras

    from keras_gradmix.experiments import shuffled_batches

    x = np.arange(64, dtype=np.float32)[:, None]
    y = np.arange(64)

    def order(seed, before):
        keras.utils.set_random_seed(before)  # what an earlier run left behind
        epochs = shuffled_batches(x, y, seed, 16).repeat(2)
        return np.concatenate([b[1].numpy() for b in epochs])

    first = order(0, before=1)
    assert np.array_equal(first, order(0, before=2))
    assert not np.array_equal(first[:64], first[64:])  # reshuffled every epoch
    assert sorted(first[:64]) == list(range(64))
    assert not np.array_equal(first, order(1, before=1))
