"""Linear head on cached features: rehead.train.linear_head.fit_linear_head vs scikit-learn's
LogisticRegressionCV vs rehead's current `extract` head (60 epochs AdamW, constant LR 3e-3,
early stopping on a val split carved from train).

    PYTHONPATH=.:bench python bench/linear_head.py [--cache /tmp/rehead-bench-cache] [--features-only]

Sets (features through rehead's own extraction, `rehead.features.extract` on the full backbone,
exactly what `rehead fit --strategy extract` trains on):
  financial_phrasebank_allagree, rt_polarity: packaged:minilm; train.csv fits, test.csv scores
  hymenoptera: packaged:efficientnet_lite0; train/ fits, val/ scores
plus a synthetic 10,000 x 1,280, 10-class set (timing; a held-out 5,000 scores).

Every solver sees only the training split; the held-out split is scored once at the end.
Standardisation (mean/std of the training split) is the same for the solver and for
LogisticRegressionCV (a StandardScaler fitted on train). Timings are on a shared 2-core machine
(load average recorded): they are indicative.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # every solver single-threaded: 2 shared cores, see the notes

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import machine, write  # noqa: E402

DATASETS = Path(os.environ.get("REHEAD_DATASETS", "/work/shared/datasets"))
SETS = {
    "financial_phrasebank_allagree": ("packaged:minilm", DATASETS / "financial_phrasebank_allagree"),
    "rt_polarity": ("packaged:minilm", DATASETS / "rt_polarity"),
    "hymenoptera": ("packaged:efficientnet_lite0", DATASETS / "hymenoptera_data"),
}
HALF_DECADES = np.logspace(-4, 4, 17)


def _legacy_read(root: Path, mkey: str, skeys: list[str]):
    """Rows from the per-sample layout the cache had before the sharded store (one .npy per
    sample), when every sample is there; None otherwise."""
    paths = [root / "features" / mkey / sk[:2] / f"{sk}.npy" for sk in skeys]
    if not all(p.exists() for p in paths):
        return None
    return np.stack([np.load(p) for p in paths])


def features(name: str, cache_dir: str, legacy_dir: str | None = None):
    """(x_train, y_train, x_test, y_test, classes) through rehead's extraction and cache
    (a copy kept as one .npz per set so reruns read it directly)."""
    npz = Path(os.environ.get("REHEAD_BENCH_NPZ", "/tmp/rehead-bench-npz")) / f"{name}.npz"
    if npz.exists():
        d = np.load(npz, allow_pickle=False)
        return d["xtr"], d["ytr"], d["xte"], d["yte"], list(d["classes"])
    import rehead
    from rehead.data import load_dataset, pipeline
    from rehead.features import FeatureCache, extract
    spec, path = SETS[name]
    if (path / "train.csv").exists():  # all of train.csv fits, test.csv scores (no val carved here)
        from rehead.data.text import read_csv
        (tt, tl, _), (vt, vl, _) = read_csv(path / "train.csv"), read_csv(path / "test.csv")
        classes = sorted(set(tl))
        splits = [(tt, [classes.index(v) for v in tl]), (vt, [classes.index(v) for v in vl])]
    else:  # images: train/ fits, val/ scores
        ds = load_dataset(path)
        classes = ds.classes
        splits = [(ds.train.items, ds.train.labels), (ds.val.items, ds.val.labels)]
    bb = rehead.load(spec)
    k = len(bb)
    cache = FeatureCache(cache_dir)
    pipe = pipeline(bb.modality)
    out = []
    for items, labels in splits:
        x = None if not legacy_dir else _legacy_read(Path(legacy_dir), cache.model_key(bb, k),
                                                     [pipe.sample_key(i, cache, bb) for i in items])
        if x is None:
            f, kept, skipped = extract(bb, items, [k], cache, batch_size=32, workers=0, progress=True, desc=name)
            assert not skipped, skipped
            x = f[k].numpy()
        out += [x.astype(np.float32), np.asarray(labels)]
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, xtr=out[0], ytr=out[1], xte=out[2], yte=out[3], classes=np.asarray(classes))
    return (*out, classes)


def synthetic(n: int, d: int = 1280, k: int = 10, latent: int = 64, seed: int = 0):
    """Pooled-CNN-like features: class means in a 64-d latent space, a random projection to d,
    noise, ReLU (non-negative, strongly correlated columns)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, latent)) * 0.6
    proj = rng.normal(size=(latent, d)) / np.sqrt(latent)
    y = rng.integers(0, k, n)
    h = means[y] + rng.normal(size=(n, latent))
    x = np.maximum(h @ proj + 0.5 * rng.normal(size=(n, d)), 0)
    return x.astype(np.float32), y


def acc(logits, y) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(y)).mean())


