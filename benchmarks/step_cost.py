"""What does a GradMix step cost? Per-step time and peak memory, side by side.

Variants, each a fresh copy of the same model on the same batch:

    forward          one inference-mode forward (t_forward)
    forward-train    one training-mode forward (BatchNorm batch statistics)
    attribute        what GradMix adds in replace mode: a training-mode forward,
                     the gradients to the attributed layers, masks and fill
    plain            Keras' built-in train step
    cutmix-replace   train on a CutMix batch (random box, partner image, mixed labels)
    cutmix-paired    train on the clean batch plus a CutMix batch
    gradmix-replace  GradMixModel(mode="replace")
    gradmix-paired   GradMixModel(mode="paired")
    reference-style  paired GradMix as the authors' code runs it: a separate
                     forward + full backward (into every weight) for the
                     attribution, then the paired training pass

Times are interleaved (one step of each variant per round, A B C ... A B C),
each step synchronised; compile/warm-up rounds are discarded; medians and
min-max are reported. Peak memory is measured per variant in a child process
(process RSS on CPU: VmHWM, reset after the warm-up steps). Writes
step_cost.json and step_cost.md to --out.

    python benchmarks/step_cost.py                 # docs/results/step_cost.{json,md}
    python benchmarks/step_cost.py --smoke --out /tmp/step_cost
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from baselines import CutMix, ReferenceStyle  # noqa: E402
from timing import interleaved, summary  # noqa: E402

from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.steps.tensorflow import _forward_and_attribute  # noqa: E402
from keras_gradmix.zoo import resnet18, small_cnn  # noqa: E402

VARIANTS = (
    "forward", "forward-train", "attribute", "plain", "cutmix-replace", "cutmix-paired",
    "gradmix-replace", "gradmix-paired", "reference-style",
)
# name: (builder, input shape, GradMix options) -- the examples' settings.
MODELS = {
    "small_cnn": (lambda: small_cnn(0), (28, 28, 1), dict(layer="conv2", attribution="layercam")),
    "resnet18": (lambda: resnet18(classes=10), (32, 32, 3),
                 dict(layer=["layer3", "layer4"], attribution="layercam")),
}
CLASSES = 10


def attribute_clean(gm, x, y):
    """The attributed activations and gradients of a training-mode clean forward."""
    with tf.GradientTape() as tape:
        _, _, activations, gradients = _forward_and_attribute(
            gm, tape, x, y, None, training=True, need_loss=False)
    return activations, gradients


def make_step(model_name, variant, jit, batch):
    """A synchronised step function ``step() -> float`` of one variant."""
    build, shape, options = MODELS[model_name]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, *shape), dtype=np.float32))
    y = tf.constant(rng.integers(0, CLASSES, batch).astype("int32"))
    model = build()
    if variant in ("forward", "forward-train"):
        training = variant == "forward-train"
        forward = tf.function(lambda x: model(x, training=training), jit_compile=jit)
        return lambda: float(tf.reduce_sum(forward(x)))
    if variant == "attribute":
        gm = GradMixModel(model, mode="replace", seed=0, **options)
        attribute = tf.function(lambda x, y: gm.masked_batch(x, *attribute_clean(gm, x, y)).images,
                                jit_compile=jit)
        return lambda: float(tf.reduce_sum(attribute(x, y)))
    trainer = {
        "plain": lambda: model,
        "cutmix-replace": lambda: CutMix(model, paired=False),
        "cutmix-paired": lambda: CutMix(model, paired=True),
        "gradmix-replace": lambda: GradMixModel(model, mode="replace", seed=0, **options),
        "gradmix-paired": lambda: GradMixModel(model, mode="paired", seed=0, **options),
        "reference-style": lambda: ReferenceStyle(model, mode="paired", seed=0, **options),
    }[variant]()
    trainer.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    trainer.train_on_batch(x[:2], y[:2])  # builds optimizer and loss state, eagerly
    train_step = tf.function(trainer.train_step, jit_compile=jit)
    return lambda: float(train_step((x, y))["loss"])


def timings(model_name, jit, batch, rounds, warmup):
    return interleaved({v: make_step(model_name, v, jit, batch) for v in VARIANTS}, rounds, warmup)


def _rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(model_name, variant, jit, batch, steps):
    """Child process: RSS after setup and peak RSS (VmHWM) over steady steps."""
    step = make_step(model_name, variant, jit, batch)
    setup = _rss("VmRSS")
    for _ in range(2):  # compile and warm up
        step()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    for _ in range(steps):
        step()
    print(json.dumps({"setup": setup, "peak": _rss("VmHWM")}))


def memory(model_name, jit, batch, steps, variants=VARIANTS):
    result = {}
    for variant in variants:
        child = subprocess.run(
            [sys.executable, __file__, "--probe", model_name, variant, str(int(jit)),
             "--batch", str(batch), "--rounds", str(steps)],
            check=True, capture_output=True, text=True,
        )
        result[variant] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def summarise(times, mem):
    row = summary(times)
    ratios = row.pop("ratios")
    if mem and {"plain", "gradmix-replace"} <= set(mem):
        row["peak_rss_mb"] = {v: m["peak"] / 2**20 for v, m in mem.items()}
        row["step_memory_mb"] = {v: (m["peak"] - m["setup"]) / 2**20 for v, m in mem.items()}
        ratios["replace_peak_rss_over_plain"] = mem["gradmix-replace"]["peak"] / mem["plain"]["peak"]
        ratios["replace_step_memory_over_plain"] = (
            (mem["gradmix-replace"]["peak"] - mem["gradmix-replace"]["setup"])
            / max(mem["plain"]["peak"] - mem["plain"]["setup"], 1)
        )
    row["ratios"] = ratios
    return row


TARGETS = (
    ("replace_extra_over_forward", "(t_gradmix_replace - t_plain) / t_forward", "<=", 1.15),
    ("paired_over_cutmix_paired", "t_gradmix_paired / t_cutmix_paired", "<=", 1.05),
    ("reference_over_paired", "t_reference_style / t_gradmix_paired", ">=", 1.4),
    ("replace_peak_rss_over_plain", "peak RSS, gradmix-replace / plain", "<=", 1.25),
    ("replace_step_memory_over_plain", "step memory (peak - setup RSS), replace / plain", "<=", 1.25),
)


def markdown(results, meta):
    lines = [
        "# Step cost: GradMix vs plain, CutMix and a reference-style step",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['device']}  ",
        f"Versions: {meta['versions']}  ",
        f"Batch {meta['batch']}; {meta['rounds']} interleaved rounds after {meta['warmup']} "
        "discarded; medians (min-max) in ms per step. Memory: one child process per "
        "variant, jit off; peak RSS over steady steps (VmHWM reset after 2 warm-up steps); "
        "step memory = peak minus the RSS after building the model.",
        "",
    ]
    for key, row in results.items():
        model_name, jit = key.split("/")
        lines += [f"## {model_name}, jit_compile={jit}", "",
                  "| variant | median ms | min-max ms | x plain |" +
                  (" peak RSS MB | step memory MB |" if "peak_rss_mb" in row else ""),
                  "|---|---:|---:|---:|" + ("---:|---:|" if "peak_rss_mb" in row else "")]
        for v in VARIANTS:
            cells = [v, f"{row['median_ms'][v]:.1f}",
                     f"{row['min_ms'][v]:.1f}-{row['max_ms'][v]:.1f}",
                     f"{row['median_ms'][v] / row['median_ms']['plain']:.2f}"]
            if "peak_rss_mb" in row:
                cells += [f"{row[k][v]:.0f}" if v in row[k] else "-"
                          for k in ("peak_rss_mb", "step_memory_mb")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "| target | value | goal | met |", "|---|---:|---|---|"]
        for name, label, op, goal in TARGETS:
            if name in row["ratios"]:
                value = row["ratios"][name]
                met = value <= goal if op == "<=" else value >= goal
                lines.append(f"| {label} | {value:.3f} | {op} {goal} | {'yes' if met else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="VARIANT", help="variants whose peak memory is measured (jit off)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true",
                        help="checks the script: small CNN, batch 8, 2 rounds, memory of 2 variants")
    parser.add_argument("--probe", nargs=3, metavar=("MODEL", "VARIANT", "JIT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        model_name, variant, jit = args.probe
        return memory_probe(model_name, variant, bool(int(jit)), args.batch, args.rounds)
    if args.smoke:
        args.models, args.batch, args.rounds, args.warmup = ["small_cnn"], 8, 2, 1
        args.memory = ["plain", "gradmix-replace"]

    results = {}
    for model_name in args.models:
        for jit in args.jit:
            times = timings(model_name, jit == "on", args.batch, args.rounds, args.warmup)
            mem = None
            if jit == "off" and args.memory:
                mem = memory(model_name, False, args.batch, min(args.rounds, 5), args.memory)
            results[f"{model_name}/{jit}"] = summarise(times, mem)
            print(model_name, jit, json.dumps(results[f"{model_name}/{jit}"]["ratios"]), flush=True)
    meta = {
        "command": "python benchmarks/step_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "device": "CPU only (no GPU used)",
        "versions": f"python {platform.python_version()}, keras {keras.__version__}, "
                    f"tensorflow {tf.__version__}, numpy {np.__version__}",
        "batch": args.batch, "rounds": args.rounds, "warmup": args.warmup,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_cost.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (out / "step_cost.md").write_text(markdown(results, meta))
    print(f"Wrote {out}/step_cost.json and step_cost.md")
    return results


if __name__ == "__main__":
    main()
