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


def linear_probe(x_train, y_train, x_val, y_val, C: float | None = None, seed: int = 0) -> tuple[dict, object]:
    """The linear head `rehead fit --strategy extract` solves on the same features
    (``fit_linear_head``: softmax + L2 to its optimum, C by 5-fold CV on train unless given, per-column
    or one global scale by CV), so the figures a probe prints are the ones its suggested fit gets. A
    fixed C=1 scikit-learn probe scored test 0.950 where the fit at the same cut scored 0.975.

    No epochs or LR to tune (depths and backbones are compared on equal terms), and deterministic.
    Returns (the row's figures, the solved head: what ``probe_accuracy`` scores a test split with)."""
    import torch
    from sklearn.metrics import log_loss
    from ..train.linear_head import fit_linear_head
    t0 = time.perf_counter()
    xtr, xva = np.asarray(x_train, dtype=np.float32), np.asarray(x_val, dtype=np.float32)
    ytr, yva = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    k = int(max(ytr.max(), yva.max(initial=0))) + 1
    head, info = fit_linear_head(xtr, ytr, k, C=C, seed=seed, scaling="auto")
    with torch.no_grad():
        p = {name: torch.softmax(head(torch.from_numpy(x)).double(), 1).numpy() for name, x in (("tr", xtr), ("va", xva))}
    labels = np.arange(k)
    return {"train_acc": float((p["tr"].argmax(1) == ytr).mean()),
            "val_acc": float((p["va"].argmax(1) == yva).mean()) if len(yva) else 0.0,
            "val_loss": float(log_loss(yva, p["va"], labels=labels)) if len(set(yva.tolist())) > 1 else float("nan"),
            "C": info["C"], "scaling": info["scaling"], "fit_seconds": time.perf_counter() - t0}, head


def probe_accuracy(head, x, y) -> float:
    """The accuracy of a probe's solved head on other rows (a test split): no second solve."""
    import torch
    with torch.no_grad():
        pred = head(torch.from_numpy(np.asarray(x, dtype=np.float32))).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean()) if len(pred) else 0.0


def noise_margin(acc: float, n: int) -> float:
    """Two binomial standard errors of an accuracy measured on ``n`` samples (at least one sample's
    worth): accuracies closer than this are not told apart by that split."""
    return 2 * max((acc * (1 - acc) / n) ** 0.5, 1 / n)


def fit_command(data, model: str, cut: int, seed: int = 0, val_fraction: float | None = None,
                data_kw: dict | None = None) -> str:
    """The ``rehead fit`` that trains the head a probe scored: ``--strategy extract`` (fit's default,
    auto, may train stages) on the same split (``--seed``, ``--val-fraction``) and columns. Options at
    fit's defaults are left out: a command that dropped them got another split (val 0.8333 vs 0.7889)."""
    import dataclasses
    import shlex
    from ..config import FitConfig
    default = {f.name: f.default for f in dataclasses.fields(FitConfig)}
    given = {"seed": seed, "val_fraction": val_fraction, **(data_kw or {})}
    opts = [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in given.items()
            if k in default and v is not None and v != default[k]]
    return " ".join([f"rehead fit {shlex.quote(str(data))} --model {shlex.quote(str(model))} --cut {cut}",
                     "--strategy extract", *opts])


def fixed_C_note(C: float | None) -> str | None:
    """`rehead fit` has no --C: its linear head's C is always cross-validated, so a probe at a fixed C is
    not the head its suggested fit solves; said rather than hidden."""
    if C is None:
        return None
    return (f"note: rehead fit has no --C (its head's C is cross-validated on train): the suggested fit solves its "
            f"head at its own C, so its figures may differ from these at --C {C:g}; probe without --C to see the fit's")


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
