"""Subprocess side of the cross-backend test: one GradMix step on this backend.

    KERAS_BACKEND=jax python tests/cross_backend.py IN.npz OUT.npz

IN.npz holds the model's weights and a batch; OUT.npz gets, per configuration,
the preview maps and masks, the first step's loss and the weights after it.
Random draws differ between backends' generators, so the configurations use a
fixed mask area and a constant fill: the masks depend on the attribution only.
"""

import sys

import keras
import numpy as np

from conftest import sequential_cnn

CONFIGS = {
    "paired-layercam": dict(attribution="layercam", mode="paired"),
    "replace-gradcam++-loss": dict(attribution="gradcam++", mode="replace", target="loss"),
}
SAMPLE_WEIGHT = {"paired-layercam": True}


def main(inputs, out):
    from keras_gradmix import GradMixModel

    data = np.load(inputs)
    x, y = data["x"], data["y"]
    result = {"backend": keras.backend.backend()}
    for name, options in CONFIGS.items():
        model = sequential_cnn(bn=True)
        model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
        gm = GradMixModel(model, "conv2", mask_area=(0.25, 0.25), fill=0.5, seed=0, **options)
        gm.compile(optimizer=keras.optimizers.SGD(0.1),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        preview = gm.preview(x, y)
        result[f"{name}/maps"] = keras.ops.convert_to_numpy(preview.maps)
        result[f"{name}/mask"] = keras.ops.convert_to_numpy(preview.mask)
        sample_weight = data["sample_weight"] if SAMPLE_WEIGHT.get(name) else None
        result[f"{name}/loss"] = gm.train_on_batch(x, y, sample_weight=sample_weight)
        for i, w in enumerate(model.weights):
            result[f"{name}/w{i}"] = keras.ops.convert_to_numpy(w)
    np.savez(out, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
