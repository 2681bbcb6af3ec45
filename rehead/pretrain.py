"""Masked self-supervised pretraining of a tabular encoder (labels unused).

Each step hides a random ``mask_ratio`` of the (standardised) feature values of each row,
replacing them by 0 (the training mean), and trains encoder + a linear decoder to predict the
hidden values from the rest; the loss is the mean squared error on the hidden cells only.
Only the encoder is kept: ``save_backbone`` writes it so ``zoo.load(out)`` and
``rehead fit TABLE --model OUT`` reuse it (the decoder is thrown away, like a source head).
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DataError
from .data.tabular import _as_list, feature_columns, read_table
from .run import prepare_run_dir, save_backbone
from .train.loop import seed_everything
from .zoo.tabular import TabularBackbone


def pretrain_rows(path, label_column: str | None = "label", id_columns=None, split_column: str = "split",
                  rows: str = "train", missing: str = "error") -> tuple[np.ndarray, list[str]]:
    """Feature values (N, F) of the rows to pretrain on, and the feature column names.
    ``rows``: ``train`` (rows whose split column says train; all rows if there is none) or ``all``."""
    table = read_table(path)
    ids = _as_list(id_columns)
    for c in ids:
        if c not in table.index:
            raise DataError(f"{table.path} has no id column {c!r}")
    label = label_column if label_column and label_column in table.index else None
    cols = feature_columns(table, label or [], ids, split_column)
    x = table.matrix(cols)
    if rows not in ("train", "all"):
        raise DataError(f"rows must be 'train' or 'all', got {rows!r}")
    if rows == "train" and split_column in table.index:
        keep = [i for i, v in enumerate(table.column(split_column)) if v.strip() == "train"]
        if not keep:
            raise DataError(f"{table.path}: no row has {split_column}=train (use rows='all' to pretrain on every row)")
        x = x[keep]
    if np.isnan(x).any() and missing == "error":
        raise DataError(f"{table.path}: {int(np.isnan(x).sum())} empty or NaN cell(s) in the pretraining rows: "
                        "fill them, or pass --missing mean")
    if len(x) < 2:
        raise DataError(f"{table.path}: masked pretraining needs at least 2 rows, got {len(x)}")
    return x, cols


def mask_batch(x: torch.Tensor, ratio: float, generator: torch.Generator, observed: torch.Tensor | None = None):
    """(corrupted x, mask): masked cells set to 0; only observed (non-missing) cells are ever targets."""
    m = torch.rand(x.shape, generator=generator) < ratio
    if observed is not None:
        m &= observed
    return x.masked_fill(m, 0.0), m


def masked_mse(pred, target, mask) -> torch.Tensor:
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def pretrain(data, out, width: int = 256, depth: int = 3, dropout: float = 0.1, mask_ratio: float = 0.3,
             epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 32,
             seed: int = 0, label_column: str | None = "label", id_columns=None, split_column: str = "split",
             rows: str = "train", missing: str = "error", overwrite: bool = False, progress: bool = True,
             echo=print) -> dict:
    """Pretrain ``tabular:mlp-<F>-<width>x<depth>`` by masked reconstruction on ``data``; save only the encoder."""
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be between 0 and 1 (exclusive), got {mask_ratio}")
    t0 = time.perf_counter()
    out = prepare_run_dir(out, overwrite=overwrite)
    x_np, cols = pretrain_rows(data, label_column, id_columns, split_column, rows, missing)
    seed_everything(seed)
    enc = TabularBackbone(len(cols), width, depth, dropout, spec=f"tabular:mlp-{len(cols)}-{width}x{depth}")
    if dropout != 0.1:  # 0.1 is the spec's default
        enc.spec += f"-d{dropout:g}"
    info = enc.fit_scaler(x_np, cols, missing)
    x_raw = torch.from_numpy(x_np)
    x = enc.scaler(x_raw)  # standardised; missing cells are 0 here
    observed = ~torch.isnan(x_raw)
    decoder = nn.Linear(width, len(cols))
    opt = torch.optim.AdamW(list(enc.parameters()) + list(decoder.parameters()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(x) // batch_size))
    gen = torch.Generator().manual_seed(seed)
    history = []
    from tqdm.auto import trange
    for epoch in trange(epochs, desc="pretrain", unit="ep", disable=not progress):
        enc.train()
        decoder.train()
        perm = torch.randperm(len(x), generator=gen)
        tot, n = 0.0, 0
        for i in range(0, len(x), batch_size):
            xb, ob = x[perm[i:i + batch_size]], observed[perm[i:i + batch_size]]
            corrupted, m = mask_batch(xb, mask_ratio, gen, ob)
            # The encoder is fed standardised values: run its stages directly, not begin() (which standardises).
            state = corrupted
            for k in range(len(enc)):
                state = enc.run_stage(k, state)
            loss = masked_mse(decoder(enc.pool(state)), xb, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(xb)
            n += len(xb)
        history.append({"epoch": epoch + 1, "masked_mse": tot / n})
    final = reconstruction_error(enc, decoder, x, observed, mask_ratio, seed + 1)
    extra = {"data_config": enc.data_config,
             "pretrain": {"objective": "masked reconstruction (MSE on hidden standardised values)",
                          "data": str(Path(data).resolve()), "rows": rows, "n_rows": len(x),
                          "mask_ratio": mask_ratio, "epochs": epochs, "lr": lr, "seed": seed}}
    save_backbone(enc, out, extra)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "masked_mse"])
        w.writeheader()
        w.writerows(history)
    summary = {"spec": enc.spec, "n_rows": len(x), "features": len(cols), **info,
               "masked_mse": final, "masked_mse_predicting_mean": 1.0 if len(x) > 1 else None,
               "wall_seconds": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    echo(f"pretrained {enc.spec} on {len(x)} rows: masked-cell MSE {final:.3f} "
         f"(predicting the column mean: 1.0) -> {out}")
    return summary


@torch.no_grad()
def reconstruction_error(enc, decoder, x, observed, mask_ratio, seed) -> float:
    """Masked-cell MSE with a fresh mask, dropout off. On standardised data predicting the
    column mean scores about 1.0, so below 1 means the encoder learned how features co-vary."""
    enc.eval()
    decoder.eval()
    corrupted, m = mask_batch(x, mask_ratio, torch.Generator().manual_seed(seed), observed)
    state = corrupted
    for k in range(len(enc)):
        state = enc.run_stage(k, state)
    return float(masked_mse(decoder(enc.pool(state)), x, m))
