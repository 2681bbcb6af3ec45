"""Fine-tuned MiniLM on rt_polarity: single runs vs their ensemble vs their soup, on test.csv.

    PYTHONPATH=.:bench python bench/text_ensemble.py --seeds 0 1 2 --runs-dir /work/runs-ens

Protocol (no decision touches test.csv): each member is `rehead fit train.csv` with one fixed
recipe (the issue-6 recipe: all stages, 3 epochs, top LR 2e-4 after a 2e-3 head phase, /1.3 per
stage, dropout 0.1) and its own seed, which also draws its own 10% val split out of train.csv;
the val split alone picks each member's best epoch. Then test.csv is scored once per member, once
for the ensemble (`rehead ensemble`, mean probability) and once for the soup (`--soup`, mean weights).
Members already in --runs-dir with the same recipe are reused (each costs ~15 min on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._text import DATASETS, write  # noqa: E402

RECIPE = dict(strategy="finetune", epochs=3, lr=2e-3, unfreeze=-1, lr_decay=1.3, dropout=0.1, val_fraction=0.1,
              batch_size=32)


def member(data: Path, model: str, out: Path, seed: int, cache: Path) -> tuple[Path, float | None]:
    """A finished run of RECIPE with ``seed`` at ``out``: reused if there, else fitted (seconds, or None)."""
    from rehead.fit import fit
    from rehead.run import read_config
    if (out / "summary.json").exists():
        cfg = read_config(out)
        if all(cfg["fit"].get(k) == v for k, v in RECIPE.items()) and cfg["fit"]["seed"] == seed and \
                cfg["model"] == model:
            return out, None
        raise SystemExit(f"{out} holds a run of another recipe: choose another --runs-dir")
    t0 = time.perf_counter()
    fit(str(data), model=model, out=str(out), seed=seed, progress=False, cache_dir=str(cache),
        resume=(out / "config.yaml").exists(), **RECIPE)
    return out, round(time.perf_counter() - t0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="rt_polarity")
    ap.add_argument("--model", default="packaged:minilm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs-dir", default="runs/bench-text-ensemble")
    ap.add_argument("--member-name", default="rt_s{seed}")
    ap.add_argument("--name", default="text_rt_ensemble")
    a = ap.parse_args()
    from rehead.data import load_dataset
    from rehead.ensemble import make_ensemble
    from rehead.run import Run
    from rehead.runs import open_run
    runs_dir = Path(a.runs_dir)
    data = DATASETS / a.data
    test = load_dataset(str(data / "test.csv"), modality="text", eval_only=True)
    items, labels = test.val.items, test.val.labels
    figs = {"data": a.data, "model": a.model, "recipe": RECIPE, "test_n": len(items), "members": []}
    probs = []
    for s in a.seeds:
        d, secs = member(data / "train.csv", a.model, runs_dir / a.member_name.format(seed=s), s, runs_dir / "cache")
        run = Run(d)
        summ = json.loads((d / "summary.json").read_text())
        probs.append(run.logits(items)[0].softmax(1))
        y = torch.tensor([run.classes.index(test.classes[v]) for v in labels])
        figs["members"].append({"seed": s, "run": str(d), "val_acc": summ["val_acc"], "best_epoch": summ["best_epoch"],
                                "test_acc": float((probs[-1].argmax(1) == y).float().mean()), "fit_seconds": secs})
        print(figs["members"][-1], flush=True)
    accs = [m["test_acc"] for m in figs["members"]]
    figs["member_test_acc_mean"] = sum(accs) / len(accs)
    y = y.tolist()  # the members share their classes (make_ensemble checks it)
    for kind, soup in (("ensemble", False), ("soup", True)):
        t0 = time.perf_counter()
        d = make_ensemble([m["run"] for m in figs["members"]], runs_dir / kind, soup=soup, overwrite=True)
        res = open_run(d).evaluate(items, y)
        figs[kind] = {"test_acc": res["accuracy"], "seconds": round(time.perf_counter() - t0, 1), "dir": str(d)}
        print(kind, figs[kind], flush=True)
    # the ensemble command's answer must be the plain mean of the members' probabilities
    mean_pred = torch.stack(probs).mean(0).argmax(1)
    figs["ensemble_check_mean_prob_acc"] = float((mean_pred == torch.tensor(y)).float().mean())
    # how accuracy grows with the number of members (the first k seeds)
    figs["ensemble_by_size"] = [{"members": k, "test_acc": float((torch.stack(probs[:k]).mean(0).argmax(1)
                                                                  == torch.tensor(y)).float().mean())}
                                for k in range(1, len(probs) + 1)]
    write(a.name, figs, notes="members pick their best epoch on their own 10% val split of train.csv; "
                              "test.csv is scored only after training")


if __name__ == "__main__":
    main()
