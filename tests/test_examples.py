"""The examples, at tiny size, so they cannot rot."""

import json
import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import tf_only

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the studies

pytestmark = tf_only("the examples train on tf.data: run once, with TensorFlow")


def test_quickstart_is_compact_states_its_caveat_and_writes_pictures(tmp_path, capsys):
    import quickstart

    results = quickstart.main(["--epochs", "1", "--seeds", "0,1", "--out", str(tmp_path)])
    assert {"plain", "gradmix"} <= set(results)
    for method in ("plain", "gradmix"):
        r = results[method]
        assert 0.5 < r["metrics"]["mls"]["accuracy"] <= 1.0  # one epoch learns six digits
        assert 0.0 <= r["metrics"]["msp"]["oscr"] <= r["metrics"]["msp"]["accuracy"]
        per_seed = [r["runs"][s]["mls"]["auroc"] for s in (0, 1)]
        assert r["metrics"]["mls"]["auroc"] == pytest.approx(np.mean(per_seed))
    out = capsys.readouterr().out.splitlines()
    assert len(out) <= 12, out  # a line per run, no progress bars
    assert "not evidence" in "\n".join(out) and "fashion_mnist_osr.md" in "\n".join(out)
    table = (tmp_path / "results.txt").read_text().splitlines()
    assert table[1].split()[:2] == ["run", "accuracy"] and len(table) == 2 + 4 + 3 + 1
    difference = float(table[-2].split()[4])  # gradmix - plain, AUROC mls
    expected = 100 * (results["gradmix"]["metrics"]["mls"]["auroc"] - results["plain"]["metrics"]["mls"]["auroc"])
    assert difference == pytest.approx(expected, abs=0.01)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["gradmix"]["metrics"]["mls"]["auroc"] == results["gradmix"]["metrics"]["mls"]["auroc"]
    for picture in ("masks.png", "roc.png"):
        assert (tmp_path / picture).stat().st_size > 1000


def test_gradmixmodel_docstring_example_runs(tmp_path, monkeypatch):
    from keras_gradmix import GradMixModel

    code = re.search(r"```python\n(.*?)```", GradMixModel.__doc__, re.S).group(1)
    code = "\n".join(line[4:] for line in code.splitlines())
    monkeypatch.chdir(tmp_path)
    exec(code, {"keras": keras, "GradMixModel": GradMixModel})
    assert (tmp_path / "plain.keras").exists()


