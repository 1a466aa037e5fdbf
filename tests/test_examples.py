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

    args = ["--dataset", "mnist5k", "--splits", "0", "--seeds", "0", "--epochs", "1",
            "--methods", "plain,cutmix,mixup,gradmix,gradmix-replace", "--verbose", "0",
            "--out", str(tmp_path / "runs"), "--summary", str(tmp_path / "summary.md")]
    runs = osr_benchmark.main(args[:-8] + ["--methods", "plain,gradmix"] + args[-6:])
    assert [r["method"] for r in runs] == ["plain", "gradmix"]
    first = json.loads((tmp_path / "runs" / "plain_split0_seed0.json").read_text())
    runs = osr_benchmark.main(args)  # resumes: plain and gradmix are not trained again
    out = capsys.readouterr().out
    assert out.count("skip ") == 2 and "== mnist5k split 0 seed 0 cutmix ==" in out
    assert [r["method"] for r in runs] == ["plain", "cutmix", "mixup", "gradmix", "gradmix-replace"]
    assert runs[0]["results"] == first["results"]
    summary = (tmp_path / "summary.md").read_text()
    main_table = "| method | runs" + summary.split("\n\n| method | runs")[1].split("\n\n")[0]
    rows = [line for line in main_table.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "plain", "cutmix", "mixup", "gradmix", "gradmix-replace"]
    auroc = 100 * runs[3]["results"]["mls"]["auroc"]
    assert f"{auroc:.2f} ± 0.00" in rows[3]
    assert "Command: `python benchmarks/osr_benchmark.py --dataset mnist5k" in summary
    assert "| vim |" in summary.split("AUROC (%) by score")[1].splitlines()[2]  # a column
    paired = summary.split("Paired differences to the baseline")[1]
    difference = 100 * (runs[3]["results"]["mls"]["auroc"] - runs[0]["results"]["mls"]["auroc"])
    assert f"| gradmix | plain | AUROC (mls) | 1 | {difference:+.2f} | – | " in paired  # no CI
    assert np.isfinite(json.loads((tmp_path / "summary.json").read_text())["runs"][4]["train_seconds"])
    # Calibration and full-spectrum rows, from the same runs.
    calibration = summary.split("Calibration and selective risk")[1]
    ece = 100 * runs[3]["calibration"]["ece"]
    full = 100 * runs[3]["full_spectrum"]["mls"]["auroc"]
    gradmix_row = [line for line in calibration.splitlines() if line.startswith("| gradmix | 1 |")][0]
    assert f"| {ece:.2f} ± 0.00 |" in gradmix_row and f"| {full:.2f} ± 0.00 |" in gradmix_row
    assert set(runs[3]["full_spectrum"]) == {"mls", "msp"}
    difference = 100 * (runs[3]["calibration"]["ece"] - runs[0]["calibration"]["ece"])
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


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_robustness_benchmark_smoke_writes_both_summaries_and_resumes(tmp_path, capsys):
    import robustness_benchmark

    args = ["--smoke", "--seeds", "0", "--verbose", "0", "--out", str(tmp_path / "runs"),
            "--ood-summary", str(tmp_path / "ood.md"),
            "--corruption-summary", str(tmp_path / "corruptions.md")]
    runs = robustness_benchmark.main(args)
    assert [r["method"] for r in runs] == ["plain", "cutmix", "mixup", "gradmix"]
    for run in runs:
        # 3 sets and 2 group means x 12 scores
        assert len(run["ood"]) == 5 * 12 and len(run["corruptions"]) == 10 * 5
        assert 0.0 <= run["corruption_mean"] <= 1.0
    ood = (tmp_path / "ood.md").read_text()
    auroc_rows = [line for line in ood.split("### FPR95")[0].splitlines() if line.startswith("| ")]
    assert auroc_rows[0] == "| method | score | mnist | uniform_noise | permuted_pixels | far (mean) |"
    assert len(auroc_rows) == 1 + 4 * 12  # header and 4 methods x 12 scores
    gradmix_mls = [r for r in runs[3]["ood"] if (r["ood"], r["score"]) == ("mnist", "mls")][0]
    assert f"| gradmix | mls | {100 * gradmix_mls['auroc']:.2f} ± 0.00 |" in ood
    with open(tmp_path / "ood.csv") as f:
        assert sum(1 for _ in f) == 1 + 4 * 5 * 12
    corruptions = (tmp_path / "corruptions.md").read_text()
    mean = 100 * runs[0]["corruption_mean"]
    assert f"| plain | 1 | {100 * runs[0]['accuracy']:.2f} ± 0.00 | {mean:.2f} ± 0.00 |" in corruptions
    assert "Command: `python benchmarks/robustness_benchmark.py --smoke" in corruptions
    capsys.readouterr()
    again = robustness_benchmark.main(args)  # resumes: nothing is trained again
    assert capsys.readouterr().out.count("skip ") == 4
    assert [r["ood"] for r in again] == [r["ood"] for r in runs]


