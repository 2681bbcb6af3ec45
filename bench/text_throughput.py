"""Sentences/s of cached extraction (`rehead.features.extract`, cold cache: tokenize, forward,
write one .npy per sentence) vs a bare forward of the same encoder on the same sentences,
interleaved in one process; medians over rounds.

    python bench/text_throughput.py --n 512 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._text import DATASETS, write  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="packaged:minilm")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    import torch
    from rehead import zoo
    from rehead.data import load_dataset
    from rehead.features import FeatureCache, extract
    texts = load_dataset(DATASETS / "financial_phrasebank_allagree").train.items[:a.n]
    bb = zoo.load(a.model).eval()
    k = len(bb)

    def bare():
        with torch.inference_mode():
            for i in range(0, len(texts), a.batch_size):
                bb(bb.tokenize(texts[i:i + a.batch_size]))

    def cached():
        with tempfile.TemporaryDirectory() as d:
            extract(bb, texts, [k], FeatureCache(d), batch_size=a.batch_size, progress=False)

    bare()  # warm-up
    t = {"bare": [], "cached": []}
    for _ in range(a.rounds):
        for name, fn in (("cached", cached), ("bare", bare)):
            t0 = time.perf_counter()
            fn()
            t[name].append(len(texts) / (time.perf_counter() - t0))
    med = {n: statistics.median(v) for n, v in t.items()}
    write("text_throughput", {"model": a.model, "sentences": len(texts), "rounds": a.rounds,
                              "sent_per_s_bare": med["bare"], "sent_per_s_cached_extract": med["cached"],
                              "ratio": med["cached"] / med["bare"], "all": t},
          notes="cold cache each round (features computed and written); 2 shared CPU cores: noisy")


if __name__ == "__main__":
    main()
