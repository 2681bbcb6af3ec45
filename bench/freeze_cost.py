"""Issue 4: the cost of freezing. Step time and peak memory of one training step at batch 32,
224 px, packaged EfficientNet-Lite0 + linear head, for head-only, last-2-stages and full
training (``TransferModel.set_trainable_last(0 / 2 / -1)``), AdamW.

Each configuration runs in its own subprocess (so its memory high-water mark is its own);
rounds interleave the configurations (A,B,C then C,B,A ...), and the median step time over
all timed steps of all rounds is reported. Memory = peak RSS during the steps (getrusage
ru_maxrss) minus the RSS just before the first step (model, optimizer and batch already
built): the activations, gradients and optimizer state a configuration adds.
Inputs are a fixed random batch in channels_last (as rehead's image loader yields).

    PYTHONPATH=. python bench/freeze_cost.py [--rounds 2] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import REPO, machine, median, write

CONFIGS = {"head_only": 0, "last_2_stages": 2, "full": -1}


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(n: int, steps: int, warmup: int, batch: int, size: int) -> dict:
    import resource

    import rehead  # noqa: F401  sets OMP_WAIT_POLICY before torch loads, as the CLI does
    import torch
    from rehead import zoo
    from rehead.model import TransferModel
    torch.manual_seed(0)
    model = TransferModel(zoo.load("packaged:efficientnet_lite0"), torch.nn.Linear(1280, 2))
    model.set_trainable_last(n).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss0 = rss_now_mb()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"trainable_params": sum(p.numel() for p in params), "step_s": times,
            "rss_before_mb": rss0, "peak_rss_mb": peak, "train_mem_mb": peak - rss0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--child", type=int, default=None)
    a = ap.parse_args()
    if a.child is not None:
        print("RESULT " + json.dumps(child(a.child, a.steps, a.warmup, a.batch, a.size)))
        return
    started = machine()
    raw = {k: [] for k in CONFIGS}
    names = list(CONFIGS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])}
    for r in range(a.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            cmd = [sys.executable, __file__, "--child", str(CONFIGS[name]), "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--batch", str(a.batch), "--size", str(a.size)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            res = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
            raw[name].append(res)
            print(f"round {r} {name}: step {median(res['step_s']):.2f}s, +{res['train_mem_mb']:.0f} MB", flush=True)
    table = {}
    for name, rs in raw.items():
        table[name] = {"set_trainable_last": CONFIGS[name], "trainable_params": rs[0]["trainable_params"],
                       "step_s_median": median([t for r in rs for t in r["step_s"]]),
                       "train_mem_mb_median": median([r["train_mem_mb"] for r in rs]),
                       "peak_rss_mb_median": median([r["peak_rss_mb"] for r in rs])}
    full, head = table["full"], table["head_only"]
    figures = {"batch": a.batch, "size": a.size, "table": table,
               "speedup_head_vs_full": full["step_s_median"] / head["step_s_median"],
               "speedup_last2_vs_full": full["step_s_median"] / table["last_2_stages"]["step_s_median"],
               "mem_ratio_head_vs_full": head["train_mem_mb_median"] / full["train_mem_mb_median"],
               "meets_2x": full["step_s_median"] / head["step_s_median"] >= 2.0,
               "memory_method": "ru_maxrss (peak RSS) during the steps minus RSS before the first step, "
                                "one subprocess per configuration and round",
               "raw": raw}
    write("freeze_cost", figures, started=started)


if __name__ == "__main__":
    main()
