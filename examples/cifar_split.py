"""The CIFAR-10 open-set split the CIFAR examples train on, with a --smoke mode."""

from __future__ import annotations

import contextlib

from keras_gradmix.data import OSRData, load_osr_split


@contextlib.contextmanager
def cifar10_split(args):
    """The CIFAR-10 open-set split ``args.split``, as ``(data, evaluation,
    steps, steps_per_epoch)``: ``data`` from :func:`load_osr_split`,
    ``evaluation`` the same three datasets for the evaluation callbacks,
    ``steps`` for ``fit`` (None: whole epochs). With ``args.smoke``: tfds mock
    data (offline), width 8, batch 16, one epoch of 2 steps, evaluation on 2
    batches after every epoch (``args`` is updated)."""
    steps, mock = None, contextlib.nullcontext()
    if args.smoke:
        import tensorflow_datasets as tfds

        mock = tfds.testing.mock_data(num_examples=64)
        args.epochs, args.width, args.batch_size, args.eval_every, steps = 1, 8, 16, 1, 2
    with mock:
        data = load_osr_split("cifar10", args.split, batch_size=args.batch_size,
                              data_dir=args.data_dir)
        evaluation = OSRData(*(d.take(2) for d in data)) if args.smoke else data
        yield data, evaluation, steps, steps or sum(1 for _ in data.known_train)
