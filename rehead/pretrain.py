"""Masked self-supervised pretraining of a tabular encoder (labels unused).

Each step hides a random ``mask_ratio`` of the (standardised) feature values of each row,
replacing them by 0 (the training mean), and trains encoder + a linear decoder to predict the
hidden values from the rest; the loss is the mean squared error on the hidden cells only.
Only the encoder is kept: ``save_backbone`` writes it so ``zoo.load(out)`` and
``rehead fit TABLE --model OUT`` reuse it (the decoder is thrown away, like a source head).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import MISSING, ConfigError
from .data import DataError
from .data.splits import has_split_column, split_column_parts
from .data.tabular import _as_list, _some, feature_columns, id_warning, read_table
from .recipes import Phase
from .rundir import RunDir
from .train.loop import TrainConfig, Trainer, seed_everything
from .zoo.runs import save_backbone
from .zoo.tabular import TabularBackbone


def check_options(width: int, depth: int, dropout: float, mask_ratio: float, epochs: int, lr: float,
                  weight_decay: float, batch_size: int, seed: int, rows: str, missing: str) -> None:
    """Every option's range, before the table is read or OUT is made (depth 0 crashed mid-run,
    batch size 0 divided by zero, width 0 saved an encoder fit refuses, lr -1 diverged)."""
    for name, v in (("width", width), ("depth", depth), ("epochs", epochs), ("batch-size", batch_size)):
        if v < 1:
            raise ConfigError(f"--{name} must be at least 1, got {v}")
    if not lr > 0:
        raise ConfigError(f"--lr must be > 0, got {lr}")
    if not 0 < mask_ratio < 1:
        raise ConfigError(f"--mask-ratio must be between 0 and 1 (exclusive), got {mask_ratio}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {dropout}")
    if not weight_decay >= 0:  # not a CLI option: the keyword's name
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if rows not in ("train", "all"):
        raise ConfigError(f"--rows must be train or all, got {rows!r}")
    if missing not in MISSING:
        raise ConfigError(f"--missing must be one of {', '.join(MISSING)}, got {missing!r}")


def label_of(table, label_column: str | None, echo=print) -> str | None:
    """The label column, left out of the inputs. None: ``label`` when the table has one; without
    it every column but the id and split columns is an input, which is said (a label named
    otherwise would be pretrained on)."""
    if label_column is not None:
        if label_column not in table.index:
            raise DataError(f"{table.path} has no column {label_column!r} (columns: {_some(table.header)}): "
                            "fix --label-column")
        return label_column
    if "label" in table.index:
        return "label"
    echo(f"warning: {table.path} has no 'label' column, so every column but the id and split columns is "
         "pretrained as an input: name a label column with --label-column (or leave it out with --id-columns)")
    return None


def first_text_cell(table, cols: list[str]):
    """(column, where, cell) of the first cell that is neither a number nor empty, or None."""
    lines = getattr(table.rows, "line", None)
    for c in cols:
        for i, v in enumerate(table.column(c)):
            v = v.strip()
            if v.lower() in ("", "na", "nan"):
                continue
            try:
                float(v)
            except ValueError:
                return c, f"line {lines[i]}" if lines else f"row {i + 1}", v
    return None


def input_matrix(table, cols: list[str], has_label: bool) -> np.ndarray:
    """The inputs as numbers; a text column is named with the option that leaves it out."""
    try:
        return table.matrix(cols)
    except DataError:
        bad = first_text_cell(table, cols)
        if bad is None:  # not a text cell (an infinite value): the table's own message says it
            raise
    c, at, v = bad
    fix = (f"leave it out with --id-columns {c}" if has_label else
           f"if it is the label, name it with --label-column {c}; else leave it out with --id-columns {c}")
    raise DataError(f"{table.path}: column {c!r} holds {v!r} ({at}), not a number, and pretraining reads "
                    f"every column but the label, id and split columns as input: {fix}")


def train_rows(table, split_column: str) -> list[int]:
    """The rows the split column calls train (read as fit reads it)."""
    try:
        parts = split_column_parts([v.strip() for v in table.column(split_column)], table.path)
    except DataError as e:
        raise DataError(f"{e}; or pass --rows all to pretrain on every row, whatever its split") from None
    if not parts.get("train"):
        raise DataError(f"{table.path}: no row has {split_column}=train (only {', '.join(parts)}): mark the rows "
                        "to pretrain on as train, or pass --rows all to pretrain on every row, the val and test rows "
                        "included (a later test score is then on rows the encoder has seen)")
    return parts["train"]


def pretrain_rows(path, label_column: str | None = None, id_columns=None, split_column: str = "split",
                  rows: str = "train", missing: str = "error", echo=print) -> tuple[np.ndarray, list[str]]:
    """Feature values (N, F) of the rows to pretrain on, and the feature column names.
    ``rows``: ``train`` (rows whose split column says train; all rows if there is none) or ``all``."""
    table = read_table(path)
    ids = _as_list(id_columns)
    for c in ids:
        if c not in table.index:
            raise DataError(f"{table.path} has no column {c!r} (columns: {_some(table.header)}): fix --id-columns")
    split = has_split_column(table.header, split_column, table.path)
    label = label_of(table, label_column, echo)
    cols = feature_columns(table, label or [], ids, split_column)
    w = id_warning(table, cols)
    if w:
        echo(f"warning: {w}")
    x = input_matrix(table, cols, has_label=label is not None)
    if rows == "train" and split:
        x = x[train_rows(table, split_column)]
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


class MaskedAutoencoder(nn.Module):
    """The encoder and a linear decoder: every feature value predicted from a corrupted row."""

    def __init__(self, enc: TabularBackbone, decoder: nn.Module):
        super().__init__()
        self.enc, self.decoder = enc, decoder

    def forward(self, corrupted):
        # The encoder is fed standardised values: run its stages directly, not begin() (which standardises).
        state = corrupted
        for k in range(len(self.enc)):
            state = self.enc.run_stage(k, state)
        return self.decoder(self.enc.pool(state))


class MaskedBatches:
    """(index, corrupted rows, (rows, mask)) batches of the shuffled table, a fresh mask each time."""

    def __init__(self, x, observed, batch_size: int, ratio: float, generator):
        self.x, self.observed, self.batch_size, self.ratio, self.gen = x, observed, batch_size, ratio, generator

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        perm = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i:i + self.batch_size]
            corrupted, m = mask_batch(self.x[idx], self.ratio, self.gen, self.observed[idx])
            yield idx, corrupted, (self.x[idx], m)


def pretrain(data, out, width: int = 256, depth: int = 3, dropout: float = 0.1, mask_ratio: float = 0.3,
             epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 32,
             seed: int = 0, label_column: str | None = None, id_columns=None, split_column: str = "split",
             rows: str = "train", missing: str = "error", overwrite: bool = False, progress: bool = True,
             echo=print) -> dict:
    """Pretrain ``tabular:mlp-<F>-<width>x<depth>`` by masked reconstruction on ``data``; save only the encoder.
    ``label_column`` (left out of the inputs) None: ``label`` when the table has one."""
    check_options(width, depth, dropout, mask_ratio, epochs, lr, weight_decay, batch_size, seed, rows, missing)
    t0 = time.perf_counter()
    x_np, cols = pretrain_rows(data, label_column, id_columns, split_column, rows, missing, echo)
    run = RunDir.create(out, overwrite=overwrite, inputs=[data])
    with run.kept_if_finished():
        seed_everything(seed)
        enc = TabularBackbone(len(cols), width, depth, dropout, spec=f"tabular:mlp-{len(cols)}-{width}x{depth}")
        if dropout != 0.1:  # 0.1 is the spec's default
            enc.spec += f"-d{dropout:g}"
        info = enc.fit_scaler(x_np, cols, missing)
        x_raw = torch.from_numpy(x_np)
        x = enc.scaler(x_raw)  # standardised; missing cells are 0 here
        observed = ~torch.isnan(x_raw)
        model = MaskedAutoencoder(enc, nn.Linear(width, len(cols)))
        # The training loop's metrics.csv: train_loss is the masked-cell MSE; there is no val split.
        trainer = Trainer(TrainConfig(seed=seed, task="reconstruction", progress=progress, checkpoints=False), run=run,
                          loss_fn=lambda pred, y: masked_mse(pred, *y))
        trainer.fit(model, (x, observed), None, [Phase("pretrain", epochs, lr, trainable=None, schedule="onecycle",
                                                       weight_decay=weight_decay)],
                    make_loader=lambda data, shuffle, gen: MaskedBatches(*data, batch_size, mask_ratio, gen))
        model.cpu()
        final, baseline = masked_errors(enc, model.decoder, x, observed, mask_ratio, seed + 1)
        extra = {"data_config": enc.data_config,
                 "pretrain": {"objective": "masked reconstruction (MSE on hidden standardised values)",
                              "data": str(Path(data).resolve()), "rows": rows, "n_rows": len(x),
                              "mask_ratio": mask_ratio, "epochs": epochs, "lr": lr, "seed": seed}}
        save_backbone(enc, run, extra)
        summary = {"spec": enc.spec, "n_rows": len(x), "features": len(cols), **info,
                   "masked_mse": final, "masked_mse_predicting_mean": baseline, "masked_mse_rows": "pretraining rows",
                   "wall_seconds": time.perf_counter() - t0}
        run.write_json("summary.json", summary)
    run.release()  # after kept_if_finished's finish: the old run gone before another claim
    echo(f"pretrained {enc.spec} on {len(x)} rows: {mse_verdict(final, baseline, len(x))} -> {run.path}")
    return summary


def mse_verdict(mse: float, baseline: float, n_rows: int) -> str:
    """The final figure, the rows it is measured on, and what it means against the column-mean baseline."""
    said = (f"masked-cell MSE {mse:.3f} on the {n_rows} pretraining rows (a fresh mask; no row held out), "
            f"against {baseline:.3f} predicting each column's mean")
    if mse < baseline:
        return said
    return (f"{said}: no better, so the encoder has learned nothing useful yet; try more --epochs, or a smaller "
            "--width or --mask-ratio")


@torch.no_grad()
def masked_errors(enc, decoder, x, observed, mask_ratio, seed) -> tuple[float, float]:
    """(the model's masked-cell MSE, the column mean's) on one fresh mask, dropout off. The mean is 0 once
    standardised, so its MSE on the same cells is about 1.0: below it, the encoder learned how features co-vary."""
    enc.eval()
    decoder.eval()
    corrupted, m = mask_batch(x, mask_ratio, torch.Generator().manual_seed(seed), observed)
    state = corrupted
    for k in range(len(enc)):
        state = enc.run_stage(k, state)
    return float(masked_mse(decoder(enc.pool(state)), x, m)), float(masked_mse(torch.zeros_like(x), x, m))
