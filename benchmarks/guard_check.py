"""What telling a bad batch early costs: fit's per-step time with the guard's
host read every step, every 50 steps (the default) and never, and the steps
run after a bad batch before fit stops.

Every step's logs carry a flag (held or not) that Keras reads on the host
anyway; ``check_every`` adds a host read of the guard's record every that many
steps (the bound where Keras reads the logs in a thread: JAX, PyTorch). The
small CNN of the examples, batch 128, ``fit`` over ``--steps`` steps; the
three settings interleaved ``--rounds`` times (the first round discarded as
warm-up), medians per step. Then one batch of ``--steps`` is bad (a NaN pixel
at step 3): the steps run before the error, per setting. Writes
``guard_check.json`` and ``guard_check.md`` for KERAS_BACKEND's backend
(merged with the other backends' rows).

    python benchmarks/guard_check.py
    KERAS_BACKEND=jax python benchmarks/guard_check.py
    python benchmarks/guard_check.py --smoke --out /tmp/guard
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from timing import machine  # noqa: E402

from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.zoo import small_cnn  # noqa: E402

SETTINGS = {"every step": 1, "every 50 (default)": 50, "never": 0}
BAD_STEP = 3


def trainer(check_every):
    gm = GradMixModel(small_cnn(0), "conv2", seed=0, check_every=check_every, check_inputs=False)
    gm.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return gm


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true", help="8 steps of 16 images, 2 rounds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.rounds = 8, 16, 2
    rng = np.random.default_rng(0)
    x = rng.random((args.steps * args.batch, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, len(x))
    models = {name: trainer(every) for name, every in SETTINGS.items()}
    times = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        for name, gm in models.items():
            start = time.perf_counter()
            gm.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
            if round_:  # the first round compiles
                times[name].append(1000 * (time.perf_counter() - start) / args.steps)
    bad = x.copy()
    bad[BAD_STEP * args.batch] = np.nan
    after = {}
    for name, every in SETTINGS.items():
        gm = trainer(every)
        try:
            gm.fit(bad, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
        except FloatingPointError:
            pass
        after[name] = int(keras.ops.convert_to_numpy(gm.guard_variables[1])) - BAD_STEP - 1
    backend = keras.backend.backend()
    rows = {name: {"ms_per_step": statistics.median(times[name]), "all_ms": times[name],
                   "steps_after_bad_batch": after[name]} for name in SETTINGS}
    base = rows["never"]["ms_per_step"]
    for row in rows.values():
        row["vs_never"] = row["ms_per_step"] / base
    command = " ".join(["python benchmarks/guard_check.py", *(argv if argv is not None else sys.argv[1:])])
    if backend != "tensorflow":
        command = f"KERAS_BACKEND={backend} {command}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "guard_check.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[backend] = {"command": command, "machine": machine(), "keras": keras.__version__,
                       "steps": args.steps, "batch": args.batch, "rounds": args.rounds, "rows": rows}
    path.write_text(json.dumps(stored, indent=1))
    lines = ["# What telling a bad batch early costs", "",
             "`benchmarks/guard_check.py` (its docstring: the design). Per backend: `fit`'s median "
             "time per step with the guard's record read on the host every step, every 50 steps "
             f"(the default `check_every`) and never (the logs' flag alone), and the steps run "
             f"after a bad batch at step {BAD_STEP} before `fit` stops. CPU timings: indicative.", "",
             "| backend | check_every | ms / step | vs never | steps run after the bad batch |",
             "|---|---|---:|---:|---:|"]
    for name_backend, run in stored.items():
        for name, row in run["rows"].items():
            lines.append(f"| {name_backend} | {name} | {row['ms_per_step']:.1f} | "
                         f"{row['vs_never']:.2f} | {row['steps_after_bad_batch']} |")
    lines += [""] + [f"{b}: `{r['command']}` ({r['steps']} steps of {r['batch']}, {r['rounds']} "
                     f"rounds; Keras {r['keras']}; {r['machine']})  " for b, r in stored.items()] + [""]
    (out / "guard_check.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return stored


if __name__ == "__main__":
    main()
