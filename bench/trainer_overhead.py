"""Issue 4: overhead of rehead's Trainer (Hugging Face Accelerate engine) over a bare PyTorch loop.

One ``full`` epoch (every stage trains) of packaged EfficientNet-Lite0 + linear head on a
subset of hymenoptera (default 64 train + 32 val images), batch 32, AdamW, the same
DataLoader (rehead's image loader: 2 workers, shuffled, channels_last batches):

- rehead: ``Trainer(TrainConfig(progress=False), run_dir).fit(model, "train", "val",
          [Phase("full", 1, 1e-4, trainable=-1, lr_decay=3)], make_loader=...)``
          (writes metrics.csv, best.safetensors and checkpoint.pt, as a real run does)
- bare:   ``model.train(); for x, y: loss = CE(model(x), y); zero_grad; backward; AdamW.step``,
          then a ``no_grad`` pass over val (the Trainer evaluates every epoch too)

Both start from the same weights; runs interleave (A,B then B,A ...) in one process after a
warm-up step; medians are reported.

    PYTHONPATH=. python bench/trainer_overhead.py [--train 64] [--val 32] [--reps 3]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import rehead  # noqa: F401  first, as the CLI does (sets OMP_WAIT_POLICY before torch loads)
import torch

from _common import machine, median, write


def subset(samples, n):
    step = max(1, len(samples) // n)
    idx = list(range(0, len(samples), step))[:n]
    return samples.subset(idx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    started = machine()
    from rehead import zoo
    from rehead.data import load_dataset, pipeline
    from rehead.model import TransferModel
    from rehead.train.loop import Phase, TrainConfig, Trainer
    from _common import HYMENOPTERA

    ds = load_dataset(HYMENOPTERA)
    data = {"train": subset(ds.train, a.train), "val": subset(ds.val, a.val)}
    bb = zoo.load("packaged:efficientnet_lite0")
    pipe = pipeline("image")
    torch.manual_seed(0)
    model0 = TransferModel(bb, torch.nn.Linear(1280, len(ds.classes)))
    init = copy.deepcopy(model0.state_dict())

    def make_loader(split, shuffle, generator):
        s = data[split]
        return pipe.make_loader(bb, s.items, s.labels, batch_size=a.batch_size, workers=a.workers,
                                shuffle=shuffle, generator=generator)

    def fresh():
        model0.load_state_dict(init)
        return model0

    def run_rehead():
        model = fresh()
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(TrainConfig(progress=False), run_dir)
            t0 = time.perf_counter()
            trainer.fit(model, "train", "val", [Phase("full", 1, 1e-4, trainable=-1, lr_decay=3.0)],
                        make_loader=make_loader)
            return time.perf_counter() - t0

    def run_bare():
        model = fresh().set_trainable_last(-1)
        t0 = time.perf_counter()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
        model.train()
        for _, x, y in make_loader("train", True, torch.Generator().manual_seed(0)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for _, x, y in make_loader("val", False, None):
                correct += (model(x).argmax(1) == y).sum().item()
        return time.perf_counter() - t0

    # warm-up: one forward/backward so oneDNN primitive creation is paid before timing
    m = fresh().set_trainable_last(-1).train()
    x = torch.randn(a.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(m(x), torch.zeros(a.batch_size, dtype=torch.long)).backward()
    m.zero_grad(set_to_none=True)

    runs = {"rehead_trainer": run_rehead, "bare_pytorch": run_bare}
    times = {k: [] for k in runs}
    order = list(runs)
    for r in range(a.reps):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(runs[k]())
            print(f"rep {r} {k}: {times[k][-1]:.1f}s", flush=True)
    med = {k: median(v) for k, v in times.items()}
    ratio = med["rehead_trainer"] / med["bare_pytorch"]
    figures = {"train_images": len(data["train"]), "val_images": len(data["val"]), "batch_size": a.batch_size,
               "workers": a.workers, "reps": a.reps, "epoch_s_median": med, "epoch_s_all": times,
               "ratio_rehead_vs_bare": ratio, "meets_1_1": ratio <= 1.1,
               "ratio_per_pair": [x / y for x, y in zip(times["rehead_trainer"], times["bare_pytorch"])]}
    write("trainer_overhead", figures, started=started)


if __name__ == "__main__":
    main()
