"""The timing benchmarks run (--smoke) and time what they say they time
(split from test_benchmarks.py so that xdist can run the two files side by side)."""

import json
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if keras.backend.backend() != "tensorflow":
    pytest.skip("benchmarks/step_cost.py measures TensorFlow steps", allow_module_level=True)
import step_cost  # noqa: E402


@pytest.fixture(scope="module")
def step_cost_smoke(tmp_path_factory):
    """One TensorFlow --smoke run, shared (each test works on its own copy)."""
    out = tmp_path_factory.mktemp("step_cost")
    return out, step_cost.main(["--smoke", "--out", str(out)])


def copy_of(directory, tmp_path):
    import shutil

    shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_step_cost_smoke_writes_timings_ratios_and_memory(step_cost_smoke, tmp_path):
    tmp_path = copy_of(step_cost_smoke[0], tmp_path)
    results = step_cost_smoke[1]
    assert set(results) == {"tensorflow/small_cnn/off"}  # --smoke: jit off only
    saved = json.loads((tmp_path / "step_cost.json").read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert set(saved["runs"]) == {"tensorflow"}
    for row in results.values():
        med = row["median_ms"]
        assert set(med) == set(step_cost.VARIANTS) and row["steps"] == 2
        for v in step_cost.VARIANTS:
            assert 0 < row["min_ms"][v] <= med[v] <= row["max_ms"][v]
        ratios = row["ratios"]
        assert ratios["paired_over_cutmix_paired"] == pytest.approx(
            med["gradmix-paired"] / med["cutmix-paired"])
        assert ratios["replace_extra_over_forward"] == pytest.approx(
            (med["gradmix-replace"] - med["plain"]) / med["forward"])
    memory = results["tensorflow/small_cnn/off"]["peak_rss_mb"]
    assert set(memory) == {"plain", "gradmix-replace"} and min(memory.values()) > 100
    text = (tmp_path / "step_cost.md").read_text()
    assert "`python benchmarks/step_cost.py --smoke --out" in text
    assert "| t_gradmix_paired / t_cutmix_paired |" in text and "keras " + keras.__version__ in text
    costs = results["tensorflow/small_cnn/off"]["cost_controls"]
    med = costs["median_ms"]
    assert set(med) == set(step_cost.COST_VARIANTS)
    f = costs["f0.25"]
    assert f["extra_ms"] == pytest.approx(med["gradmix-paired-f0.25"] - med["plain"])
    assert f["bound_ms"] == pytest.approx(0.25 * (med["gradmix-paired"] - med["plain"]) + 0.05 * med["plain"])
    assert f["met"] == (f["extra_ms"] <= f["bound_ms"])
    assert "## Cost controls" in text
    # --cost-controls re-times only those, keeping the rows' other variants.
    again = step_cost.main(["--smoke", "--cost-controls", "--jit", "off", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "step_cost.json").read_text())
    row = saved["results"]["tensorflow/small_cnn/off"]
    assert row["median_ms"] == results["tensorflow/small_cnn/off"]["median_ms"]
    assert row["cost_controls"] == json.loads(json.dumps(again["tensorflow/small_cnn/off"]["cost_controls"]))
    assert "--cost-controls" in row["cost_controls"]["command"]
    costs_command = row["cost_controls"]["command"]
    assert "--cost-controls" not in saved["runs"]["tensorflow"]["command"]
    # --outliers times the outlier use the same way, beside what is stored.
    step_cost.main(["--smoke", "--outliers", "--jit", "off", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "step_cost.json").read_text())
    row = saved["results"]["tensorflow/small_cnn/off"]
    assert row["cost_controls"]["command"] == costs_command
    med = row["outliers"]["median_ms"]
    assert set(med) == set(step_cost.OUTLIER_VARIANTS) and row["outliers"]["steps"] == 2
    assert row["outliers"]["over_paired"]["gradmix-outlier-aux"] == pytest.approx(
        med["gradmix-outlier-aux"] / med["gradmix-paired"])
    assert "## The outlier use" in (tmp_path / "step_cost.md").read_text()


def test_gpu_check_smoke_on_the_jax_cpu(tmp_path):
    """benchmarks/gpu_check.py needs JAX, not a GPU: its --smoke runs here."""
    import os
    import subprocess

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                    "--out", str(tmp_path)], check=True, env=env, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["check"]["mask_pixels_differing"] == 0 and result["check"]["loss_rel_diff"] == 0
    assert set(result["timing"]["median_ms"]) == {
        "forward", "forward-train", "plain", "cutmix-paired", "gradmix-replace", "gradmix-paired",
        "reference-style"}


def test_step_cost_torch_rows_merge_beside_the_tensorflow_ones(step_cost_smoke, tmp_path):
    """The PyTorch run (a child process) adds its rows and keeps TensorFlow's."""
    import os
    import subprocess

    tmp_path = copy_of(step_cost_smoke[0], tmp_path)
    env = dict(os.environ, KERAS_BACKEND="torch")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--smoke",
                    "--out", str(tmp_path)], check=True, env=env, capture_output=True, timeout=600)
    saved = json.loads((tmp_path / "step_cost.json").read_text())
    assert set(saved["results"]) == {"tensorflow/small_cnn/off", "torch/small_cnn/off"}
    assert saved["results"]["tensorflow/small_cnn/off"] == json.loads(
        json.dumps(step_cost_smoke[1]["tensorflow/small_cnn/off"]))
    assert set(saved["runs"]) == {"tensorflow", "torch"}
    assert saved["runs"]["torch"]["command"].startswith("KERAS_BACKEND=torch python benchmarks/")
    text = (tmp_path / "step_cost.md").read_text()
    assert "| small_cnn | torch |" in text and "| small_cnn | tensorflow |" in text


def test_torch_compile_smoke(tmp_path):
    import os
    import subprocess

    env = dict(os.environ, KERAS_BACKEND="torch")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "torch_compile.py"), "--smoke",
                    "--out", str(tmp_path)], check=True, env=env, capture_output=True, timeout=600)
    saved = json.loads((tmp_path / "torch_compile.json").read_text())
    assert saved["results"]["eager"]["steps"] == 4 and saved["results"]["eager"]["median_step_ms"] > 0
    assert "does not run under jit_compile=True" in saved["gradmix"]


def test_torch_threads_smoke(tmp_path):
    import torch_threads

    results = torch_threads.main(["--smoke", "--out", str(tmp_path)])
    cells = results["cells"]
    assert sorted(cells) == ["load0/threads-1/gradmix", "load0/threads-1/plain",
                             "load0/threads-default/gradmix", "load0/threads-default/plain"]
    assert cells["load0/threads-1/gradmix"]["threads"] == 1
    assert all(len(c["epoch_s"]) == 1 and c["median_s"] > 0 for c in cells.values())  # 2 epochs, 1 kept
    text = (tmp_path / "torch_threads.md").read_text()
    assert "`python benchmarks/torch_threads.py --smoke --out" in text and "| 0 busy | 1 (1) |" in text


def test_guard_check_smoke_times_each_setting_and_counts_steps_after_a_bad_batch(tmp_path):
    import guard_check

    stored = guard_check.main(["--smoke", "--out", str(tmp_path)])
    rows = stored["tensorflow"]["rows"]
    assert set(rows) == set(guard_check.SETTINGS)
    assert all(r["ms_per_step"] > 0 and r["steps_after_bad_batch"] == 0 for r in rows.values())
    assert rows["never"]["vs_never"] == 1.0
    assert "| tensorflow | every 50 (default) |" in (tmp_path / "guard_check.md").read_text()
