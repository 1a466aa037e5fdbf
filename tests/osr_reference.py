"""Brute-force NumPy transcriptions of each score's paper formula, one sample
at a time, written without keras_gradmix (the tests compare against them)."""

import numpy as np


def energy(logits):
    m = logits.max()
    return m + np.log(np.sum(np.exp(logits - m)))


def knn_sun(f, train, k):
    """Sun et al. 2022: normalise, the k-th smallest Euclidean distance, negated."""
    def normalised(v):  # an all-zero vector (dead ReLUs) stays zero
        return v / max(np.linalg.norm(v), 1e-12)

    z = normalised(f)
    distances = sorted(np.linalg.norm(z - normalised(t)) for t in train)
    return -distances[k - 1]


def react(f, train, w, b, percentile):
    c = np.percentile(train.ravel(), percentile)
    return energy(np.minimum(f, c) @ w + b)


def ash_s(f, w, b, percentile):
    """Keep the top k = n - round(n p / 100) activations, scale by exp(s1 / s2)."""
    n = f.size
    k = n - int(np.round(n * percentile / 100.0))
    kept = np.zeros_like(f)
    top = np.argsort(f)[::-1][:k]
    kept[top] = f[top]
    ratio = f.sum() / kept.sum() if kept.sum() > 0 else 0.0  # all zero (dead ReLUs): unscaled
    return energy(kept * np.exp(ratio) @ w + b)


def scale(f, w, b, percentile):
    n = f.size
    k = n - int(np.round(n * percentile / 100.0))
    top = np.sort(f)[::-1][:k]
    ratio = f.sum() / top.sum() if top.sum() > 0 else 0.0  # all zero (dead ReLUs): unscaled
    return energy(f * np.exp(ratio) @ w + b)


def vim(f, train, w, b, dim):
    """Wang et al. 2022, as their code: u = -pinv(W_torch) b, eig of the
    covariance of (train - u) assumed centred, NS = eigenvectors past ``dim``,
    alpha = mean max train logit / mean train residual, score energy - alpha r."""
    u = -np.linalg.pinv(w.T) @ b
    centred = train - u
    covariance = sum(np.outer(c, c) for c in centred) / len(centred)
    values, vectors = np.linalg.eig(covariance)
    null_space = vectors.T[np.argsort(values.real * -1)[dim:]].T.real
    residuals = [np.linalg.norm((t - u) @ null_space) for t in train]
    alpha = np.mean([(t @ w + b).max() for t in train]) / np.mean(residuals)
    return energy(f @ w + b) - alpha * np.linalg.norm((f - u) @ null_space)


def gen(logits, gamma, m):
    p = np.exp(logits - logits.max())
    p = p / p.sum()
    top = sorted(p)[-m:]
    return -sum(q**gamma * (1 - q) ** gamma for q in top)
