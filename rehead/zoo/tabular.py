"""``tabular:`` encoders: MLPs for numeric tables, whose stages are their blocks.

``tabular:mlp-7129-256x3`` is an MLP taking 7129 features through 3 blocks of width 256
(each block: Linear -> LayerNorm -> GELU -> Dropout). There are no downloadable weights:
the weights are random (seeded) until ``rehead pretrain`` (masked reconstruction) or
``rehead fit`` trains them. LayerNorm, not BatchNorm: tables are often a few dozen rows.

The input standardisation (training-row mean/std) lives in the ``scaler`` submodule as
buffers, so it is saved with the weights and survives ``cut``.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from . import ModelNotFound, register_source
from .backbone import Backbone

SPEC_RE = re.compile(r"^mlp-(\d+)-(\d+)x(\d+)(?:-d([0-9.]+))?$")


class Standardize(nn.Module):
    """(x - mean) / std with buffers; with impute, NaN becomes 0 after scaling (the training mean)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, x):
        x = (x - self.mean) / self.std
        return torch.nan_to_num(x, nan=0.0)


def block(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.GELU(), nn.Dropout(dropout))


class TabularBackbone(Backbone):
    modality = "tabular"

    def __init__(self, in_features: int, width: int, depth: int, dropout: float = 0.1, spec: str = ""):
        stages = {f"block{i}": block(in_features if i == 0 else width, width, dropout) for i in range(depth)}
        super().__init__(stages, {"modality": "tabular", "in_features": in_features}, spec)
        self.in_features = in_features
        self.scaler = Standardize(in_features)

    def begin(self, inputs):
        return self.scaler(inputs.float())

    def is_fitted(self) -> bool:
        return bool(self.scaler.fitted) and "columns" in self.data_config

    def fit_scaler(self, x: np.ndarray, columns: list[str], missing: str = "error") -> dict:
        """Mean/std per column of the training rows ``x``. A constant column (std 0) gets std 1:
        it standardises to 0 and carries no information, instead of dividing by zero."""
        # float64: a column of values ~1e20 (fine in float32) has a variance ~1e40 that float32 reads as inf
        t = torch.from_numpy(np.asarray(x, dtype=np.float64))
        mean = torch.nanmean(t, 0)
        mean = torch.nan_to_num(mean, nan=0.0)  # a column empty on every training row
        var = torch.nanmean((t - mean) ** 2, 0)
        std = torch.nan_to_num(var.sqrt(), nan=0.0)
        constant = std < 1e-8 * torch.clamp(mean.abs(), min=1.0)  # no spread beyond rounding
        std[constant] = 1.0
        self.scaler.mean.copy_(mean)
        self.scaler.std.copy_(std)
        self.scaler.fitted.fill_(True)
        self.data_config.update({"columns": list(columns), "missing": missing,
                                 "constant_columns": int(constant.sum()), "standardised_on_rows": len(t)})
        self._weights_id = None
        return {"constant_columns": int(constant.sum())}


def parse_spec(name: str) -> tuple[int, int, int, float]:
    m = SPEC_RE.match(name)
    if not m:
        raise ModelNotFound(f"tabular:{name} is not a tabular encoder name: use tabular:mlp-<features>-<width>x<depth> "
                            "(e.g. tabular:mlp-7129-256x3, optional dropout suffix -d0.2)")
    f, w, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if min(f, w, d) < 1:
        raise ModelNotFound(f"tabular:{name}: features, width and depth must be >= 1")
    return f, w, d, float(m.group(4)) if m.group(4) else 0.1


def _load(name: str, pretrained: bool = True) -> Backbone:
    f, w, d, p = parse_spec(name)
    # Random init either way (seeded by the caller): an MLP spec names an architecture, not weights.
    return TabularBackbone(f, w, d, p, spec=f"tabular:{name}")


def _list() -> list[dict]:
    return [{"spec": "tabular:mlp-<features>-<width>x<depth>", "modality": "tabular", "offline": True,
             "note": "MLP encoder for numeric tables, random init; pretrain it with `rehead pretrain TABLE`"}]


register_source("tabular", "MLP encoders for numeric tables", _list)(_load)
