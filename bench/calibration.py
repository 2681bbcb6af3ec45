"""Calibration on hymenoptera (ants vs bees; train 244, val 153) with the packaged EfficientNet-Lite0,
extract strategy: the temperature the fit chose on val, val ECE / NLL before and after, evaluate on
val with and without flip TTA, and a held-out check of T by 2-fold cross-fitting on val.

hymenoptera has no test split, so the fit's "after" figures are measured on the split T was fitted
on (optimistic). The cross-fit fits T on one half of val and measures ECE on the other half.

    PYTHONPATH=.:bench python bench/calibration.py     # -> bench/results/calibration.json
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import rehead  # noqa: F401  first, as the CLI does (sets OMP_WAIT_POLICY before torch loads)

from _common import HYMENOPTERA, machine, write


def cross_fit(logits, labels) -> dict:
    """T fitted on one half of val (even / odd positions) and scored on the other, both ways."""
    import torch
    from rehead.calibration import ece, fit_temperature, nll, scaled_probs
    y = torch.as_tensor(labels)
    halves = [torch.arange(len(y)) % 2 == k for k in (0, 1)]
    folds = []
    for fit_on, score_on in (halves, halves[::-1]):
        t = fit_temperature(logits[fit_on], y[fit_on]) or 1.0
        z, yy = logits[score_on], y[score_on]
        folds.append({"temperature": t, "n_scored": int(score_on.sum()),
                      "ece_uncalibrated": ece(scaled_probs([z]), yy), "ece": ece(scaled_probs([z], t), yy),
                      "nll_uncalibrated": nll(scaled_probs([z]), yy), "nll": nll(scaled_probs([z], t), yy)})
    mean = {k: sum(f[k] for f in folds) / 2 for k in ("ece_uncalibrated", "ece", "nll_uncalibrated", "nll")}
    return {"folds": folds, "mean": mean}


def evaluate(run, items, labels, tta: bool) -> dict:
    t0 = time.perf_counter()
    r = run.evaluate(items, labels, tta=tta)
    keys = ("accuracy", "n", "ece", "ece_uncalibrated", "nll", "nll_uncalibrated", "temperature")
    return {**{k: r[k] for k in keys}, "seconds": time.perf_counter() - t0}


def main():
    from rehead.fit import fit
    from rehead.run import Run
    started = machine()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        fit(str(HYMENOPTERA), out=out, strategy="extract", cache_dir=str(Path(tmp) / "cache"), progress=False,
            echo=lambda *_: None)
        fit_s = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
        run = Run(out)
        items, labels = run.val_split()
        plain = evaluate(run, items, labels, tta=False)
        tta = evaluate(run, items, labels, tta=True)
        logits, kept, _ = run.logits(items)
        held_out = cross_fit(logits.double(), [labels[i] for i in kept])
    figures = {
        "model": "packaged:efficientnet_lite0 (default), strategy extract, seed 0",
        "val_acc": summary["val_acc"], "calibration_at_fit": summary["calibration"],
        "evaluate_val": plain, "evaluate_val_tta": tta,
        "tta_note": "flip TTA: softmax(logits / T) of the image and of its horizontal flip, averaged",
        "val_cross_fit": held_out,
        "cross_fit_note": "T fitted on half of val, ECE/NLL on the other half, both ways: a held-out "
                          "check, since hymenoptera has no test split",
        "fit_seconds": fit_s}
    write("calibration", figures, started=started,
          extra={"timing_note": "2 shared CPU cores (other sessions running): timings indicative"})


if __name__ == "__main__":
    main()
