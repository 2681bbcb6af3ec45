"""Calibrated probabilities: one temperature T fitted on val, expected calibration error, flips.

A fit ends by fitting T > 0 to the val split's logits of the kept weights (Guo et al. 2017,
"On calibration of modern neural networks"): probabilities become softmax(logits / T), so the
predicted label never changes. T is saved as ``temperature.json`` in the run directory; a run
without it (made before calibration, or where no T could be fitted) uses T = 1.

T is fitted on the same val split its "after" figures are measured on, so those are optimistic;
only held-out data (a test split, ``rehead evaluate RUN DATA``) measures it fairly.

Only multiclass runs are calibrated: a config whose ``task`` is missing is multiclass.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .rundir import BadRun, RunDir, read_json

FILE = "temperature.json"
N_BINS = 15
# log T is searched in [log 0.05, log 20]: an optimum on either end means val cannot size T (a
# separable val split keeps asking for sharper probabilities; a chance-level model for flatter ones).
T_MIN, T_MAX = 0.05, 20.0


def is_multiclass(config) -> bool:
    """A FitConfig or a run's config.yaml: multiclass unless a ``task`` says otherwise."""
    if isinstance(config, dict):
        task = config.get("task") or (config.get("fit") or {}).get("task")
    else:
        task = getattr(config, "task", None)
    return task in (None, "multiclass")


# -- measures ---------------------------------------------------------------------------------
def reliability(confidence, correct, n_bins: int = N_BINS) -> list[dict]:
    """Top-label reliability in ``n_bins`` equal-width bins of confidence (lo, hi]: per bin the
    count, mean confidence and accuracy (None for an empty bin)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # conf 1/15 -> bin 0, 1.0 -> bin 14
    bins = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n,
                     "confidence": float(conf[m].mean()) if n else None,
                     "accuracy": float(ok[m].mean()) if n else None})
    return bins


def ece_of_bins(bins: list[dict]) -> float:
    total = sum(b["n"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["n"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"]))


def ece(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of |bin| / n * |accuracy - mean confidence|."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels)
    conf, pred = p.max(1)
    return ece_of_bins(reliability(conf.numpy(), (pred == y).numpy(), n_bins))


def nll(probs, labels) -> float:
    """Mean negative log-probability of the true class."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    if not len(y):
        return 0.0
    return float(-p[torch.arange(len(y)), y].clamp_min(1e-300).log().mean())


def scaled_probs(views: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) of each view (the image, its flip), averaged: T is applied to every
    view's logits before the probabilities are averaged."""
    return torch.stack([(v.double() / temperature).softmax(1) for v in views]).mean(0)


# -- fitting ----------------------------------------------------------------------------------
def fit_temperature(logits, labels) -> float | None:
    """The T minimising val NLL of softmax(logits / T); None when the optimum lies on the search's
    bounds. NLL is convex in 1/T, hence unimodal in log T: a bounded Brent search finds it,
    deterministically, in float64."""
    from scipy.optimize import minimize_scalar
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    true = z[torch.arange(len(y)), y]

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float((torch.logsumexp(s, 1) - true / math.exp(log_t)).mean())

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    if min(loss(lo), loss(hi)) <= res.fun + 1e-9:  # flat out to a bound: no interior optimum to keep
        return None
    return float(math.exp(res.x))


def calibrate(run: RunDir, logits: torch.Tensor, labels) -> dict:
    """Fit T on val logits, write temperature.json (only when one was fitted) and return the
    record for summary.json: T, ECE and NLL on val before and after."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    if not len(y) or not torch.isfinite(z).all():
        return {"temperature": 1.0, "fitted": False, "split": "val", "n": len(y),
                "reason": "no val samples" if not len(y) else "non-finite val logits"}
    t = fit_temperature(z, y)
    before = scaled_probs([z])
    rec = {"temperature": t or 1.0, "fitted": t is not None, "split": "val", "n": len(y),
           "ece_before": ece(before, y), "nll_before": nll(before, y)}
    if t is None:
        rec["reason"] = _bound_reason(z, y)
        return rec
    after = scaled_probs([z], t)
    rec.update(ece_after=ece(after, y), nll_after=nll(after, y),
               note="fitted and measured on the same val split: the after figures are optimistic")
    run.write_json(FILE, {"temperature": t, "fitted_on": "val", "n": len(y), "objective": "nll",
                          "search": f"bounded Brent over log T in [log {T_MIN}, log {T_MAX}]"})
    return rec


def _bound_reason(z: torch.Tensor, y: torch.Tensor) -> str:
    """Why no T was fitted, by the bound val NLL runs to: sharper without end (val separated perfectly), or
    flatter without end (the val predictions are worth no more than uniform ones: a collapsed or failed model)."""
    lo, hi = nll(scaled_probs([z], T_MIN), y), nll(scaled_probs([z], T_MAX), y)
    if abs(lo - hi) <= 1e-6 * max(1.0, abs(hi)):  # equal logits per sample: no temperature changes anything
        return ("val NLL is the same at every T: the model gives each val sample the same score for every class "
                "(it learned nothing these inputs tell apart): no temperature fitted, T = 1")
    if lo <= hi:
        return (f"val NLL is lowest at T = {T_MIN}, the search's lower bound (e.g. a val split the model "
                "separates perfectly): no temperature fitted, T = 1")
    return (f"val NLL is lowest at T = {T_MAX}, the search's upper bound: the val predictions are worth no more than "
            "a uniform guess (a model that failed to learn, or confident where it is wrong): no temperature "
            "fitted, T = 1")


def read_temperature(run_dir) -> float:
    """The run's T; 1.0 when it has no temperature.json (a run from before calibration)."""
    p = Path(run_dir) / FILE
    if not p.exists():
        return 1.0
    obj = read_json(p)
    t = obj.get("temperature") if isinstance(obj, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise BadRun(f"{p} holds no positive temperature: delete it (T = 1) or rerun the fit")
    return float(t)


def summary_line(rec: dict) -> str:
    """One line for the end of a fit."""
    if not rec.get("fitted"):
        return f"calibration: T = 1 ({rec.get('reason')})"
    line = (f"calibration: T = {rec['temperature']:.3f} fitted on val ({rec['n']} samples); val ECE "
            f"{rec['ece_before']:.4f} -> {rec['ece_after']:.4f}, NLL {rec['nll_before']:.4f} -> "
            f"{rec['nll_after']:.4f} (optimistic: measured where T was fitted)")
    if rec["ece_after"] > rec["ece_before"]:  # T minimises NLL; on a small val split ECE can move the other way
        line += ("; note: ECE rose (T is fitted to log-loss, and ECE on few samples is noisy): judge it on "
                 "held-out data with `rehead evaluate RUN DATA`")
    return line
