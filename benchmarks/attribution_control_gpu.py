"""The attribution-control contrast on an accelerator: CIFAR-style ResNet-18, JAX.

What benchmarks/attribution_control.py measures on the lean CNN (does GradMix's
box at the attribution peak beat the same box at a random place, as positives
and as outliers?), at a schedule a 2-core CPU cannot reach: the ResNet-18 of
``keras_gradmix.zoo`` (width 64) on Fashion-MNIST resized to 32x32 (bilinear),
one open-set split, every training image of the known classes, SGD (momentum
0.9, Nesterov, learning rate 0.1 with cosine decay, weight decay 5e-4), batch
128, no other augmentation. GradMix: LayerCAM on ``layer3`` + ``layer4``,
noise boxes of 10-50 %, paired, label target (the paper's configuration).
Scored with the max logit (MLS) and kNN (Sun et al., k = 50) on the pooled features.

Runs are independent processes started together (one per cell and seed,
``XLA_PYTHON_CLIENT_PREALLOCATE=false``) in two waves: the positives first
(plain, peak, random), then the outliers if the time budget allows; a run still
going at ``--deadline`` seconds is stopped and reported as not run. Each
finished run writes its JSON to ``--work/runs``, all of them are bundled in
``--out/attribution_control_gpu_runs.json`` (one file to fetch); the summary (same tables as the
CPU study) goes to ``--out/attribution_control_gpu.{md,json}``.

    python benchmarks/attribution_control_gpu.py --prepare .device/fashion_mnist.npz   # here
    KERAS_BACKEND=jax python benchmarks/attribution_control_gpu.py \\
        --data .device/fashion_mnist.npz --out $OUT                                  # device
    python benchmarks/attribution_control_gpu.py \
        --summarise attribution_control_gpu_runs.json --out docs/results              # here
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

WAVES = (("plain", "gradmix", "gradmix-random"), ("outlier-peak", "outlier-random"))
OPTIONS = {"plain": None, "gradmix": {}, "gradmix-random": {"placement": "random"},
           "outlier-peak": {"masked_as": "outlier"},
           "outlier-random": {"masked_as": "outlier", "placement": "random"}}
GRADMIX = dict(layer=["layer3", "layer4"], attribution="layercam", mask_area=(0.1, 0.5))


def prepare(path: str):
    """Fashion-MNIST (uint8, all 70,000 images) into one compressed file to carry."""
    from keras_gradmix.data import load_arrays

    arrays = load_arrays("fashion_mnist")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"wrote {path}: {os.path.getsize(path) / 2**20:.1f} MiB")


def split_arrays(data_path: str, split: int, limit: int | None = None) -> dict:
    """Known-class training images (labels 0..K-1), known test (images,
    labels) and unknown test images, resized to 32x32, float32 in [0, 1]."""
    import keras

    from keras_gradmix.data import osr_classes

    arrays = np.load(data_path)
    known, _ = osr_classes("fashion_mnist", split)
    remap = np.full(10, -1)
    remap[known] = np.arange(len(known))

    def images(x):
        x = np.asarray(x[:limit], np.float32)[..., None] / 255.0
        out = [keras.ops.convert_to_numpy(keras.ops.image.resize(x[i:i + 4096], (32, 32)))
               for i in range(0, len(x), 4096)]
        return np.clip(np.concatenate(out), 0.0, 1.0)

    train = np.isin(arrays["y_train"], known)
    test = np.isin(arrays["y_test"], known)
    return {"train": (images(arrays["x_train"][train]), remap[arrays["y_train"][train]][:limit]),
            "known_test": (images(arrays["x_test"][test]), remap[arrays["y_test"][test]][:limit]),
            "unknown_test": images(arrays["x_test"][~test])}


def run_one(args, cell: str, seed: int) -> dict:
    """One cell and seed, trained and scored in this process."""
    import keras

    from keras_gradmix import GradMixModel
    from keras_gradmix.osr import evaluate_model_open_set
    from keras_gradmix.zoo import resnet18

    data = split_arrays(args.data, args.split, 512 if args.smoke else None)
    x, y = data["train"]
    keras.utils.set_random_seed(seed)
    model = resnet18((32, 32, 1), int(y.max()) + 1, width=8 if args.smoke else 64)
    steps = -(-len(x) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.epochs * steps)
    trainer = model
    if OPTIONS[cell] is not None:
        trainer = GradMixModel(model, seed=seed, **GRADMIX, **OPTIONS[cell])
    trainer.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True,
                                                   weight_decay=5e-4),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    trainer.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    results = evaluate_model_open_set(model, data["known_test"], data["unknown_test"],
                                      ("mls", "msp", "knn"), feature_layer="features",
                                      train_data=(x, y), batch_size=1024)
    return {"cell": cell, "options": OPTIONS[cell], "split": args.split, "seed": seed,
            "epochs": args.epochs, "train_images": len(x), "train_seconds": seconds,
            "results": results}


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.platform}: {getattr(device, 'device_kind', device)}"


def launch(args):
    """Every cell x seed as its own process, in waves, within --deadline."""
    runs_dir = os.path.join(args.work, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    start, report = time.time(), {"not_run": [], "waves": []}
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    for wave in WAVES:
        left = args.deadline - (time.time() - start)
        if report["waves"] and left < 0.5 * report["waves"][-1]["seconds"]:
            report["not_run"] += [f"{c} seed {s} (no time left)" for c in wave for s in args.seed_list]
            continue
        began = time.time()
        procs = {}
        for cell in wave:
            for seed in args.seed_list:
                cmd = [sys.executable, __file__, "--worker", cell, "--seed", str(seed),
                       *args.passthrough]
                log = open(os.path.join(args.work, f"{cell}_seed{seed}.log"), "w")
                procs[(cell, seed)] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        for (cell, seed), proc in procs.items():
            try:
                proc.wait(timeout=max(1.0, args.deadline - (time.time() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.returncode != 0:
                report["not_run"].append(f"{cell} seed {seed} (exit {proc.returncode})")
        report["waves"].append({"cells": list(wave), "seconds": time.time() - began})
    report["device"] = device_name()
    report["seconds"] = time.time() - start
    # One file back from the device (a fetch returns a few files only).
    report["runs"] = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("*.json"))]
    report["meta"] = json.loads(Path(args.out, "meta.json").read_text())
    with open(os.path.join(args.out, "attribution_control_gpu_runs.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


def summarise(bundle: dict, out: str):
    """The CPU study's tables over the runs of a fetched bundle."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import attribution_control as study  # the table code, shared with the CPU study

    slugs = {slug: name for name, (slug, _, _) in study.CELLS.items()}
    meta = {**bundle["meta"], "not_run": bundle["not_run"], "device": bundle["device"]}
    runs = [{**run, "cell": slugs[run["cell"]]} for run in bundle["runs"]]
    names = [n for n in study.CELLS if any(r["cell"] == n for r in runs)]
    rows = study.flatten(runs)
    contrasts = study.contrast_rows(rows, names)
    png = os.path.join(out, "attribution_control_gpu.png")
    study.plot(rows, names, png)
    text = "\n".join([
        "# Does the attribution matter? ResNet-18 on an accelerator", "",
        f"Fashion-MNIST resized to 32x32, open-set split {meta['split']}, every training image of "
        f"the known classes, seeds {meta['seeds']}; the CIFAR-style ResNet-18 (width 64) of "
        f"`keras_gradmix.zoo`, SGD (momentum 0.9, Nesterov, lr {meta['lr']} cosine to 0, weight "
        f"decay 5e-4) for {meta['epochs']} epochs, batch {meta['batch_size']}, no other "
        f"augmentation; GradMix {GRADMIX}, noise fill, paired, label target; `random placement` "
        f"the same box at a uniformly random place, `outlier` the masked images trained toward "
        f"the uniform distribution (weight 0.5). Mean ± std (%) over seeds; Δ = per-seed "
        f"difference: mean, 95 % t-interval (df = pairs − 1), (wins/pairs). Not run: "
        f"{meta['not_run'] or 'none'}.", "",
        study.cell_table(rows, names), "",
        "**The contrasts** (cell − baseline on the same seed):", "",
        study.to_markdown(contrasts) if contrasts else "(no pair)", "",
        f"![Paired differences]({os.path.basename(png)})", "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; Keras {meta['keras']}, JAX {meta['jax']}; {meta['host']}. "
        f"The runs of a wave shared the device (one process each): train times are not "
        f"per-run costs.", ""])
    Path(out, "attribution_control_gpu.md").write_text(text)
    Path(out, "attribution_control_gpu.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "contrasts": contrasts}, indent=1))
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", default=None, help="write the data file here and stop")
    parser.add_argument("--summarise", default=None,
                        help="a fetched attribution_control_gpu_runs.json: write the tables")
    parser.add_argument("--data", default=".device/fashion_mnist.npz")
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds for all runs")
    parser.add_argument("--out", default="/tmp/attribution_control_gpu")
    parser.add_argument("--work", default=None, help="per-run files and logs (default: --out)")
    parser.add_argument("--smoke", action="store_true", help="512 images, width 8, 1 epoch")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.smoke:
        args.epochs = 1
    args.work = args.work or args.out
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    if args.prepare:
        return prepare(args.prepare)
    if args.summarise:
        return summarise(json.loads(Path(args.summarise).read_text()), args.out)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if args.worker:
        run = run_one(args, args.worker, args.seed)
        path = Path(args.work, "runs", f"{args.worker}_seed{args.seed}.json")
        path.write_text(json.dumps(run, indent=1))
        return run
    import jax
    import keras

    args.passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    os.makedirs(args.out, exist_ok=True)
    shown = ["$OUT" if a == os.environ.get("OUT") else a for a in args.passthrough]
    meta = {"command": " ".join(["KERAS_BACKEND=jax python benchmarks/attribution_control_gpu.py", *shown]),
            "split": args.split, "seeds": args.seed_list, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "keras": keras.__version__,
            "jax": jax.__version__, "host": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    Path(args.out, "meta.json").write_text(json.dumps(meta, indent=1))
    launch(args)


if __name__ == "__main__":
    main()
