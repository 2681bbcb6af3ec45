"""Heads: the new, untrained layers grafted on a cut backbone."""
from __future__ import annotations

from torch import nn

from .tasks import TASKS  # noqa: F401  (re-exported)


def make_head(in_dim: int, out_dim: int, kind: str = "linear", hidden: int = 512,
              dropout: float = 0.0) -> nn.Module:
    """``linear``: [dropout] -> linear. ``mlp``: linear -> ReLU -> dropout -> linear."""
    if kind == "linear":
        layers = ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(in_dim, out_dim)]
    elif kind == "mlp":
        layers = [nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_dim)]
    else:
        raise ValueError(f"head kind must be 'linear' or 'mlp', got {kind!r}")
    return nn.Sequential(*layers)


def loss_for(task: str, **kw) -> nn.Module:
    """The task's loss (``rehead.tasks.loss_for``: class weights, label smoothing, regression target)."""
    from .tasks import loss_for as _loss_for
    return _loss_for(task, **kw)
