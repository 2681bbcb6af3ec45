"""LR range test (Smith 2015, as in fastai's lr_find): raise the LR exponentially over a
few hundred steps, record the smoothed loss, suggest a range. Leaves no trace: weights,
optimizer and every RNG are restored, so a fit after it gives the same result as without."""
from __future__ import annotations

import copy

import numpy as np

from ..recipes import Phase
from .callbacks import LRRange
from .loop import Trainer, TrainConfig, rng_state, set_rng_state


def lr_find(model, loader, loss_fn, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            beta: float = 0.98, diverge: float = 4.0, param_groups=None, accelerator=None) -> dict:
    """The training loop with the ``LRRange`` callback on ``loader``'s (index, x, y) batches.
    ``param_groups``: their LRs set the ratios between groups (discriminative LRs are tested
    together). Returns {"lrs", "losses" (smoothed), "raw_losses", "suggested", "range"}."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_rng = rng_state()
    was_training = model.training
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1.0}]
    rng = LRRange(start_lr, end_lr, steps, beta, diverge)
    # local: every process runs the same test on its own (no DDP: processes may stop at different steps)
    trainer = Trainer(TrainConfig(seed=None, progress=False, local=True, select_best=False, checkpoints=False),
                      accelerator=accelerator, callbacks=[rng], loss_fn=loss_fn)
    try:  # one epoch is at least one step: `steps` epochs always reach the end of the test
        trainer.fit(model, loader, None, [Phase("lr_find", steps, max(g.get("lr", 1.0) for g in groups),
                                                trainable=None, schedule="constant")],
                    make_loader=lambda data, shuffle, generator: data, param_groups=groups)
    finally:
        model.load_state_dict(saved_model)
        set_rng_state(saved_rng)
        model.train(was_training)
    return {"lrs": rng.lrs, "losses": rng.smooth, "raw_losses": rng.raw, **suggest(rng.lrs, rng.smooth)}


def suggest(lrs: list[float], losses: list[float]) -> dict:
    """Where the smoothed loss falls fastest, its slope taken over about a decade of LR (point to
    point, a ripple of a flat curve wins: 1.5e-7 was suggested for a curve whose only descent is at
    1e-2..1e-1; nor a recovery from an early bump), and never above the LR of minimum loss / 10 (the
    usual rule of thumb). The range:
    10x below it up to that bound. ``flat``: the loss never fell by 2% of its start."""
    if len(lrs) < 5:
        return {"suggested": lrs[0] if lrs else None, "range": [lrs[0], lrs[-1]] if lrs else None}
    n = max(len(losses) - 3, 3)  # ignore the blow-up at the end
    x, y = np.log(np.array(lrs[:n])), np.array(losses[:n])
    lr_min_loss = float(lrs[int(np.argmin(y))])
    w = int(np.clip(round(np.log(10) / max((x[-1] - x[0]) / (n - 1), 1e-12)), 1, n - 1))  # points in a decade
    slopes = (y[w:] - y[:-w]) / (x[w:] - x[:-w])
    # only a fall that ends under the starting loss by 2% counts: the recovery from an early bump of
    # the noisy first steps is not a descent (1.21 -> 1.03 at 2e-7 beat a regression head's real
    # descent at 1e-2..1e-1)
    real = y[w:] < y[0] - 0.02 * abs(y[0])
    i = int(np.argmin(np.where(real, slopes, np.inf))) if real.any() else int(np.argmin(slopes))
    steep = float(np.exp((x[i] + x[i + w]) / 2))
    suggested = max(min(steep, lr_min_loss / 10), float(lrs[0]))  # within the range tested
    return {"suggested": suggested, "steepest": steep, "min_loss_lr": lr_min_loss,
            "range": [suggested / 10, max(suggested, lr_min_loss / 10)], "flat": bool(y[0] - y.min() < 0.02 * abs(y[0]))}


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
        ax.axvline(result["suggested"], color="red", ls="--", label=f"suggested {result['suggested']:.1e}")
        lo, hi = result["range"]
        ax.axvspan(lo, hi, color="green", alpha=0.15, label=f"range {lo:.1e}..{hi:.1e}")
        ax.legend()
    ax.set_title("LR finder")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
