"""Does fine-tuning beat extraction on hymenoptera? Scored on all 397 photos instead of 153.

hymenoptera's 153 val photos cannot tell recipes apart (one photo is 0.65 points, and every row
of the ablations sits within two photos of another). Here its train/ and val/ photos are pooled
and split into 5 stratified folds (seeded); for each fold rehead is given train/ = the other four
(it carves its own val from them, which chooses the kept epoch) and test/ = the fold, predicted
once by the kept run (`Run.predict`) and never used to choose. Every photo is scored exactly once
per row, so the rows compare on 397 paired predictions: accuracy, and the photos one row gets
right and the other wrong (the discordant pairs, with McNemar's exact two-sided p).

Rows (the commands a user types, default backbone): ``extract`` (what `auto` picks here),
``finetune`` (``--strategy finetune``, its defaults) and ``finetune+sgd`` (the same with
``--optimizer sgd``).

    PYTHONPATH=.:bench python bench/hymenoptera_cv.py [--folds 5] [--seed 0] [--rows extract,finetune]

(The run in bench/results/hymenoptera_cv.json scored 396: its glob missed the set's one .jpeg,
formica.jpeg, which was trained on where its fold was not the test fold.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, fit_row, machine, write  # noqa: E402

ROWS = {"extract": ["--strategy", "extract"], "finetune": ["--strategy", "finetune"],
        "finetune+sgd": ["--strategy", "finetune", "--optimizer", "sgd"],
        "finetune+mix+epochs10": ["--strategy", "finetune", "--mixup", "0.2", "--cutmix", "1.0", "--epochs", "10"]}


def folds_of(k: int, seed: int) -> list[list[tuple[Path, str]]]:
    """k stratified folds of every photo in train/ and val/: (path, class)."""
    rng = random.Random(seed)
    folds = [[] for _ in range(k)]
    for c in ("ants", "bees"):
        photos = sorted(p for split in ("train", "val") for p in (HYMENOPTERA / split / c).iterdir())
        rng.shuffle(photos)
        for i, p in enumerate(photos):
            folds[i % k].append((p, c))
    return folds


def layout(root: Path, folds, f: int) -> Path:
    d = root / f"fold{f}"
    for j, fold in enumerate(folds):
        for p, c in fold:
            dest = d / ("test" if j == f else "train") / c
            dest.mkdir(parents=True, exist_ok=True)
            (dest / f"{p.parent.parent.name}-{p.name}").symlink_to(p)
    return d


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar (binomial on the discordant pairs)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="extract,finetune")
    ap.add_argument("--name", default="hymenoptera_cv")
    a = ap.parse_args()
    from rehead.run import Run
    started, rows = machine(), a.rows.split(",")
    root = Path(tempfile.mkdtemp(prefix="hy-cv-"))
    folds = folds_of(a.folds, a.seed)
    env = {**os.environ, "REHEAD_CACHE": str(root / "cache")}
    correct = {r: {} for r in rows}
    runs = []
    for f in range(a.folds):
        data = layout(root, folds, f)
        for r in rows:
            out = root / f"{r}-{f}"
            row = {"fold": f, **fit_row(r, data, [*ROWS[r], "--seed", str(a.seed)], out, env)}
            if row["rc"] == 0:
                tests = sorted(t for t in (data / "test").rglob("*") if t.suffix.lower() in (".jpg", ".jpeg"))
                preds = {pr["item"]: pr["top"][0]["label"]
                         for pr in Run(out).predict([str(t) for t in tests], top_k=1)}
                hits = [preds.get(str(t)) == t.parent.name for t in tests]
                for t, h in zip(tests, hits):
                    correct[r][t.name] = h
                row.update(summary_test_acc=row.pop("test_acc"), test_acc=sum(hits) / len(hits), test_n=len(hits))
            runs.append(row)
            print(json.dumps(row), flush=True)
    n = len(correct[rows[0]])
    figures = {"photos": n, "folds": a.folds, "seed": a.seed, "runs": runs,
               "pooled_test_acc": {r: sum(correct[r].values()) / max(1, len(correct[r])) for r in rows}}
    pairs = {}
    for i, r1 in enumerate(rows):
        for r2 in rows[i + 1:]:
            common = set(correct[r1]) & set(correct[r2])
            b = sum(correct[r1][k] and not correct[r2][k] for k in common)
            c = sum(correct[r2][k] and not correct[r1][k] for k in common)
            pairs[f"{r1} vs {r2}"] = {f"only {r1} right": b, f"only {r2} right": c, "mcnemar_p": mcnemar_p(b, c)}
    figures["paired"] = pairs
    write(a.name, figures, {"protocol": __doc__.split("\n\n")[1]}, started)


if __name__ == "__main__":
    main()
