"""Plots as PNG files (matplotlib, Agg: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GREEN, RED, BLUE, ORANGE = "#2e7d32", "#c62828", "#1f77b4", "#ff7f0e"


def _save(fig, path: Path) -> Path:
    import io
    from ..rundir import atomic_write_bytes
    import warnings
    with warnings.catch_warnings():  # "tight layout not applied" (long class names): bbox_inches="tight" still fits them
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())  # a killed report never leaves half a PNG
    return Path(path)


def plot_probe(rows: list[dict], best_cut: int, path, title: str = "", input_row: dict | None = None) -> Path:
    """Val (and train) accuracy of a linear probe against cut depth; the best depth marked; the same
    probe on the input itself (``input_row``) as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    cuts = [r["cut"] for r in rows]
    ax.plot(cuts, [r["val_acc"] for r in rows], "o-", color=BLUE, label="val accuracy")
    if input_row:
        ax.axhline(input_row["val_acc"], ls=":", color="grey", label=f"the input itself ({input_row['what']}), val")
    ax.plot(cuts, [r["train_acc"] for r in rows], "o--", color="grey", alpha=0.6, label="train accuracy")
    b = next(r for r in rows if r["cut"] == best_cut)
    ax.plot([best_cut], [b["val_acc"]], "*", ms=16, color=ORANGE, label=f"best: cut {best_cut} ({b['stage']})")
    ax.set_xticks(cuts, [f"{r['cut']}\n{r['stage']}" for r in rows], fontsize=7)
    ax.set_xlabel("cut depth (stages kept)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "linear probe at each depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rank(rows: list[dict], path) -> Path:
    """LogME per candidate (bars, ranked) with the probe's val accuracy beside it."""
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.6))
    names = [r["model"] for r in rows][::-1]
    scores = [r["logme"] for r in rows][::-1]
    ax.barh(names, scores, color=BLUE)
    ax.set_xlabel("LogME (higher: should transfer better)")
    lo = min(scores)
    span = (max(scores) - lo) or abs(lo) or 1.0
    ax.set_xlim(lo - 0.5 * span, max(scores) + 0.8 * span)
    for i, r in enumerate(rows[::-1]):
        ax.text(r["logme"], i, f"  probe acc {r['probe_val_acc']:.3f}", va="center", fontsize=8)
    ax.set_title("backbone ranking (LogME), linear probe as a check", fontsize=10)
    return _save(fig, path)


def plot_compare(rows: list[dict], path, reference: dict | None = None, title: str = "") -> Path:
    """Accuracy against number of training samples, transfer vs scratch: the figure the finding compares
    (``reference["metric"]``: test accuracy where there is a test split, else val)."""
    metric = (reference or {}).get("metric", "val_acc")
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, color, label in (("transfer", BLUE, "transfer (pretrained)"), ("scratch", RED, "small CNN from scratch")):
        pts = sorted((r["n_train"], r[metric]) for r in rows if r["arm"] == arm)
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=label)
    if reference:
        ax.axhline(reference[metric], color=BLUE, ls=":", alpha=0.7,
                   label=f"transfer at {reference['fraction']:g} ({reference['n_train']} samples)")
    ax.set_xscale("log")
    ns = sorted({r["n_train"] for r in rows})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("training samples")
    ax.set_ylabel("test accuracy" if metric == "test_acc" else "val accuracy")
    ax.set_title(title or "transfer vs training from scratch", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(rows: list[dict], path) -> Path:
    """Train/val loss and accuracy per epoch, phase boundaries as vertical lines."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = [int(r["global_epoch"]) for r in rows]
    # the second panel: accuracy, or a task's own val figure (R² for regression, mAP for multilabel)
    second = next(((k, n) for k, n in (("acc", "accuracy"), ("r2", "R²"), ("map", "mAP")) if f"val_{k}" in rows[0]),
                  ("acc", "accuracy"))
    for ax, key, name in ((a1, "loss", "loss"), (a2, *second)):
        if f"train_{key}" in rows[0]:
            ax.plot(x, [float(r[f"train_{key}"]) for r in rows], "-", color=BLUE, label=f"train {name}")
        if f"val_{key}" in rows[0]:
            ax.plot(x, [float(r[f"val_{key}"]) for r in rows], "-", color=ORANGE, label=f"val {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        prev = None
        for r in rows:
            if r["phase"] != prev:
                e = int(r["global_epoch"]) - 0.5
                if prev is not None:
                    ax.axvline(e, color="grey", ls="--", lw=1)
                ax.text(e + 0.1, 1.0, f" {r['phase']}", transform=ax.get_xaxis_transform(), fontsize=7,
                        va="top", color="grey")
                prev = r["phase"]
        ax.legend(fontsize=8, loc="center right")
    return _save(fig, path)


def plot_lr_find(lrs, losses, suggested, path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(lrs, losses, color=BLUE)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    if suggested:
        ax.axvline(suggested, color=ORANGE, ls="--", label=f"suggested {suggested:.2g}")
        ax.legend(fontsize=8)
    ax.set_title("learning-rate finder", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_confusion(cm, classes: list[str], path) -> Path:
    import numpy as np
    cm = np.asarray(cm)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n + 2, 1 + 0.5 * n + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title("confusion matrix (val)", fontsize=10)
    return _save(fig, path)


def plot_scatter(y_true, y_pred, name: str, path) -> Path:
    """Predicted against true values (val), the y = x line for reference."""
    import numpy as np
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.scatter(t, p, s=12, alpha=0.6, color=BLUE)
    if len(t):
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "--", color=ORANGE, lw=1, label="predicted = true")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.grid(alpha=0.3)
    ax.set_title("predicted vs true (val)", fontsize=10)
    return _save(fig, path)


def plot_reliability(before: list[dict], after: list[dict], temperature: float | str, path, split: str = "val") -> Path:
    """Reliability diagrams (top-label accuracy per confidence bin against the diagonal), without
    and with the run's temperature (or a text naming what was applied: an ensemble's members' own T), each
    with its ECE."""
    from ..calibration import ece_of_bins
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    after_name = temperature if isinstance(temperature, str) else f"T = {temperature:.3f}"
    for ax, bins, name in ((axes[0], before, "uncalibrated (T = 1)"), (axes[1], after, after_name)):
        full = [b for b in bins if b["n"]]
        w = bins[0]["hi"] - bins[0]["lo"]
        ax.bar([b["lo"] for b in full], [b["accuracy"] for b in full], width=w, align="edge", color=BLUE,
               edgecolor="white", label="accuracy")
        ax.bar([b["lo"] for b in full], [b["confidence"] - b["accuracy"] for b in full],
               bottom=[b["accuracy"] for b in full], width=w, align="edge", color=RED, alpha=0.35,
               label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top label)")
        ax.set_title(f"{name}: ECE {ece_of_bins(bins):.4f}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"reliability on {split} ({sum(b['n'] for b in before)} samples, {len(before)} bins)", fontsize=10)
    return _save(fig, path)
