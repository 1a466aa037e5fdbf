"""The benchmarks run (--smoke) and measure what they say they measure."""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keras_gradmix.zoo import small_cnn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if keras.backend.backend() != "tensorflow":
    pytest.skip("benchmarks/step_cost.py measures TensorFlow steps", allow_module_level=True)
import baselines  # noqa: E402
import step_cost  # noqa: E402


def train_one_step(trainer, x, y):
    trainer.compile(optimizer=keras.optimizers.SGD(0.1),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = trainer.train_on_batch(x, y, return_dict=True)["loss"]
    return loss, [to_numpy(w) for w in trainer.model.weights]


def test_reference_style_step_trains_exactly_like_gradmix_paired(mnist):
    """Same masks and update; the reference-style step only costs more."""
    from keras_gradmix import GradMixModel

    x, y = mnist[0][:32], mnist[1][:32]
    options = dict(layer="conv2", attribution="layercam", mode="paired", seed=3)
    _, shape, _ = step_cost.MODELS["small_cnn"]
    assert x.shape[1:] == shape
    fused = train_one_step(GradMixModel(small_cnn(0), **options), x, y)
    reference = train_one_step(baselines.ReferenceStyle(small_cnn(0), **options), x, y)
    assert reference[0] == pytest.approx(fused[0], rel=1e-5)
    for a, b in zip(reference[1], fused[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("paired", [False, True])
def test_cutmix_baseline_loss_is_the_area_mixed_loss_of_the_pasted_batch(mnist, paired):
    from keras_gradmix import masks, mixing

    x, y = mnist[0][:16], mnist[1][:16]
    model = small_cnn(0)
    cutmix = baselines.CutMix(model, paired=paired, seed=5)
    cutmix.compile(optimizer=keras.optimizers.SGD(0.0),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = cutmix.train_on_batch(x, y)

    # The same draws, in the same order, by hand.
    seed = keras.random.SeedGenerator(5)
    centres = to_numpy(keras.random.uniform(x.shape[:3], seed=seed))
    area = float(keras.random.uniform((), 0.1, 0.5, seed=seed))
    partner = to_numpy(mixing.random_partner(16, seed=seed))
    box = to_numpy(masks.box_masks(centres, area, border="clip")[0])
    assert sorted(partner) == list(range(16)) and 0 < box.mean() < 0.5
    pasted = box.mean(axis=(1, 2))
    images = np.where(box[..., None], x[partner], x)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    logits = model(images)
    expected = np.mean((1 - pasted) * ce(y, logits) + pasted * ce(y[partner], logits))
    if paired:
        expected += np.mean(ce(y, model(x)))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_attribution_control_smoke_reports_paired_contrasts_and_resumes(tmp_path):
    import attribution_control

    args = ["--smoke", "--splits", "0", "--seeds", "0,1", "--cells",
            "plain,gradmix,gradmix-random,outlier-peak", "--out", str(tmp_path / "runs"),
            "--summary", str(tmp_path / "control.md")]
    runs = attribution_control.main(args)
    assert [(r["cell"], r["seed"]) for r in runs] == [
        (c, s) for s in (0, 1) for c in ("plain", "gradmix", "gradmix, random placement", "outlier, peak")]
    assert runs[2]["options"] == {"placement": "random", "border": "shift"}
    assert runs[3]["options"] == {"masked_as": "outlier", "border": "shift"}
    assert runs[2]["masking"]["after"]["shift/random"] == pytest.approx(runs[2]["masking"]["after"]["shift/peak"])
    assert all("knn" in r["results"] for r in runs)
    text = (tmp_path / "control.md").read_text()

    def diff(cell, baseline, score="mls"):
        by = {(r["cell"], r["seed"]): 100 * r["results"][score]["auroc"] for r in runs}
        return np.mean([by[(cell, s)] - by[(baseline, s)] for s in (0, 1)])

    contrasts = text.split("**The contrasts**")[1]
    row = contrasts.split("| peak vs random (positives) |")[1].splitlines()[0]
    assert f"| {diff('gradmix', 'gradmix, random placement'):+.2f} [" in row  # the MLS column
    assert f"| {diff('gradmix', 'gradmix, random placement', 'knn'):+.2f} [" in row
    row = contrasts.split("| outlier vs positive (peak) |")[1].splitlines()[0]
    assert f"| {diff('outlier, peak', 'gradmix'):+.2f} [" in row
    assert (tmp_path / "control.png").stat().st_size > 1000
    again = attribution_control.main(args)  # resumes from the per-run files
    assert [r["results"] for r in again] == [r["results"] for r in runs]


def test_attribution_control_gpu_summary_of_the_committed_device_runs(tmp_path):
    import attribution_control_gpu

    bundle = json.loads((ROOT / "docs/results/attribution_control_gpu_runs.json").read_text())
    attribution_control_gpu.summarise(bundle, str(tmp_path))
    text = (tmp_path / "attribution_control_gpu.md").read_text()
    by = {(r["cell"], r["seed"]): 100 * r["results"]["mls"]["auroc"] for r in bundle["runs"]}
    seeds = sorted({s for _, s in by})
    diff = np.mean([by[("gradmix", s)] - by[("gradmix-random", s)] for s in seeds])
    assert f"| {diff:+.2f} [" in text.split("| peak vs random (positives) |")[1].splitlines()[0]
    assert "gpu: NVIDIA" in text and bundle["meta"]["command"] in text
    assert (ROOT / "docs/results/attribution_control_gpu.md").read_text() == text


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_faithfulness_smoke_writes_a_row_per_layer_and_attribution(tmp_path):
    import faithfulness

    result = faithfulness.main(["--smoke", "--out", str(tmp_path)])
    rows = result["rows"]
    assert [(r["layer"], r["attribution"]) for r in rows] == [
        (layer, a) for layer in ("conv1", "conv2") for a in ("layercam", "gradcam", "gradcam++")]
    for r in rows:
        low, high = r["peak_minus_random_interval"]
        assert r["faithful"] == (low > 0 and r["random"] > r["low"]) and low <= r["peak_minus_random"] <= high
        assert r["peak_minus_random"] == pytest.approx(r["peak"] - r["random"], abs=1e-9)
    text = (tmp_path / "faithfulness.md").read_text()
    assert "`python benchmarks/faithfulness.py --smoke --out" in text
    assert text.count("| small_cnn (") == 6


def test_flat_maps_counts_flat_maps_and_its_smoke_writes_every_column(tmp_path):
    import flat_maps
    from keras_gradmix import GradMixModel

    x, y = np.random.default_rng(0).random((8, 28, 28, 1), "float32"), np.arange(8)
    model = small_cnn(0)
    model.get_layer("conv2").set_weights([np.zeros_like(w) for w in model.get_layer("conv2").get_weights()])
    dead = GradMixModel(model, "conv2", seed=0)  # conv2 is all zeros: every map is flat
    alive = GradMixModel(small_cnn(0), "conv2", seed=0)
    for gm in (dead, alive):  # the "loss" target needs the compiled loss
        gm.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert set(flat_maps.flat_shares(dead, x, y).values()) == {1.0}
    assert max(flat_maps.flat_shares(alive, x, y).values()) < 1.0

    result = flat_maps.main(["--smoke", "--out", str(tmp_path)])
    columns = [f"{m}/{t}" for m in flat_maps.METHODS for t in flat_maps.TARGETS]
    assert [sorted(r) for r in result["rows"]] == [sorted(["epoch", *columns])] * 2
    assert all(0.0 <= r[c] <= 1.0 for r in result["rows"] for c in columns)
    text = (tmp_path / "flat_maps.md").read_text()
    assert "`python benchmarks/flat_maps.py --smoke --out" in text and "32 held-out" in text
    assert json.loads((tmp_path / "flat_maps.json").read_text()) == result


def test_shortcut_cues_are_where_the_labels_say():
    import shortcut

    x = np.zeros((6, 28, 28, 1), "float32")
    patched = shortcut.add_cue(x, np.arange(6), "patch", 6)
    checker = np.add.outer(np.arange(4), np.arange(4)) % 2
    for k, (r, c) in enumerate(shortcut.PLACES):
        np.testing.assert_array_equal(patched[k, r:r + 4, c:c + 4, 0], checker)
        assert patched[k].sum() == 8  # nothing else changed
    np.testing.assert_array_equal(shortcut.cue_masks(np.arange(6), (28, 28)), _cue_pixels(shortcut.PLACES))
    striped = shortcut.add_cue(x + 0.5, np.array([0, 3, 0, 3, 0, 3]), "grating", 6)
    assert striped.max() == 0.5  # the stripes (at most 0.3) stay under the object
    faint = shortcut.add_cue(x[:2], np.array([0, 3]), "grating", 6)
    np.testing.assert_allclose(faint[0, :, 5, 0], faint[0, :, 0, 0])  # 0 degrees: constant along rows
    np.testing.assert_allclose(faint[1, 5, :, 0], faint[1, 0, :, 0], atol=1e-6)  # 90 degrees
    assert 0.25 < faint.max() <= 0.3


def _cue_pixels(places):
    out = np.zeros((len(places), 28, 28), bool)
    for k, (r, c) in enumerate(places):
        out[k, r:r + 4, c:c + 4] = True
    return out


def test_shortcut_arrays_put_the_cue_with_the_label_rho_of_the_time():
    import shortcut

    arrays = shortcut.shortcut_arrays("mnist5k", 0, 100, 0.9, "patch", seed=0, limit_test=200)
    x, y = arrays["train"]
    assert abs(arrays["aligned_rate"] - 0.9) < 0.05 and len(y) == 600
    where = arrays["train_where"]
    cue = shortcut.cue_masks(where, (28, 28))
    checker = np.tile(np.add.outer(np.arange(4), np.arange(4)) % 2, (len(x), 1))
    np.testing.assert_array_equal(x[..., 0][cue].reshape(-1, 4), checker.reshape(-1, 4))
    known = arrays["known"]
    labels = known["aligned"][1]
    for name, rule in (("aligned", lambda w: w == labels), ("conflicting", lambda w: w != labels)):
        images = known[name][0][..., 0]
        found = np.array([[(img[r:r + 4, c:c + 4] == checker[:4]).all() for r, c in shortcut.PLACES]
                          for img in images]).argmax(1)
        assert rule(found).all(), name
    np.testing.assert_array_equal(known["no cue"][0], shortcut.open_set_arrays(
        "mnist5k", 0, 100, limit_test=200)["known_test"][0])
    again = shortcut.shortcut_arrays("mnist5k", 0, 100, 0.9, "patch", seed=0, limit_test=200)
    np.testing.assert_array_equal(again["train"][0], x)  # the same for every cell of a pair


def test_shortcut_smoke_pairs_cells_and_measures_the_mechanism(tmp_path):
    import shortcut

    args = ["--smoke", "--splits", "0", "--seeds", "0,1", "--rho", "0.99",
            "--cells", "plain,peak-paired,random-paired", "--out", str(tmp_path / "runs"),
            "--summary", str(tmp_path / "shortcut.md")]
    runs = shortcut.main(args)
    assert [(r["cell"], r["seed"]) for r in runs] == [
        (c, s) for s in (0, 1) for c in ("plain", "gradmix peak, paired", "gradmix random, paired")]
    assert runs[0]["cue_coverage"] is None and len(runs[1]["cue_coverage"]) == 1
    assert runs[2]["options"] == {"placement": "random"}
    for r in runs:
        assert set(shortcut.TEST_SETS) <= {k.split("/")[1] for k in r["results"] if k.startswith("acc/")}
        low, high = r["results"]["faith/peak - random/interval"]
        assert low <= r["results"]["faith/peak - random"] <= high
    text = (tmp_path / "shortcut.md").read_text()
    by = {(r["cell"], r["seed"]): 100 * r["results"]["acc/conflicting"] for r in runs}
    diff = np.mean([by[("gradmix peak, paired", s)] - by[("plain", s)] for s in (0, 1)])
    row = text.split("| gradmix peak, paired − plain |")[1].splitlines()[0]
    assert row.startswith(f" {diff:+.2f} [")
    again = shortcut.main(args)  # resumes from the per-run files
    assert [r["results"] for r in again] == [r["results"] for r in runs]


def test_outliers_screen_then_powered_on_its_best_variant(tmp_path):
    """The screen picks the variant with the best paired ΔAUROC (MLS) vs plain;
    the powered stage trains it beside its random twin and reuses the runs it
    shares with the screen; tuned scores use the options chosen on validation."""
    import outliers

    from keras_gradmix.osr import GRIDS

    common = ["--smoke", "--splits", "0", "--seeds", "0", "--out", str(tmp_path / "runs"),
              "--summary-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="finish `python benchmarks/outliers.py --stage screen`"):
        outliers.main([*common, "--stage", "powered"])
    runs, meta = outliers.main(common)
    assert [r["cell"] for r in runs] == ["plain", "box-w0.5", "pixels-aux-w1"]
    assert runs[2]["options"] == {"masked_as": "outlier", "mask": "threshold", "auxiliary_positives": True,
                                  "outlier_weight": 1.0, "border": "shift"}
    auroc = {r["cell"]: r["results"]["mls"]["auroc"] for r in runs}
    best = max(["box-w0.5", "pixels-aux-w1"], key=lambda c: auroc[c])
    assert meta["best"] == best and meta["runs"] == meta["wanted"] == 3
    for r in runs:
        for name in outliers.TUNED:
            tuning = r["results"]["tuning"][name]
            grid = GRIDS[name]
            assert all(tuning["options"][k] in grid[k] for k in grid) and 0 <= tuning["val_auroc"] <= 1
    text = (tmp_path / "outliers_screen.md").read_text()
    assert f"`{best}`" in text and "| pixels vs box (aux, w 1) |" not in text  # its box twin did not run
    assert outliers.chosen_options(runs) in text

    powered, meta = outliers.main([*common, "--stage", "powered"])
    assert [r["cell"] for r in powered] == ["plain", best, f"{best}-random"]
    assert powered[0] == runs[0] and powered[1] == runs[[r["cell"] for r in runs].index(best)]
    assert powered[2]["options"]["placement"] == "random"
    diff = 100 * (powered[1]["results"]["mls"]["auroc"] - powered[2]["results"]["mls"]["auroc"])
    text = (tmp_path / "outliers_powered.md").read_text()
    assert "| peak vs random (the same mask) | " in text and f"{diff:+.2f} (" in text
    assert "chosen on the screen's runs alone" in text and "Outside the screen's pairs" in text


def test_outliers_summary_counts_the_options_chosen_and_flags_a_grid_end():
    import outliers

    def run(temperature, k, percentile):
        tuning = {"energy": {"temperature": temperature}, "knn": {"k": k}, "react": {"percentile": percentile}}
        return {"results": {"tuning": {name: {"options": o} for name, o in tuning.items()}}}

    text = outliers.chosen_options([run(1000.0, 50, 95.0), run(1000.0, 50, 85.0), run(1000.0, 50, 95.0)])
    assert text == ("**Options chosen on validation** (value: runs): energy temperature 1000: 3 "
                    "(always the grid's highest); knn k 50: 3 (always the grid's lowest); "
                    "react percentile 85: 1, 95: 2.")


def test_outliers_tuned_scores_are_the_scores_at_the_chosen_options(mnist):
    """score(): the tuned columns equal an evaluation with the chosen options."""
    import outliers

    from keras_gradmix.osr import evaluate_model_open_set
    from keras_gradmix.zoo import lean_cnn

    x, y = mnist[0][:96], mnist[1][:96] % 3
    model = lean_cnn((28, 28, 1), 3, 0)
    data = {"train": (x[:64], y[:64]), "known_test": (x[64:], y[64:]), "unknown_test": x[64:] * 0.5}
    val = {"known": (x[:32], y[:32]), "unknown": np.random.default_rng(0).random((32, 28, 28, 1), "float32")}
    results = outliers.score(model, data, val)
    for name in outliers.TUNED:
        options = {name: results["tuning"][name]["options"]}
        again = evaluate_model_open_set(model, data["known_test"], data["unknown_test"], (name,),
                                        feature_layer="features", train_data=data["train"],
                                        score_options=options)
        assert results[f"{name}-tuned"]["auroc"] == pytest.approx(again[name]["auroc"])


def test_timeseries_reads_ts_files_exactly(tmp_path):
    import timeseries

    path = tmp_path / "toy.ts"
    path.write_text("# a comment\n@problemName toy\n@univariate false\n@classLabel true a b\n@data\n"
                    "1,2,3:4,5,6:a\n0.5,0,-1:7,8,9:b\n")
    x, y = timeseries.read_ts(str(path))
    np.testing.assert_array_equal(x, [[[1, 4], [2, 5], [3, 6]], [[0.5, 7], [0, 8], [-1, 9]]])
    assert x.dtype == np.float32 and list(y) == ["a", "b"]
    path.write_text("@data\n1,2:a\n1,2,3:b\n")
    with pytest.raises(ValueError, match="unequal lengths"):
        timeseries.read_ts(str(path))


def test_timeseries_smoke_on_japanese_vowels(tmp_path):
    import importlib.util

    import timeseries

    if importlib.util.find_spec("aeon") is None:
        pytest.skip("needs the aeon wheel's data (make venv installs it)")
    data = timeseries.open_set("JapaneseVowels", 0)
    x, y = data["train"]
    assert x.shape[1:] == (25, 12) and sorted(set(y)) == list(range(6)) and len(data["unknown"]) == 3
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0, atol=1e-4)  # the known training series' statistics
    np.testing.assert_allclose(x.std(axis=(0, 1)), 1, atol=1e-3)
    runs, summary = timeseries.main(["--smoke", "--splits", "0", "--seeds", "0", "--cells",
                                     "plain,gradmix,gradmix-random", "--out", str(tmp_path / "runs"),
                                     "--summary", str(tmp_path / "ts.md")])
    assert [r["cell"] for r in runs] == ["plain", "gradmix", "gradmix-random"]
    assert runs[2]["options"] == {"placement": "random"}
    by = {r["cell"]: 100 * r["results"]["mls"]["auroc"] for r in runs}
    contrast = summary["tables"]["JapaneseVowels"]["contrasts"][0]
    assert contrast["ΔAUROC (MLS)"].startswith(f"{by['gradmix'] - by['gradmix-random']:+.2f}")
    assert runs[1]["masking"]["gradmix_masked"][-1] > 0
