"""Regression on a real numeric target: rehead's ``--task regression`` against scikit-learn's
Ridge / RidgeCV on the same features, the same training rows and the same test rows.

Data: scikit-learn's diabetes data (442 patients, 10 baseline variables, target: disease
progression one year later; bundled with scikit-learn, no download), written as a CSV with a
``split`` column: a seeded 25% test split, scored once at the end of each arm. rehead carves
its val (20%, seed 0) out of the train rows; every arm below fits on exactly rehead's training
rows (read back from the run's split.json), so no arm sees a row another does not.

Features: rehead has no pretrained table encoder, so the backbone is ``tabular:mlp-10-256x1``
(one seeded random block: Linear -> LayerNorm -> GELU, the training rows' standardisation in
front); its pooled output (256 columns) is what every "same features" arm fits on. This measures
the regression head (closed-form ridge, alpha by CV on train) and the run machinery (target
standardisation, units, metrics), not a transfer gain. A ridge on the 10 raw columns is the
classic reference.

Arms:
  rehead extract      rehead.fit(task=regression): ridge head solved by RidgeCV (LOO on train)
  rehead head (AdamW) the same linear head trained by the loop: 60 epochs AdamW, one-cycle,
                      the val-loss-best epoch kept (val rows are not in its training rows)
  sklearn RidgeCV     the same 256 features, same training rows, same alpha grid
  sklearn Ridge(1.0)  the same, scikit-learn's default alpha
  sklearn RidgeCV raw the 10 raw columns (standardised), same training rows

    PYTHONPATH=. REHEAD_CACHE=$(mktemp -d) python bench/regression.py
"""
from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, write  # noqa: E402
from rehead import Run  # noqa: E402
from rehead.data.tabular import rows_of  # noqa: E402
from rehead.fit import fit  # noqa: E402
from rehead.tasks import regression_metrics  # noqa: E402
from rehead.train.task_heads import RIDGE_ALPHAS  # noqa: E402

MODEL = "tabular:mlp-10-256x1"
SEED = 0


def diabetes_csv(path: Path) -> Path:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split
    d = load_diabetes()
    idx = np.arange(len(d.target))
    _, test = train_test_split(idx, test_size=0.25, random_state=SEED)
    test = set(test.tolist())
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(d.feature_names) + ["progression", "split"])
        for i, (row, y) in enumerate(zip(d.data, d.target)):
            w.writerow([repr(float(v)) for v in row] + [repr(float(y)), "test" if i in test else "train"])
    return path


def features(run: Run, items: list) -> np.ndarray:
    """The run's backbone output (the features its head was fitted on) for table rows."""
    cols = run.model.backbone.data_config["columns"]
    with torch.inference_mode():
        return run.model.backbone(torch.from_numpy(rows_of(items, cols))).double().numpy()


def sk_arm(model, xtr, ytr, xte, yte) -> dict:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    t0 = time.perf_counter()
    pipe = make_pipeline(StandardScaler(), model).fit(xtr, ytr)
    m = regression_metrics(yte, pipe.predict(xte))
    est = pipe[-1]
    return {**m, "alpha": float(getattr(est, "alpha_", getattr(est, "alpha", np.nan))),
            "seconds": time.perf_counter() - t0}


def rehead_arm(data: Path, out: Path, **kw) -> tuple[Run, dict]:
    t0 = time.perf_counter()
    run = fit(data, out, model=MODEL, task="regression", label_column="progression", seed=SEED, progress=False,
              echo=lambda *a: None, overwrite=True, **kw)
    s = run.summary
    return run, {"rmse": s["test_rmse"], "mae": s["test_mae"], "r2": s["test_r2"], "val_r2": s.get("val_r2"),
                 "solver": s.get("head_solver"), "strategy": s["strategy"], "seconds": time.perf_counter() - t0}


def main():
    from sklearn.linear_model import Ridge, RidgeCV
    torch.set_num_threads(1)
    started = machine()
    work = Path(tempfile.mkdtemp(prefix="rehead-regression-"))
    data = diabetes_csv(work / "diabetes.csv")
    run, extract = rehead_arm(data, work / "extract", strategy="extract")
    _, head = rehead_arm(data, work / "head", strategy="head", epochs=60)
    split = json.loads((work / "extract" / "split.json").read_text())
    tr_items, ytr = split["train"]["items"], np.array(split["train"]["labels"])
    te_items, yte = split["test"]["items"], np.array(split["test"]["labels"])
    xtr, xte = features(run, tr_items), features(run, te_items)
    cols = run.model.backbone.data_config["columns"]
    raw_tr, raw_te = rows_of(tr_items, cols), rows_of(te_items, cols)
    arms = {
        "rehead extract (ridge, RidgeCV LOO)": extract,
        "rehead head (linear, AdamW 60 epochs)": head,
        "sklearn RidgeCV, same features": sk_arm(RidgeCV(alphas=RIDGE_ALPHAS), xtr, ytr, xte, yte),
        "sklearn Ridge(alpha=1), same features": sk_arm(Ridge(alpha=1.0), xtr, ytr, xte, yte),
        "sklearn RidgeCV, 10 raw columns": sk_arm(RidgeCV(alphas=RIDGE_ALPHAS), raw_tr, ytr, raw_te, yte),
    }
    for name, a in arms.items():
        print(f"{name:40} rmse {a['rmse']:7.3f}  mae {a['mae']:7.3f}  r2 {a['r2']:.4f}")
    figures = {"data": "sklearn diabetes (442 rows, 10 columns, target: progression)",
               "rows": {"train": len(tr_items), "val": len(split["val"]["items"]), "test": len(te_items)},
               "features": f"{MODEL} pooled output, {xtr.shape[1]} columns", "test": arms,
               "target_std_test": float(yte.std())}
    write("regression", figures, started=started)


if __name__ == "__main__":
    main()
