"""Rank candidate backbones for a dataset without fine-tuning (LogME, You et al. 2021).

Every candidate extracts features with its OWN preprocessing (input size, mean/std),
caches them, and gets two scores: LogME on the training split (the ranking: no training
at all) and the val accuracy of a linear probe (a check of the ranking, reported side by
side with the rank correlation between the two).

A candidate is any spec ``zoo.load`` accepts (``packaged:``, ``file:PATH#timm:ARCH``, a run
directory, ``timm:`` when its weights are cached), optionally with ``@CUT`` to rank a cut
of it (``packaged:efficientnet_lite0@6``).
"""
from __future__ import annotations

import time

from . import check_options, linear_probe, quiet, split_features, start_run, write_results
from .logme import logme


def split_candidate(spec: str) -> tuple[str, str | None]:
    """``SPEC@CUT`` -> (SPEC, CUT); a path that merely contains '@' is left whole."""
    base, sep, cut = spec.rpartition("@")
    if sep and base and cut and "/" not in cut and ":" not in cut:
        return base, cut
    return spec, None


def parse_models(models) -> list[str]:
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",")]
    models = [m for m in models if m]
    if not models:
        raise ValueError("give at least one candidate backbone (--models a,b,c)")
    return models


def rank(data, models, out="runs/rank", C: float = 1.0, batch_size: int = 32, workers: int = 2, seed: int = 0,
         val_fraction: float = 0.2, cache_dir: str | None = None, use_cache: bool = True, strict: bool = False,
         overwrite: bool = False, progress: bool = True, data_kw: dict | None = None, echo=print) -> dict:
    """LogME and a check probe per candidate; returns ``results.json``'s content. Under ``accelerate
    launch`` the processes share each extraction; the first reports and writes, the others return None."""
    from .. import zoo
    from ..data import Dataset, load_dataset
    from ..distributed import state
    from ..features import FeatureCache
    check_options(C=C, batch_size=batch_size, workers=workers, val_fraction=val_fraction)
    t_start = time.perf_counter()
    main = state().is_main_process
    echo = echo if main else quiet
    models = parse_models(models)
    cache = FeatureCache(cache_dir) if use_cache else None  # opens nothing until used
    ds = data if isinstance(data, Dataset) else load_dataset(data, val_fraction=val_fraction, seed=seed,
                                                             memo=cache, **(data_kw or {}))
    ds.say_warnings(echo)
    args = {"data": ds.source, "models": models, "C": C, "seed": seed, "val_fraction": val_fraction,
            "batch_size": batch_size, "data_kw": data_kw}
    unavailable = _check_candidates(models, ds, echo)  # every refusal before any extraction or file
    out = start_run(out, "rank", {"models": models, "score": "LogME (train split); check: linear probe val acc",
                                  "data_summary": ds.summary(), "args": args}, overwrite=overwrite, writer=main)
    out.write_json("labels.json", ds.classes)
    rows = []
    for cand in models:
        if any(u["model"] == cand for u in unavailable):
            continue
        spec, cut = split_candidate(cand)
        bb = zoo.load(spec)
        k = bb.stage_index(cut) if cut is not None else len(bb)
        t0 = time.perf_counter()
        feats, ys, info = split_features(bb, ds, [k], cache, batch_size, workers, strict, progress, echo)
        if not main:
            continue  # its share of the extraction is done; the first process scores
        t1 = time.perf_counter()
        score = logme(feats["train"][k], ys["train"])
        logme_s = time.perf_counter() - t1
        pr = linear_probe(feats["train"][k], ys["train"], feats["val"][k], ys["val"], C=C, seed=seed)
        rows.append({"model": cand, "cut": k, "stage": bb.stage_names[k - 1], "dim": int(feats["train"][k].shape[1]),
                     "input_size": bb.data_config.get("input_size"), "logme": score,
                     "probe_val_acc": pr["val_acc"], "probe_train_acc": pr["train_acc"],
                     "extract_seconds": info["extract_seconds"], "logme_seconds": logme_s,
                     "seconds": time.perf_counter() - t0})
        echo(f"{cand:40} LogME {score:+.4f}  probe val acc {pr['val_acc']:.4f}")
    if not main:
        return None
    if not rows:
        raise ValueError("none of the candidates could be loaded: " + "; ".join(u["reason"] for u in unavailable))
    rows.sort(key=lambda r: -r["logme"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    result = {"best": rows[0]["model"], "unavailable": unavailable,
              "agreement": agreement(rows), "total_seconds": time.perf_counter() - t_start,
              "n_train": len(ds.train), "n_val": len(ds.val)}
    write_results(out, rows, result)
    from ..report.plots import plot_rank
    plot_rank(rows, out / "rank.png")
    a = result["agreement"]
    echo(f"best by LogME: {rows[0]['model']}" + (f"; Kendall tau LogME vs probe accuracy {a['kendall_tau']:+.2f}"
                                                 if a.get("kendall_tau") is not None else ""))
    return {"rows": rows, **result, "dir": str(out.path)}


def _check_candidates(models: list[str], ds, echo) -> list[dict]:
    """Load each candidate once (then let it go: they may not all fit in memory together) to refuse
    a wrong modality or cut before any work; returns those that cannot be loaded (offline), which
    are skipped and said."""
    from .. import zoo
    from ..fit import check_modality
    unavailable = []
    for cand in models:
        spec, cut = split_candidate(cand)
        try:
            bb = zoo.load(spec)
        except zoo.ModelNotFound as e:  # offline: say which ones could not be loaded, rank the rest
            echo(f"skipping {cand}: {e}")
            unavailable.append({"model": cand, "reason": str(e)})
            continue
        check_modality(bb, ds, cand)  # fit's words: which kind of model the data needs, and the hint
        if cut is not None:
            bb.stage_index(cut)
    if len(unavailable) == len(models):
        raise ValueError("none of the candidates could be loaded: " + "; ".join(u["reason"] for u in unavailable))
    return unavailable


def agreement(rows: list[dict]) -> dict:
    """Does LogME order the candidates as the probe does? Kendall's tau, and whether the top agrees."""
    if len(rows) < 2:
        return {"kendall_tau": None, "same_best": True}
    from scipy.stats import kendalltau
    tau = kendalltau([r["logme"] for r in rows], [r["probe_val_acc"] for r in rows]).statistic
    best_probe = max(r["probe_val_acc"] for r in rows)
    return {"kendall_tau": None if tau != tau else float(tau),
            "same_best": rows[0]["probe_val_acc"] == best_probe}
