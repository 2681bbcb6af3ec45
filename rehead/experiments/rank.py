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

from . import (check_options, fit_command, linear_probe, noise_margin, quiet, split_features, started_run,
               write_results)
from .logme import logme
from .probe import features_of_test, score_on_test


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


def repeated(models: list[str], echo=print) -> list[str]:
    """Candidates listed more than once (``--models X,X``), said: each is ranked once (they were dropped silently)."""
    again = sorted({m for i, m in enumerate(models) if m in models[:i]}, key=models.index)
    for m in again:
        echo(f"note: {m} is listed {models.count(m)} times in --models: ranked once")
    return again


def rank(data, models, out="runs/rank", C: float | None = None, batch_size: int = 32, workers: int = 2, seed: int = 0,
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
    again = repeated(models, echo)
    cache = FeatureCache(cache_dir) if use_cache else None  # opens nothing until used
    ds = data if isinstance(data, Dataset) else load_dataset(data, val_fraction=val_fraction, seed=seed,
                                                             memo=cache, **(data_kw or {}))
    ds.say_warnings(echo)
    args = {"data": ds.source, "models": models, "C": C, "seed": seed, "val_fraction": val_fraction,
            "batch_size": batch_size, "data_kw": data_kw}
    once = list(dict.fromkeys(models))
    unavailable, cuts = _check_candidates(once, ds, echo)  # every refusal before any extraction or file
    duplicates = same_cuts(cuts, echo)
    with started_run(out, "rank", {"models": models, "score": "LogME (train split); check: linear probe val acc",
                                   "data_summary": ds.summary(), "args": args},
                     overwrite=overwrite, writer=main) as out:
        out.write_json("labels.json", ds.classes)
        rows = []
        n_test = 0
        for cand, (spec, k) in cuts.items():  # loadable ones, each name once
            if any(d["model"] == cand for d in duplicates):
                continue
            bb = zoo.load(spec)
            t0 = time.perf_counter()
            feats, ys, info = split_features(bb, ds, [k], cache, batch_size, workers, strict, progress, echo)
            test = features_of_test(bb, ds, [k], cache, batch_size, workers, strict, progress, echo)
            if not main:
                continue  # its share of the extraction is done; the first process scores
            t1 = time.perf_counter()
            score = logme(feats["train"][k], ys["train"])
            logme_s = time.perf_counter() - t1
            pr, head = linear_probe(feats["train"][k], ys["train"], feats["val"][k], ys["val"], C=C, seed=seed)
            scored = score_on_test(head, test, k, "this backbone's probe")
            n_test = scored["n_test"]
            rows.append({"model": cand, "cut": k, "stage": bb.stage_names[k - 1],
                         "dim": int(feats["train"][k].shape[1]),
                         "input_size": bb.data_config.get("input_size"), "logme": score,
                         "probe_val_acc": pr["val_acc"], "probe_val_loss": pr["val_loss"],
                         "probe_test_acc": scored.get("test_acc"),
                         "probe_train_acc": pr["train_acc"],
                         "extract_seconds": info["extract_seconds"], "logme_seconds": logme_s,
                         "seconds": time.perf_counter() - t0})
            echo(f"{cand:40} LogME {score:+.4f}  probe val acc {pr['val_acc']:.4f}"
                 + (f"  test acc {scored['test_acc']:.4f}" if scored["scored"] else ""))
        if not main:
            return None
        if not rows:
            raise ValueError("none of the candidates could be loaded: " + "; ".join(u["reason"] for u in unavailable))
        rows.sort(key=lambda r: -r["logme"])
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        n_val = len(ds.val)
        result = {"best": rows[0]["model"], "unavailable": unavailable, "duplicates": duplicates, "repeated": again,
                  "agreement": agreement(rows, n_val), "test": _test_note(n_test),
                  "total_seconds": time.perf_counter() - t_start, "n_train": len(ds.train), "n_val": n_val,
                  # the fit whose head the best candidate's probe scored (its figures, on the same split)
                  "fit_command": fit_command(ds.source, split_candidate(rows[0]["model"])[0], rows[0]["cut"], seed,
                                             val_fraction, data_kw) if len(rows) > 1 else None}
        write_results(out, rows, result)
        from ..report.plots import plot_rank
        plot_rank(rows, out / "rank.png")
        a = result["agreement"]
        echo(finding(rows, a) + (f"  ->  {result['fit_command']}" if result["fit_command"] else ""))
        echo(result["test"]["text"])
        if a["within_noise"]:
            echo(noise_note(a, n_val))
        return {"rows": rows, **result, "dir": str(out.path)}


def _check_candidates(models: list[str], ds, echo) -> tuple[list[dict], dict]:
    """Load each candidate once (then let it go: they may not all fit in memory together) to refuse
    a wrong modality or cut before any work. Returns those that cannot be loaded (offline), which
    are skipped and said, and {candidate: (spec, cut index)} of the others."""
    from .. import zoo
    from ..fit import check_modality
    unavailable, cuts = [], {}
    for cand in models:
        spec, cut = split_candidate(cand)
        try:
            bb = zoo.load(spec)
        except zoo.ModelNotFound as e:  # offline: say which ones could not be loaded, rank the rest
            if names_no_model(spec):  # a typo (tim:foo, packaged:efficientnet_lite9): stop, as fit and probe do
                raise
            echo(f"skipping {cand}: {e}")
            unavailable.append({"model": cand, "reason": str(e)})
            continue
        check_modality(bb, ds, cand)  # fit's words: which kind of model the data needs, and the hint
        cuts[cand] = (spec, bb.stage_index(cut) if cut is not None else len(bb))
    if len(unavailable) == len(models):
        raise ValueError("none of the candidates could be loaded: " + "; ".join(u["reason"] for u in unavailable))
    return unavailable, cuts


def names_no_model(spec: str) -> bool:
    """Whether a candidate that failed to load names no model at all (a typo), rather than a real one whose
    weights or package are missing here. A real name builds its architecture without weights; the Hub
    alone knows its own names (hf:ORG/NAME, timm:hf-hub:...), so offline those are never called typos."""
    from .. import zoo
    if not zoo.is_spec(spec):
        return True
    source, _, name = spec.partition(":")
    if source == "packaged":  # every packaged name is listed, installed or not
        return spec not in {m["spec"] for m in zoo.list_models()}
    if (source == "hf" and not name.startswith(("/", ".", "~"))) or name.startswith("hf-hub:"):
        return False
    try:
        zoo.load(spec, pretrained=False)
    except zoo.ModelNotFound:
        return True
    return False


def same_cuts(cuts: dict, echo=print) -> list[dict]:
    """Candidates that name a cut already listed (``X@block4`` and ``X@6``, or ``X`` and ``X@<last>``):
    the same features, so ranked once, as the first spelling (two rows would tie and count twice in tau)."""
    first, dups = {}, []
    for cand, key in cuts.items():
        if key in first:
            dups.append({"model": cand, "same_as": first[key], "cut": key[1]})
            echo(f"note: {cand} is the same cut as {first[key]} (cut {key[1]}): ranked once, as {first[key]}")
        else:
            first[key] = cand
    return dups


def probe_order(r: dict) -> tuple:
    """The probe's best: the highest val accuracy, then the lowest val loss (as probe's cuts); still tied,
    the first in LogME order (said as a tie: ``within_noise`` holds it). It was the first of equal
    accuracies in LogME order alone, so a tie read as the probe agreeing with LogME."""
    loss = r.get("probe_val_loss", float("nan"))
    return r["probe_val_acc"], -loss if loss == loss else float("-inf")


def agreement(rows: list[dict], n_val: int | None = None) -> dict:
    """Does LogME order the candidates as the probe does? Kendall's tau, whether the top agrees, and
    (with ``n_val``) the candidates whose probe val accuracy is within noise of the best probe's
    (an exact tie always is: one sample is the least a split tells apart)."""
    best = max(rows, key=probe_order)  # max keeps the first of equals: LogME's order
    margin = noise_margin(best["probe_val_acc"], n_val) if n_val else 0.0
    near = [r["model"] for r in rows if r is not best and r["probe_val_acc"] >= best["probe_val_acc"] - margin]
    out = {"kendall_tau": None, "same_best": best is rows[0], "probe_best": best["model"], "within_noise": near}
    if len(rows) < 2:
        return out
    from scipy.stats import kendalltau
    tau = kendalltau([r["logme"] for r in rows], [r["probe_val_acc"] for r in rows]).statistic
    return {**out, "kendall_tau": None if tau != tau else float(tau)}


def finding(rows: list[dict], a: dict) -> str:
    """The line under a rank (and its report's finding): the best by LogME and what the probe says of it;
    one candidate ranks nothing (it was still called "best by LogME")."""
    if len(rows) < 2:
        return (f"nothing to rank: only {rows[0]['model']} was scored (LogME {rows[0]['logme']:+.4f}, probe val acc "
                f"{rows[0]['probe_val_acc']:.4f}); give two or more loadable --models to rank them")
    tau = f"; Kendall tau LogME vs probe accuracy {a['kendall_tau']:+.2f}" if a.get("kendall_tau") is not None else ""
    top = [a["probe_best"], *a.get("within_noise", [])]
    if len(top) > 1 and rows[0]["model"] in top:
        probe = (f"the probe's top is a tie within noise ({', '.join(top)}): it cannot confirm or contradict "
                 "LogME's pick")
    elif a.get("same_best"):
        probe = "the probe agrees on the best"
    else:
        acc = next(r["probe_val_acc"] for r in rows if r["model"] == a["probe_best"])
        probe = (f"the probe prefers {a['probe_best']} (val acc {acc:.4f} against {rows[0]['probe_val_acc']:.4f})"
                 + (f", tied within noise with {', '.join(top[1:])}" if len(top) > 1 else ""))
    return f"best by LogME: {rows[0]['model']}{tau}; {probe}"


def noise_note(a: dict, n_val: int) -> str:
    """The small-sample caveat: the probe cannot rank candidates whose val accuracies are this close."""
    what = "agreement" if a["same_best"] else "preferring another best than LogME"
    return (f"note: the probes of {', '.join(a['within_noise'])} score within two standard errors of the best "
            f"probe's ({a['probe_best']}; val has {n_val} samples, one is {1 / n_val:.4f} of accuracy): this val "
            f"split cannot order them, so the probe's {what} among them, and tau, is noise; a larger --val-fraction "
            "or more data would tell them apart")


def _test_note(n_test: int) -> dict:
    """``results.json``'s ``test``: what was scored on the test split (nothing chose on it)."""
    if not n_test:
        return {"scored": False, "what": None, "n_test": 0,
                "text": "no test split: nothing was scored on test (val figures only)"}
    return {"scored": True, "what": "each backbone's probe (probe_test_acc); the ranking is LogME's", "n_test": n_test,
            "text": f"probe_test_acc: each backbone's probe scored once on {n_test} test samples, never for selection"}