def test_osr_benchmark_resumes_and_writes_the_summary(tmp_path, capsys):
    import osr_benchmark

    # MixUp and GradMix's other modes train in the studies' smoke tests (robustness, shortcut).
    args = ["--dataset", "mnist5k", "--splits", "0", "--seeds", "0", "--epochs", "1",
            "--methods", "plain,cutmix,gradmix", "--verbose", "0",
            "--out", str(tmp_path / "runs"), "--summary", str(tmp_path / "summary.md")]
    runs = osr_benchmark.main(args[:-8] + ["--methods", "plain,gradmix"] + args[-6:])
    assert [r["method"] for r in runs] == ["plain", "gradmix"]
    first = json.loads((tmp_path / "runs" / "plain_split0_seed0.json").read_text())
    runs = osr_benchmark.main(args)  # resumes: plain and gradmix are not trained again
    out = capsys.readouterr().out
    assert out.count("skip ") == 2 and "== mnist5k split 0 seed 0 cutmix ==" in out
    assert [r["method"] for r in runs] == ["plain", "cutmix", "gradmix"]
    assert runs[0]["results"] == first["results"]
    summary = (tmp_path / "summary.md").read_text()
    main_table = "| method | runs" + summary.split("\n\n| method | runs")[1].split("\n\n")[0]
    rows = [line for line in main_table.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["plain", "cutmix", "gradmix"]
    auroc = 100 * runs[2]["results"]["mls"]["auroc"]
    assert f"{auroc:.2f} ± 0.00" in rows[2]
    assert "Command: `python benchmarks/osr_benchmark.py --dataset mnist5k" in summary
    assert "| vim |" in summary.split("AUROC (%) by score")[1].splitlines()[2]  # a column
    paired = summary.split("Paired differences to the baseline")[1]
    difference = 100 * (runs[2]["results"]["mls"]["auroc"] - runs[0]["results"]["mls"]["auroc"])
    assert f"| gradmix | plain | AUROC (mls) | 1 | {difference:+.2f} | – | " in paired  # no CI
    assert np.isfinite(json.loads((tmp_path / "summary.json").read_text())["runs"][2]["train_seconds"])
    # Calibration and full-spectrum rows, from the same runs.
    calibration = summary.split("Calibration and selective risk")[1]
    ece = 100 * runs[2]["calibration"]["ece"]
    full = 100 * runs[2]["full_spectrum"]["mls"]["auroc"]
    gradmix_row = [line for line in calibration.splitlines() if line.startswith("| gradmix | 1 |")][0]
    assert f"| {ece:.2f} ± 0.00 |" in gradmix_row and f"| {full:.2f} ± 0.00 |" in gradmix_row
    assert set(runs[2]["full_spectrum"]) == {"mls", "msp"}
    difference = 100 * (runs[2]["calibration"]["ece"] - runs[0]["calibration"]["ece"])
    assert f"| gradmix | ece | 1 | {difference:+.2f} | – |" in calibration


def test_cifar10_resnet18_smoke(tmp_path):
    import cifar10_resnet18

    history = cifar10_resnet18.main(["--smoke", "--out", str(tmp_path)])
    assert np.isfinite(history.history["loss"]).all()
    assert "val_osr_auroc_mls" in history.history
    for name in ("osr.csv", "best.keras", "last.keras", "masks/masks_epoch_001.png",
                 "osr_plots/osr_epoch_001.png"):
        assert (tmp_path / name).exists(), name


def test_supcon_osr_smoke(tmp_path):
    import supcon_osr

    history = supcon_osr.main(["--smoke", "--out", str(tmp_path)])
    assert np.isfinite(history.history["loss"]).all()
    assert 0.0 <= history.history["val_osr_auroc_knn_relative"][0] <= 1.0
    for name in ("osr.csv", "best.keras", "encoder.keras"):
        assert (tmp_path / name).exists(), name
    again = keras.saving.load_model(tmp_path / "best.keras")
    assert type(again).__name__ == "GradMixContrastive"


def test_osr_benchmark_contrastive_rows_use_knn(tmp_path):
    import osr_benchmark

    runs = osr_benchmark.main(["--dataset", "mnist5k", "--splits", "0", "--seeds", "0",
                               "--epochs", "1", "--methods", "supcon,supcon+gradmix",
                               "--verbose", "0", "--out", str(tmp_path / "runs"),
                               "--summary", str(tmp_path / "summary.md")])
    for run in runs:
        assert set(run["results"]) == {"knn_relative"}
        assert 0.5 < run["results"]["knn_relative"]["accuracy"] <= 1.0  # 3-NN vote on GAP features
    main_table = (tmp_path / "summary.md").read_text().split("Paired differences")[0]
    rows = [line for line in main_table.splitlines() if line.startswith("| supcon")]
    assert len(rows) == 2 and all(row.count("–") == 7 for row in rows)  # no logit scores


def test_kerashub_vit_smoke(tmp_path):
    pytest.importorskip("keras_hub")
    import kerashub_vit

    history, gm, accuracy = kerashub_vit.main(["--smoke", "--out", str(tmp_path)])
    assert gm.layer == "vit/vit_encoder/transformer_block_2/ln_1"  # the class-token trap avoided
    assert np.isfinite(history.history["loss"]).all() and 0.0 <= accuracy <= 1.0
    assert (tmp_path / "masks.png").stat().st_size > 1000
