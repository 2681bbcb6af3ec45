"""LR schedules: a multiplier on each parameter group's LR at every step of a phase."""
from __future__ import annotations

import math

SCHEDULES = ("onecycle", "cosine", "sgdr", "constant")  # what `fit --schedule` offers
# "linear" (warm up, then straight down to 0: Hugging Face's default) is what `adapt` trains with.


def lr_factor(ph, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier on each group's LR at ``step`` (0-based) of ``total`` in phase ``ph``."""
    t = step / max(total, 1)
    if ph.schedule == "constant":
        return 1.0
    if ph.schedule == "onecycle":  # fastai: cosine up from lr/25 over 25%, cosine down to ~0
        up = 0.25
        if t < up:
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * t / up)) / 2
        return 1e-5 + (1 - 1e-5) * (1 + math.cos(math.pi * (t - up) / (1 - up))) / 2
    if ph.schedule == "cosine":
        w = ph.warmup
        if t < w:
            return (step + 1) / max(1, round(w * total))
        return (1 + math.cos(math.pi * (t - w) / max(1e-8, 1 - w))) / 2
    if ph.schedule == "linear":
        warm = max(1, int(ph.warmup * total))
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    if ph.schedule == "sgdr":  # cosine annealing with warm restarts (Loshchilov & Hutter)
        e, cycle = step / steps_per_epoch, ph.sgdr_cycle
        while e >= cycle:
            e -= cycle
            cycle *= ph.sgdr_mult
        return (1 + math.cos(math.pi * e / cycle)) / 2
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {ph.schedule!r}")