def run_ours(xtr, ytr, xte, yte, k, **kw):
    from rehead.train.linear_head import fit_linear_head
    t0 = time.perf_counter()
    lin, info = fit_linear_head(xtr, ytr, k, **kw)  # threads: the process setting (--threads)
    sec = time.perf_counter() - t0
    with torch.no_grad():
        a = acc(lin(torch.from_numpy(xte)).numpy(), yte)
    return {"test_acc": a, "seconds": sec, "C": info["C"], "folds": info["folds"],
            "cv": [{"C": r["C"], "log_loss": r["log_loss"], "accuracy": r["accuracy"]} for r in info["cv"]],
            "iterations": info["iterations"], "grad_norm": info["grad_norm"], "converged": info["converged"],
            "seconds_parts": {key: info.get(key) for key in ("rotate_seconds", "cv_seconds", "final_seconds")}}


def run_lrcv(xtr, ytr, xte, yte, **kw):
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = make_pipeline(StandardScaler(), LogisticRegressionCV(**kw)).fit(xtr, ytr)
    sec = time.perf_counter() - t0
    lr = clf[-1]
    return {"test_acc": float((clf.predict(xte) == yte).mean()), "seconds": sec, "C": float(np.ravel(lr.C_)[0]),
            "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught)}


def run_extract_head(xtr, ytr, xte, yte, k, seed=0, epochs=60, lr=3e-3, patience=15, weight_decay=0.01,
                     batch_size=32, val_fraction=0.2):
    """rehead's `extract` head as it trains today, reproduced on the same features: a val split
    carved from train (stratified 20 %, seed 0), nn.Linear, AdamW (lr 3e-3, weight decay 0.01 on
    the weight, not the bias), constant LR, batch 32 shuffled, up to 60 epochs, early stopping
    after 15 epochs without a better (val acc, -val loss), the best val epoch kept."""
    from rehead.data import stratified_split
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    tr, va = stratified_split(list(map(int, ytr)), val_fraction, seed)
    xt, yt = torch.from_numpy(xtr[tr]), torch.from_numpy(np.asarray(ytr)[tr]).long()
    xv, yv = torch.from_numpy(xtr[va]), torch.from_numpy(np.asarray(ytr)[va]).long()
    head = torch.nn.Linear(xtr.shape[1], k)
    opt = torch.optim.AdamW([{"params": [head.weight], "weight_decay": weight_decay},
                             {"params": [head.bias], "weight_decay": 0.0}], lr=lr)
    lossf = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    best, best_state, bad, ep = None, None, 0, 0
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            j = perm[i:i + batch_size]
            opt.zero_grad()
            lossf(head(xt[j]), yt[j]).backward()
            opt.step()
        with torch.no_grad():
            lv = head(xv)
            key = (float((lv.argmax(1) == yv).float().mean()), -float(lossf(lv, yv)))
        if best is None or key > best:
            best, bad = key, 0
            best_state = {n: t.clone() for n, t in head.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    head.load_state_dict(best_state)
    sec = time.perf_counter() - t0
    with torch.no_grad():
        a = acc(head(torch.from_numpy(xte)).numpy(), yte)
    return {"test_acc": a, "seconds": sec, "val_acc": best[0], "epochs_run": ep + 1,
            "fit_rows": len(tr), "val_rows": len(va)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp/rehead-bench-cache2")
    ap.add_argument("--legacy-cache", default="/tmp/rehead-bench-cache",
                    help="a cache in the per-sample layout rehead used before its sharded store, read if complete")
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--synthetic-n", type=int, default=10000)
    ap.add_argument("--synthetic-lrcv", action="store_true", help="also time LogisticRegressionCV on the synthetic set")
    ap.add_argument("--merge", action="store_true", help="keep the figures already in the results file, update these")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for every solver compared")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from threadpoolctl import threadpool_limits
    threadpool_limits(a.threads)  # scikit-learn's BLAS: the same thread count as ours
    started = machine()
    # Imports and first-call costs outside every timing: rehead, scikit-learn, torch's kernels.
    import sklearn.linear_model  # noqa: F401
    from rehead.train.linear_head import fit_linear_head
    fit_linear_head(*synthetic(200, d=16, k=3), 3)
    if a.features_only:
        for name in a.sets.split(","):
            t0 = time.perf_counter()
            xtr, ytr, xte, yte, classes = features(name, a.cache, a.legacy_cache)
            print(name, xtr.shape, xte.shape, len(classes), f"{time.perf_counter() - t0:.1f}s", flush=True)
        return
    figures = {}
    out = Path(__file__).resolve().parent / "results" / "linear_head.json"
    if a.merge and out.exists():
        import json
        figures = json.loads(out.read_text())["figures"]
    lrcv_matched = dict(Cs=HALF_DECADES, cv=None, scoring="neg_log_loss", max_iter=1000)
    for name in [s for s in a.sets.split(",") if s]:
        xtr, ytr, xte, yte, classes = features(name, a.cache, a.legacy_cache)
        k = len(classes)
        from sklearn.model_selection import StratifiedKFold
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        row = {"n_train": len(ytr), "n_test": len(yte), "dim": int(xtr.shape[1]), "classes": k,
               "loadavg_before": list(os.getloadavg())}
        row["rehead_linear_head"] = run_ours(xtr, ytr, xte, yte, k)
        row["rehead_linear_head_accuracy_scoring"] = run_ours(xtr, ytr, xte, yte, k, scoring="accuracy")
        row["rehead_linear_head_scaling_auto"] = run_ours(xtr, ytr, xte, yte, k, scaling="auto")  # what fit runs
        row["sklearn_LogisticRegressionCV_matched"] = run_lrcv(xtr, ytr, xte, yte, **{**lrcv_matched, "cv": cv})
        row["sklearn_LogisticRegressionCV_default"] = run_lrcv(xtr, ytr, xte, yte, max_iter=1000)
        row["rehead_extract_head_today"] = run_extract_head(xtr, ytr, xte, yte, k)
        row["loadavg_after"] = list(os.getloadavg())
        figures[name] = row
        print(name, {m: (round(v["test_acc"], 4), round(v["seconds"], 2)) for m, v in row.items()
                     if isinstance(v, dict)}, flush=True)
    if a.synthetic_n:
        x, y = synthetic(a.synthetic_n + 5000)
        xtr, ytr, xte, yte = x[:a.synthetic_n], y[:a.synthetic_n], x[a.synthetic_n:], y[a.synthetic_n:]
        row = {"n_train": len(ytr), "n_test": len(yte), "dim": int(x.shape[1]), "classes": 10,
               "threads": a.threads, "loadavg_before": list(os.getloadavg())}
        row["rehead_linear_head"] = run_ours(xtr, ytr, xte, yte, 10)
        row["rehead_linear_head_scaling_auto"] = run_ours(xtr, ytr, xte, yte, 10, scaling="auto")
        if a.synthetic_n > 10000:  # C cross-validated on a 10,000-row subset (the default) vs on every row
            row["rehead_linear_head_scaling_auto_cv_all_rows"] = run_ours(xtr, ytr, xte, yte, 10, scaling="auto",
                                                                           cv_rows=None)
        old = figures.get(f"synthetic_{a.synthetic_n}x1280_10cls", {})
        if "sklearn_LogisticRegressionCV_matched" in old and not a.synthetic_lrcv:
            row["sklearn_LogisticRegressionCV_matched"] = old["sklearn_LogisticRegressionCV_matched"]
        # One scikit-learn fit at the chosen C (lbfgs, the same standardisation): a lower bound on
        # LogisticRegressionCV's time, which makes folds x Cs such fits (warm-started along C).
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
        t0 = time.perf_counter()
        sc = StandardScaler().fit(xtr)
        one = LogisticRegression(C=row["rehead_linear_head"]["C"], max_iter=1000).fit(sc.transform(xtr), ytr)
        row["sklearn_LogisticRegression_one_fit_at_chosen_C"] = {
            "test_acc": float(one.score(sc.transform(xte), yte)), "seconds": time.perf_counter() - t0,
            "n_iter": int(np.ravel(one.n_iter_)[0])}
        if a.synthetic_lrcv:
            from sklearn.model_selection import StratifiedKFold
            row["sklearn_LogisticRegressionCV_matched"] = run_lrcv(
                xtr, ytr, xte, yte, **{**lrcv_matched, "cv": StratifiedKFold(5, shuffle=True, random_state=0)})
        row["loadavg_after"] = list(os.getloadavg())
        figures[f"synthetic_{a.synthetic_n}x1280_10cls"] = row
        print("synthetic", {m: (round(v["test_acc"], 4), round(v["seconds"], 2)) for m, v in row.items()
                            if isinstance(v, dict)}, flush=True)
    write("linear_head", figures, extra={
        "notes": ("test_acc: accuracy on the held-out split (test.csv; hymenoptera val/), never seen by any fit. "
                  "rehead_linear_head: fit_linear_head defaults (5-fold stratified CV on train, held-out log-loss, "
                  "decades 1e-4..1e4 then half-decade neighbours of the best). *_scaling_auto: the same with per-column and "
                  "global scaling both cross-validated and the better solved (what `rehead fit` runs). *_accuracy_scoring: the same, "
                  "CV by accuracy. sklearn_LogisticRegressionCV_matched: StandardScaler + LogisticRegressionCV("
                  "Cs=17 half decades 1e-4..1e4, the same 5 shuffled stratified folds, neg_log_loss, lbfgs, "
                  "max_iter=1000). *_default: StandardScaler + LogisticRegressionCV(max_iter=1000): Cs=10, "
                  "5 stratified folds, accuracy. rehead_extract_head_today: the extract strategy's head loop "
                  "reproduced on the same features (see run_extract_head). All single-threaded "
                  "(torch.set_num_threads(1), OMP/OpenBLAS/MKL_NUM_THREADS=1). Timings on a 2-core machine "
                  "shared with other sessions: load averages recorded per set; indicative, not quiet-machine "
                  "figures."),
        "features": "rehead.features.extract with rehead.load(spec), the full backbone (default cut), "
                    "as rehead fit --strategy extract trains on; MiniLM mean-pooled"}, started=started)


if __name__ == "__main__":
    main()
