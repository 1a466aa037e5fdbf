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

Cost controls (``--cost-controls`` times only these, beside ``plain`` and
``gradmix-paired``, and stores them in the rows' ``cost_controls``):

    gradmix-paired-f0.5, -f0.25   masked_fraction=0.5 / 0.25: only that share
                                  of the batch is masked and forwarded again
    gradmix-paired-untracked      without the gradmix_masked/flat/area metrics

The outlier use (``--outliers`` times only these, beside ``plain`` and
``gradmix-paired``, and stores them in the rows' ``outliers``):

    gradmix-outlier       masked_as="outlier": the masked images as unknowns
    gradmix-outlier-aux   plus auxiliary_positives=True: a second masked copy of
                          each image (the box at its least-attended place, label
                          kept) in the same forward/backward

Times are interleaved (one step of each variant per round, A B C ... A B C),
each step synchronised; compile/warm-up rounds are discarded; medians and
min-max are reported. Peak memory is measured per variant in a child process
(process RSS on CPU: VmHWM, reset after the warm-up steps).

The backend is KERAS_BACKEND's: TensorFlow (steps in ``tf.function``, with
and without XLA) or PyTorch (eager steps, as Keras runs them; GradMix refuses
``jit_compile=True`` there). Results are keyed ``backend/model/jit`` and merged
into --out's step_cost.json (a run replaces its own rows, keeps the others);
step_cost.md is written from all rows.

    python benchmarks/step_cost.py                          # TensorFlow rows
    KERAS_BACKEND=torch python benchmarks/step_cost.py --jit off   # PyTorch rows
    python benchmarks/step_cost.py --cost-controls          # only the partial-batch rows
    python benchmarks/step_cost.py --outliers               # only the outlier rows
    python benchmarks/step_cost.py --smoke --out /tmp/step_cost
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from baselines import CutMix, ReferenceStyle  # noqa: E402
from timing import interleaved, machine, summary  # noqa: E402

from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.zoo import resnet18, small_cnn  # noqa: E402

BACKEND = keras.backend.backend()
if BACKEND not in ("tensorflow", "torch"):
    raise SystemExit(f"step_cost.py measures TensorFlow or PyTorch steps, not {BACKEND} "
                     f"(JAX: benchmarks/gpu_check.py).")

VARIANTS = (
    "forward", "forward-train", "attribute", "plain", "cutmix-replace", "cutmix-paired",
    "gradmix-replace", "gradmix-paired", "reference-style",
)
COST_VARIANTS = ("plain", "gradmix-paired", "gradmix-paired-f0.5", "gradmix-paired-f0.25",
                 "gradmix-paired-untracked")
OUTLIER_VARIANTS = ("plain", "gradmix-paired", "gradmix-outlier", "gradmix-outlier-aux")
# name: (builder, input shape, GradMix options) -- the examples' settings.
MODELS = {
    "small_cnn": (lambda: small_cnn(0), (28, 28, 1), dict(layer="conv2", attribution="layercam")),
    "resnet18": (lambda: resnet18(classes=10), (32, 32, 3),
                 dict(layer=["layer3", "layer4"], attribution="layercam")),
}
CLASSES = 10


def attribute_clean(gm, x, y):
    """The attributed activations and gradients of a training-mode clean forward."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        from keras_gradmix.steps.tensorflow import _forward_and_attribute

        with tf.GradientTape() as tape:
            _, _, activations, gradients = _forward_and_attribute(
                gm, tape, x, y, None, training=True, need_loss=False)
        return activations, gradients
    from keras_gradmix.steps.torch import _forward_and_attribute

    _, _, activations, gradients = _forward_and_attribute(
        gm, x, y, None, training=True, need_loss=False)
    return activations, gradients


def compiled(fn, jit):
    """``fn`` as the backend runs a step: a ``tf.function`` (XLA with ``jit``),
    or eagerly on PyTorch (where Keras runs steps eagerly by default)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit)
    if jit:
        raise SystemExit("GradMix refuses jit_compile=True on PyTorch: run with --jit off.")
    return fn


def total(value) -> float:
    """A synchronising read of a tensor: the sum as a Python float."""
    return float(keras.ops.convert_to_numpy(keras.ops.sum(value)))


