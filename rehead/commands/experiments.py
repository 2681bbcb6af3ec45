"""``rehead probe | rank | compare | report | export``: experiments one command each, and their outputs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..cli import PROCESSES_HELP, app, fail, guarded, on_interrupt, relaunched, restart_if_interrupted
from ..config import DEFAULT_MODEL as DEFAULT


def _out(out: Optional[str], kind: str, data: str) -> str:
    return out or f"runs/{kind}-{Path(data).stem}"


def _report(res: dict | None, no_report: bool):
    if res is not None and not no_report:  # None: a process other than the first under accelerate launch
        from ..report import write_report
        with on_interrupt(lambda: _report_interrupted(res["dir"])):
            typer.echo(f"report: {write_report(res['dir'], echo=lambda *_: None)}")


def _report_interrupted(run_dir: str):
    """Not "nothing was saved": the run finished; only its report.html is missing."""
    fail(f"interrupted while writing the report: {run_dir} holds the finished run; `rehead report {run_dir}` "
         "writes its report.html", code=130)


MODEL_HELP = "backbone spec (default: the data's, as `rehead fit` takes it: packaged:efficientnet_lite2 for " \
             "images, packaged:minilm for text)"
WORKERS_HELP = "data loading processes (default 2; on a GPU machine every core but one, at most 16)"


def _check_seed(seed: int) -> None:
    """--seed goes to scikit-learn (the val split, the probes), which refused one outside its range as a
    bad split or after the whole extraction, leaving a run directory; refused here, before any work."""
    from ..config import check_seed
    check_seed(seed)


def _workers(workers: int | None) -> int:
    from ..precision import default_workers
    return default_workers() if workers is None else workers


@app.command()
@guarded
def probe(data: str = typer.Argument(..., help="folder of class folders, train/val folder, or CSV"),
          model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
          cuts: str = typer.Option("all", help="all | 3,5,9 | 3-9 | stage names"),
          out: Optional[str] = typer.Option(None, "--out", "-o", help="run directory (default runs/probe-<data>)"),
          c: Optional[float] = typer.Option(None, "--C", help="inverse L2 strength of the probes (default: cross-validated on "
                                                              "train, as fit's head)"),
          batch_size: int = 32, workers: Optional[int] = typer.Option(None, help=WORKERS_HELP), seed: int = 0,
          val_fraction: float = 0.2, cache_dir: Optional[str] = None, no_cache: bool = typer.Option(False, "--no-cache"),
          overwrite: bool = False, no_report: bool = typer.Option(False, "--no-report"),
          quiet: bool = typer.Option(False, "--quiet", "-q"),
          processes: int = typer.Option(1, "--processes", help=PROCESSES_HELP),
          text_column: Optional[str] = typer.Option(None, help="text CSVs: the column holding the text (default text)"),
          image_column: Optional[str] = typer.Option(None, help="image CSVs: the path column (default path)"),
          label_column: Optional[str] = typer.Option(None, help="the column holding the label (default label)")):
    """Cut-depth sweep: a linear head at every cut depth, on features cached from one forward pass.

    Val chooses the best cut; a test split, if the data has one, scores that cut's probe once."""
    _check_seed(seed)
    if relaunched(processes):
        return
    from ..experiments.probe import probe as run_probe
    out = _out(out, "probe", data)
    with restart_if_interrupted("rehead probe", out):  # no --resume: an interrupted probe leaves no half --out
        res = run_probe(data, model=model, cuts=cuts, out=out, C=c, batch_size=batch_size,
                        workers=_workers(workers), seed=seed, val_fraction=val_fraction, cache_dir=cache_dir,
                        use_cache=not no_cache, overwrite=overwrite, progress=not quiet,
                        data_kw={"text_column": text_column, "image_column": image_column,
                                 "label_column": label_column})
    _report(res, no_report)


@app.command()
@guarded
def rank(data: str = typer.Argument(...),
         models: str = typer.Option(..., help="comma-separated specs; SPEC@CUT ranks a cut of a backbone"),
         out: Optional[str] = typer.Option(None, "--out", "-o"),
         c: Optional[float] = typer.Option(None, "--C", help="inverse L2 strength of the check probes (default: "
                                                              "cross-validated on train, as fit's head)"),
         batch_size: int = 32, workers: Optional[int] = typer.Option(None, help=WORKERS_HELP), seed: int = 0,
         val_fraction: float = 0.2, cache_dir: Optional[str] = None, no_cache: bool = typer.Option(False, "--no-cache"),
         overwrite: bool = False, no_report: bool = typer.Option(False, "--no-report"),
         quiet: bool = typer.Option(False, "--quiet", "-q"),
         processes: int = typer.Option(1, "--processes", help=PROCESSES_HELP),
         text_column: Optional[str] = typer.Option(None, help="text CSVs: the column holding the text (default text)"),
         image_column: Optional[str] = typer.Option(None, help="image CSVs: the path column (default path)"),
         label_column: Optional[str] = typer.Option(None, help="the column holding the label (default label)")):
    """Score backbones for DATA without fine-tuning (LogME), each checked by a linear probe.

    SPEC@CUT candidates naming the same cut are ranked once. A test split, if any, scores each probe once."""
    _check_seed(seed)
    if relaunched(processes):
        return
    from ..experiments.rank import rank as run_rank
    out = _out(out, "rank", data)
    with restart_if_interrupted("rehead rank", out):  # no --resume: an interrupted rank leaves no half --out
        res = run_rank(data, models, out=out, C=c, batch_size=batch_size, workers=_workers(workers),
                       seed=seed, val_fraction=val_fraction, cache_dir=cache_dir, use_cache=not no_cache,
                       overwrite=overwrite, progress=not quiet,
                       data_kw={"text_column": text_column, "image_column": image_column,
                                "label_column": label_column})
    _report(res, no_report)


