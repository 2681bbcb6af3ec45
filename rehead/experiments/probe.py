"""Cut-depth sweep (Yosinski et al. 2014): how transferable is each depth of a backbone?

Features after every chosen cut come from ONE forward pass per sample (``Backbone.forward_cuts``)
and are cached; a linear probe is then fit per depth. The best depth is named with the
``rehead fit --cut N`` command that uses it.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from ..fit import check_modality, default_model
from . import (check_options, fit_command, fixed_C_note, linear_probe, noise_margin, probe_accuracy, quiet,
               split_features, started_run, write_results)


def parse_cuts(cuts, backbone) -> list[int]:
    """``all``, a list like ``1,3,5`` or stage names, or ranges like ``3-9``; as stage counts."""
    if cuts in (None, "all"):
        return list(range(1, len(backbone) + 1))
    parts = cuts.split(",") if isinstance(cuts, str) else list(cuts)
    out = []
    for p in parts:
        p = str(p).strip()
        m = re.fullmatch(r"(\w+)-(\w+)", p)
        if m:
            a, b = m.groups()
            out += range(backbone.stage_index(a), backbone.stage_index(b) + 1)
        elif p:
            out.append(backbone.stage_index(p))
    if not out:
        raise ValueError(f"no cuts in {cuts!r}: give 'all', indices like 3,5,9, a range like 3-9, or stage names")
    return sorted(set(out))


def probe(data, model: str | None = None, cuts="all", out="runs/probe", C: float | None = None,
          batch_size: int = 32, workers: int = 2, seed: int = 0, val_fraction: float = 0.2,
          cache_dir: str | None = None, use_cache: bool = True, strict: bool = False,
          overwrite: bool = False, progress: bool = True, data_kw: dict | None = None, echo=print) -> dict:
    """Train a linear head at each cut depth; returns ``results.json``'s content. Under ``accelerate
    launch`` the processes share the extraction; the first reports and writes, the others return None."""
    from .. import zoo
    from ..distributed import state
    from ..data import Dataset, load_dataset
    from ..features import FeatureCache
    check_options(C=C, batch_size=batch_size, workers=workers, val_fraction=val_fraction)
    t_start = time.perf_counter()
    main = state().is_main_process
    echo = echo if main else quiet
    cache = FeatureCache(cache_dir) if use_cache else None  # opens nothing until used
    ds = data if isinstance(data, Dataset) else load_dataset(data, val_fraction=val_fraction, seed=seed,
                                                             memo=cache, **(data_kw or {}))
    ds.say_warnings(echo)
    model = model or default_model(ds)
    backbone = zoo.load(model)
    check_modality(backbone, ds, model)  # else extraction reads each sentence as an image path
    ks = parse_cuts(cuts, backbone)
    args = {"data": ds.source, "model": model, "cuts": cuts if isinstance(cuts, str) else list(cuts), "C": C,
            "seed": seed, "val_fraction": val_fraction, "batch_size": batch_size, "data_kw": data_kw}
    with started_run(out, "probe", {"model": model, "cuts": ks, "stage_names": backbone.stage_names,
                                    "head": "the linear head fit solves (softmax + L2; C and scaling by CV on train unless --C)",
                                    "data_config": backbone.data_config, "data_summary": ds.summary(),
                                    "args": args}, overwrite=overwrite, writer=main) as out:
        out.write_json("labels.json", ds.classes)
        feats, ys, info = split_features(backbone, ds, ks, cache, batch_size, workers, strict, progress, echo)
        test = features_of_test(backbone, ds, ks, cache, batch_size, workers, strict, progress, echo)
        if not main:
            return None
        t_probe = time.perf_counter()
        rows, heads = [], {}
        for k in ks:
            r, heads[k] = linear_probe(feats["train"][k], ys["train"], feats["val"][k], ys["val"], C=C, seed=seed)
            x = np.asarray(feats["train"][k])
            same = bool((x == x[:1]).all())  # one point for every sample: its score is the commonest class's
            rows.append({"cut": k, "stage": backbone.stage_names[k - 1], "dim": int(x.shape[1]), **r,
                         **({"constant": True} if same else {})})
            echo(f"cut {k:>2} {rows[-1]['stage']:12} dim {rows[-1]['dim']:>5}  val acc {r['val_acc']:.4f}"
                 + ("  (features the same for every sample: the commonest class, not a reading)" if same else ""))
        inp = _input_probe(backbone, info["items"], ys, C, seed, cache)
        echo(f"input    {'':12} dim {inp['dim']:>5}  val acc {inp['val_acc']:.4f}  (the input itself, {inp['what']}: "
             "what a linear model reads without the backbone)")
        probe_s = time.perf_counter() - t_probe
        # Best: highest val accuracy, then lowest val loss, then the shallower (cheaper) cut.
        best = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"] if r["val_loss"] == r["val_loss"] else 0,
                                        -r["cut"]))
        source = ds.source
        near = near_best(rows, best, len(ys["val"]))
        scored = score_on_test(heads[best["cut"]], test, best["cut"], "the best cut's probe (chosen on val)")
        result = {"best": {"cut": best["cut"], "stage": best["stage"], "val_acc": best["val_acc"],
                           "test_acc": scored.get("test_acc"),
                           "fit_command": fit_command(source, model, best["cut"], seed, val_fraction, data_kw),
                           "fit_note": fixed_C_note(C), "within_noise": near},
                  "test": scored, "n_train": int(len(ys["train"])), "n_val": int(len(ys["val"])),
                  "input": inp, "extract_seconds": info["extract_seconds"], "probe_seconds": probe_s,
                  "total_seconds": time.perf_counter() - t_start, "skipped": info["skipped"]}
        write_results(out, rows, result)
        from ..report.plots import plot_probe
        plot_probe(rows, best["cut"], out / "probe.png", title=f"{model} on {Path(str(ds.source)).name}", input_row=inp)
        echo(f"best depth: cut {best['cut']} ({best['stage']}), val acc {best['val_acc']:.4f}  ->  "
             f"{result['best']['fit_command']}")
        if result["best"]["fit_note"]:
            echo(result["best"]["fit_note"])
        echo(scored["text"])
        if near:
            echo(f"note: cuts {', '.join(str(c) for c in near)} score within two standard errors of it (val has "
                 f"{len(ys['val'])} samples; one is {1 / len(ys['val']):.4f} of accuracy): on this val split the "
                 "choice between them is noise; a larger --val-fraction or more data would tell them apart")
        said = input_note(inp, best, len(ys["val"]))
        if said:
            echo(said)
        return {"rows": rows, **result, "dir": str(out.path)}


def near_best(rows: list[dict], best: dict, n_val: int) -> list[int]:
    """The other cuts whose val accuracy is within two standard errors of the best's: val cannot tell them apart."""
    margin = noise_margin(best["val_acc"], n_val)
    return [r["cut"] for r in rows if r["cut"] != best["cut"] and r["val_acc"] >= best["val_acc"] - margin]


