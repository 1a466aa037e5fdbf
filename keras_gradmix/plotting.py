"""Pictures of what GradMix does: image | attribution | mask | trained image.

``plot_masks`` writes one PNG grid; ``MaskPreview`` is a callback that writes
one every N epochs during ``fit`` (and, given a log dir, TensorBoard images).
Uses matplotlib's Agg canvas directly, so it works headless and leaves
pyplot's global state alone.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_gradmix.extras import require
from keras_gradmix.model import GradMixModel

COLUMNS = ("image", "attribution", "mask", "trained image")


def _displayable(images, value_range):
    low, high = value_range
    images = np.clip((np.asarray(images, "float32") - low) / (high - low), 0.0, 1.0)
    return images[..., 0] if images.shape[-1] == 1 else images


def plot_masks(
    gm,
    images,
    labels,
    path: str,
    max_samples: int = 8,
    seed: int = 0,
    cell_inches: float = 1.6,
    dpi: int = 100,
) -> str:
    """Writes a PNG grid of what training does to ``images``; returns ``path``.

    One row per sample (at most ``max_samples``), four columns: the image, its
    attribution map over it, the mask, and the image the model is trained on;
    a colour bar of the map's scale (0 to 1) and a caption saying where the
    mask sits (the map's peak, or ``placement``) and the attribution used.
    The PNG is ``4 * cell_inches * dpi`` pixels wide and
    ``rows * cell_inches * dpi`` high. Uses :meth:`GradMixModel.preview`, so
    the model and its training RNG are left untouched.

    Examples:
        >>> plot_masks(gm, x_val[:8], y_val[:8], "masks.png")
    """
    require("matplotlib", feature="plot_masks")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.asarray(images)[:max_samples]
    labels = np.asarray(labels)[:max_samples]
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"plot_masks needs a non-empty batch of images (batch, height, width, "
            f"channels); got shape {images.shape}."
        )
    preview = gm.preview(images, labels, seed=seed)
    shown = _displayable(images, gm.options.value_range)
    trained = _displayable(keras.ops.convert_to_numpy(preview.images), gm.options.value_range)
    maps = keras.ops.convert_to_numpy(preview.maps)
    mask = keras.ops.convert_to_numpy(preview.mask)
    gray = shown.ndim == 3

    rows = len(images)
    figure = Figure(figsize=(len(COLUMNS) * cell_inches, rows * cell_inches), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(COLUMNS), squeeze=False)
    footer = 0.35 / rows  # room for the colour bar and the caption, about a third of a row
    figure.subplots_adjust(left=0.01, right=0.99, bottom=footer, top=0.95, wspace=0.05,
                           hspace=0.05)
    cmap = "gray" if gray else None
    for i in range(rows):
        axes[i, 0].imshow(shown[i], cmap=cmap, vmin=0, vmax=1)
        axes[i, 1].imshow(shown[i], cmap=cmap, vmin=0, vmax=1)
        heat = axes[i, 1].imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[i, 2].imshow(mask[i], cmap="gray", vmin=0, vmax=1)
        axes[i, 3].imshow(trained[i], cmap=cmap, vmin=0, vmax=1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, title in zip(axes[0], COLUMNS):
        ax.set_title(title, fontsize=8)
    box = axes[-1, 1].get_position()
    bar = figure.colorbar(heat, cax=figure.add_axes([box.x0, footer * 0.62, box.width, footer * 0.18]),
                          orientation="horizontal")
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    figure.text(0.5, footer * 0.08, _caption(gm), ha="center", va="bottom", fontsize=6)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return os.fspath(path)


def _caption(gm) -> str:
    """What the map is and where the mask sits, in words."""
    options = gm.options
    where = ({"peak": "a box at the map's peak", "random": "a box at a random place (the control)",
              "low": "a box at the map's least-attended place"} if options.mask == "box" else
             {"peak": "the map's highest pixels", "random": "as many pixels at random (the control)",
              "low": "the map's lowest pixels"})[options.placement]
    layers = ", ".join(gm.layer_paths or ["the layer chosen at the first batch"])
    return f"{options.attribution} at {layers}, 0 (blue) to 1 (red); mask: {where}"


class MaskPreview(keras.callbacks.Callback):
    """Writes :func:`plot_masks` grids of fixed samples during ``fit``.

    Args:
        images, labels: the samples to show (the first ``max_samples``).
        directory: where ``masks_epoch_001.png``, ... are written.
        every: write after every ``every``-th epoch.
        log_dir: optional TensorBoard log dir; the grid is also written there
            as an image summary ``gradmix/masks`` (needs the ``tensorboard``
            package: ``pip install keras-gradmix[tensorboard]``).
        max_samples, seed: as in :func:`plot_masks`.

    Examples:
        >>> gm.fit(ds, epochs=20, callbacks=[MaskPreview(x_val[:8], y_val[:8], "masks", every=5)])
    """

    def __init__(self, images, labels, directory: str, every: int = 1,
                 log_dir: str | None = None, max_samples: int = 8, seed: int = 0):
        super().__init__()
        if int(every) != every or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.images = np.asarray(images)[:max_samples]
        self.labels = np.asarray(labels)[:max_samples]
        if log_dir is not None:
            try:
                import tensorboard  # noqa: F401  tf.summary.image needs it
            except ImportError:
                raise ValueError(
                    "MaskPreview(log_dir=...) writes TensorBoard images and needs the "
                    "tensorboard package: pip install tensorboard (or "
                    "keras-gradmix[tensorboard]), or leave log_dir=None."
                ) from None
        self.directory = os.fspath(directory)
        self.every = int(every)
        self.log_dir = log_dir
        self.seed = seed
        self.paths: list[str] = []
        self._writer = None

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, GradMixModel):
            raise ValueError(
                f"MaskPreview shows GradMix masks; the model being trained is a "
                f"{type(self.model).__name__}, not a GradMixModel."
            )
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(os.fspath(self.log_dir))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        path = os.path.join(self.directory, f"masks_epoch_{epoch + 1:03d}.png")
        plot_masks(self.model, self.images, self.labels, path, seed=self.seed)
        self.paths.append(path)
        if self._writer is not None:
            import tensorflow as tf

            with open(path, "rb") as f:
                image = tf.io.decode_png(f.read(), channels=4)
            with self._writer.as_default():
                tf.summary.image("gradmix/masks", image[None], step=epoch + 1)
            self._writer.flush()