@app.command()
@guarded
def compare(data: str = typer.Argument(...), model: str = typer.Option(DEFAULT, "--model", "-m"),
            fractions: str = typer.Option("0.05,0.1,0.25,0.5,1.0", help="fractions of the training split"),
            out: Optional[str] = typer.Option(None, "--out", "-o"),
            strategy: str = typer.Option("auto", metavar="<extract|head|finetune|gradual|full|auto>",
                                         help="the transfer arm's strategy"),
            reference: float = typer.Option(0.1, help="fraction whose transfer accuracy scratch must match"),
            scratch_size: int = typer.Option(128, help="input side of the scratch CNN, px"),
            scratch_epochs: int = typer.Option(15, help="epochs of the scratch CNN; raised (and said) where a "
                                               "fraction needs more to take --scratch-min-steps steps"),
            scratch_min_steps: int = 30, scratch_lr: float = 1e-3,
            transfer_epochs: Optional[int] = typer.Option(None, help="epochs of the transfer arm (strategy default)"),
            batch_size: int = 32, workers: int = 2, seed: int = 0, val_fraction: float = 0.2,
            cache_dir: Optional[str] = None, overwrite: bool = False,
            no_report: bool = typer.Option(False, "--no-report"), quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Transfer vs a small CNN trained from scratch, as the training data shrinks.

    Both arms keep their last epoch; a test split, if any, scores both once and decides the finding."""
    from ..experiments.compare import compare as run_compare
    out = _out(out, "compare", data)
    with restart_if_interrupted("rehead compare", out):  # no --resume: an interrupted compare leaves no half --out
        res = run_compare(data, model=model, fractions=fractions, out=out, strategy=strategy,
                          reference=reference, scratch_size=scratch_size, scratch_epochs=scratch_epochs,
                          scratch_min_steps=scratch_min_steps, scratch_lr=scratch_lr, transfer_epochs=transfer_epochs,
                          batch_size=batch_size, workers=workers, seed=seed, val_fraction=val_fraction,
                          cache_dir=cache_dir, overwrite=overwrite, progress=not quiet)
    _report(res, no_report)


@app.command()
@guarded
def report(run_dir: str, out: Optional[str] = typer.Option(None, "--out", "-o", help="an .html file or a folder "
                                                                                   "(default RUN_DIR/report.html)"),
           gallery: int = typer.Option(60, help="how many val predictions to show"),
           overwrite: bool = typer.Option(False, help="replace an existing --out file")):
    """Write report.html for any run (fit, probe, rank, compare): self-contained, opens offline."""
    from ..report import write_report
    typer.echo(str(write_report(run_dir, out=out, gallery=gallery, echo=typer.echo, overwrite=overwrite)))


@app.command()
@guarded
def export(run_dir: str, format: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript"),
           out: Optional[str] = typer.Option(None, "--out", "-o", help="a file, or a folder to write model.onnx|.pt into (default RUN_DIR/export/)"),
           opset: Optional[int] = typer.Option(None, help="ONNX opset (default 17); not for torchscript"),
           overwrite: bool = False, as_json: bool = typer.Option(False, "--json")):
    """The trained model (prefix + head, eval mode) as ONNX or TorchScript, with a JSON sidecar."""
    from ..export import export as run_export
    with restart_if_interrupted("rehead export", out or f"{Path(run_dir) / 'export'}/"):  # nothing half left
        res = run_export(run_dir, fmt=format, out=out, overwrite=overwrite, opset=opset)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        return
    shapes = [i["shape"] for i in res["input"]] if isinstance(res["input"], list) else [res["input"]["shape"]]
    outputs = {"regression": "1 output: the standardised value, unscaled by the sidecar's target mean/std",
               "multilabel": f"{len(res['labels'])} labels, one sigmoid each"}.get(res.get("task"),
                                                                                     f"{len(res['labels'])} classes")
    typer.echo(f"{res['path']}  (input {', '.join(map(str, shapes))}, {outputs})")
    typer.echo(f"{res['sidecar']}  (preprocessing and {'label map' if res.get('task') != 'regression' else 'target'})")
    if "tokenizer" in res:
        typer.echo(f"{Path(res['path']).with_name(res['tokenizer']['dir'])}/  (the tokenizer: {res['tokenizer']['how']})")
    if res.get("precision", {}).get("note"):  # a bf16 run: the graph's fp32 figures are not predict's exactly
        typer.echo(f"note: {res['precision']['note']}")
