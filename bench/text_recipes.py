"""Issue 14's text goals, a recipe grid: MiniLM fine-tuned on rt_polarity and financial_phrasebank_allagree
under several recipes and seeds, each a `rehead fit DATA --model packaged:minilm --strategy finetune ...`
with val carved from train.csv. A recipe is chosen by its mean val accuracy over seeds (test.csv never
chooses); test is reported for every run, so the chosen recipe's test mean is a fair figure.

Made for a GPU (one run takes seconds there, ~10 minutes on 2 CPU cores): runs go P at a time, in
priority order (every recipe's seed 0 first), and no run starts after --deadline seconds.

    PYTHONPATH=. python bench/text_recipes.py --data DIR [--parallel 6] [--seeds 0,1,2] [--deadline 330]
                                              [--recipes a,b] [--results NAME]

DIR holds rt_polarity/ and financial_phrasebank_allagree/ (train.csv and test.csv each).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, write  # noqa: E402

SETS = ["rt_polarity", "financial_phrasebank_allagree"]
RECIPES = {  # name: options after --strategy finetune, unless they name a strategy (the text defaults: every stage, lr 2e-3, decay 1.3,
    # dropout 0.1, 3 epochs; bench/text_defaults.py)
    "default": [],
    "epochs5": ["--epochs", "5"],
    "lr1e-3": ["--lr", "1e-3"],
    "lr1e-3-epochs5": ["--lr", "1e-3", "--epochs", "5"],
    "ema": ["--ema", "0.995"],
    "smooth0.1": ["--label-smoothing", "0.1"],
    "batch16": ["--batch-size", "16"],
    "layer-decay0.8": ["--layer-decay", "0.8"],
    "cosine": ["--schedule", "cosine"],
    "wd0.1": ["--weight-decay", "0.1"],
    "val0.1": ["--val-fraction", "0.1"],
    "lr4e-3": ["--lr", "4e-3"],
    # linear probe then fine-tune off: every stage trains from the start under a random head, with the
    # LRs finetune's unfrozen phase uses (its top LR is the head phase's / 10)
    "no-probe-first": ["--strategy", "full", "--epochs", "3", "--lr", "2e-4", "--lr-decay", "1.3", "--dropout", "0.1"],
    # ULMFiT's gradual unfreezing at the text LRs: the head, then one more layer a phase (an epoch each),
    # each phase's top LR the last one's scaled down (rehead.recipes)
    # the plain command a user types (auto's own plan; on a GPU its budget does not bind)
    "auto": ["--strategy", "auto"],
    # the Hugging Face Trainer's usual recipe: every weight from the start at one small LR, 4 epochs
    "hf-full": ["--strategy", "full", "--epochs", "4", "--lr", "5e-5", "--lr-decay", "1", "--dropout", "0.1"],
    "hf-full-lr1e-4": ["--strategy", "full", "--epochs", "4", "--lr", "1e-4", "--lr-decay", "1", "--dropout", "0.1"],
    "gradual": ["--strategy", "gradual", "--unfreeze", "-1", "--epochs", "1", "--lr", "2e-3", "--lr-decay", "1.3",
                "--dropout", "0.1"],
}


def command(data: Path, recipe: str, seed: int, out: Path, model: str = "packaged:minilm") -> list[str]:
    opts = RECIPES[recipe] if "--strategy" in RECIPES[recipe] else ["--strategy", "finetune", *RECIPES[recipe]]
    return [sys.executable, "-m", "rehead", "fit", str(data), "--model", model, *opts, "--seed", str(seed),
            "--out", str(out), "--overwrite", "-q"]


def summary(out: Path) -> dict | None:
    p = out / "summary.json"
    if not p.exists():
        return None
    s = json.loads(p.read_text())
    return {"val_acc": s["val_acc"], "test_acc": s.get("test_acc"), "kept_phase": s["kept_phase"],
            "kept_epoch": s["kept_epoch"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--parallel", type=int, default=6)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--deadline", type=float, default=330)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--results", default="text_recipes")
    ap.add_argument("--model", default="packaged:minilm", help="the goals name MiniLM; another encoder is a comparison")
    a = ap.parse_args()
    started = machine()
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = [(r, d, s) for s in seeds for r in a.recipes.split(",") for d in a.sets.split(",")]
    root = Path(tempfile.mkdtemp(prefix="text-recipes-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // a.parallel))}
    t0, running, rows, not_started = time.perf_counter(), {}, [], []
    while jobs or running:
        while jobs and len(running) < a.parallel:
            if time.perf_counter() - t0 > a.deadline:
                not_started, jobs = jobs, []
                break
            r, d, s = job = jobs.pop(0)
            out = root / f"{r}-{d}-{s}"
            log = open(root / f"{r}-{d}-{s}.log", "w")
            running[job] = (subprocess.Popen(command(Path(a.data) / d, r, s, out, a.model), cwd=REPO, env=env, stdout=log,
                                             stderr=subprocess.STDOUT), time.perf_counter(), out)
        for job, (p, start, out) in list(running.items()):
            if p.poll() is None:
                continue
            del running[job]
            row = {"recipe": job[0], "data": job[1], "seed": job[2], "rc": p.returncode,
                   "seconds": round(time.perf_counter() - start, 1), **(summary(out) or {})}
            if p.returncode:
                row["log_tail"] = (root / f"{job[0]}-{job[1]}-{job[2]}.log").read_text()[-1500:]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
        time.sleep(0.5)
    table = {}
    for d in a.sets.split(","):
        for r in RECIPES:
            ok = [x for x in rows if x["data"] == d and x["recipe"] == r and x.get("val_acc") is not None]
            if ok:
                table.setdefault(d, {})[r] = {
                    "n": len(ok), "seeds": [x["seed"] for x in ok],
                    "val_mean": statistics.mean(x["val_acc"] for x in ok),
                    "test_mean": statistics.mean(x["test_acc"] for x in ok),
                    "test_min": min(x["test_acc"] for x in ok), "test_max": max(x["test_acc"] for x in ok)}
    chosen = {}
    for d, recs in table.items():  # by val only, among recipes with the most seeds run
        full = max(v["n"] for v in recs.values())
        best = max((r for r, v in recs.items() if v["n"] == full), key=lambda r: recs[r]["val_mean"])
        chosen[d] = {"recipe": best, **recs[best]}
    write(a.results, {"model": a.model, "runs": rows, "by_recipe": table, "chosen_by_val": chosen,
                      "not_started": [list(j) for j in not_started]}, started=started, extra={
        "recipes": RECIPES, "goals": "rt_polarity >= 0.85 test, financial_phrasebank_allagree >= 0.96 (one MiniLM)",
        "protocol": "val carved from train.csv (--val-fraction, default 0.2) picks epochs and the recipe; "
                    "test.csv scored once per run, never used to choose"})


if __name__ == "__main__":
    main()
