"""Regression on image features: rehead's solved ridge head (per-column or one global scale, chosen
by its leave-one-out error since the twentieth session) against the per-column-only ridge it used
before, reproduced as scikit-learn's StandardScaler + RidgeCV on the same features and rows.

Data: 300 of scikit-learn's 8x8 digits as 64 px PNGs, target = the digit x 1000, a fixed split
(240 train, of which rehead carves a seeded 20% val, and 60 test, scored once). Backbone:
packaged EfficientNet-Lite0, full depth. A new-user session found that, per column, features
nearly constant on the training rows (std ~4e-6) met a larger value on one test image and the head
predicted 86,538 for an 8,000 (test R^2 -11 at seed 0).

    PYTHONPATH=. REHEAD_CACHE=$(mktemp -d) python bench/regression_images.py
"""
from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, write  # noqa: E402
from rehead.features import extract  # noqa: E402
from rehead.fit import fit  # noqa: E402
from rehead.tasks import regression_metrics  # noqa: E402
from rehead.train.task_heads import RIDGE_ALPHAS  # noqa: E402

MODEL = "packaged:efficientnet_lite0"
SEEDS = (0, 1, 2)


def digits_csv(root: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    idx = np.random.default_rng(0).permutation(len(d.target))[:300]
    (root / "digits").mkdir(parents=True)
    with open(root / "digits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for k, i in enumerate(idx):
            px = (d.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(px).resize((64, 64), Image.NEAREST).convert("RGB").save(root / "digits" / f"{k}.png")
            w.writerow([f"digits/{k}.png", float(d.target[i]) * 1000, "test" if k >= 240 else "train"])
    return root / "digits.csv"


def sk_ridge(xtr, ytr, xte, yte, scaling: str) -> dict:
    from sklearn.linear_model import RidgeCV
    mean, std = xtr.mean(0), xtr.std(0)
    kept = std > 1e-12 * max(1.0, float(np.abs(mean).max()))
    std = np.where(kept, std, 1.0) if scaling == "column" else np.full_like(std, np.sqrt(np.mean(std[kept] ** 2)))
    m = RidgeCV(alphas=RIDGE_ALPHAS).fit((xtr - mean) / std, ytr)
    return regression_metrics(yte, m.predict((xte - mean) / std))


def main():
    torch.set_num_threads(1)
    started = machine()
    work = Path(tempfile.mkdtemp(prefix="rehead-regression-images-"))
    data = digits_csv(work)
    rows = []
    for seed in SEEDS:
        run = fit(str(data), work / f"s{seed}", model=MODEL, task="regression", strategy="extract", seed=seed,
                  progress=False, echo=lambda *a: None, workers=0)
        s = run.summary
        split = json.loads((run.dir / "split.json").read_text())
        tr, te = split["train"], split["test"]
        bb = run.model.backbone
        k = len(bb)
        feats = [extract(bb, part["items"], [k], None, batch_size=32, workers=0, progress=False)[0][k].double().numpy()
                 for part in (tr, te)]
        ytr, yte = np.array(tr["labels"]), np.array(te["labels"])
        row = {"seed": seed, "rehead": {"r2": s["test_r2"], "rmse": s["test_rmse"],
                                        "scaling": s["head_solver"].get("scaling"), "alpha": s["head_solver"]["alpha"]},
               "per_column_only (rehead before)": sk_ridge(*feats[:1], ytr, feats[1], yte, "column"),
               "global_only": sk_ridge(*feats[:1], ytr, feats[1], yte, "global")}
        rows.append(row)
        print(f"seed {seed}: rehead r2 {row['rehead']['r2']:.3f} ({row['rehead']['scaling']}); "
              f"per-column {row['per_column_only (rehead before)']['r2']:.3f}; global {row['global_only']['r2']:.3f}")
    figures = {"data": "300 scikit-learn digits as 64 px PNGs, target digit x 1000; 240 train (val carved), 60 test",
               "model": MODEL, "rows": rows,
               "mean_test_r2": {name: float(np.mean([r[name]["r2"] for r in rows]))
                                for name in ("rehead", "per_column_only (rehead before)", "global_only")}}
    print(json.dumps(figures["mean_test_r2"]))
    write("regression_images", figures, started=started)


if __name__ == "__main__":
    main()
