"""Linear heads for regression and multilabel on cached features, solved rather than stepped.

Both standardise the features inside (training mean, and per-column or one global std, chosen by
CV; a constant column keeps std 1) and fold that back, so the returned ``nn.Linear`` takes raw features, as ``fit_linear_head`` does.
Only the training features they are given are seen: the penalty is chosen on them alone.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

RIDGE_ALPHAS = np.logspace(-3, 6, 37)  # a quarter-decade grid; Ridge's penalty is on summed squared errors
MULTILABEL_L2 = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # per-sample L2 strengths tried on the mean BCE


def _standardise(x: np.ndarray, min_relative_std: float = 0.0, scaling: str = "column"):
    """Columns to unit spread ("column"), or every column by one scale, the spreads' root mean square
    ("global": a faint column keeps its small say); a constant column keeps std 1, and so does one
    fainter than ``min_relative_std`` times the widest (as ``fit_linear_head``: a head to be fine-tuned
    must not lean on MiniLM's ~1e-32 columns with weights of ~1e31, or its first step diverges)."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    kept = (std > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0)))) \
        & (std >= min_relative_std * std.max(initial=0.0))
    if scaling == "global":
        std = np.full_like(std, float(np.sqrt(np.mean(std[kept] ** 2))) if kept.any() else 1.0)
    else:
        std = np.where(kept, std, 1.0)
    return (x - mean) / std, mean, std


# Both scalings are tried and the training rows' own CV error chooses, as fit_linear_head's "auto": per
# column, a column of image features nearly constant on train (std 4e-6) met 0.013 on one test image,
# z ~ 3,000, and a ridge head predicted 86,538 for a digit worth 8,000 (test R^2 -11 where one scale
# for all gave +0.61).
SCALINGS = ("column", "global")


def _linear(w_std: np.ndarray, b_std: np.ndarray, mean: np.ndarray, std: np.ndarray) -> nn.Linear:
    """Weights on standardised features (out, d) folded back onto raw features."""
    w = w_std / std[None, :]
    b = b_std - w @ mean
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return lin


def fit_ridge_head(x, y, min_relative_std: float = 0.0) -> tuple[nn.Linear, dict]:
    """Ridge regression of ``y`` (N,) on ``x`` (N, D) in closed form, alpha chosen by
    scikit-learn's RidgeCV (efficient leave-one-out on these rows) over ``RIDGE_ALPHAS``, and the
    scaling (``SCALINGS``) by the same leave-one-out error."""
    from sklearn.linear_model import RidgeCV
    t0 = time.perf_counter()
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) < 3:
        raise ValueError(f"ridge regression needs at least 3 training rows, got {len(y)}")
    tried = {}
    for scaling in SCALINGS:
        xs, mean, std = _standardise(x, min_relative_std, scaling)
        model = RidgeCV(alphas=RIDGE_ALPHAS).fit(xs, y)
        tried[scaling] = (-float(model.best_score_), model, mean, std)  # best_score_: minus the LOO mean squared error
    scaling = min(SCALINGS, key=lambda sc: tried[sc][0])  # ties: per column, scikit-learn's pipeline
    _, model, mean, std = tried[scaling]
    lin = _linear(model.coef_.reshape(1, -1), np.array([model.intercept_]), mean, std)
    alpha = float(model.alpha_)
    edge = alpha in (RIDGE_ALPHAS[0], RIDGE_ALPHAS[-1])
    return lin, {"solver": "ridge (RidgeCV, leave-one-out on train)", "alpha": alpha, "alpha_at_grid_edge": edge,
                 "scaling": scaling, "loo_mse": {sc: tried[sc][0] for sc in SCALINGS},
                 "n": len(y), "dim": x.shape[1], "seconds": time.perf_counter() - t0}


def _bce_lbfgs(z, y, l2: float, pos_weight, start=None, max_iter: int = 500):
    """Mean BCE + l2/2 ||W||^2 (bias free) by full-batch L-BFGS in float64. Returns (W (k, d), b (k,))."""
    d, k = z.shape[1], y.shape[1]
    w = torch.zeros(k, d, dtype=torch.float64) if start is None else start[0].clone()
    b = torch.zeros(k, dtype=torch.float64) if start is None else start[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w.T + b, y, pos_weight=pos_weight) \
            + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


def fit_multilabel_head(x, y, pos_weight=None, folds: int = 3, seed: int = 0,
                        min_relative_std: float = 0.0) -> tuple[nn.Linear, dict]:
    """One logistic regression per label (sigmoid, BCE; ``pos_weight`` per label, as the loss's),
    by full-batch L-BFGS; the L2 strength (of ``MULTILABEL_L2``) and the scaling (``SCALINGS``) are
    the pair with the lowest held-out BCE over ``folds`` folds of these rows (folds are random: label
    sets do not stratify)."""
    t0 = time.perf_counter()
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    pw = None if pos_weight is None else torch.as_tensor(np.asarray(pos_weight), dtype=torch.float64)
    n = len(yt)
    order = np.random.default_rng(seed).permutation(n)
    splits = [np.sort(order[f::folds]) for f in range(folds)] if n >= 2 * folds else []
    cv, scaled = [], {}
    for scaling in SCALINGS if splits else SCALINGS[:1]:
        xs, mean, std = _standardise(x, min_relative_std, scaling)
        z = scaled[scaling] = (torch.as_tensor(xs, dtype=torch.float64), mean, std)
        for l2 in MULTILABEL_L2 if splits else ():
            losses = []
            for held in splits:
                fit_rows = np.setdiff1d(np.arange(n), held)
                w, b = _bce_lbfgs(z[0][fit_rows], yt[fit_rows], l2, pw)
                losses.append(float(nn.functional.binary_cross_entropy_with_logits(z[0][held] @ w.T + b, yt[held],
                                                                                   pos_weight=pw)))
            cv.append({"scaling": scaling, "l2": l2, "bce": float(np.mean(losses))})
    # ties: per column, then the stronger penalty
    best = min(cv, key=lambda r: (r["bce"], SCALINGS.index(r["scaling"]), -r["l2"])) if splits \
        else {"scaling": "column", "l2": 1e-3}
    z, mean, std = scaled[best["scaling"]]
    w, b = _bce_lbfgs(z, yt, best["l2"], pw)
    lin = _linear(w.numpy(), b.numpy(), mean, std)
    return lin, {"solver": "multilabel logistic (full-batch L-BFGS, L2 and scaling by CV on train)",
                 "l2": best["l2"], "scaling": best["scaling"], "folds": len(splits), "cv": cv, "n": n,
                 "dim": z.shape[1], "seconds": time.perf_counter() - t0}


__all__ = ["fit_ridge_head", "fit_multilabel_head", "RIDGE_ALPHAS", "MULTILABEL_L2", "SCALINGS"]
