"""Transfer vs training from scratch as the training data shrinks.

For each fraction of the training split (stratified per class, seeded, and nested: a
smaller fraction is a subset of every larger one) two arms train and are scored on the
SAME full val split: (a) the pretrained backbone with the default strategy (``rehead fit``
with ``strategy=auto``), (b) a small CNN from scratch with augmentation and dropout
(``scratch.ScratchCNN``). The finding: how many samples the scratch CNN needs to match
transfer at the reference fraction (default 10%), or that it never does on this data.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import DEFAULT_MODEL
from . import check_options, noise_margin, start_run, write_results


def parse_fractions(fractions) -> list[float]:
    if isinstance(fractions, str):
        fractions = [f for f in fractions.split(",") if f.strip()]
    try:
        out = sorted({float(f) for f in fractions})
    except ValueError as e:
        raise ValueError(f"fractions must be numbers in (0, 1], e.g. 0.05,0.1,0.25,0.5,1.0 ({e})") from e
    if not out or any(not 0 < f <= 1 for f in out):
        raise ValueError(f"fractions must be numbers in (0, 1], got {fractions}")
    return out


def stratified_fraction(labels: list[int], fraction: float, seed: int) -> list[int]:
    """Indices of ``fraction`` of each class (at least one per class). One permutation per class,
    so the subsets for growing fractions are nested."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    idx = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        idx += members[:max(1, int(round(fraction * len(members))))].tolist()
    return sorted(idx)


def compare(data, model: str = DEFAULT_MODEL, fractions="0.05,0.1,0.25,0.5,1.0",
            out="runs/compare", strategy: str = "auto", reference: float = 0.1, scratch_size: int = 128,
            scratch_epochs: int = 15, scratch_min_steps: int = 30, scratch_lr: float = 1e-3,
            transfer_epochs: int | None = None, batch_size: int = 32, workers: int = 2, seed: int = 0,
            val_fraction: float = 0.2, cache_dir: str | None = None, overwrite: bool = False,
            progress: bool = True, echo=print) -> dict:
    from ..data import Dataset, load_dataset
    from ..fit import fit
    from .scratch import decode_all, train_scratch
    from ..recipes import STRATEGIES
    check_options(batch_size=batch_size, workers=workers, val_fraction=val_fraction)
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)} (the transfer arm's), got {strategy!r}")
    if not 0 < reference <= 1:
        raise ValueError(f"--reference must be a fraction in (0, 1], got {reference}")
    t_start = time.perf_counter()
    fracs = parse_fractions(fractions)
    ds = data if isinstance(data, Dataset) else load_dataset(data, val_fraction=val_fraction, seed=seed)
    ds.say_warnings(echo)
    if ds.modality != "image":
        raise ValueError(f"compare trains a small CNN from scratch, which needs image data; {ds.source} is {ds.modality}")
    args = {"data": ds.source, "model": model, "fractions": fracs, "strategy": strategy, "reference": reference,
            "scratch_size": scratch_size, "scratch_epochs": scratch_epochs, "scratch_min_steps": scratch_min_steps,
            "scratch_lr": scratch_lr, "transfer_epochs": transfer_epochs, "seed": seed, "val_fraction": val_fraction}
    out = start_run(out, "compare", {"model": model, "fractions": fracs,
                                     "scratch": "4 conv blocks (32-64-128-128) + dropout 0.5 + dense 512, "
                                                f"{scratch_size}px, classic augmentation",
                                     "data_summary": ds.summary(), "args": args}, overwrite=overwrite)
    out.write_json("labels.json", ds.classes)
    echo(f"decoding {len(ds.train) + len(ds.val)} images once at {scratch_size}px for the scratch CNN")
    x_tr, kept_tr = decode_all(ds.train.items, scratch_size)
    x_va, kept_va = decode_all(ds.val.items, scratch_size)
    y_tr = torch.tensor([ds.train.labels[i] for i in kept_tr])
    y_va = torch.tensor([ds.val.labels[i] for i in kept_va])
    rows = []
    for f in fracs:
        idx = stratified_fraction(ds.train.labels, f, seed)
        sub = Dataset(ds.modality, ds.classes, ds.train.subset(idx), ds.val, ds.source,
                      info={"fraction": f})
        n = len(idx)
        # (a) transfer: the ordinary fit pipeline (features cached once, shared by every fraction)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            run = fit(sub, model=model, out=Path(tmp) / "run", strategy=strategy, epochs=transfer_epochs,
                      batch_size=batch_size, workers=workers, seed=seed, cache_dir=cache_dir, progress=False,
                      echo=lambda *_: None)
            summary = run.summary
            arm = out.subdir(f"arms/transfer-{f:g}")
            for name in ("metrics.csv", "summary.json", "config.yaml"):
                arm.write_bytes(name, (run.dir / name).read_bytes())
        rows.append({"fraction": f, "n_train": n, "arm": "transfer", "val_acc": summary["val_acc"],
                     "val_loss": summary["val_loss"], "strategy": summary["strategy"],
                     "seconds": time.perf_counter() - t0})
        # (b) scratch: same samples (those that decoded), same val split
        t0 = time.perf_counter()
        pos = {i: j for j, i in enumerate(kept_tr)}
        sel = torch.tensor([pos[i] for i in idx if i in pos])
        res = train_scratch(x_tr[sel], y_tr[sel], x_va, y_va, len(ds.classes), size=scratch_size,
                            epochs=scratch_epochs, min_steps=scratch_min_steps, lr=scratch_lr, seed=seed,
                            progress=progress)
        out.subdir(f"arms/scratch-{f:g}").write_rows("metrics.csv", res["history"])
        rows.append({"fraction": f, "n_train": len(sel), "arm": "scratch", "val_acc": res["val_acc"],
                     "val_loss": res["val_loss"], "epochs": res["epochs"], "seconds": time.perf_counter() - t0})
        echo(f"fraction {f:g} ({n} samples): transfer {rows[-2]['val_acc']:.4f} ({rows[-2]['seconds']:.0f}s), "
             f"scratch {res['val_acc']:.4f} ({rows[-1]['seconds']:.0f}s, {res['epochs']} epochs)")
    finding = scratch_needs(rows, reference, n_val=len(y_va))
    result = {"finding": finding, "n_val": len(y_va), "total_seconds": time.perf_counter() - t_start,
              "scratch_params": res["params"]}
    write_results(out, rows, result)
    from ..report.plots import plot_compare
    plot_compare(rows, out / "compare.png", reference=finding["reference"],
                 title=f"{model} vs scratch CNN on {Path(str(ds.source)).name}")
    echo(finding["text"])
    return {"rows": rows, **result, "dir": str(out.path)}


