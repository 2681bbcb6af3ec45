"""``rehead ensemble``: combine finished runs into one predictor."""
from __future__ import annotations

from typing import List

import typer

from ..cli import app, guarded


@app.command()
@guarded
def ensemble(runs: List[str] = typer.Argument(..., help="two or more fit run directories with the same classes"),
             out: str = typer.Option(..., "--out", "-o", help="directory for the ensemble"),
             soup: bool = typer.Option(False, help="average the members' weights into one model (same "
                                                    "architecture and pretrained weights) instead of "
                                                    "averaging their predicted probabilities"),
             overwrite: bool = typer.Option(False, help="replace an existing directory")):
    """Average several runs' predicted probabilities (or, with --soup, their weights).
    The result is a run directory: `rehead evaluate OUT DATA`, `rehead predict OUT ...`."""
    from ..ensemble import make_ensemble
    d = make_ensemble(runs, out, soup=soup, overwrite=overwrite)
    typer.echo(f"{'soup' if soup else 'ensemble'} of {len(runs)} runs: {d}")
