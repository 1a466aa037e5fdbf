"""Does ``jit_compile=True`` (torch.compile) speed up Keras training on the PyTorch CPU backend?

Plain Keras training of the demo's small CNN (``keras_gradmix.zoo.small_cnn``,
batch 32 of 28 x 28 images), eager and with ``jit_compile=True``: the time of
the first ``fit`` call (tracing and compiling) and the median time per step
over further epochs. GradMix refuses ``jit_compile=True`` on PyTorch (its
attribution gradients do not trace); this measures whether that costs anything.
Writes torch_compile.{json,md} to --out.

    KERAS_BACKEND=torch python benchmarks/torch_compile.py
    KERAS_BACKEND=torch python benchmarks/torch_compile.py --smoke --out /tmp/tc   # eager only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.zoo import small_cnn  # noqa: E402


class StepTimes(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # synchronise
        self.times.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.times = []


def measure(jit: bool, images: int, epochs: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((images, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, images)
    model = small_cnn(0)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    start = time.perf_counter()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    first = time.perf_counter() - start
    timer = StepTimes()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[timer])
    return {"first_fit_s": first, "median_step_ms": 1e3 * statistics.median(timer.times),
            "steps": len(timer.times)}


def gradmix_refuses() -> str:
    try:
        GradMixModel(small_cnn(0), "conv2").compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    except ValueError as error:
        return str(error)
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true", help="eager only, 128 images, 1 epoch")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.epochs = 128, 1
    results = {"eager": measure(False, args.images, args.epochs)}
    if not args.smoke:
        results["jit_compile"] = measure(True, args.images, args.epochs)
    refusal = gradmix_refuses()
    meta = {"command": "KERAS_BACKEND=torch python benchmarks/torch_compile.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
            "versions": f"python {platform.python_version()}, keras {keras.__version__}, "
                        f"torch {torch.__version__}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                       f"{torch.get_num_threads()}"}
    lines = ["# torch.compile (jit_compile=True) on the PyTorch CPU backend", "",
             f"Plain Keras training of the small CNN, batch 32, {args.images} images x "
             f"{args.epochs} epochs after a first fit of 2 steps.", "",
             "| step | first fit s | median ms / step | steps |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['first_fit_s']:.1f} | {r['median_step_ms']:.2f} | {r['steps']} |"
              for name, r in results.items()]
    lines += ["", f"GradMix with `jit_compile=True` on PyTorch: {refusal!r}", "",
              f"Command: `{meta['command']}`  ", f"{meta['versions']}; {meta['machine']}.", ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "torch_compile.json").write_text(json.dumps({"meta": meta, "results": results,
                                                        "gradmix": refusal}, indent=2))
    (out / "torch_compile.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return results, refusal


if __name__ == "__main__":
    main()
