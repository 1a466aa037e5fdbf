"""OSR metrics and scores against hand-worked examples and brute force."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from keras_gradmix.osr import (
    energy,
    entropy,
    evaluate_open_set,
    fpr_at_tpr,
    knn_class_scores,
    knn_predict,
    linear_probe,
    knn_relative,
    mahalanobis,
    mls,
    msp,
    oscr,
)

pytestmark = pytest.mark.backend_free  # no backend involved: one pass of `make test`


def test_hand_worked_example():
    # known 0.9 (correct), 0.8 (correct), 0.3 (wrong); unknown 0.2, 0.85
    r = evaluate_open_set([0.9, 0.8, 0.3], [0.2, 0.85], [1, 0, 2], [1, 0, 0])
    assert r["auroc"] == pytest.approx(4 / 6)  # 4 of 6 known-unknown pairs ordered right
    assert r["accuracy"] == pytest.approx(2 / 3)
    # 95 % of 3 knowns -> all 3 accepted, threshold 0.3 -> unknown 0.85 accepted.
    assert r["fpr95"] == pytest.approx(0.5)
    # CCR/FPR points (0,0) (0,1/3) (.5,1/3) (.5,2/3) (1,2/3): area 1/6 + 1/3.
    assert r["oscr"] == pytest.approx(0.5)
    # AUPR-In: precision at the known hits in score order (ranks 1, 3, 4): 1, 2/3, 3/4.
    assert r["aupr_in"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def brute_auroc(known, unknown):
    diff = known[:, None] - unknown[None, :]
    return np.mean(diff > 0) + 0.5 * np.mean(diff == 0)


def brute_ap(positive, negative):
    scores = np.r_[positive, negative]
    ap, last_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        tp = np.sum(positive >= t)
        recall = tp / positive.size
        ap += (recall - last_recall) * tp / np.sum(scores >= t)
        last_recall = recall
    return ap


def brute_fpr95(known, unknown):
    best = 1.0
    for t in np.r_[known, unknown]:
        if np.mean(known >= t) >= 0.95:
            best = min(best, np.mean(unknown >= t))
    return best


def brute_oscr(known, unknown, correct):
    points = {(0.0, 0.0)}
    for d in np.r_[known, unknown, -np.inf]:
        points.add((np.mean(unknown > d), np.sum(correct & (known > d)) / known.size))
    points = sorted(points)
    return sum((f2 - f1) * (c1 + c2) / 2 for (f1, c1), (f2, c2) in zip(points, points[1:]))


def arpl_oscr(known, unknown, correct):
    """ARPL's compute_oscr, transcribed (loop form), for comparison."""
    predict = np.r_[known, unknown]
    k_target = np.r_[correct.astype(float), np.zeros(unknown.size)]
    u_target = np.r_[np.zeros(known.size), np.ones(unknown.size)]
    n = predict.size
    ccr, fpr = np.zeros(n + 2), np.zeros(n + 2)
    idx = predict.argsort()
    sk, su = k_target[idx], u_target[idx]
    for k in range(n - 1):
        ccr[k] = sk[k + 1:].sum() / known.size
        fpr[k] = su[k:].sum() / unknown.size
    ccr[n + 1] = fpr[n + 1] = 1.0
    roc = sorted(zip(fpr, ccr), reverse=True)
    return sum((roc[j][0] - roc[j + 1][0]) * (roc[j][1] + roc[j + 1][1]) / 2 for j in range(n + 1))


@pytest.mark.parametrize("seed", range(8))
def test_metrics_agree_with_brute_force_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n_k, n_u = rng.integers(5, 60, 2)
    decimals = 1 if seed % 2 else 6  # odd seeds: many ties
    known = np.round(rng.normal(0.5, 1.0, n_k), decimals)
    unknown = np.round(rng.normal(0.0, 1.0, n_u), decimals)
    true = rng.integers(0, 4, n_k)
    pred = np.where(rng.random(n_k) < 0.7, true, (true + 1) % 4)
    r = evaluate_open_set(known, unknown, pred, true)
    assert r["auroc"] == pytest.approx(brute_auroc(known, unknown))
    assert r["aupr_in"] == pytest.approx(brute_ap(known, unknown))
    assert r["aupr_out"] == pytest.approx(brute_ap(-unknown, -known))
    assert r["aupr_out"] == pytest.approx(
        average_precision_score(np.r_[np.zeros(n_k), np.ones(n_u)], -np.r_[known, unknown])
    )
    assert r["fpr95"] == pytest.approx(brute_fpr95(known, unknown))
    assert r["oscr"] == pytest.approx(brute_oscr(known, unknown, pred == true))
    assert r["oscr"] <= r["accuracy"] + 1e-12
    if decimals == 6:  # no ties: ARPL's one-position asymmetry is at most one sample
        assert abs(r["oscr"] - arpl_oscr(known, unknown, pred == true)) <= 1 / n_k + 1 / n_u


