"""Domain adaptation, then few-label classification: with and without `rehead adapt`, side by side.

    python bench/text_adapt.py

1. `adapt` packaged:minilm (masked-token prediction) on the text of financial_phrasebank_allagree's
   train.csv (labels unused; 10% of it held out for perplexity).
2. `fit` on 10% of the train labels (stratified, seeds 0..2), original vs adapted encoder,
   same seed, same settings; test accuracy on test.csv (after the last epoch).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._text import DATASETS, write  # noqa: E402


FIT = {"extract": dict(epochs=60, lr=3e-3),
       "finetune": dict(epochs=5, lr=1e-3, unfreeze=-1, lr_decay=1.5)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="packaged:minilm")
    ap.add_argument("--adapt-epochs", type=int, default=3)
    ap.add_argument("--adapt-lr", type=float, default=5e-5)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategy", default="finetune")
    a = ap.parse_args()
    from rehead.adapt import adapt
    from rehead.data import load_dataset, stratified_split
    from rehead.fit import fit
    data = DATASETS / "financial_phrasebank_allagree"
    figs = {"model": a.model, "strategy": a.strategy, "fit_settings": FIT[a.strategy], "label_fraction": a.fraction}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rep = adapt(data / "train.csv", a.model, Path(tmp) / "lm", epochs=a.adapt_epochs, lr=a.adapt_lr,
                    batch_size=32, progress=False)
        figs["adapt"] = {k: rep[k] for k in ("objective", "train_passages", "heldout_passages", "epochs", "lr",
                                             "perplexity_before", "perplexity_after", "history")}
        figs["adapt"]["seconds"] = round(time.perf_counter() - t0, 1)
        rows = []
        for seed in a.seeds:
            row = {"seed": seed}
            for tag, model in (("original", a.model), ("adapted", str(Path(tmp) / "lm"))):
                ds = load_dataset(data)
                _, few = stratified_split(ds.train.labels, a.fraction, seed)
                ds.train = ds.train.subset(few)
                out = Path(tmp) / f"{tag}{seed}"
                fit(ds, model=model, out=out, strategy=a.strategy, seed=seed, progress=False,
                    cache_dir=str(Path(tmp) / "cache"), **FIT[a.strategy])
                s = json.loads((out / "summary.json").read_text())
                row[tag] = s["last_val_acc"]
                row["n_train"] = len(ds.train)
            print(row, flush=True)
            rows.append(row)
        figs["runs"] = rows
        figs["mean_test_acc"] = {t: statistics.mean(r[t] for r in rows) for t in ("original", "adapted")}
    write("text_adapt_fpb", figs, notes="same seed per row; accuracy after the last epoch on test.csv")


if __name__ == "__main__":
    main()
