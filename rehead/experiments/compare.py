"""Transfer vs training from scratch as the training data shrinks.

For each fraction of the training split (stratified per class, seeded, and nested: a
smaller fraction is a subset of every larger one) two arms train and are scored on the
SAME full val split (and test split, when the data has one), each keeping its LAST epoch: (a) the pretrained backbone with the default strategy (``rehead fit``
with ``strategy=auto``), (b) a small CNN from scratch with augmentation and dropout
(``scratch.ScratchCNN``). The finding: how many samples the scratch CNN needs to match
transfer at the reference fraction (default 10%), or that it never does on this data; on
test accuracy when there is a test split (nothing chose on it), else on val accuracy.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import DEFAULT_MODEL, ConfigError, check_seed
from . import check_options, noise_margin, started_run, write_results


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


def check_transfer(strategy: str, reference: float, transfer_epochs: int | None, seed: int) -> None:
    """compare's own options, before data is read or a file written (``fit`` would refuse a bad
    --transfer-epochs as its --epochs, after the images were decoded and the run directory made)."""
    from ..recipes import STRATEGIES
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)} (the transfer arm's), got {strategy!r}")
    if not 0 < reference <= 1:
        raise ConfigError(f"--reference must be a fraction in (0, 1], got {reference}")
    if transfer_epochs is not None and transfer_epochs < 1:
        raise ConfigError(f"--transfer-epochs must be at least 1 (leave it out for the strategy's default), "
                          f"got {transfer_epochs}")
    check_seed(seed)  # a negative one failed in the first fraction's subset


def compare(data, model: str = DEFAULT_MODEL, fractions="0.05,0.1,0.25,0.5,1.0",
            out="runs/compare", strategy: str = "auto", reference: float = 0.1, scratch_size: int = 128,
            scratch_epochs: int = 15, scratch_min_steps: int = 30, scratch_lr: float = 1e-3,
            transfer_epochs: int | None = None, batch_size: int = 32, workers: int = 2, seed: int = 0,
            val_fraction: float = 0.2, cache_dir: str | None = None, overwrite: bool = False,
            progress: bool = True, echo=print) -> dict:
    from ..data import Dataset, load_dataset
    from ..fit import fit
    from .scratch import check_options as check_scratch, scratch_epochs as epochs_for, train_scratch
    check_options(batch_size=batch_size, workers=workers, val_fraction=val_fraction)
    check_scratch(scratch_size, scratch_epochs, scratch_min_steps, scratch_lr)
    check_transfer(strategy, reference, transfer_epochs, seed)
    t_start = time.perf_counter()
    fracs = parse_fractions(fractions)
    ds = data if isinstance(data, Dataset) else load_dataset(data, val_fraction=val_fraction, seed=seed)
    ds.say_warnings(echo)
    if ds.modality != "image":
        raise ValueError(f"compare trains a small CNN from scratch, which needs image data; {ds.source} is {ds.modality}")
    args = {"data": ds.source, "model": model, "fractions": fracs, "strategy": strategy, "reference": reference,
            "scratch_size": scratch_size, "scratch_epochs": scratch_epochs, "scratch_min_steps": scratch_min_steps,
            "scratch_lr": scratch_lr, "transfer_epochs": transfer_epochs, "seed": seed, "val_fraction": val_fraction}
    with started_run(out, "compare", {"model": model, "fractions": fracs,
                                      "scratch": "4 conv blocks (32-64-128-128) + dropout 0.5 + dense 512, "
                                                 f"{scratch_size}px, classic augmentation",
                                      "data_summary": ds.summary(), "args": args}, overwrite=overwrite) as out:
        out.write_json("labels.json", ds.classes)
        test = ds.test if ds.test is not None and len(ds.test) else None
        n_images = len(ds.train) + len(ds.val) + (len(test) if test is not None else 0)
        echo(f"decoding {n_images} images once at {scratch_size}px for the scratch CNN")
        x_tr, y_tr, kept_tr = _decoded(ds.train, scratch_size)
        x_va, y_va, _ = _decoded(ds.val, scratch_size)
        x_te, y_te, _ = _decoded(test, scratch_size) if test is not None else (None, None, [])
        rows = []
        for f in fracs:
            idx = stratified_fraction(ds.train.labels, f, seed)
            sub = Dataset(ds.modality, ds.classes, ds.train.subset(idx), ds.val, ds.source,
                          info={"fraction": f}, test=test)
            n = len(idx)
            # (a) transfer: the ordinary fit pipeline (features cached once, shared by every fraction)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                run = fit(sub, model=model, out=Path(tmp) / "run", strategy=strategy, epochs=transfer_epochs,
                          batch_size=batch_size, workers=workers, seed=seed, cache_dir=cache_dir, progress=False,
                          keep_last=True, echo=lambda *_: None)  # the last epoch, as the scratch arm
                summary = run.summary
                arm = out.subdir(f"arms/transfer-{f:g}")
                for name in ("metrics.csv", "summary.json", "config.yaml"):
                    arm.write_bytes(name, (run.dir / name).read_bytes())
            rows.append({"fraction": f, "n_train": n, "arm": "transfer", "val_acc": summary["val_acc"],
                         "val_loss": summary["val_loss"], "test_acc": summary.get("test_acc"),
                         "strategy": summary["strategy"], "seconds": time.perf_counter() - t0})
            # (b) scratch: same samples (those that decoded), same val split
            t0 = time.perf_counter()
            pos = {i: j for j, i in enumerate(kept_tr)}
            sel = torch.tensor([pos[i] for i in idx if i in pos], dtype=torch.long)
            ep = epochs_for(len(sel), scratch_epochs, scratch_min_steps)
            if ep != scratch_epochs:  # the user's number is overridden: say so, and how to keep it
                echo(f"note: fraction {f:g}: the scratch CNN trains {ep} epochs, not --scratch-epochs "
                     f"{scratch_epochs}, to take at least --scratch-min-steps {scratch_min_steps} steps on {len(sel)} samples "
                     f"(--scratch-min-steps 0 keeps {scratch_epochs})")
            res = train_scratch(x_tr[sel], y_tr[sel], x_va, y_va, len(ds.classes), size=scratch_size,
                                epochs=scratch_epochs, min_steps=scratch_min_steps, lr=scratch_lr, seed=seed,
                                progress=progress, x_test=x_te, y_test=y_te)
            out.subdir(f"arms/scratch-{f:g}").write_rows("metrics.csv", res["history"])
            rows.append({"fraction": f, "n_train": len(sel), "arm": "scratch", "val_acc": res["val_acc"],
                         "val_loss": res["val_loss"], "test_acc": res.get("test_acc"), "epochs": res["epochs"],
                         "epochs_asked": scratch_epochs, "seconds": time.perf_counter() - t0})
            echo(f"fraction {f:g} ({n} samples): {_said(rows[-2])} ({rows[-2]['seconds']:.0f}s), "
                 f"{_said(rows[-1])} ({rows[-1]['seconds']:.0f}s, {res['epochs']} epochs)")
        metric = "test_acc" if test is not None and all(r["test_acc"] is not None for r in rows) else "val_acc"
        n_scored = len(y_te) if metric == "test_acc" else len(y_va)
        finding = scratch_needs(rows, reference, n_val=n_scored, metric=metric)
        result = {"finding": finding, "protocol": protocol(strategy, metric, n_scored), "n_val": len(y_va),
                  "n_test": len(y_te) if test is not None else 0, "total_seconds": time.perf_counter() - t_start,
                  "scratch_params": res["params"]}
        write_results(out, rows, result)
        from ..report.plots import plot_compare
        plot_compare(rows, out / "compare.png", reference=finding["reference"],
                     title=f"{model} vs scratch CNN on {Path(str(ds.source)).name}")
        echo(finding["text"])
        echo(result["protocol"])
        return {"rows": rows, **result, "dir": str(out.path)}


def _decoded(samples, size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(images, labels, kept indices) of a split decoded once for the scratch CNN (unreadable ones skipped)."""
    from .scratch import decode_all
    x, kept = decode_all(samples.items, size)
    return x, torch.tensor([samples.labels[i] for i in kept], dtype=torch.long), kept


