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


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def mahalanobis_sq(f, mean, covariance):
    d = f - mean
    return d @ np.linalg.inv(covariance) @ d


def rmds(f, train, labels):
    """Ren et al. 2021 as OpenOOD's rmds: max_c -(MD_c - MD_0); MD_c with the
    covariance of the class-centred features, MD_0 with the whole set's."""
    classes = sorted(set(labels.tolist()))
    means = {c: train[labels == c].mean(axis=0) for c in classes}
    centred = np.array([t - means[c] for t, c in zip(train, labels)])
    shared = sum(np.outer(v, v) for v in centred) / len(train)
    whole = train - train.mean(axis=0)
    background = sum(np.outer(v, v) for v in whole) / len(train)
    md0 = mahalanobis_sq(f, train.mean(axis=0), background)
    return max(-(mahalanobis_sq(f, means[c], shared) - md0) for c in classes)


def she(f, train, labels, w, b):
    """Zhang et al. 2023 as OpenOOD's she: stored pattern = mean feature of the
    correctly classified training samples of each class; score = <f, pattern[pred]>."""
    patterns = []
    for c in range(w.shape[1]):
        rows = [t for t, y in zip(train, labels) if y == c and np.argmax(t @ w + b) == c]
        patterns.append(np.mean(rows, axis=0))
    return float(f @ patterns[int(np.argmax(f @ w + b))])


def fdbd(f, train, w, b):
    """Liu & Qin 2024 as OpenOOD's fdbd: sum over classes of |z_pred - z_c| /
    ||w_pred - w_c|| (the predicted class's own term is 0), over ||f - mean train||."""
    z = f @ w + b
    p = int(np.argmax(z))
    total = 0.0
    for c in range(len(z)):
        if c != p:
            total += abs(z[p] - z[c]) / np.linalg.norm(w[:, p] - w[:, c])
    return total / np.linalg.norm(f - train.mean(axis=0))


def klm(z, train_logits):
    """Hendrycks et al. 2022 as OpenOOD's klm: -min_c KL(softmax(z) || mean
    softmax of the training samples predicted c), KL as scipy.stats.entropy."""
    from scipy.stats import entropy

    templates = []
    for c in range(train_logits.shape[1]):
        rows = [softmax(t) for t in train_logits if np.argmax(t) == c]
        templates.append(np.mean(rows, axis=0) if rows else np.eye(train_logits.shape[1])[c])
    return -min(entropy(softmax(z), q) for q in templates)


def odin_linear(x, w, b, temperature, noise):
    """Liang et al. 2018 as OpenOOD's odin, for logits z = x w + b: the gradient
    of CE(z / T, argmax z) is w (softmax(z / T) - onehot) / T; x~ = x - noise *
    sign (grad >= 0 counts as +1); score = max softmax(z(x~) / T)."""
    z = x @ w + b
    onehot = np.eye(len(z))[int(np.argmax(z))]
    grad = w @ (softmax(z / temperature) - onehot) / temperature
    step = np.where(grad >= 0, 1.0, -1.0)
    return float(softmax(((x - noise * step) @ w + b) / temperature).max())
