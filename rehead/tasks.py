"""Task types: what a label is, what the head is trained against, and how its outputs are scored.

    multiclass  one class per item (softmax, cross-entropy; accuracy)
    multilabel  a set of labels per item, written ``a|b`` in the label column (sigmoid per label,
                BCE; per-label F1 at 0.5, micro/macro F1, mAP)
    regression  a number per item (one output, MSE on the target standardised with the training
                split's mean/std; RMSE, MAE, R² in the user's units)

Labels live in ``Samples.labels`` as: class indices (multiclass), sorted lists of class indices
(multilabel), floats in the user's units (regression). This module turns them into tensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import LABEL_SEP as SEP, TASKS  # noqa: F401  (re-exported)


def task_of(config: dict) -> str:
    """The task of a run from its config.yaml (runs made before tasks existed are multiclass)."""
    return ((config or {}).get("fit") or {}).get("task") or "multiclass"


# -- targets --------------------------------------------------------------------------------------
def target_stats(values) -> dict:
    """Mean and std of the training targets: the head learns (y - mean) / std. A constant target
    gets std 1 (nothing to scale)."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std())
    # min/max: predict flags a value far outside what the head was trained on
    return {"mean": float(v.mean()), "std": std if std > 1e-12 else 1.0, "min": float(v.min()), "max": float(v.max())}


def far_outside(value: float, target: dict) -> bool:
    """Beyond the training targets' range by more than the range's own width (runs without min/max:
    6 standard deviations from the mean): an extrapolation a linear head makes freely."""
    if "min" in target and "max" in target:
        lo, hi = target["min"], target["max"]
        width = max(hi - lo, target["std"])
        return value < lo - width or value > hi + width
    return abs(value - target["mean"]) > 6 * target["std"]


def to_tensor(labels: list, task: str, n_classes: int) -> torch.Tensor:
    """``Samples.labels`` as the tensor a loss takes: long (N,), float multi-hot (N, K), float (N,)."""
    if task == "multiclass":
        return torch.tensor(labels, dtype=torch.long)
    if task == "regression":
        return torch.tensor(labels, dtype=torch.float32)
    return torch.from_numpy(np.stack(multi_hot(labels, n_classes))) if labels else torch.zeros(0, n_classes)


def per_item(labels: list, task: str, n_classes: int) -> list:
    """``Samples.labels`` as per-item labels a DataLoader collates into the loss's tensor."""
    if task == "multilabel":
        return multi_hot(labels, n_classes)
    if task == "regression":
        return [np.float32(y) for y in labels]
    return labels


def multi_hot(labels: list, n_classes: int) -> list:
    out = []
    for ys in labels:
        v = np.zeros(n_classes, dtype=np.float32)
        v[list(ys)] = 1.0
        out.append(v)
    return out


# -- losses ---------------------------------------------------------------------------------------
class StandardisedMSE(nn.Module):
    """MSE between the head's one output and (y - mean) / std: the head works in standard units,
    whatever the target's scale; ``Run`` maps its outputs back."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    @property
    def target(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def forward(self, pred, y):
        return nn.functional.mse_loss(pred.reshape(-1).float(), (y.float() - self.mean) / self.std)


def loss_for(task: str, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
             target: dict | None = None) -> nn.Module:
    """The loss of a task. ``class_weights``: per class (multiclass: CrossEntropy's ``weight``;
    multilabel: BCE's ``pos_weight``). ``label_smoothing``: multiclass (CrossEntropy's own) and
    multilabel (targets pulled towards 0.5); regression has none. ``target``: regression mean/std."""
    if task == "multiclass":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if task == "multilabel":
        return SmoothedBCE(class_weights, label_smoothing)
    if task == "regression":
        t = target or {}
        return StandardisedMSE(t.get("mean", 0.0), t.get("std", 1.0))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class SmoothedBCE(nn.Module):
    def __init__(self, pos_weight=None, smoothing: float = 0.0):
        super().__init__()
        self.pos_weight, self.smoothing = pos_weight, smoothing

    def forward(self, logits, y):
        y = y.float() * (1 - self.smoothing) + 0.5 * self.smoothing
        pw = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pw)


def balanced_weights(labels: list, task: str, n_classes: int) -> torch.Tensor | None:
    """scikit-learn's "balanced": n / (k * count) per class (multiclass). Multilabel: BCE's
    pos_weight, negatives / positives per label (a label seen on 10% of items weighs 9). A class
    without training samples gets weight 1."""
    if task == "regression":
        return None
    if task == "multiclass":
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 1.0)
    else:
        pos = np.stack(multi_hot(labels, n_classes)).sum(0).astype(np.float64)
        w = np.where(pos > 0, (len(labels) - pos) / np.maximum(pos, 1), 1.0)
    return torch.tensor(w, dtype=torch.float32)


# -- metrics --------------------------------------------------------------------------------------
def predictions(task: str, out: torch.Tensor, target: dict | None = None) -> np.ndarray:
    """Outputs as the user reads them: class indices, per-label probabilities, values in the target's units."""
    out = out.float()
    if task == "multiclass":
        return out.argmax(1).numpy()
    if task == "multilabel":
        return torch.sigmoid(out).numpy()
    t = target or {}
    return out.reshape(-1).double().numpy() * t.get("std", 1.0) + t.get("mean", 0.0)


