"""Two augmented views per image, for contrastive training."""

from __future__ import annotations

from typing import Callable


def two_views(dataset, augment: Callable):
    """Maps a tf.data dataset of ``(images, labels)`` batches to
    ``(views, labels)`` with ``views`` of shape ``(B, 2, H, W, C)``: the same
    ``augment`` applied twice, each call with its own randomness (use random
    ops without a fixed op seed, or stateless ops fed by different seeds).

    Examples:

    ```python
    import tensorflow as tf
    flip = lambda x: tf.image.random_flip_left_right(x)
    pairs = two_views(tf.data.Dataset.from_tensor_slices((x, y)).batch(128), flip)
    ```
    """
    import tensorflow as tf

    def pair(images, labels):
        return tf.stack([augment(images), augment(images)], axis=1), labels

    return dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)
