"""Experiments that answer "how much of the head to cut off, and from which network?".

``probe``    a linear head at every cut depth, on features cached from one forward pass
``rank``     score candidate backbones with LogME, checked by a linear probe each
``compare``  transfer vs a small CNN trained from scratch, as the training data shrinks

Each writes a run directory (``config.yaml`` with ``kind``, ``results.json``,
``results.csv``, PNG plots) that ``rehead report`` turns into ``report.html``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from ..rundir import RunDir


def check_options(C: float | None = None, batch_size: int | None = None, workers: int | None = None,
                  val_fraction: float | None = None) -> None:
    """Options the experiments share, refused before any data is read or any file written (a bad
    --C surfaced as scikit-learn's error after the whole extraction, leaving a run directory)."""
    if C is not None and not C > 0:
        raise ValueError(f"--C must be > 0 (the probes' inverse L2 strength), got {C}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")


@contextmanager
def started_run(out, kind: str, config: dict, overwrite: bool = False, writer: bool = True):
    """A fresh, claimed run directory with ``config.yaml`` (``kind`` first, so every reader can dispatch),
    kept only if the block finishes (``RunDir.kept_if_finished``). An experiment has no --resume: one
    stopped part way left its half directory, config.yaml included, and the same command's rerun was
    refused as "already exists". ``writer=False`` (the other processes of a launched command): nothing is claimed or
    written, nor removed."""
    from ..zoo.paths import spec_path
    models = config.get("models") or [config.get("model")]
    inputs = [(config.get("args") or {}).get("data")] + [spec_path(m) for m in models]  # never emptied by --overwrite
    run = RunDir.create(out, overwrite=overwrite, writer=writer, inputs=inputs)
    with run.kept_if_finished():
        run.write_yaml("config.yaml", {"kind": kind, **config})
        yield run


def write_results(run: RunDir, rows: list[dict], extra: dict | None = None) -> None:
    """``results.csv`` (one row per experiment) and ``results.json`` (the rows plus findings)."""
    run.write_rows("results.csv", rows)
    run.write_json("results.json", {"rows": rows, **(extra or {})})


def linear_probe(x_train, y_train, x_val, y_val, C: float = 1.0, seed: int = 0) -> dict:
    """Multinomial logistic regression (L2, lbfgs) on standardised features.

    Chosen over the gradient-descent Trainer for probes: it converges to the optimum of
    a convex problem in well under a second for thousands of samples, has no epochs or
    LR to tune (so depths and backbones are compared on equal terms), and is deterministic.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    t0 = time.perf_counter()
    xtr, xva = np.asarray(x_train, dtype=np.float64), np.asarray(x_val, dtype=np.float64)
    ytr, yva = np.asarray(y_train), np.asarray(y_val)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    clf.fit(xtr, ytr)
    p = clf.predict_proba(xva)
    labels = clf.classes_
    pred = labels[p.argmax(1)]
    return {"train_acc": float((clf.predict(xtr) == ytr).mean()),
            "val_acc": float((pred == yva).mean()) if len(yva) else 0.0,
            "val_loss": float(log_loss(yva, p, labels=labels)) if len(set(yva.tolist())) > 1 else float("nan"),
            "fit_seconds": time.perf_counter() - t0}


def noise_margin(acc: float, n: int) -> float:
    """Two binomial standard errors of an accuracy measured on ``n`` samples (at least one sample's
    worth): accuracies closer than this are not told apart by that split."""
    return 2 * max((acc * (1 - acc) / n) ** 0.5, 1 / n)


def quiet(*_a, **_k):
    """The echo of every process but the first under ``accelerate launch``: one process reports."""


def split_features(backbone, ds, cuts: list[int], cache, batch_size: int, workers: int, strict: bool,
                   progress: bool, echo=print) -> tuple[dict, dict, dict]:
    """Features of both splits at every cut: ({split: {cut: X}}, {split: y}, info).

    One ``extract`` call over train + val together: one data loader, one forward pass per sample."""
    from ..features import extract
    t0 = time.perf_counter()
    n_train = len(ds.train)
    items, labels = ds.train.items + ds.val.items, ds.train.labels + ds.val.labels
    f, kept, skipped = extract(backbone, items, cuts, cache, batch_size=batch_size, workers=workers, strict=strict,
                               progress=progress, desc="extract")
    kept = np.asarray(kept, dtype=np.int64)
    is_train = kept < n_train
    feats = {split: {k: v.numpy()[mask] for k, v in f.items()}
             for split, mask in (("train", is_train), ("val", ~is_train))}
    y = np.asarray(labels)[kept] if len(kept) else np.zeros(0, dtype=np.int64)
    ys = {"train": y[is_train], "val": y[~is_train]}
    if skipped:
        echo(f"skipped {len(skipped)} unreadable item(s): " + ", ".join(skipped[:5]))
    return feats, ys, {"extract_seconds": time.perf_counter() - t0, "skipped": skipped,
                       "items": {"train": [items[i] for i in kept[is_train]], "val": [items[i] for i in kept[~is_train]]}}