def regression_metrics(y_true, y_pred) -> dict:
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if not len(y):
        return {"rmse": math.nan, "mae": math.nan, "r2": math.nan}
    err = p - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
            "r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan}


def multilabel_metrics(y_true, probs, classes: list[str] | None = None) -> dict:
    """Per-label F1 at p >= 0.5, micro/macro F1, and mAP (mean over labels with a positive of
    scikit-learn's average precision: a label with no positive has none). Macro-F1 averages the same
    labels as mAP: a label with no positive in the scored data has no recall, and counting its F1 as 0
    would pull the mean down for a label the data cannot test (its false positives still count in
    micro-F1). ``labels_scored`` / ``labels_without_positive`` say which labels the two means cover."""
    from sklearn.metrics import average_precision_score, f1_score
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    pred = (p >= 0.5).astype(np.int64)
    k = y.shape[1] if y.ndim == 2 else 0
    names = classes or [str(i) for i in range(k)]
    has_pos = [j for j in range(k) if y[:, j].any()]
    aps = {names[j]: float(average_precision_score(y[:, j], p[:, j])) for j in has_pos}
    per = f1_score(y, pred, average=None, zero_division=0) if len(y) else np.zeros(k)
    return {"micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)) if len(y) else math.nan,
            "macro_f1": float(np.mean(per[has_pos])) if has_pos else math.nan,
            "map": float(np.mean(list(aps.values()))) if aps else math.nan,
            "labels_scored": len(has_pos), "labels_without_positive": [names[j] for j in range(k) if j not in has_pos],
            "per_label": {names[j]: {"f1": float(per[j]), "ap": aps.get(names[j]), "support": int(y[:, j].sum())}
                          for j in range(k)}}


def macro_said(res: dict) -> str:
    """Which labels macro-F1 and mAP average, where some had no positive in the scored data."""
    left = res.get("labels_without_positive") or []
    return (f"; macro f1 and mAP over the {res['labels_scored']} label(s) with a positive here, "
            f"{len(left)} without one left out: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}") if left else ""


def epoch_metrics(task: str, out: torch.Tensor, y: torch.Tensor, target: dict | None = None) -> dict:
    """The per-epoch figures beside the loss (metrics.csv): accuracy, or RMSE/MAE/R², or F1/mAP."""
    if task == "multiclass":
        return {"acc": float((out.argmax(1) == y).float().mean()) if len(y) else 0.0}
    if task == "regression":
        return regression_metrics(y.double().numpy(), predictions(task, out, target))
    m = multilabel_metrics(y.numpy(), predictions(task, out))
    return {k: m[k] for k in ("micro_f1", "macro_f1", "map")}


__all__ = ["TASKS", "SEP", "task_of", "target_stats", "to_tensor", "per_item", "loss_for", "balanced_weights",
           "predictions", "regression_metrics", "multilabel_metrics", "epoch_metrics"]
