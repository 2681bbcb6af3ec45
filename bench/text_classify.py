"""Test accuracy of text classification on a pretrained encoder, per strategy.

    python bench/text_classify.py --data financial_phrasebank_allagree --strategies extract finetune
    python bench/text_classify.py --data rt_polarity --strategies extract finetune gradual

rehead carves its val split out of train.csv (seeded, stratified) and scores test.csv once, after
training: test accuracy involves no choice made on test data.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._text import DATASETS, write  # noqa: E402

SETTINGS = {  # per strategy: what the command line would pass to `rehead fit`
    "extract": dict(epochs=60, lr=3e-3),
    "finetune": dict(epochs=3, lr=1e-3, unfreeze=-1, lr_decay=1.5),
    "gradual": dict(epochs=1, lr=1e-3, unfreeze=3, lr_decay=2.6),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="financial_phrasebank_allagree")
    ap.add_argument("--model", default="packaged:minilm")
    ap.add_argument("--strategies", nargs="+", default=["extract", "finetune"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--name", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override the strategies' epochs (slow machines)")
    ap.add_argument("--lr", type=float, default=None, help="override the strategies' top LR")
    ap.add_argument("--lr-decay", type=float, default=None, help="override the strategies' LR decay per stage")
    ap.add_argument("--dropout", type=float, default=None, help="dropout before the linear head")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from rehead.fit import fit
    data = DATASETS / a.data
    figs = {"data": a.data, "model": a.model}
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.strategies:
            t0 = time.perf_counter()
            out = Path(tmp) / s
            over = {"epochs": a.epochs, "lr": a.lr, "lr_decay": a.lr_decay, "dropout": a.dropout}
            settings = dict(SETTINGS[s], **{k: v for k, v in over.items() if v is not None})
            fit(data, model=a.model, out=out, strategy=s, batch_size=a.batch_size, seed=a.seed, progress=False,
                cache_dir=str(Path(tmp) / "cache"), **settings)
            summ = json.loads((out / "summary.json").read_text())
            figs[s] = {"test_acc": summ["test_acc"], "test_n": summ["test_n"], "val_acc": summ["val_acc"],
                       "kept": [summ["kept_phase"], summ["kept_epoch"]], "epochs_run": summ["epochs_run"],
                       "settings": settings, "seed": a.seed, "seconds": round(time.perf_counter() - t0, 1)}
            print(s, figs[s], flush=True)
    write(a.name or f"text_{a.data}", figs,
          notes="val carved from train.csv; test.csv scored once after training, never used for selection")


if __name__ == "__main__":
    main()
