"""``rehead pretrain`` (masked self-supervised pretraining of a table encoder) and
``rehead fit-multitask`` (one backbone, one head per label column)."""
from __future__ import annotations

from typing import Optional

import typer

from ..cli import app, guarded, restart_if_interrupted


@app.command()
@guarded
def pretrain(data: str = typer.Argument(..., help="CSV of numeric feature columns"),
             out: str = typer.Option(..., "--out", "-o", help="directory for the encoder"),
             width: int = typer.Option(256, help="width of each MLP block"),
             depth: int = typer.Option(3, help="number of blocks (= stages)"),
             dropout: float = 0.1,
             mask_ratio: float = typer.Option(0.3, help="fraction of feature values hidden per row"),
             epochs: int = 200, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
             label_column: Optional[str] = typer.Option(
                 None, help="the label column, left out of the inputs (default: label, when the table has one)"),
             id_columns: Optional[str] = typer.Option(None, help="comma-separated identifier columns to leave out"),
             split_column: str = typer.Option("split", help="when present, only its 'train' rows are used"),
             rows: str = typer.Option("train", help="train | all (all: also the val/test rows' features, no labels)"),
             missing: str = typer.Option("error", help="error | mean: empty cells are an error, or the column mean"),
             overwrite: bool = typer.Option(False, help="replace an existing OUT"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")):
    """Pretrain an MLP encoder on a table by masked reconstruction; save only the encoder
    (then: rehead fit TABLE --model OUT)."""
    from ..pretrain import pretrain as run
    with restart_if_interrupted("rehead pretrain", out):
        run(data, out, width=width, depth=depth, dropout=dropout, mask_ratio=mask_ratio, epochs=epochs, lr=lr,
            batch_size=batch_size, seed=seed, label_column=label_column, id_columns=id_columns,
            split_column=split_column, rows=rows, missing=missing, overwrite=overwrite, progress=not quiet,
            echo=typer.echo)


@app.command("fit-multitask")
@guarded
def fit_multitask(data: str = typer.Argument(..., help="CSV with two or more label columns"),
                  label_columns: str = typer.Option(..., help="comma-separated label columns, one head each"),
                  model: str = typer.Option(..., "--model", "-m", help="e.g. tabular:mlp-20-64x2 or a pretrained encoder dir"),
                  out: str = typer.Option(..., "--out", "-o"),
                  weights: Optional[str] = typer.Option(None, help="comma-separated loss weights (default all 1)"),
                  id_columns: Optional[str] = None, split_column: str = "split",
                  strategy: str = typer.Option("full", help="head | finetune | gradual | full (the heads train "
                                               "live: no extract or auto)"),
                  epochs: Optional[int] = None, lr: Optional[float] = None, batch_size: int = 32, seed: int = 0,
                  val_fraction: float = 0.2, overwrite: bool = False,
                  quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")):
    """Train one head per label column on a shared backbone; each head is evaluated on its own, on val
    and (scored once, never for selection) on the split=test rows."""
    from ..multitask import fit_multitask as run
    with restart_if_interrupted("rehead fit-multitask", out):
        run(data, label_columns, model, out, weights=weights, id_columns=id_columns, split_column=split_column,
            strategy=strategy, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, val_fraction=val_fraction,
            overwrite=overwrite, progress=not quiet, echo=typer.echo)
