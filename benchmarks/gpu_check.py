"""GradMix on an accelerator with the JAX backend: correct first, then timed.

1. Correctness: the same ResNet-18, batch and seed run once on the CPU and once
   on the default device (each in a child process, ``JAX_PLATFORMS``): the
   preview masks, the first step's loss and the updated weights are compared.
2. Cost: per-step time of an inference forward, a training-mode forward, the
   plain Keras step, a paired CutMix step and GradMix (replace, paired), each
   compiled with XLA (``jax.jit``), interleaved in one process, warm-up and
   compilation discarded, medians reported; plus XLA's own memory analysis of
   each compiled step (arguments + temporaries, bytes).

Writes gpu_check.json and gpu_check.md to --out.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --out docs/results
    KERAS_BACKEND=jax python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from baselines import CutMix, ReferenceStyle  # noqa: E402
from timing import interleaved, summary  # noqa: E402

from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.zoo import resnet18  # noqa: E402

CLASSES = 10
GRADMIX = dict(layer=["layer3", "layer4"], attribution="layercam", seed=0)
VARIANTS = ("forward", "forward-train", "plain", "cutmix-paired", "gradmix-replace",
            "gradmix-paired", "reference-style")


def batch(size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((size, 32, 32, 3), dtype=np.float32)
    return x, rng.integers(0, CLASSES, size).astype("int32")


def compiled_step(trainer, x, y):
    """``trainer``'s train step, jitted as Keras' fit does, with its state."""
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.build(x.shape)
    trainer.optimizer.build(trainer.trainable_variables)
    state = (
        [v.value for v in trainer.trainable_variables],
        [v.value for v in trainer.non_trainable_variables],
        [v.value for v in trainer.optimizer.variables],
        [v.value for v in trainer.metrics_variables],
    )
    data = (jax.device_put(x), jax.device_put(y))
    compiled = jax.jit(trainer.train_step).lower(state, data).compile()
    return compiled, state, data


def memory_bytes(compiled):
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes)


def correctness(out, size, width):
    """Child process: preview masks, one step's loss and weights, on this platform."""
    keras.utils.set_random_seed(0)
    gm = GradMixModel(resnet18(classes=CLASSES, width=width), mode="paired", **GRADMIX)
    x, y = batch(size)
    preview = gm.preview(x, y)
    compiled, state, data = compiled_step(gm, x, y)
    logs, state = compiled(state, data)
    np.savez(out, device=str(jax.devices()[0].platform), mask=np.asarray(preview.mask),
             maps=np.asarray(preview.maps), loss=float(logs["loss"]),
             **{f"w{i}": np.asarray(w) for i, w in enumerate(state[0])})


def compare(tmp, size, width):
    runs = {}
    for platform_name in ("cpu", None):
        out = Path(tmp) / f"check_{platform_name or 'default'}.npz"
        if platform_name is None and jax.devices()[0].platform == "cpu":
            # No accelerator: the default platform is the CPU run just made.
            shutil.copy(Path(tmp) / "check_cpu.npz", out)
        else:
            env = dict(os.environ)
            if platform_name:
                env["JAX_PLATFORMS"] = platform_name
            subprocess.run([sys.executable, __file__, "--check", str(out), "--batch", str(size),
                            "--width", str(width)], check=True, env=env)
        runs[platform_name or "default"] = np.load(out)
    cpu, dev = runs["cpu"], runs["default"]
    weights = [k for k in cpu.files if k.startswith("w")]
    return {
        "devices": [str(cpu["device"]), str(dev["device"])],
        "mask_pixels_differing": int((cpu["mask"] != dev["mask"]).sum()),
        "mask_pixels": int(cpu["mask"].size),
        "maps_max_abs_diff": float(np.abs(cpu["maps"] - dev["maps"]).max()),
        "loss": [float(cpu["loss"]), float(dev["loss"])],
        "loss_rel_diff": float(abs(cpu["loss"] - dev["loss"]) / abs(cpu["loss"])),
        "weights_max_abs_diff": float(max(np.abs(cpu[k] - dev[k]).max() for k in weights)),
    }


