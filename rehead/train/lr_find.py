"""LR range test (Smith 2015, as in fastai's lr_find): raise the LR exponentially over a
few hundred steps, record the smoothed loss, suggest a range. Leaves no trace: weights,
optimizer and every RNG are restored, so a fit after it gives the same result as without."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from .loop import rng_state, set_rng_state


def lr_find(model, loader, loss_fn, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            beta: float = 0.98, diverge: float = 4.0, param_groups=None) -> dict:
    """Returns {"lrs", "losses" (smoothed), "raw_losses", "suggested", "range"}."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_rng = rng_state()
    was_training = model.training
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    # Groups keep their LR ratios (discriminative LRs): the test scales them together.
    base = [g.get("lr", 1.0) for g in groups]
    top = max(base)
    ratios = [b / top for b in base]
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "lr"} | {"lr": start_lr} for g in groups])
    mult = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, raw, smooth = [], [], []
    avg, best, step = 0.0, math.inf, 0
    model.train()
    try:
        while step < steps:
            for _, x, y in loader:
                if len(y) == 0:
                    continue
                lr = start_lr * mult ** step
                for g, r in zip(opt.param_groups, ratios):
                    g["lr"] = lr * r
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                v = loss.item()
                avg = beta * avg + (1 - beta) * v
                sm = avg / (1 - beta ** (step + 1))
                lrs.append(lr)
                raw.append(v)
                smooth.append(sm)
                best = min(best, sm)
                step += 1
                if step >= steps or not math.isfinite(sm) or sm > diverge * best:
                    step = steps
                    break
    finally:
        model.load_state_dict(saved_model)
        set_rng_state(saved_rng)
        model.train(was_training)
    return {"lrs": lrs, "losses": smooth, "raw_losses": raw, **suggest(lrs, smooth)}


def suggest(lrs: list[float], losses: list[float]) -> dict:
    """Steepest descent of the smoothed loss (in log-LR), and a range around it: from 10x
    below it up to the LR of minimum loss / 10 (the usual rule of thumb)."""
    if len(lrs) < 5:
        return {"suggested": lrs[0] if lrs else None, "range": [lrs[0], lrs[-1]] if lrs else None}
    n = max(len(losses) - 3, 3)  # ignore the blow-up at the end
    g = np.gradient(np.array(losses[:n]), np.log(np.array(lrs[:n])))
    steep = float(lrs[int(np.argmin(g))])
    lr_min_loss = float(lrs[int(np.argmin(losses[:n]))])
    return {"suggested": steep, "min_loss_lr": lr_min_loss, "range": [steep / 10, max(steep, lr_min_loss / 10)]}


def plot(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    if result.get("suggested"):
        ax.axvline(result["suggested"], color="red", ls="--", label=f"steepest {result['suggested']:.1e}")
        lo, hi = result["range"]
        ax.axvspan(lo, hi, color="green", alpha=0.15, label=f"range {lo:.1e}..{hi:.1e}")
        ax.legend()
    ax.set_title("LR finder")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
