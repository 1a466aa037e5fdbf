"""Interleaved step timing and the step-cost ratios, shared by the benchmarks.

No backend import: ``step_cost.py`` (TensorFlow) and ``gpu_check.py`` (JAX)
both use it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict:
    """Seconds per call of each step: every round calls every step once, in
    turn, so the machine's noise hits all alike; the first ``warmup`` rounds
    are discarded. Each step must block until its work is done."""
    times = {name: [] for name in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(times: dict) -> dict:
    """Median, min and max in ms per variant, the ratios, and the step count."""
    median = {v: statistics.median(t) for v, t in times.items()}
    return {
        "median_ms": {v: 1e3 * m for v, m in median.items()},
        "min_ms": {v: 1e3 * min(t) for v, t in times.items()},
        "max_ms": {v: 1e3 * max(t) for v, t in times.items()},
        "steps": len(next(iter(times.values()))),
        "ratios": ratios(median),
    }


def ratios(median: dict) -> dict:
    """The step-cost targets' ratios (and more) from median times."""
    out = {
        "replace_extra_over_forward": (median["gradmix-replace"] - median["plain"]) / median["forward"],
        "replace_extra_over_forward_train":
            (median["gradmix-replace"] - median["plain"]) / median["forward-train"],
        "paired_over_cutmix_paired": median["gradmix-paired"] / median["cutmix-paired"],
        "reference_over_paired": median["reference-style"] / median["gradmix-paired"],
        "paired_over_plain": median["gradmix-paired"] / median["plain"],
        "replace_over_plain": median["gradmix-replace"] / median["plain"],
    }
    if "attribute" in median:
        out["attribute_over_forward"] = median["attribute"] / median["forward"]
    return out


UNITS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_fp16", "AVX-512 FP16"),
         ("amx_tile", "AMX"))


def machine() -> str:
    """Architecture, CPU count, platform and, on Linux, the CPU's model and
    vector units (machines that look alike otherwise can differ by these, and
    so do train times), for result files."""
    text = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]  # the first CPU
    except OSError:
        return text
    info = dict(map(str.strip, line.split(":", 1)) for line in first.splitlines() if ":" in line)
    units = ", ".join(name for flag, name in UNITS if flag in info.get("flags", "").split())
    cpu = " ".join(filter(None, [info.get("model name"), units and f"({units})"]))
    return f"{text}, {cpu}" if cpu else text
