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
                                                    "averaging their calibrated predicted probabilities"),
             overwrite: bool = typer.Option(False, help="replace an existing directory")):
    """Average several runs' calibrated predicted probabilities (each run's softmax(logits / its T), as
    `rehead predict` shows them) or, with --soup, their weights. The result is a run directory:
    `rehead evaluate OUT DATA`, `rehead predict OUT ...`."""
    from ..ensemble import describe, make_ensemble
    # warnings (members with no record of their training samples: the seen check cannot cover them) on stderr
    d = make_ensemble(runs, out, soup=soup, overwrite=overwrite, echo=lambda w: typer.echo(w, err=True))
    typer.echo(f"{'soup' if soup else 'ensemble'} of {len(runs)} runs: {d}")
    # say what the mean is of: members' calibrated probabilities, or (a soup) their weights
    typer.echo(f"  predicts {describe(d)}" if not soup else
               "  one model of the members' element-wise mean weights (no temperature: T = 1)")