def test_sensitivity_study_smoke_pairs_every_cell_with_plain(tmp_path):
    import sensitivity_study

    args = ["--smoke", "--splits", "0", "--seeds", "0,1", "--out", str(tmp_path / "runs"),
            "--summary", str(tmp_path / "sensitivity.md")]
    runs = sensitivity_study.main(args)
    assert sorted({r["cell"] for r in runs}) == sorted(
        ["plain", "cutmix", "gradmix", "masked area: 5-25 %"])
    assert {r["options"].get("mask_area") for r in runs if r["cell"].startswith("masked")} == {(0.05, 0.25)}
    text = (tmp_path / "sensitivity.md").read_text()
    gradmix = [r for r in runs if r["cell"] == "gradmix"]
    plain = {r["seed"]: r for r in runs if r["cell"] == "plain"}
    diffs = [100 * (r["results"]["mls"]["auroc"] - plain[r["seed"]]["results"]["mls"]["auroc"])
             for r in gradmix]
    assert f"| {np.mean(diffs):+.2f} [" in text.split("| gradmix |")[1].splitlines()[0]
    # the per-split table: split 0's mean, then each seed's difference in seed order
    by_seed = [d for _, d in sorted(zip([r["seed"] for r in gradmix], diffs))]
    per_split = f"| gradmix | {np.mean(diffs):+.1f} ({by_seed[0]:+.1f}, {by_seed[1]:+.1f}) |"
    assert per_split in text.split("per split")[1]
    assert (tmp_path / "sensitivity.png").stat().st_size > 1000
    assert len(list((tmp_path / "runs").glob("*.json"))) == 8
    again = sensitivity_study.main(args)  # resumes from the per-run files
    assert [r["results"] for r in again] == [r["results"] for r in runs]
    partial = sensitivity_study.main(args[:4] + ["0,1,2", "--finished-only"] + args[5:])
    assert [r["results"] for r in partial] == [r["results"] for r in runs]  # nothing trained
    assert "Finished runs only: 8 of 12" in (tmp_path / "sensitivity.md").read_text()


def test_kerashub_vit_smoke(tmp_path):
    pytest.importorskip("keras_hub")
    import kerashub_vit

    history, gm, accuracy = kerashub_vit.main(["--smoke", "--out", str(tmp_path)])
    assert gm.layer == "vit/vit_encoder/transformer_block_2/ln_1"  # the class-token trap avoided
    assert np.isfinite(history.history["loss"]).all() and 0.0 <= accuracy <= 1.0
    assert (tmp_path / "masks.png").stat().st_size > 1000


def test_ssl_probe_smoke_trains_without_labels_and_reports_paired_differences(tmp_path):
    import ssl_probe

    runs = ssl_probe.main(["--smoke", "--seeds", "0,1", "--out", str(tmp_path)])
    methods = ("untrained", "simclr", "simclr+gradmix", "simclr+gradmix-random")
    assert [(r["method"], r["seed"]) for r in runs] == [(m, s) for s in (0, 1) for m in methods]
    assert runs[3]["options"] == {"placement": "random"} and runs[2]["options"] == {}
    assert all(0.0 <= r["probe_accuracy"] <= 1.0 for r in runs)
    assert max(r["probe_accuracy"] for r in runs) > 0.2  # better than chance (0.1) after a probe
    text = (tmp_path / "summary.md").read_text()
    accuracy = {(r["method"], r["seed"]): 100 * r["probe_accuracy"] for r in runs}

    def diff(method, baseline):
        return np.mean([accuracy[(method, s)] - accuracy[(baseline, s)] for s in (0, 1)])

    assert f"| simclr+gradmix | 2 | {diff('simclr+gradmix', 'simclr'):+.2f} |" in text
    control = text.split("does the attribution matter?")[1]
    assert f"| {diff('simclr+gradmix', 'simclr+gradmix-random'):+.2f} |" in control
    assert "python benchmarks/ssl_probe.py --smoke" in text
    again = ssl_probe.main(["--smoke", "--seeds", "0,1", "--out", str(tmp_path)])  # resumes
    assert again == runs


def test_contrastive_budget_smoke_pairs_gradmix_with_supcon_at_the_same_budget(tmp_path):
    import contrastive_budget

    probe = contrastive_budget.budgets(
        type("Args", (), {"probe": True, "epochs_grid": "20,60", "temperatures": "0.1,0.5"}))
    assert probe == [("plain", 20, None), ("supcon", 20, 0.1), ("supcon", 20, 0.5),
                     ("plain", 60, None), ("supcon", 60, 0.1), ("supcon", 60, 0.5)]
    args = ["--smoke", "--seeds", "0,1", "--out", str(tmp_path)]
    runs = contrastive_budget.main(args)
    assert [(r["method"], r["seed"]) for r in runs] == [
        (m, s) for s in (0, 1) for m in ("plain", "supcon", "supcon+gradmix")]
    for r in runs:  # encoders by both kNN scores, the classifier by MLS and kNN
        expected = {"mls", "knn"} if r["method"] == "plain" else {"knn", "knn_relative"}
        assert set(r["results"]) == expected
        assert all(0.0 <= v["auroc"] <= 1.0 for v in r["results"].values())
    text = (tmp_path / "summary.md").read_text()
    diffs = [100 * (runs[i + 2]["results"]["knn"]["auroc"] - runs[i + 1]["results"]["knn"]["auroc"])
             for i in (0, 3)]
    row = [line for line in text.splitlines() if "| supcon+gradmix | AUROC (knn) |" in line]
    assert row and f"| 2 | {np.mean(diffs):+.2f} |" in row[0]
    assert "python benchmarks/contrastive_budget.py --smoke" in text
    again = contrastive_budget.main(args)  # resumes from the per-run files
    assert [r["results"] for r in again] == [r["results"] for r in runs]
