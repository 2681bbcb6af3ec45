"""A linear head on cached features, trained to the optimum of its convex problem.

``fit_linear_head`` solves multinomial logistic regression with an L2 penalty (the softmax
cross-entropy a linear head trains on, plus weight decay) exactly, by full-batch L-BFGS in
float64, and picks the L2 strength by stratified k-fold cross-validation on the training
split it is given (it is given nothing else, so val and test never reach it).

The objective is scikit-learn's ``LogisticRegression`` (lbfgs, multinomial, intercept not
penalised), so ``C`` means the same thing there and here::

    C * sum_i s_i * CE(W x_i + b, y_i) + 0.5 * ||W||^2        (s_i: class weights, 1 by default)

(with two classes the penalty is doubled: scikit-learn then fits one vector, the difference of
the two rows of W, and this makes its C and ours the same problem).

Features are standardised inside (mean / std of the training split, as scikit-learn's
StandardScaler: a constant feature gets std 1) and the result is folded back, so the returned ``nn.Linear`` takes raw features.

Why it is fast (the same optimum, reached in far fewer reads of the data):

- The standardised features are rotated once onto the eigenvectors of their covariance (only
  the directions the data spans: with fewer samples than features the problem shrinks to
  n x n). The penalty is rotation-invariant, so the optimum is the same; in the rotated basis
  the features are uncorrelated, so the diagonal of the Hessian (per direction and class) is a
  good preconditioner, recomputed at the start of every solve.
- CV solves all k folds and the full training set as one problem: their objectives are
  independent, so the sum has the same optimum in each, and one product with the (n, r) data
  matrix serves all k + 1 of them (these products are what costs: the head is skinny).
- The C grid is walked from strong to weak regularisation, each solve warm-started from the
  linear extrapolation (in log C) of the previous two solutions (a third fewer iterations on
  the synthetic set below, the same C everywhere measured); the walk stops once the CV score
  has not improved for ``patience`` grid points (the weakly regularised end is the slow one).
  Default grid: decades 1e-4 .. 1e4, then the two half-decade neighbours of the best.
- CV solves run in float32 (scores need no more); the final fit at the chosen C runs in
  float64 from the full-set CV solution, to ``tol``.
- Products with the data's transpose and a skinny right side go through ``_zt`` (BLAS is
  slow on that shape).
- torch's own thread count by default (all cores; ``bench/linear_head.py`` has the figures). On a
  machine whose cores are busy with other work, spinning BLAS threads can be far slower:
  ``threads=1`` is there for that.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

SCORINGS = ("log_loss", "accuracy")


def fit_linear_head(x_train, y_train, n_classes: int | None = None, *, cs=None, folds: int = 5, seed: int = 0,
                    class_weight=None, scoring: str = "log_loss", patience: int = 2, tol: float = 1e-5,
                    cv_tol: float = 1e-4, max_iter: int = 1000, C: float | None = None,
                    threads: int | None = None, min_relative_std: float = 0.0,
                    scaling: str = "column", cv_rows: int | None = 10000) -> tuple[nn.Linear, dict]:
    """Multinomial logistic regression (softmax + L2) on ``x_train`` (N, D), trained to its optimum.

    ``n_classes``: the head's outputs (default ``max(y) + 1``); a class with no training sample
    gets zero weights and a bias 30 below the lowest other bias. ``cs``: the grid of
    scikit-learn ``C`` values to walk (default: decades 1e-4 .. 1e4, then the two half-decade
    neighbours of the best decade). ``folds``: stratified k-fold CV on the training rows,
    scored by mean held-out ``scoring`` ("log_loss", the default: smooth and without ties; or
    "accuracy", LogisticRegressionCV's default); ties go to the stronger penalty. Folds are
    reduced to the smallest class count when a class has fewer samples than ``folds``; classes
    with a single sample are never held out (they stay in every fold's fitting part); when
    every class has a single sample, CV is skipped and C = 1. ``C``: skip CV, fit at this C.
    ``class_weight``: None, "balanced" (scikit-learn's n / (K n_k)) or {class index: weight}.
    ``tol`` / ``cv_tol``: max |gradient| (in the preconditioned variables) at which the final
    fit / the CV solves stop. ``threads``: torch threads while solving (default None: torch's setting).
    ``scaling``: "column" (per-column standardisation, scikit-learn's pipeline), "global" (one
    scale for every column: the raw-feature probe) or "auto" (both cross-validated, the better CV
    score solved to the end; on some features one is worth points over the other). ``cv_rows``:
    C is cross-validated on at most this many training rows (a seeded stratified subset; None:
    all), the final fit uses all of them: CV at 40,000 rows costs 4x the CV at 10,000 and picks
    about the same C.

    Returns ``(linear, info)``: ``linear`` an ``nn.Linear(D, n_classes)`` (float32) on raw
    features, the standardisation folded in; ``info``: ``C``, ``cv`` (one row per C tried, in
    order of C: mean held-out ``log_loss`` and ``accuracy``, and per fold), ``folds``
    (+ ``folds_note`` when reduced), ``iterations``, ``grad_norm`` (max |gradient| of the
    per-sample objective at the returned weights), ``converged``, ``seconds`` and its parts.
    """
    t0 = time.perf_counter()
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            return _fit(x_train, y_train, n_classes, cs, folds, seed, class_weight, scoring, patience, tol, cv_tol,
                        max_iter, C, t0, min_relative_std, scaling, cv_rows)
    finally:
        torch.set_num_threads(old_threads)


def _fit(x_train, y_train, n_classes, cs, folds, seed, class_weight, scoring, patience, tol, cv_tol, max_iter, C,
         t0, min_relative_std=0.0, scaling="column", cv_rows=None):
    f64 = torch.float64
    x = torch.as_tensor(np.asarray(x_train), dtype=f64)
    y_all = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y_all):
        raise ValueError(f"x_train must be (N, D) and y_train (N,), got {tuple(x.shape)} and {tuple(y_all.shape)}")
    if len(y_all) == 0:
        raise ValueError("no training samples")
    if not torch.isfinite(x).all():
        raise ValueError("x_train has NaN or infinite values")
    n, d = x.shape
    n_classes = int(n_classes if n_classes is not None else int(y_all.max()) + 1)
    if int(y_all.min()) < 0 or int(y_all.max()) >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}")
    counts_all = torch.bincount(y_all, minlength=n_classes)
    present = torch.nonzero(counts_all > 0).flatten()
    if len(present) < 2:
        raise ValueError("a classifier needs training samples of at least two classes")
    # Fit on the present classes only; absent ones are added back at the end.
    remap = torch.full((n_classes,), -1, dtype=torch.long)
    remap[present] = torch.arange(len(present))
    y = remap[y_all]
    k = len(present)
    counts = counts_all[present]
    sw = _sample_weights(class_weight, y, counts, present, n)

    # Standardise (train statistics), then rotate onto the covariance's eigenvectors.
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    # Constant: no spread beyond rounding (scikit-learn's StandardScaler rule), or so little that the
    # folded weights would overflow float32. Tiny but real spreads are kept: MiniLM's pooled features
    # have columns of ~1e-33 that carry label signal (1.1-1.3 points on rt_polarity and
    # financial_phrasebank). Folded back they need weights of ~1e31, which is harmless on frozen
    # features but makes fine-tuning diverge at its first step: a head that will be fine-tuned passes
    # ``min_relative_std`` (``rehead.train.loop.FAINT``: a thousandth of the widest column's spread).
    constant = (std * std <= n * torch.finfo(f64).eps * mean * mean) | (std < 1e-36) \
        | (std < min_relative_std * std.max())
    std = torch.where(constant, torch.ones_like(std), std)
    if scaling not in ("column", "global", "auto"):
        raise ValueError(f"scaling must be 'column', 'global' or 'auto', got {scaling!r}")
    y1 = torch.nn.functional.one_hot(y, k).to(f64)
    info = {"n": n, "dim": d, "classes": n_classes, "scoring": scoring,
            "class_weight": class_weight if not isinstance(class_weight, dict) else {str(a): b for a, b in
                                                                                     class_weight.items()},
            "threads": torch.get_num_threads(), "rotate_seconds": 0.0, "cv_seconds": 0.0}
    splits, cv = [], None
    if C is None:
        cv = _cv_subset(y, k, cv_rows, seed)
        if cv is not None:
            info["cv_rows"] = len(cv)
        y_cv = y if cv is None else y[cv]
        splits, fold_note = _folds(y_cv, torch.bincount(y_cv, minlength=k), folds, seed)
        info["folds"] = len(splits)
        info["held_out_sizes"] = [len(te) for _, te in splits]
        if fold_note:
            info["folds_note"] = fold_note
    else:
        info["folds"] = 0
    # "auto": both scalings are cross-validated and the better CV score is solved to the end.
    tries = ("column", "global") if scaling == "auto" and splits else ("column",) if scaling == "auto" else (scaling,)
    best, iters = None, 0
    for sc in tries:
        t_rot = time.perf_counter()
        std_s = std if sc == "column" else torch.full_like(  # one scale for all: faint columns keep a small say
            std, float(std[~constant].square().mean().sqrt()) if (~constant).any() else 1.0)
        z, basis, _ = _rotate((x - mean) / std_s)
        info["rotate_seconds"] += time.perf_counter() - t_rot
        c_try, cv_table, warm = (1.0 if C is None else C), [], None
        if splits:
            t_cv = time.perf_counter()
            on = slice(None) if cv is None else cv
            c_try, cv_table, warm, it = _cross_validate(z[on].float(), y1[on].float(), sw[on].float(), y_cv, splits,
                                                       cs, scoring, patience, cv_tol, max_iter)
            info["cv_seconds"] += time.perf_counter() - t_cv
            iters += it
        row = next((r for r in cv_table if r["C"] == c_try), None)
        score = -math.inf if row is None else -row["log_loss"] if scoring == "log_loss" else row["accuracy"]
        if scaling == "auto":
            info.setdefault("scalings", {})[sc] = {"C": float(c_try), scoring: None if row is None else row[scoring]}
        if best is None or score > best[0]:
            best = (score, sc, std_s, z, basis, c_try, cv_table, warm)
        del z, basis
    del x
    _, scaling, std, z, basis, C, cv_table, warm = best
    info.update(rank=int(z.shape[1]), scaling=scaling, C=float(C), cv=cv_table)
    t_fin = time.perf_counter()
    prob = _Problem(z, y1, sw, _penalty_factor(k) / (C * float(sw.sum())))  # the final fit: float64
    (wz, b), it, converged = _lbfgs(prob, None if warm is None else (warm[0].double(), warm[1].double()), tol,
                                    max_iter)
    info["final_seconds"] = time.perf_counter() - t_fin
    info["iterations"] = {"cv": iters, "final": it}
    info["converged"] = converged
    info["grad_norm"] = float(prob.grad_w(wz, b).abs().max())
    info["objective"] = prob.loss_w(wz, b)
    w_std = basis @ wz  # (d, k) weights on standardised features
    w_raw = w_std / std[:, None]
    b_raw = b - mean @ w_raw
    weight = torch.zeros(n_classes, d, dtype=f64)
    bias = torch.full((n_classes,), float(b_raw.min()) - 30.0 if k < n_classes else 0.0, dtype=f64)
    weight[present] = w_raw.T
    bias[present] = b_raw
    if k < n_classes:
        info["absent_classes"] = [int(c) for c in torch.nonzero(counts_all == 0).flatten()]
    linear = nn.Linear(d, n_classes)
    linear.weight.copy_(weight.float())
    linear.bias.copy_(bias.float())
    info["seconds"] = time.perf_counter() - t0
    return linear, info


def _penalty_factor(k: int) -> float:
    """Two classes: scikit-learn fits one weight vector v (logit difference) with 0.5 ||v||^2;
    the softmax's two vectors are w and -w at the optimum (v = 2w), whose 0.5 (||w||^2 + ||-w||^2)
    is 0.25 ||v||^2. Doubling the penalty makes C mean the same as there."""
    return 2.0 if k == 2 else 1.0


def _sample_weights(class_weight, y, counts, present, n):
    if class_weight is None:
        return torch.ones(len(y), dtype=torch.float64)
    if class_weight == "balanced":
        per_class = n / (len(counts) * counts.to(torch.float64))
    elif isinstance(class_weight, dict):
        per_class = torch.tensor([float(class_weight.get(int(c), 1.0)) for c in present], dtype=torch.float64)
    else:
        raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {class_weight!r}")
    return per_class[y]


def _rotate(xs):
    """(z, basis, eig): z = xs @ basis with basis (d, r) orthonormal spanning xs's row space,
    eig = per-direction mean square of z (the covariance eigenvalues), r = numerical rank."""
    n, d = xs.shape
    if not bool((xs != 0).any()):  # every column constant on these rows: one zero column, so that the solve
        zero = xs.new_zeros  # fits the biases alone (the class priors) instead of failing on an empty basis
        return zero(n, 1), zero(d, 1), xs.new_ones(1)
    if n >= d:
        evals, evecs = torch.linalg.eigh(xs.T @ xs / n)
        keep = evals > evals.max() * 1e-12
        basis = evecs[:, keep]
        return xs @ basis, basis, evals[keep]
    # Fewer samples than features: the optimum lies in the span of the samples (the penalty
    # alone acts on its complement), so solve in that (at most n)-dimensional space.
    evals, evecs = torch.linalg.eigh(xs @ xs.T / n)
    keep = evals > evals.max() * 1e-12
    evals, evecs = evals[keep], evecs[:, keep]
    basis = xs.T @ evecs / torch.sqrt(evals * n)
    return evecs * torch.sqrt(evals * n), basis, evals


def _zt(z, g):
    """z.T @ g. For a skinny g (the head's few classes) BLAS's transposed GEMM runs 3-7x slower
    than the same product taken as (g.T @ z).T (measured at 10,000 x 1,280, 2 threads)."""
    return (g.T @ z).T.contiguous() if g.shape[1] < 12 else z.T @ g


class _Problem:
    """sum_i s_i CE_i / sum_i s_i + mu/2 ||w||^2 on rotated rows z, one-hot targets y1."""

    def __init__(self, z, y1, s, mu):
        self.z, self.y1, self.mu = z, y1, mu
        self.s_sum = float(s.sum())
        self.s = (s / self.s_sum)[:, None]

    def zeros(self):
        r, k = self.z.shape[1], self.y1.shape[1]
        return torch.zeros(r, k, dtype=self.z.dtype), torch.zeros(k, dtype=self.z.dtype)

    def _parts(self, w, b):
        logits = self.z @ w + b
        lse = torch.logsumexp(logits, 1, keepdim=True)
        loss = float((self.s * (lse - logits) * self.y1).sum(dtype=torch.float64)) + 0.5 * self.mu * float(
            (w * w).sum(dtype=torch.float64))
        return loss, torch.exp(logits - lse)

    def loss_grad(self, w, b):
        loss, p = self._parts(w, b)
        g = self.s * (p - self.y1)
        return loss, _zt(self.z, g) + self.mu * w, g.sum(0), p

    def loss_w(self, w, b):
        return self._parts(w, b)[0]

    def grad_w(self, w, b):
        _, gw, gb, _ = self.loss_grad(w, b)
        return torch.cat([gw.flatten(), gb])

    def preconditioner(self, p):
        """1 / sqrt(diagonal of the Hessian) at probabilities p, per (direction, class): the
        rotated features are uncorrelated, so the diagonal carries most of the curvature."""
        q = self.s * p * (1 - p)
        z2 = self.z * self.z
        h = _zt(z2, q)  # (r, k)
        floor = 0.01 * _zt(z2, self.s * (1.0 / p.shape[1]))  # 1% of the curvature at uniform p
        return 1.0 / torch.sqrt(torch.maximum(h, floor) + self.mu), 1.0 / torch.sqrt(q.sum(0) + 1e-12)


def _lbfgs(prob, start, tol, max_iter):
    """Full-batch L-BFGS (torch, strong-Wolfe line search) from ``start`` (w, b) or zeros, in
    Jacobi-preconditioned variables w = sw * u, b = sb * v. ``tol``: on max |gradient| in those
    variables. Returns ((w, b), iterations, converged)."""
    dt = prob.z.dtype
    w0, b0 = prob.zeros() if start is None else (start[0].to(dt), start[1].to(dt))
    _, _, _, p = prob.loss_grad(w0, b0)
    sw, sb = prob.preconditioner(p)
    u = (w0 / sw).requires_grad_(True)
    v = (b0 / sb).requires_grad_(True)
    opt = torch.optim.LBFGS([u, v], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-12 if dt == torch.float64 else 1e-9, line_search_fn="strong_wolfe")

    def closure():
        loss, gw, gb, _ = prob.loss_grad(sw * u.detach(), sb * v.detach())
        u.grad, v.grad = sw * gw, sb * gb
        return torch.tensor(loss, dtype=dt)

    with torch.enable_grad():  # LBFGS.step is decorated with no_grad itself; closure needs none
        opt.step(closure)
    n_iter = opt.state[opt._params[0]].get("n_iter", 0)
    w, b = (sw * u).detach(), (sb * v).detach()
    _, gw, gb, _ = prob.loss_grad(w, b)
    gmax = max(float((sw * gw).abs().max()), float((sb * gb).abs().max()))
    return (w, b), int(n_iter), bool(gmax <= tol * 10)


def _cv_subset(y, k, cv_rows, seed):
    """Rows the CV of C runs on when there are more than ``cv_rows``: a seeded stratified subset
    (every class in proportion, at least 2 rows where it has them); None for all rows. The final
    fit still uses every row: as LogisticRegressionCV refits the C found on 4/5 of the rows on all
    of them, this refits the C found on cv_rows rows."""
    n = len(y)
    if not cv_rows or n <= cv_rows:
        return None
    rng = np.random.default_rng(seed)
    yn = y.numpy()
    take = []
    for c in range(k):
        idx = np.flatnonzero(yn == c)
        m = max(min(len(idx), 2), int(round(len(idx) * cv_rows / n)))
        take.append(rng.choice(idx, m, replace=False))
    return torch.as_tensor(np.sort(np.concatenate(take)))


def _folds(y, counts, folds, seed):
    """Stratified folds: a list of (fitting rows, held-out rows) and a note when they were reduced."""
    from sklearn.model_selection import StratifiedKFold
    counts = counts.tolist()
    multi = [c for c in counts if c >= 2]
    if not multi or folds < 2:
        return [], ("every class has a single training sample: no cross-validation, C = 1" if not multi
                    else "folds < 2: no cross-validation, C = 1")
    kf = max(2, min(folds, min(multi)))
    note = ""
    if kf < folds:
        note = f"{kf} folds instead of {folds}: the smallest class has {min(multi)} training samples"
    single = [i for i, c in enumerate(counts) if c < 2]
    yn = y.numpy()
    rows = np.arange(len(yn))
    keep_in = np.isin(yn, single)  # classes with one sample: always in the fitting part
    if single:
        note = (note + "; " if note else "") + f"{len(single)} class(es) with a single sample never held out"
    cv_rows = rows[~keep_in]
    skf = StratifiedKFold(kf, shuffle=True, random_state=seed)
    out = []
    for tr, te in skf.split(cv_rows, yn[cv_rows]):
        out.append((torch.as_tensor(np.sort(np.concatenate([cv_rows[tr], rows[keep_in]]))),
                    torch.as_tensor(cv_rows[te])))
    return out, note


class _Joint:
    """The CV folds and the full training set as one problem: columns f = 0..F-1 are the folds
    (fitting rows weighted, held-out rows weight 0), column F all training rows. The objectives
    are independent, so their sum has the same optimum in each column; one product with z per
    evaluation serves all of them (the data is read once instead of F + 1 times)."""

    def __init__(self, z, y1, s, masks):
        self.z, self.y1 = z, y1
        sm = masks.to(z.dtype) * s[:, None]
        self.s_sum = sm.sum(0)  # (F+1,)
        self.s = (sm / self.s_sum)[:, :, None]  # (n, F+1, 1)
        self.f = masks.shape[1]
        self.mu = torch.zeros(self.f, dtype=z.dtype)
        self.z2 = z * z

    def set_c(self, c):
        self.mu = _penalty_factor(self.y1.shape[1]) / (c * self.s_sum)

    def zeros(self):
        r, k = self.z.shape[1], self.y1.shape[1]
        return torch.zeros(r, self.f, k, dtype=self.z.dtype), torch.zeros(self.f, k, dtype=self.z.dtype)

    def logits(self, w, b):
        n, r = self.z.shape
        return (self.z @ w.reshape(r, -1)).reshape(n, self.f, -1) + b

    def loss_grad(self, w, b):
        n, r = self.z.shape
        logits = self.logits(w, b)
        lse = torch.logsumexp(logits, 2, keepdim=True)
        yy = self.y1[:, None, :]
        loss = float((self.s * (lse - logits) * yy).sum(dtype=torch.float64)) + 0.5 * float(
            (self.mu[:, None] * (w * w).sum(0)).sum(dtype=torch.float64))
        p = torch.exp(logits - lse)
        g = self.s * (p - yy)
        gw = _zt(self.z, g.reshape(n, -1)).reshape(r, self.f, -1) + self.mu[None, :, None] * w
        return loss, gw, g.sum(0), p

    def preconditioner(self, p):
        n, r = self.z.shape
        q = self.s * p * (1 - p)
        h = _zt(self.z2, q.reshape(n, -1)).reshape(r, self.f, -1)
        floor = 0.01 * _zt(self.z2, self.s[:, :, 0]) / p.shape[2]  # (r, F+1)
        return (1.0 / torch.sqrt(torch.maximum(h, floor[:, :, None]) + self.mu[None, :, None]),
                1.0 / torch.sqrt(q.sum(0) + 1e-12))


def _cross_validate(z, y1, s, y, splits, cs, scoring, patience, tol, max_iter):
    """Walk C upwards, all folds and the full set solved jointly, each warm-started from the
    previous C; stop after ``patience`` Cs without a better mean score. With the default grid
    (decades), then try the two half-decade neighbours of the best. Returns (best C, rows sorted
    by C, full-set solution at best C, iterations)."""
    n = len(y)
    masks = torch.zeros(n, len(splits) + 1, dtype=torch.bool)
    for f, (tr, _) in enumerate(splits):
        masks[tr, f] = True
    masks[:, -1] = True
    prob = _Joint(z, y1, s, masks)
    sols: dict[float, tuple] = {}
    rows: dict[float, dict] = {}
    iters = 0

    def score(row):
        return -row["log_loss"] if scoring == "log_loss" else row["accuracy"]

    def evaluate(c, start):
        nonlocal iters
        prob.set_c(c)
        (w, b), it, _ = _lbfgs(prob, start, tol, max_iter)
        iters += it
        sols[c] = (w, b)
        logits = prob.logits(w, b)
        losses, accs = [], []
        for f, (_, te) in enumerate(splits):
            lf = logits[te, f].double()
            yt = y[te]
            losses.append(float(-torch.log_softmax(lf, 1)[torch.arange(len(yt)), yt].mean()))
            accs.append(float((lf.argmax(1) == yt).double().mean()))
        rows[c] = {"C": float(c), "log_loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                   "fold_log_loss": losses, "fold_accuracy": accs}

    def best_c():  # highest score; ties to the smaller C (stronger penalty)
        return max(sorted(rows), key=lambda c: (score(rows[c]), -c))

    refine = cs is None
    grid = np.logspace(-4, 4, 9) if refine else np.sort(np.asarray(cs, dtype=float))
    start, since, path = None, 0, []
    for c in grid:
        c = float(c)
        if len(path) >= 2:  # the solution path is smooth in log C: start from its linear extrapolation
            (c1, (w1, b1)), (c2, (w2, b2)) = path[-2:]
            t = math.log(c / c2) / math.log(c2 / c1)
            start = (w2 + t * (w2 - w1), b2 + t * (b2 - b1))
        evaluate(c, start)
        start = sols[c]
        path.append((c, sols[c]))
        if best_c() == c:
            since = 0
        else:
            since += 1
            if patience and since >= patience:
                break
    if refine:
        c0 = best_c()
        for c in (c0 / math.sqrt(10), c0 * math.sqrt(10)):
            evaluate(c, sols[c0])
    c = best_c()
    w, b = sols[c]
    return c, [rows[key] for key in sorted(rows)], (w[:, -1], b[-1]), iters


__all__ = ["fit_linear_head", "SCORINGS"]