def test_oscr_directly():
    assert oscr([0.9, 0.8, 0.3], [0.2, 0.85], [True, True, False]) == pytest.approx(0.5)
    assert oscr([1.0, 2.0], [0.0], [True, True]) == pytest.approx(1.0)  # all correct, all above
    with pytest.raises(ValueError, match="known_correct has 1 entries for 2"):
        oscr([1.0, 2.0], [0.0], [True])


def test_fpr_at_other_tpr():
    known, unknown = np.arange(10.0), np.arange(10.0) - 4.5
    # TPR 0.5 accepts knowns >= 5: unknowns 5.5 ... 4.5 -> 0.5, 1.5 ... 4.5 -> none >= 5
    assert fpr_at_tpr(known, unknown, 0.5) == 0.0
    assert fpr_at_tpr(known, unknown, 1.0) == pytest.approx(np.mean(unknown >= 0))


@pytest.mark.parametrize(
    "args,match",
    [
        (([], [1.0]), "known_scores is empty"),
        (([1.0, np.nan], [1.0]), "NaN"),
        (([1.0], [1.0], [0]), "Pass both"),
        (([1.0, 2.0], [1.0], [0], [0]), "one entry per known score"),
    ],
)
def test_bad_metric_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        evaluate_open_set(*args)


def test_logit_scores_by_hand():
    z = np.array([[2.0, 0.0, 0.0], [1000.0, 1000.0, -1000.0]])
    p0 = np.exp(2) / (np.exp(2) + 2)
    np.testing.assert_allclose(msp(z), [p0, 0.5])
    np.testing.assert_allclose(mls(z), [2.0, 1000.0])
    np.testing.assert_allclose(energy(z), [np.log(np.exp(2) + 2), 1000 + np.log(2)])
    np.testing.assert_allclose(energy(z, temperature=2.0), [2 * np.log(np.exp(1) + 2), 1000 + 2 * np.log(2)])
    p = np.array([p0, (1 - p0) / 2, (1 - p0) / 2])
    np.testing.assert_allclose(entropy(z), [np.sum(p * np.log(p)), np.log(0.5)], atol=1e-12)
    with pytest.raises(ValueError, match=r"\(samples, classes\)"):
        msp(np.zeros(3))


def test_knn_relative_against_brute_force():
    rng = np.random.default_rng(0)
    train = rng.random((40, 5))
    labels = rng.integers(0, 3, 40)
    test = rng.random((7, 5))
    s = knn_class_scores(test, train, labels, k=3)
    for i in range(7):
        for c in range(3):
            sims = [
                test[i] @ t / np.linalg.norm(test[i]) / np.linalg.norm(t) for t in train[labels == c]
            ]
            assert s[i, c] == pytest.approx(sum(sorted(sims)[-3:]))
    np.testing.assert_allclose(knn_relative(test, train, labels), s.max(1) / s.sum(1))
    maps = np.repeat(np.repeat(test[:, None, None, :], 2, axis=1), 3, axis=2)
    np.testing.assert_allclose(knn_relative(maps, train, labels), knn_relative(test, train, labels))  # 4-D: pooled


def test_knn_relative_of_all_zero_features_is_one_over_the_class_count():
    rng = np.random.default_rng(0)
    train, labels = rng.random((12, 4)), np.arange(12) % 3
    test = np.vstack([np.zeros(4), rng.random(4)])  # a dead ReLU layer gives zeros
    scores = knn_relative(test, train, labels)
    assert scores[0] == pytest.approx(1 / 3) and 1 / 3 < scores[1] <= 1


def test_knn_needs_a_positive_k():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        knn_relative(np.ones((1, 2)), np.ones((2, 2)), [0, 1], k=0)


def test_mahalanobis_against_brute_force():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(60, 4))
    labels = np.repeat([0, 1, 2], 20)
    train[labels == 1] += 3.0
    test = rng.normal(size=(5, 4))
    means = [train[labels == c].mean(0) for c in range(3)]
    centred = np.concatenate([train[labels == c] - means[c] for c in range(3)])
    precision = np.linalg.inv(centred.T @ centred / len(centred))
    expected = [max(-(f - m) @ precision @ (f - m) for m in means) for f in test]
    np.testing.assert_allclose(mahalanobis(test, train, labels), expected, rtol=1e-8)


def test_knn_predict_is_the_class_with_the_largest_similarity_sum():
    rng = np.random.default_rng(3)
    train, labels = rng.random((40, 6)), rng.integers(0, 4, 40) * 2  # classes 0, 2, 4, 6
    test = rng.random((9, 6))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sims = unit(test) @ unit(train).T
    classes = np.unique(labels)
    brute = [classes[np.argmax([np.sort(s[labels == c])[-3:].sum() for c in classes])] for s in sims]
    np.testing.assert_array_equal(knn_predict(test, train, labels, k=3), brute)


def test_linear_probe_on_real_digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    predicted = linear_probe(x[:1200], y[:1200], x[1200:])
    assert np.mean(predicted == y[1200:]) > 0.9  # pixels of 8x8 digits are nearly linearly separable
    separable = np.eye(3)[[0, 1, 2, 0, 1, 2]] + 0.01
    np.testing.assert_array_equal(linear_probe(separable, [5, 6, 7, 5, 6, 7], separable), [5, 6, 7, 5, 6, 7])