def _said(row: dict) -> str:
    test = f", test {row['test_acc']:.4f}" if row.get("test_acc") is not None else ""
    return f"{row['arm']} val {row['val_acc']:.4f}{test}"


def protocol(strategy: str, metric: str, n: int) -> str:
    """What each number in results.json is: the same rule for both arms."""
    text = ("protocol: both arms keep their LAST epoch (neither picks an epoch on val); val_acc is that model on "
            "val" + (", test_acc on the test split, scored once" if metric == "test_acc" else "")
            + f"; the finding compares {metric.replace('_', ' ')} ({n} samples)")
    if strategy == "auto":
        text += "; --strategy auto chooses the transfer arm's plan on val" + (
            ", so only test_acc is free of selection" if metric == "test_acc" else
            ", so its val_acc is somewhat optimistic (a test/ split would give unbiased figures)")
    return text


def scratch_needs(rows: list[dict], reference: float, n_val: int | None = None, metric: str = "val_acc") -> dict:
    """Fewest training samples at which the scratch CNN reaches transfer's accuracy at ``reference``,
    on ``metric`` (val_acc or test_acc); with ``n_val`` (the samples that metric was measured on), a
    "never" whose gap that split cannot tell from noise says so."""
    split = metric.split("_")[0]
    tr = [r for r in rows if r["arm"] == "transfer"]
    ref = min(tr, key=lambda r: (abs(r["fraction"] - reference), r["fraction"]))
    ref = {"fraction": ref["fraction"], "n_train": ref["n_train"], "val_acc": ref["val_acc"], metric: ref[metric],
           "metric": metric}
    hits = sorted((r["n_train"], r[metric]) for r in rows if r["arm"] == "scratch" and r[metric] >= ref[metric])
    best_scratch = max((r for r in rows if r["arm"] == "scratch"), key=lambda r: r[metric])
    if hits:
        n = hits[0][0]
        text = (f"the scratch CNN needs {n} training samples to match transfer at {ref['fraction']:g} "
                f"({ref['n_train']} samples, {split} acc {ref[metric]:.4f}): {n / ref['n_train']:.1f}x the data")
    else:
        n = None
        text = (f"the scratch CNN never matches transfer at {ref['fraction']:g} ({ref['n_train']} samples, "
                f"{split} acc {ref[metric]:.4f}) with up to {max(r['n_train'] for r in rows)} samples: its best is "
                f"{best_scratch[metric]:.4f} with {best_scratch['n_train']}")
        gap = ref[metric] - best_scratch[metric]
        if n_val and gap < noise_margin(ref[metric], n_val):
            text += (f"; but the gap ({gap:.4f}) is within two standard errors on {n_val} {split} samples: "
                     f"this {split} split cannot tell them apart")
    if abs(ref["fraction"] - reference) > 1e-9:  # --reference is not one of --fractions: say which one served
        text += f" (--reference {reference:g} is not among the fractions: the nearest, {ref['fraction']:g}, was used)"
    return {"reference": ref, "scratch_samples_needed": n, "text": text}
