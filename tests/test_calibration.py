"""Calibration and selective risk against brute-force transcriptions and hand values."""

import numpy as np
import pytest

from conftest import backend_free
from keras_gradmix.osr import calibration as cal

pytestmark = backend_free


def brute_ece(conf, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            mean_conf = sum(conf[i] for i in inside) / len(inside)
            total += len(inside) / len(conf) * abs(acc - mean_conf)
    return total


def brute_aurc(conf, correct):
    risks = []
    for c in conf:  # accept everything at least as confident as this sample
        accepted = [j for j, d in enumerate(conf) if d >= c]
        risks.append(sum(not correct[j] for j in accepted) / len(accepted))
    return sum(risks) / len(risks)


def test_hand_values():
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    assert cal.ece(conf, correct, bins=2) == pytest.approx(0.25)  # one bin: 0.75 vs 0.5
    assert cal.aurc(conf, correct) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    coverage, risk = cal.risk_coverage(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 2])
    # Perfectly calibrated and always right: both zero.
    assert cal.ece([1.0, 1.0], [1, 1]) == 0.0 and cal.aurc([0.3, 0.9], [1, 1]) == 0.0


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_against_brute_force_with_ties_and_bin_edges(bins):
    rng = np.random.default_rng(bins)
    conf = np.round(rng.uniform(size=300), 1)  # many ties, values on the bin edges, 0.0
    correct = rng.uniform(size=300) < conf
    assert cal.ece(conf, correct, bins) == pytest.approx(brute_ece(conf, correct, bins), abs=1e-12)
    assert cal.aurc(conf, correct) == pytest.approx(brute_aurc(conf, correct), abs=1e-12)
    table = cal.reliability(conf, correct, bins)
    assert table["count"].sum() == 300 and len(table["edges"]) == bins + 1


def test_from_logits():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    conf, correct = cal.confidences_from_logits(logits, [0, 0, 0])
    np.testing.assert_allclose(conf, [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-3))])
    np.testing.assert_array_equal(correct, [True, False, True])
    metrics = cal.calibration_metrics(logits, [0, 0, 0], bins=10)
    assert metrics == {"ece": pytest.approx(brute_ece(conf, correct, 10)),
                       "aurc": pytest.approx(brute_aurc(conf, correct))}


@pytest.mark.parametrize("args, message", [
    (([], []), "empty"),
    (([0.5], [1, 0]), "2 entries for 1"),
    (([np.nan], [1]), "NaN"),
])
def test_errors(args, message):
    with pytest.raises(ValueError, match=message):
        cal.aurc(*args)
    with pytest.raises(ValueError, match="bins must be"):
        cal.ece([0.5], [1], bins=0)
