"""The standard open-set splits and loaders for them."""

from keras_gradmix.data.loaders import OSRData, load_osr_split, read_idx
from keras_gradmix.data.splits import DATASETS, KNOWN, UNKNOWN_CIFAR100, osr_classes
from keras_gradmix.data.views import two_views

__all__ = ["DATASETS", "KNOWN", "OSRData", "UNKNOWN_CIFAR100", "load_osr_split", "osr_classes", "read_idx",
           "two_views"]
