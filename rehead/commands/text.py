"""``rehead adapt``: continue pretraining a language model on unlabelled domain text."""
from __future__ import annotations

from typing import Optional

import typer

from ..cli import app, guarded, restart_if_interrupted


@app.command()
@guarded
def adapt(corpus: str = typer.Argument(..., help=".txt (one passage per line), a CSV with a text column, "
                                                "or a folder with train.csv"),
          model: str = typer.Option(..., "--model", "-m", help="hf:<hub id or local dir>, packaged:minilm, "
                                                                "or an earlier adapt directory"),
          out: str = typer.Option(..., "--out", "-o", help="run directory for the adapted model"),
          objective: str = typer.Option("auto", help="auto | causal (next token) | masked (masked tokens)"),
          epochs: int = typer.Option(1, help="passes over the corpus; 0: only measure perplexity and save "
                                             "the model as it is (a baseline)"),
          lr: float = 5e-5, batch_size: int = 16,
          max_length: Optional[int] = typer.Option(None, help="passages are cut to this many tokens while adapting "
                                                             "(default 128, or the model's maximum if smaller; the "
                                                             "adapted backbone keeps the source's max length and "
                                                             "pooling)"),
          val_fraction: float = typer.Option(0.1, help="share of passages held out to measure perplexity"),
          mlm_probability: float = 0.15, seed: int = 0,
          text_column: str = typer.Option("text", help="the text column when CORPUS is a CSV"),
          overwrite: bool = typer.Option(False, help="replace an existing run directory"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Continue training a language model on a domain corpus; report held-out perplexity before
    and after. The output directory is a backbone: `rehead fit DATA --model OUT`."""
    from ..adapt import adapt as run_adapt
    with restart_if_interrupted("rehead adapt", out):
        run_adapt(corpus, model, out, objective=objective, epochs=epochs, lr=lr, batch_size=batch_size,
                  max_length=max_length, val_fraction=val_fraction, mlm_probability=mlm_probability, seed=seed,
                  text_column=text_column, overwrite=overwrite, progress=not quiet, echo=typer.echo)