def input_note(inp: dict, best: dict, n_val: int) -> str | None:
    """The input itself against the best cut, by the rule the cuts are compared by (two standard errors
    of val): better, a tie within noise, or None (the best cut reads the data better). TF-IDF at 0.875 was
    called better than a cut at 0.850 on 40 val samples: one sample apart."""
    n = inp.get("n_val") or n_val  # the input's probe may read a subset of val
    gap, margin = inp["val_acc"] - best["val_acc"], noise_margin(max(inp["val_acc"], best["val_acc"]), n)
    what = f"the input itself ({inp['what']}, val acc {inp['val_acc']:.4f})"
    if gap > margin:
        return (f"note: {what} reads this data better than the best cut ({best['val_acc']:.4f}) by more than two "
                f"standard errors on {n} val samples: the source adds nothing a model of the input would not")
    if gap >= -margin:
        return (f"note: {what} and the best cut ({best['val_acc']:.4f}) tie within noise (two standard errors on {n} "
                f"val samples: {margin:.4f}): this val split cannot tell whether the source adds anything over a "
                "model of the input; a larger --val-fraction or more data would")
    return None


def features_of_test(backbone, ds, cuts: list[int], cache, batch_size: int, workers: int, strict: bool,
                  progress: bool, echo=print) -> tuple[dict, np.ndarray] | None:
    """({cut: X}, y) of the test split, or None without one. Every process calls it under a launch
    (as ``split_features``): the extraction is shared."""
    if ds.test is None or not len(ds.test):
        return None
    from ..features import extract
    f, kept, skipped = extract(backbone, ds.test.items, cuts, cache, batch_size=batch_size, workers=workers,
                               strict=strict, progress=progress, desc="extract test")
    if skipped:
        echo(f"skipped {len(skipped)} unreadable test item(s): " + ", ".join(skipped[:5]))
    if not kept:
        return None
    return {k: v.numpy() for k, v in f.items()}, np.asarray(ds.test.labels)[np.asarray(kept, dtype=np.int64)]


def score_on_test(head, test, cut: int, what: str) -> dict:
    """``results.json``'s ``test``: the probe at ``cut`` (its solved ``head``, the very one val scored)
    scored once on the test split, or why not: test never chooses anything."""
    if test is None:
        return {"scored": False, "what": None, "n_test": 0,
                "text": "no test split: nothing was scored on test (val figures only)"}
    x, y = test
    acc = probe_accuracy(head, x[cut], y)
    return {"scored": True, "what": what, "n_test": int(len(y)), "test_acc": acc,
            "text": f"test acc {acc:.4f} of {what}: {len(y)} test samples, scored once, never for selection"}


INPUT_MAX = 10000  # the input probe reads at most this many samples of each split (a stratified subset)


def _input_probe(backbone, items: dict, ys: dict, C: float, seed: int, cache=None) -> dict:
    """The probe on the input itself (``reference``), as each cut's: the baseline a cut has to beat."""
    from ..reference import describe, sampled
    xtr, ytr, xva, yva = sampled(backbone.modality, backbone, items, ys, INPUT_MAX, seed, cache)
    r, _ = linear_probe(xtr, ytr, xva, yva, C=C, seed=seed)
    return {"cut": 0, "stage": "input", "what": describe(backbone.modality), "dim": int(xtr.shape[1]),
            "n_train": len(ytr), "n_val": len(yva), **r}
