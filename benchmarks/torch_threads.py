"""PyTorch threads on a shared CPU: a GradMix epoch against a plain one.

PyTorch's CPU kernels use one OpenMP thread per core by default. When other
processes keep those cores busy, the threads wait on each other at every
parallel region, and GradMix's step (two forwards, a backward to the
attributed layer and a full backward, each many small kernels) pays that
more often than a plain step. This measures ``fit`` epochs of the quickstart
CNN on MNIST digits, plain and GradMix (paired), with the default thread
count and with ``OMP_NUM_THREADS=1``, without and with ``--load`` busy
processes (one per core by default) beside them.

Each (load, threads, method) cell runs in its own child process (the thread
count must be set before torch is imported); cells are interleaved round by
round, so the machine's drift hits all alike; the first epoch (tracing,
allocation) is dropped; medians are reported.

    python benchmarks/torch_threads.py                 # docs/results/torch_threads.{json,md}
    python benchmarks/torch_threads.py --smoke --out /tmp/torch_threads
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from timing import machine

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("plain", "gradmix")


def child(args) -> None:
    """One cell: ``--epochs`` epochs of one method; prints the epoch times as JSON."""
    import keras
    import numpy as np
    import torch

    from keras_gradmix import GradMixModel
    from keras_gradmix.data import mnist_digits
    from keras_gradmix.zoo import small_cnn

    x, y = mnist_digits(seed=0)
    x, y = x[:args.images], y[:args.images]
    model = small_cnn(0)
    trainer = model if args.method == "plain" else GradMixModel(model, layer="conv2", seed=0)
    trainer.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: times.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: times.__setitem__(-1, times[-1] + time.perf_counter()))
    trainer.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=[timer])
    print(json.dumps({"epoch_s": times, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "keras": keras.__version__,
                      "numpy": np.__version__}))


def busy() -> None:
    while True:
        pass


def run_cell(args, method: str, threads: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    env.pop("OMP_NUM_THREADS", None)
    if threads == "1":
        env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, __file__, "--child", "--method", method, "--epochs", str(args.epochs),
               "--images", str(args.images), "--batch-size", str(args.batch_size)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args) -> dict:
    cells = {}
    for load in args.loads:
        workers = [multiprocessing.Process(target=busy, daemon=True) for _ in range(load)]
        for w in workers:
            w.start()
        try:
            for _ in range(args.rounds):
                for threads in ("default", "1"):
                    for method in METHODS:
                        result = run_cell(args, method, threads)
                        cell = cells.setdefault(f"load{load}/threads-{threads}/{method}",
                                                {"epoch_s": [], "threads": result["threads"]})
                        cell["epoch_s"] += result["epoch_s"][1:]  # the first epoch traces
                        versions = {k: result[k] for k in ("torch", "keras", "numpy")}
        finally:
            for w in workers:
                w.terminate()
    for cell in cells.values():
        cell["median_s"] = statistics.median(cell["epoch_s"])
    return {"cells": cells, "versions": versions}


def markdown(results: dict) -> str:
    cells, lines = results["cells"], []
    lines += [
        "# PyTorch threads on a shared CPU: GradMix vs plain epochs",
        "",
        f"`{results['command']}`; {results['images']} MNIST digits, batch {results['batch_size']}, "
        f"the quickstart CNN (`zoo.small_cnn`, layer `conv2`, paired); {results['rounds']} rounds "
        f"x {results['epochs']} epochs per cell, first epoch of each process dropped; medians. "
        f"python {platform.python_version()}, torch {results['versions']['torch']}, keras "
        f"{results['versions']['keras']}; {results['machine']}. Load: busy processes beside the "
        f"measurement (one per core at `--load`); `load0` still shares the machine with whatever "
        f"else ran (load average at the start: {results['loadavg'][0]:.2f}).",
        "",
        "| load | threads | plain s/epoch | GradMix s/epoch | GradMix / plain |",
        "|---|---|---:|---:|---:|",
    ]
    for load in results["loads"]:
        for threads in ("default", "1"):
            key = f"load{load}/threads-{threads}"
            plain, gm = cells[f"{key}/plain"], cells[f"{key}/gradmix"]
            lines.append(f"| {load} busy | {threads} ({gm['threads']}) | {plain['median_s']:.2f} | "
                         f"{gm['median_s']:.2f} | {gm['median_s'] / plain['median_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, default="plain")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=int, default=os.cpu_count(),
                        help="busy processes for the loaded measurement")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true", help="64 images, 2 epochs, 1 round, no load")
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    command = "python benchmarks/torch_threads.py" + (" " + " ".join(argv) if argv else "")
    args.loads = [0, args.load]
    if args.smoke:
        args.images, args.epochs, args.rounds, args.loads = 64, 2, 1, [0]
    results = {"command": command, "images": args.images, "batch_size": args.batch_size,
               "epochs": args.epochs, "rounds": args.rounds, "loads": args.loads,
               "machine": machine(), "loadavg": os.getloadavg()}
    results.update(measure(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "torch_threads.json").write_text(json.dumps(results, indent=1))
    (out / "torch_threads.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:] if len(sys.argv) > 1 else None)