def make_step(model_name, variant, jit, batch):
    """A synchronised step function ``step() -> float`` of one variant."""
    build, shape, options = MODELS[model_name]
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.random((batch, *shape), dtype=np.float32))
    y = keras.ops.convert_to_tensor(rng.integers(0, CLASSES, batch).astype("int32"))
    model = build()
    if variant in ("forward", "forward-train"):
        training = variant == "forward-train"
        forward = compiled(lambda x: model(x, training=training), jit)
        if BACKEND == "torch":
            import torch

            def no_grad_forward(x, forward=forward):
                with torch.no_grad():
                    return forward(x)

            return lambda: total(no_grad_forward(x))
        return lambda: total(forward(x))
    if variant == "attribute":
        gm = GradMixModel(model, mode="replace", seed=0, **options)
        attribute = compiled(lambda x, y: gm.masked_batch(x, *attribute_clean(gm, x, y)).images, jit)
        return lambda: total(attribute(x, y))
    trainer = {
        "plain": lambda: model,
        "cutmix-replace": lambda: CutMix(model, paired=False),
        "cutmix-paired": lambda: CutMix(model, paired=True),
        "gradmix-replace": lambda: GradMixModel(model, mode="replace", seed=0, **options),
        "gradmix-paired": lambda: GradMixModel(model, mode="paired", seed=0, **options),
        "reference-style": lambda: ReferenceStyle(model, mode="paired", seed=0, **options),
        "gradmix-paired-f0.5": lambda: GradMixModel(model, masked_fraction=0.5, seed=0, **options),
        "gradmix-paired-f0.25": lambda: GradMixModel(model, masked_fraction=0.25, seed=0, **options),
        "gradmix-paired-untracked": lambda: untracked(GradMixModel(model, seed=0, **options)),
        "gradmix-outlier": lambda: GradMixModel(model, masked_as="outlier", seed=0, **options),
        "gradmix-outlier-aux": lambda: GradMixModel(model, masked_as="outlier", auxiliary_positives=True,
                                                    seed=0, **options),
    }[variant]()
    trainer.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    trainer.train_on_batch(x[:2], y[:2])  # builds optimizer and loss state, eagerly
    train_step = compiled(trainer.train_step, jit)
    return lambda: total(train_step((x, y))["loss"])


def untracked(gm):
    gm.track_masking = lambda masked, batch_size: {}  # the step without the masking metrics
    return gm


def timings(model_name, jit, batch, rounds, warmup, variants=VARIANTS):
    return interleaved({v: make_step(model_name, v, jit, batch) for v in variants}, rounds, warmup)


def cost_controls(times) -> dict:
    """Medians, and the partial-batch target: ``t(f) - t_plain <= f (t(1) -
    t_plain) + 0.05 t_plain``; the metrics' share of a paired step."""
    med = {v: 1e3 * statistics.median(t) for v, t in times.items()}
    plain, full = med["plain"], med["gradmix-paired"]
    out = {"median_ms": med, "steps": len(next(iter(times.values()))),
           "metrics_overhead": full / med["gradmix-paired-untracked"] - 1.0}
    for f in (0.5, 0.25):
        extra, bound = med[f"gradmix-paired-f{f}"] - plain, f * (full - plain) + 0.05 * plain
        out[f"f{f}"] = {"extra_ms": extra, "bound_ms": bound, "met": extra <= bound,
                        "extra_share_of_full": extra / (full - plain)}
    return out


