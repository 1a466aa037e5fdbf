"""The standard open-set splits, loaders for them and synthetic OOD sets."""

from keras_gradmix.data.loaders import (
    OSRData,
    load_arrays,
    load_osr_split,
    mnist_digits,
    read_idx,
)
from keras_gradmix.data.ood import permuted_pixels, uniform_noise
from keras_gradmix.data.splits import DATASETS, KNOWN, UNKNOWN_CIFAR100, osr_classes
from keras_gradmix.data.views import two_views

__all__ = ["DATASETS", "KNOWN", "OSRData", "UNKNOWN_CIFAR100", "load_arrays", "load_osr_split",
           "mnist_digits", "osr_classes", "permuted_pixels", "read_idx", "two_views", "uniform_noise"]