def scratch_needs(rows: list[dict], reference: float, n_val: int | None = None) -> dict:
    """Fewest training samples at which the scratch CNN reaches transfer's accuracy at ``reference``;
    with ``n_val``, a "never" whose gap val cannot tell from noise says so."""
    tr = [r for r in rows if r["arm"] == "transfer"]
    ref = min(tr, key=lambda r: (abs(r["fraction"] - reference), r["fraction"]))
    ref = {"fraction": ref["fraction"], "n_train": ref["n_train"], "val_acc": ref["val_acc"]}
    hits = sorted((r["n_train"], r["val_acc"]) for r in rows if r["arm"] == "scratch" and r["val_acc"] >= ref["val_acc"])
    best_scratch = max((r for r in rows if r["arm"] == "scratch"), key=lambda r: r["val_acc"])
    if hits:
        n = hits[0][0]
        text = (f"the scratch CNN needs {n} training samples to match transfer at {ref['fraction']:g} "
                f"({ref['n_train']} samples, val acc {ref['val_acc']:.4f}): {n / ref['n_train']:.1f}x the data")
    else:
        n = None
        text = (f"the scratch CNN never matches transfer at {ref['fraction']:g} ({ref['n_train']} samples, "
                f"val acc {ref['val_acc']:.4f}) with up to {max(r['n_train'] for r in rows)} samples: its best is "
                f"{best_scratch['val_acc']:.4f} with {best_scratch['n_train']}")
        gap = ref["val_acc"] - best_scratch["val_acc"]
        if n_val and gap < noise_margin(ref["val_acc"], n_val):
            text += (f"; but the gap ({gap:.4f}) is within two standard errors on {n_val} val samples: "
                     "this val split cannot tell them apart")
    if abs(ref["fraction"] - reference) > 1e-9:  # --reference is not one of --fractions: say which one served
        text += f" (--reference {reference:g} is not among the fractions: the nearest, {ref['fraction']:g}, was used)"
    return {"reference": ref, "scratch_samples_needed": n, "text": text}
