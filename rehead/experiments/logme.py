"""LogME: the log of the maximum marginal evidence of labels given features (You et al., ICML 2021).

Each class's one-hot column ``y`` is treated as a Bayesian linear regression on the features
F (N x D): ``w ~ N(0, 1/alpha I)``, ``y | F, w ~ N(F w, 1/beta I)``. alpha and beta are set by
MacKay's fixed-point updates, which maximise the evidence p(y | F, alpha, beta); LogME is the
maximised log evidence per sample, averaged over classes. Higher means the features make the
labels more linearly predictable, so the backbone should transfer better. One SVD of F,
then a few O(min(N, D)) iterations per class: seconds, no training.
"""
from __future__ import annotations

import numpy as np


def _evidence(x2: np.ndarray, res_outside: float, sigma: np.ndarray, n: int, d: int,
              max_iter: int = 2000, tol: float = 1e-7) -> tuple[float, float, float]:
    """Maximise log p(y | alpha, beta) in the SVD basis of F.

    ``x2`` = (U^T y)^2 for the k = min(N, D) singular directions, ``sigma`` the squared singular
    values, ``res_outside`` = |y|^2 - |U^T y|^2 (the part of y no weight can explain).
    Returns (log evidence / N, alpha, beta).
    """
    eps = 1e-10
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())                 # effective number of parameters
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())          # |m|^2, m the posterior mean
        res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + res_outside  # |y - F m|^2
        alpha, beta = gamma / (m2 + eps), (n - gamma) / (res2 + eps)
        if abs(alpha / beta - t) / t < tol:
            break
    t = alpha / beta
    m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
    res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + res_outside
    # log|A| with A = alpha I + beta F^T F: directions outside F's row space contribute log(alpha).
    logdet = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)
    ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - beta / 2 * res2 - alpha / 2 * m2
          - logdet / 2 - n / 2 * np.log(2 * np.pi))
    return float(ev / n), alpha, beta


def logme(features, labels, regression: bool = False) -> float:
    """LogME of ``features`` (N, D) for integer ``labels`` (N,) (or targets (N, K) with ``regression``)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    if regression:
        targets = y.reshape(n, -1).astype(np.float64)
    else:
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError("LogME needs labels of at least two classes")
        targets = (y[:, None] == classes[None, :]).astype(np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    scores = []
    for j in range(targets.shape[1]):
        yj = targets[:, j]
        x = u.T @ yj
        x2 = x ** 2
        scores.append(_evidence(x2, max(float(yj @ yj - x2.sum()), 0.0), sigma, n, d)[0])
    return float(np.mean(scores))