def outlier_costs(times) -> dict:
    """Medians, and each outlier variant's time over plain and over paired
    GradMix: the auxiliary positives double the masked part of the batch."""
    med = {v: 1e3 * statistics.median(t) for v, t in times.items()}
    return {"median_ms": med, "steps": len(next(iter(times.values()))),
            "over_plain": {v: med[v] / med["plain"] for v in med},
            "over_paired": {v: med[v] / med["gradmix-paired"] for v in med}}


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
    # One child per variant, all at once: each measures its own RSS, and most of
    # a child's time is importing TensorFlow.
    children = {variant: subprocess.Popen(
        [sys.executable, __file__, "--probe", model_name, variant, str(int(jit)),
         "--batch", str(batch), "--rounds", str(steps)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for variant in variants}
    result = {}
    for variant, child in children.items():
        stdout, stderr = child.communicate()
        if child.returncode:
            raise RuntimeError(f"memory probe {variant} failed:\n{stderr}")
        result[variant] = json.loads(stdout.strip().splitlines()[-1])
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


def markdown(results, runs):
    lines = [
        "# Step cost: GradMix vs plain, CutMix and a reference-style step", "",
        "Medians (min-max) in ms per step over interleaved rounds, warm-up discarded. Memory: "
        "one child process per variant, jit off; peak RSS over steady steps (VmHWM reset after "
        "2 warm-up steps); step memory = peak minus the RSS after building the model.", "",
    ]
    for backend, meta in runs.items():
        lines += [f"- **{backend}**: `{meta['command']}`; batch {meta['batch']}, "
                  f"{meta['rounds']} rounds after {meta['warmup']}; {meta['versions']}; "
                  f"{meta['machine']}; {meta['device']}"]

    lines += ["", "## Backends side by side (jit off)", "",
              "| model | backend | plain ms | gradmix-paired ms | paired / plain | "
              "gradmix-replace ms | replace / plain |", "|---|---|---:|---:|---:|---:|---:|"]
    for key, row in results.items():
        backend, model_name, jit = key.split("/")
        if jit == "off":
            med = row["median_ms"]
            lines.append(f"| {model_name} | {backend} | {med['plain']:.1f} | {med['gradmix-paired']:.1f} "
                         f"| {med['gradmix-paired'] / med['plain']:.2f} | {med['gradmix-replace']:.1f} "
                         f"| {med['gradmix-replace'] / med['plain']:.2f} |")
    lines.append("")
    costs = {k: r["cost_controls"] for k, r in results.items() if "cost_controls" in r}
    if costs:
        lines += ["## Cost controls: a partial masked batch (`masked_fraction`), the masking metrics", "",
                  "Target: `t(f) - t_plain <= f (t(1) - t_plain) + 0.05 t_plain`. The attribution "
                  "(a backward to the attributed layer for the whole clean batch) is paid at every "
                  "f; only the second forward/backward shrinks. Each row's command is in "
                  "step_cost.json (`cost_controls.command`).", "",
                  "| backend/model/jit | plain | f=1 | f=0.5 | f=0.25 | f=0.5: extra / bound (met) | "
                  "f=0.25: extra / bound (met) | metrics overhead |",
                  "|---|---:|---:|---:|---:|---|---|---:|"]
        for key, c in costs.items():
            med = c["median_ms"]
            cells = [key] + [f"{med[v]:.1f}" for v in ("plain", "gradmix-paired",
                                                      "gradmix-paired-f0.5", "gradmix-paired-f0.25")]
            cells += [f"{c[f]['extra_ms']:.1f} / {c[f]['bound_ms']:.1f} ms "
                      f"({'yes' if c[f]['met'] else '**no**'})" for f in ("f0.5", "f0.25")]
            cells.append(f"{100 * c['metrics_overhead']:+.1f} %")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    outliers = {k: r["outliers"] for k, r in results.items() if "outliers" in r}
    if outliers:
        lines += ["## The outlier use: masked images as unknowns, and auxiliary positives", "",
                  "Paired steps: the clean batch plus its masked copies (`masked_as=\"outlier\"`); "
                  "`auxiliary_positives=True` adds a second masked copy of every image (the same "
                  "area at its least-attended place, label kept), so the batch trained on is 3B "
                  "instead of 2B. The attribution is paid once. Each row's command is in "
                  "step_cost.json (`outliers.command`).", "",
                  "| backend/model/jit | plain ms | paired ms | outlier ms | outlier + aux ms | "
                  "outlier / paired | outlier + aux / paired | outlier + aux / plain |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, c in outliers.items():
            med, paired = c["median_ms"], c["over_paired"]
            lines.append(f"| {key} | {med['plain']:.1f} | {med['gradmix-paired']:.1f} | "
                         f"{med['gradmix-outlier']:.1f} | {med['gradmix-outlier-aux']:.1f} | "
                         f"{paired['gradmix-outlier']:.2f} | {paired['gradmix-outlier-aux']:.2f} | "
                         f"{c['over_plain']['gradmix-outlier-aux']:.2f} |")
        lines.append("")
    for key, row in results.items():
        backend, model_name, jit = key.split("/")
        lines += [f"## {model_name}, {backend}, jit_compile={jit}", "",
                  "| variant | median ms | min-max ms | x plain |" +
                  (" peak RSS MB | step memory MB |" if "peak_rss_mb" in row else ""),
                  "|---|---:|---:|---:|" + ("---:|---:|" if "peak_rss_mb" in row else "")]
        for v in row["median_ms"]:
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


def load(path: Path) -> tuple[dict, dict]:
    """The results and per-backend run metadata stored at ``path`` (older files
    held TensorFlow rows keyed ``model/jit`` and one ``meta``)."""
    if not path.exists():
        return {}, {}
    stored = json.loads(path.read_text())
    if "meta" in stored:  # the format before the PyTorch rows
        return ({f"tensorflow/{k}": v for k, v in stored["results"].items()},
                {"tensorflow": stored["meta"]})
    return stored["results"], stored["runs"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jit", nargs="+", choices=["off", "on"],
                        help="default: off and on (TensorFlow), off (PyTorch, and --smoke)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="VARIANT", help="variants whose peak memory is measured (jit off)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true",
                        help="checks the script: small CNN, jit off, batch 8, 2 rounds, memory of 2 variants")
    parser.add_argument("--cost-controls", action="store_true",
                        help="time only the cost-control variants; keep the rest of the stored rows")
    parser.add_argument("--outliers", action="store_true",
                        help="time only the outlier variants; keep the rest of the stored rows")
    parser.add_argument("--probe", nargs=3, metavar=("MODEL", "VARIANT", "JIT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        model_name, variant, jit = args.probe
        return memory_probe(model_name, variant, bool(int(jit)), args.batch, args.rounds)
    if args.smoke:
        args.models, args.batch, args.rounds, args.warmup = ["small_cnn"], 8, 2, 1
        args.memory = ["plain", "gradmix-replace"]
    if args.jit is None:  # XLA compiles every variant again: the smoke run skips it
        args.jit = ["off", "on"] if BACKEND == "tensorflow" and not args.smoke else ["off"]

    out = Path(args.out)
    stored, runs = load(out / "step_cost.json")
    prefix = "" if BACKEND == "tensorflow" else f"KERAS_BACKEND={BACKEND} "
    command = f"{prefix}python benchmarks/step_cost.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    results = {}
    for model_name in args.models:
        for jit in args.jit:
            key = f"{BACKEND}/{model_name}/{jit}"
            if args.cost_controls or args.outliers:
                results[key] = dict(stored.get(key, {}))
            else:
                times = timings(model_name, jit == "on", args.batch, args.rounds, args.warmup)
                mem = None
                if jit == "off" and args.memory:
                    mem = memory(model_name, False, args.batch, min(args.rounds, 5), args.memory)
                results[key] = summarise(times, mem)
                print(key, json.dumps(results[key]["ratios"]), flush=True)
            if args.outliers:
                times = timings(model_name, jit == "on", args.batch, args.rounds, args.warmup,
                                OUTLIER_VARIANTS)
                results[key]["outliers"] = {**outlier_costs(times), "command": command}
                print(key, "outliers", json.dumps(results[key]["outliers"]["over_paired"]), flush=True)
                continue
            costs = timings(model_name, jit == "on", args.batch, args.rounds, args.warmup, COST_VARIANTS)
            results[key]["cost_controls"] = {**cost_controls(costs), "command": command}
            print(key, "cost controls", json.dumps(results[key]["cost_controls"]), flush=True)
    backend_module = __import__("tensorflow" if BACKEND == "tensorflow" else "torch")
    meta = {
        "command": command,
        "machine": machine(),
        "device": "CPU only (no GPU used)",
        "versions": f"python {platform.python_version()}, keras {keras.__version__}, "
                    f"{BACKEND} {backend_module.__version__}, numpy {np.__version__}",
        "batch": args.batch, "rounds": args.rounds, "warmup": args.warmup,
    }
    out.mkdir(parents=True, exist_ok=True)
    if args.cost_controls or args.outliers:  # the rows' other variants keep the run that measured them
        meta = runs.get(BACKEND, meta)
    else:
        stored = {k: v for k, v in stored.items() if not k.startswith(f"{BACKEND}/")}
    stored.update(results)
    runs[BACKEND] = meta
    (out / "step_cost.json").write_text(json.dumps({"runs": runs, "results": stored}, indent=2))
    (out / "step_cost.md").write_text(markdown(stored, runs))
    print(f"Wrote {out}/step_cost.json and step_cost.md")
    return results


if __name__ == "__main__":
    main()
