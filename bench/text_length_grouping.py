"""Text training with length-grouped batches vs plain shuffled batches (same model, same data).

rehead's text training loader groups batches by length (Hugging Face Trainer's
``group_by_length``): random mega-batches of 50 batches, sorted by token count inside. This
measures what that saves on one epoch of rt_polarity with packaged MiniLM, every stage training:

- padded tokens per epoch (the whole epoch, both orders);
- seconds per training step (forward, backward, AdamW), timed on the same randomly chosen
  batch positions of each order, interleaved A, B, A, B; epoch time = mean step x batches.

    PYTHONPATH=.:bench python bench/text_length_grouping.py [--steps 24]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._text import DATASETS, write  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="rt_polarity")
    ap.add_argument("--steps", type=int, default=24, help="timed steps per order")
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    import torch
    from rehead import zoo
    from rehead.data import load_dataset
    from rehead.data.text import make_loader, token_lengths
    from rehead.heads import make_head
    from rehead.model import TransferModel

    ds = load_dataset(DATASETS / a.data)
    bb = zoo.load("packaged:minilm")
    model = TransferModel(bb, make_head(384, len(ds.classes))).set_trainable_last(-1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    grouped = list(make_loader(bb, ds.train.items, ds.train.labels, batch_size=a.batch_size, shuffle=True,
                               generator=gen()))
    plain = list(torch.utils.data.DataLoader(  # the loader without grouping: a plain shuffle
        list(range(len(ds.train.items))), batch_size=a.batch_size, shuffle=True, generator=gen()))
    collate = make_loader(bb, ds.train.items, ds.train.labels, batch_size=a.batch_size).collate_fn
    plain = [collate([(i, ds.train.items[i], ds.train.labels[i]) for i in b.tolist()]) for b in plain]
    lengths = token_lengths(bb, ds.train.items)

    def step(batch):
        _, x, y = batch
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(plain[0])  # warm-up
    positions = random.Random(0).sample(range(len(grouped)), a.steps)
    times = {"grouped": [], "plain": []}
    for p in positions:
        times["plain"].append(step(plain[p]))
        times["grouped"].append(step(grouped[p]))
    cells = {k: sum(b[1]["input_ids"].numel() for b in v) for k, v in (("grouped", grouped), ("plain", plain))}
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    figures = {"data": a.data, "batches_per_epoch": len(grouped), "timed_steps_per_order": a.steps,
               "real_tokens": int(sum(lengths)), "padded_tokens": cells,
               "padding_overhead": {k: round(v / sum(lengths) - 1, 3) for k, v in cells.items()},
               "seconds_per_step": {k: round(v, 4) for k, v in mean.items()},
               "epoch_seconds_estimate": {k: round(v * len(grouped), 1) for k, v in mean.items()},
               "speedup": round(mean["plain"] / mean["grouped"], 3)}
    write("text_length_grouping", figures, notes="same batch positions of each order, interleaved; "
          "epoch time = mean step time x batches per epoch")


if __name__ == "__main__":
    main()