def make_variant(variant, x, y, width):
    keras.utils.set_random_seed(0)
    model = resnet18(classes=CLASSES, width=width)
    if variant.startswith("forward"):
        training = variant == "forward-train"
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        fn = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=training)[0])
        compiled = fn.lower(trainable, non_trainable, jax.device_put(x)).compile()
        xs = jax.device_put(x)
        return (lambda: compiled(trainable, non_trainable, xs).block_until_ready()), memory_bytes(compiled)
    trainer = {
        "plain": lambda: model,
        "cutmix-paired": lambda: CutMix(model, paired=True),
        "gradmix-replace": lambda: GradMixModel(model, mode="replace", **GRADMIX),
        "gradmix-paired": lambda: GradMixModel(model, mode="paired", **GRADMIX),
        "reference-style": lambda: ReferenceStyle(model, mode="paired", **GRADMIX),
    }[variant]()
    compiled, state, data = compiled_step(trainer, x, y)
    holder = [state]

    def step():
        logs, holder[0] = compiled(holder[0], data)
        logs["loss"].block_until_ready()

    return step, memory_bytes(compiled)


def timings(size, width, rounds, warmup):
    x, y = batch(size)
    steps, memory = {}, {}
    for variant in VARIANTS:
        steps[variant], memory[variant] = make_variant(variant, x, y, width)
    result = summary(interleaved(steps, rounds, warmup))
    result["memory_bytes"] = memory
    if memory["plain"]:
        result["ratios"]["replace_memory_over_plain"] = memory["gradmix-replace"] / memory["plain"]
    return result


def markdown(result):
    meta, check, t = result["meta"], result["check"], result["timing"]
    lines = [
        "# GradMix on an accelerator (JAX backend, XLA)", "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; host: {meta['machine']}  ",
        f"Versions: {meta['versions']}  ",
        f"ResNet-18 (width {meta['width']}), batch {meta['batch']}, GradMix = LayerCAM on "
        f"layer3 + layer4; {meta['rounds']} interleaved rounds after {meta['warmup']} discarded.", "",
        "## Same batch on the CPU and on the device", "",
        f"- preview masks: {check['mask_pixels_differing']} of {check['mask_pixels']} pixels differ; "
        f"maps max abs diff {check['maps_max_abs_diff']:.2e}",
        f"- first-step loss: {check['loss'][0]:.6f} (CPU) vs {check['loss'][1]:.6f} "
        f"(rel diff {check['loss_rel_diff']:.1e})",
        f"- updated weights: max abs diff {check['weights_max_abs_diff']:.1e}", "",
        "## Per-step time (ms) and XLA memory (arguments + temporaries)", "",
        "| variant | median | min-max | x plain | memory MB |", "|---|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        mem = t["memory_bytes"][v]
        lines.append(f"| {v} | {t['median_ms'][v]:.2f} | {t['min_ms'][v]:.2f}-{t['max_ms'][v]:.2f} "
                     f"| {t['median_ms'][v] / t['median_ms']['plain']:.2f} | "
                     f"{'-' if mem is None else f'{mem / 2**20:.0f}'} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in t["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true", help="width 8, batch 8, 2 rounds (CPU)")
    parser.add_argument("--check", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.width, args.rounds, args.warmup = 8, 8, 2, 1
    if args.check:
        return correctness(args.check, args.batch, args.width)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = compare(out, min(args.batch, 16), args.width)
    for name in ("check_cpu.npz", "check_default.npz"):
        (out / name).unlink()
    print("check:", json.dumps(check), flush=True)
    device = jax.devices()[0]
    result = {
        "meta": {
            "command": "KERAS_BACKEND=jax python benchmarks/gpu_check.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
            "versions": f"python {platform.python_version()}, keras {keras.__version__}, "
                        f"jax {jax.__version__}, numpy {np.__version__}",
            "batch": args.batch, "width": args.width, "rounds": args.rounds, "warmup": args.warmup,
        },
        "check": check,
        "timing": timings(args.batch, args.width, args.rounds, args.warmup),
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
