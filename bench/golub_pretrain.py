"""golub_leukemia (ALL vs AML, 7129 probes, 38 train / 34 independent): accuracy on the
independent split of
  (a) an MLP encoder pretrained by masked reconstruction on the TRAINING rows, then fine-tuned,
  (b) the same MLP from random init, fine-tuned identically,
  (c) logistic regression on the raw (standardised) features,
all with the same seed, for several seeds, side by side. Figures are LAST-epoch accuracy on the
independent split (the loop's best-epoch selection would peek at it, so it is not used).
Pretraining never sees the independent rows (rows='train'); a transductive variant that also
reads their features (no labels) is reported separately as (a').

    PYTHONPATH=. REHEAD_CACHE=/tmp/rc python bench/golub_pretrain.py [--seeds 3] [--pretrain-epochs 150]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rehead.data.tabular import load_table, rows_of  # noqa: E402
from rehead.fit import fit  # noqa: E402
from rehead.pretrain import pretrain  # noqa: E402

DATA = next((d / "shared" / "datasets" / "golub_leukemia" / "expression.csv" for d in (ROOT.parent, ROOT.parent.parent)
             if (d / "shared" / "datasets" / "golub_leukemia").exists()), None)
ARCH = dict(width=256, depth=3)
FIT = dict(strategy="full", epochs=30, lr=1e-3, batch_size=16)


def quiet(*_):
    pass


def logreg(seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    ds = load_table(DATA, label_column="label", id_columns="patient")
    xtr, xte = rows_of(ds.train.items, ds.feature_columns), rows_of(ds.val.items, ds.feature_columns)
    sc = StandardScaler().fit(xtr)  # training rows only
    clf = LogisticRegression(max_iter=5000, random_state=seed).fit(sc.transform(xtr), ds.train.labels)
    return float((clf.predict(sc.transform(xte)) == np.array(ds.val.labels)).mean())


def fine_tune(model, out, seed):
    run = fit(DATA, model=model, out=out, seed=seed, progress=False, echo=quiet, overwrite=True,
              data_kw={"label_column": "label", "id_columns": "patient"}, **FIT)
    summary = json.loads((Path(out) / "summary.json").read_text())
    return summary["last_val_acc"], summary["val_acc"], run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pretrain-epochs", type=int, default=150)
    args = ap.parse_args()
    if DATA is None:
        sys.exit("../shared/datasets/golub_leukemia is absent")
    torch.set_num_threads(1)  # 2 threads on 2 shared, busy cores spin and wait on each other: far slower
    t_all = time.perf_counter()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="golub-"))
    for seed in range(args.seeds):
        r = {"seed": seed, "logreg": logreg(seed)}
        for rows_kind in ("train", "all"):
            t0 = time.perf_counter()
            s = pretrain(DATA, tmp / f"enc{seed}{rows_kind}", epochs=args.pretrain_epochs, seed=seed,
                         label_column="label", id_columns="patient", rows=rows_kind, progress=False,
                         echo=quiet, overwrite=True, **ARCH)
            key = "pretrained" if rows_kind == "train" else "pretrained_transductive"
            r[f"{key}_masked_mse"] = s["masked_mse"]
            r[f"{key}_pretrain_seconds"] = time.perf_counter() - t0
            r[key], r[f"{key}_best_epoch_acc"], _ = fine_tune(str(tmp / f"enc{seed}{rows_kind}"), tmp / f"fit{seed}{rows_kind}", seed)
        spec = f"tabular:mlp-7129-{ARCH['width']}x{ARCH['depth']}"
        r["random_init"], r["random_init_best_epoch_acc"], _ = fine_tune(spec, tmp / f"rand{seed}", seed)
        rows.append(r)
        print(json.dumps(r), flush=True)
    keys = ("pretrained", "random_init", "logreg", "pretrained_transductive")
    summary = {k: {"mean": statistics.mean(r[k] for r in rows), "std": statistics.pstdev(r[k] for r in rows),
                   "min": min(r[k] for r in rows), "max": max(r[k] for r in rows)} for k in keys}
    res = {"command": "PYTHONPATH=. python bench/golub_pretrain.py " + " ".join(sys.argv[1:]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads (shared), torch {torch.__version__}",
           "data": "golub_leukemia expression.csv: train 38 rows, independent 34 rows (test), 7129 features",
           "setup": {"encoder": f"tabular:mlp-7129-{ARCH['width']}x{ARCH['depth']} (Linear-LayerNorm-GELU-Dropout 0.1)",
                     "pretrain": f"masked reconstruction, mask 0.3, {args.pretrain_epochs} epochs, lr 1e-3, "
                                 "on the 38 training rows ('pretrained') or all 72 rows' features without labels "
                                 "('pretrained_transductive')",
                     "fine_tune": FIT, "logreg": "sklearn LogisticRegression (C=1) on features standardised "
                                                 "with training-row mean/std",
                     "figure": "accuracy on the 34 independent rows at the last epoch"},
           "summary": summary, "runs": rows, "total_seconds": time.perf_counter() - t_all}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "golub_pretrain.json").write_text(json.dumps(res, indent=1))
    for k in keys:
        v = summary[k]
        print(f"{k:26} {v['mean']:.3f} ± {v['std']:.3f}  (min {v['min']:.3f}, max {v['max']:.3f})")


if __name__ == "__main__":
    main()
