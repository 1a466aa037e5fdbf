"""The studies' smoke runs that train on tf.data (split from test_examples.py
so that xdist runs the two files side by side)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tf_only

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = tf_only("the studies train on tf.data: run once, with TensorFlow")


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
