"""The ``rehead`` command line: thin wrappers over the Python API."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from . import interrupts
from .config import FitConfig

MODEL_HELP = FitConfig.__dataclass_fields__["model"].metadata["help"]  # fit's, defaults included

class _Commands(typer.core.TyperGroup):
    """Click's "unexpected extra argument" with a hint where the extras are what the shell made of an
    unquoted brace pattern (shards/train-{000..099}.tar became one argument a shard)."""

    def invoke(self, ctx):
        # click's UsageError, in the copy of click typer carries
        usage = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
        try:
            return super().invoke(ctx)
        except usage as e:
            if "unexpected extra argument" in e.message and _expanded_pattern(e.message):
                e.message += (": several shard paths, as the shell expands an unquoted brace pattern; quote it, "
                              "e.g. 'shards/train-{000..099}.tar', or give the folder of shards")
            raise


def _expanded_pattern(message: str) -> bool:
    """Whether click's extras ("... argument(s) (a.tar b.tar)") are all shard or Parquet files."""
    extras = message[message.rfind("(") + 1:].rstrip(")").split()
    return bool(extras) and all(a.lower().endswith((".tar", ".parquet")) for a in extras)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_Commands,
                  help="Transfer learning in one command: reuse a pretrained network, cut, graft, train.")


def _version(value: bool):
    if value:
        from .version import __version__
        typer.echo(f"rehead {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print rehead's version and exit.")):
    """Transfer learning in one command: reuse a pretrained network, cut, graft, train."""


def fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def user_errors():
    """Exceptions whose message is meant for the user (bad input), not a traceback."""
    from .data import DataError
    from .rundir import BadRun, RunBusy, RunExists
    from .zoo import ModelNotFound
    errors = (DataError, ModelNotFound, RunExists, RunBusy, BadRun, FileNotFoundError, ValueError)
    import sys
    if "rehead.train.callbacks" in sys.modules:  # only a command that trained can have diverged
        from .train.callbacks import TrainingDiverged
        errors += (TrainingDiverged,)
    return errors


def guarded(fn):
    """Every error becomes one line on stderr; REHEAD_DEBUG=1 shows the traceback instead."""
    import functools
    import os

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from .rundir import said_replaced
        said_replaced.clear()  # a run an unfinished --overwrite left is said once a command
        if os.environ.get("REHEAD_DEBUG"):
            return fn(*a, **kw)
        try:
            return fn(*a, **kw)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except BrokenPipeError:  # `rehead predict ... | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            raise typer.Exit(141)
        except user_errors() as e:
            fail(str(e))
        except OSError as e:  # a full disk, a read-only folder, a permission: the message names the file
            fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''} (REHEAD_DEBUG=1 shows where)")
        except Exception as e:  # a bug of rehead's: still one line, and how to see more
            if interrupts.stopped():  # not a bug: a Ctrl-C whose workers died first
                fail("interrupted", code=130)
            fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                 "(unexpected; REHEAD_DEBUG=1 shows the traceback, please report it)")
    return wrapper


PROCESSES_HELP = ("extract features in N processes (one per GPU, else CPU processes with cores/N threads each), "
                  "through accelerate's launcher; --workers stays the data-loading processes of each")


def relaunched(processes: int) -> bool:
    """``--processes N`` (N > 1): run this command again in N processes under ``accelerate launch``
    and exit with their status. False: run it here, in this process."""
    if processes < 1:
        fail(f"--processes must be at least 1, not {processes}")
    if processes == 1:
        return False
    from .distributed import launched, relaunch
    if launched():
        fail("--processes starts its own processes: leave it out under accelerate launch")
    code = relaunch(processes)
    if code:
        raise typer.Exit(code)
    return True


@app.command()
@guarded
def models(as_json: bool = typer.Option(False, "--json")):
    """Backbones rehead can load, and from where."""
    from . import zoo
    rows = zoo.list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    w = max(len(r["spec"]) for r in rows) + 1
    typer.echo(f"{'spec':{w}} {'modality':9} {'offline':8} note")
    for r in rows:
        typer.echo(f"{r['spec']:{w}} {r['modality'] or '-':9} {'yes' if r['offline'] else 'no':8} {r['note']}")


@app.command()
@guarded
def inspect(model: str, as_json: bool = typer.Option(False, "--json")):
    """A backbone's stages: index, name, output shape, parameters; and its preprocessing."""
    import torch
    from . import zoo
    from .data import pipeline
    bb = zoo.load(model)
    example = pipeline(bb.modality).example_input(bb)
    rows = bb.describe(example)
    with torch.inference_mode():  # what a head grafted at each cut reads: the stage's output pooled
        sizes = {k: int(f.shape[-1]) for k, f in bb.forward_cuts(example, list(range(1, len(bb) + 1))).items()}
    rows = [{**r, "features": sizes.get(r["index"])} for r in rows]
    head = _run_head(model)
    if as_json:
        typer.echo(json.dumps({"model": model, "stages": rows, "data_config": bb.data_config, "head": head}, indent=1,
                              default=str))
        return
    typer.echo(f"{model}: {len(rows)} stages, {sum(r['params'] for r in rows):,} parameters")
    typer.echo(f"{'#':>3}  {'stage':14} {'output shape':18} {'features':>8} {'params':>12}")
    for r in rows:  # features: what a head grafted at this cut reads (the output pooled)
        typer.echo(f"{r['index']:>3}  {r['name']:14} {str(r['output_shape']):18} {str(r['features']):>8} "
                   f"{r['params']:>12,}")
    cfg = {k: v for k, v in bb.data_config.items() if k not in ("feature_mean", "feature_std", "columns", "tokenizer")}
    typer.echo(f"preprocessing: {json.dumps(cfg)}")
    if head:
        typer.echo(f"head ({head['kind']}, the run's own): {head['in']} features -> {head['out']} outputs "
                   f"({', '.join(head['classes'][:8])}{' ...' if len(head['classes']) > 8 else ''}), "
                   f"{head['params']:,} parameters")
    typer.echo(f"cut a fit at a stage: rehead fit DATA --model {model} --cut INDEX|NAME (keeps stages 1..INDEX)")


def _run_head(model: str) -> dict | None:
    """A fit run's grafted head, which inspect's stages (the backbone's) leave out; None for a backbone spec."""
    if not (Path(model) / "config.yaml").is_file():
        return None
    from .runs import open_run, run_kind
    if run_kind(model) not in ("fit", "soup"):
        return None
    run = open_run(model)
    from torch import nn
    linears = [m for m in run.model.head.modules() if isinstance(m, nn.Linear)]
    kind = run.config.get("head") or "linear"
    return {"kind": kind.get("kind", "linear") if isinstance(kind, dict) else kind, "in": linears[0].in_features, "out": linears[-1].out_features,
            "classes": list(run.classes), "params": sum(p.numel() for p in run.model.head.parameters())}


def config_options(cls, skip: tuple = ()) -> list:
    """CLI options built from a config dataclass's fields: each option spelled once, in the dataclass."""
    import dataclasses
    import inspect as _inspect
    import typing

    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in skip or not meta.get("cli", True):
            continue
        typ = hints[f.name]
        if typ in (int | str | None, str | None):
            typ = Optional[str]
        elif typ == (int | None):
            typ = Optional[int]
        elif typ == (float | None):
            typ = Optional[float]
        decls = [meta.get("flag") or ("--" + f.name.replace("_", "-"))] + ([meta["short"]] if meta.get("short") else [])
        kw = {"help": meta.get("help"), "rich_help_panel": meta.get("group", "training").capitalize()}
        if meta.get("choices"):  # shown in --help; a wrong one is refused by FitConfig, before any work
            kw["metavar"] = "<" + "|".join(meta["choices"]) + ">"
        params.append(_inspect.Parameter(f.name, _inspect.Parameter.KEYWORD_ONLY,
                                         default=typer.Option(f.default, *decls, **kw), annotation=typ))
    return params


def _fit(data: Optional[str] = typer.Argument(None, help="folder of class folders, train/val(/test) folders, or a CSV"),
         out: Optional[str] = typer.Option(None, "--out", "-o", help="run directory (default runs/<data name>)"),
         overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
         resume: Optional[str] = typer.Option(None, "--resume", help="continue an interrupted run directory"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
         processes: int = typer.Option(1, "--processes", help=PROCESSES_HELP), **options):
    """Train a new head (and as much of the backbone as the strategy says) on DATA."""
    if data is None and not resume:
        fail("give DATA (a folder or CSV), or --resume RUN_DIR")
    if relaunched(processes):
        return
    if resume:
        _resume_takes_no_options(resume, data, out, overwrite, options)
    out = resume or out or f"runs/{Path(data.split('{')[0].rstrip('-_') or data).stem}"
    cfg = None if resume else FitConfig(**options)  # every option checked before torch is even imported
    from .fit import fit as run_fit
    started = time.time()  # a summary.json older than this is a finished run from before (--overwrite's, put back)
    with on_interrupt(lambda: _interrupted_fit(out, started)):
        if resume:
            run_fit(None, out=out, resume=True, progress=not quiet, workers=options.get("workers"))
        else:
            run_fit(data, out=out, config=cfg, overwrite=overwrite, progress=not quiet)


def _resume_takes_no_options(run: str, data, out, overwrite: bool, options: dict) -> None:
    """--resume continues a run with the options and data its config.yaml holds: any other given
    would be ignored silently (`--epochs 20` would not add an epoch), so it is refused."""
    import dataclasses  # the options' defaults are the fields' own (_fit_params), not FitConfig()'s resolved ones
    flags = {f.name: (f.metadata.get("flag") or "--" + f.name.replace("_", "-"), f.default)
             for f in dataclasses.fields(FitConfig)}
    given = [flags[k][0] for k, v in options.items()
             if k in flags and v != flags[k][1] and k != "workers"]  # --workers changes how data loads, not the run
    given += ["--out"] * bool(out and Path(out) != Path(run)) + ["--overwrite"] * overwrite
    if given:
        fail(f"--resume continues {run} with the options in its config.yaml; {', '.join(given)} would be ignored: "
             "leave them out, or start a new run (--out NEW_DIR) with them")
    if data is not None:
        import yaml
        try:
            said = (yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}).get("data")
        except (OSError, yaml.YAMLError, AttributeError):
            return  # the resume itself names a missing or broken run
        if said and os.path.abspath(str(said)) != os.path.abspath(data):
            fail(f"--resume continues {run} on its own data ({said}), not {data}: leave DATA out, or start a new "
                 "run with --out NEW_DIR")


def _interrupted_fit(out, started: float) -> None:
    from .rundir import REPLACED, RunDir
    done = Path(out) / "summary.json"
    if done.exists():  # a fit --overwrite stopped before its first checkpoint put the old run back
        fail(f"interrupted before the new run saved anything: {out} is the run --overwrite was to replace, as it was"
             if done.stat().st_mtime < started else f"interrupted after the run finished: {out} is complete", code=130)
    if (Path(out) / "config.yaml").exists():
        kept = f" (the run --overwrite replaces stays in {Path(out) / REPLACED} until this one finishes)" \
            if (Path(out) / REPLACED).is_dir() else ""
        fail(f"interrupted: continue with `rehead fit --resume {out}`{kept}", code=130)
    removed = RunDir.discard_unstarted(out)  # e.g. only --find-lr's plot: it would block the same rerun
    fail("interrupted: nothing was kept" + (f" ({out} removed: rerun the same command)" if removed else ""),
         code=130)


@contextmanager
def on_interrupt(say):
    """A Ctrl-C (or SIGTERM) in the block ends in ``say()``, which says what to do next and exits; so
    does any error raised while one arrived (the DataLoader's workers died of the same Ctrl-C first)."""
    try:
        yield
    except KeyboardInterrupt:
        say()
    except Exception:
        if not interrupts.stopped():
            raise
        say()


def restart_if_interrupted(command: str, out: str):
    """These commands have no --resume: their run removes the directory it made when stopped part way
    (a bare 'interrupted' left a half --out that blocked the rerun), and the Ctrl-C says so."""
    return on_interrupt(lambda: fail(f"interrupted: nothing was saved ({command} cannot resume, so no unfinished "
                                     f"{out} is left behind): run the same command again to start over", code=130))


def _with_options(fn, cls):
    import inspect as _inspect
    sig = _inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    fn.__signature__ = sig.replace(parameters=own + config_options(cls))
    return fn


def _register_fit():
    app.command("fit")(guarded(_with_options(_fit, FitConfig)))


_register_fit()


@app.command("lr-find")
@guarded
def lr_find_cmd(data: str, model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
                out: Optional[str] = typer.Option(None, "--out", "-o", help="where lr_find.png/json go"),
                cut: Optional[str] = typer.Option(None, help="keep the first N stages (or a stage name), as fit's --cut"),
                head: str = typer.Option("linear", help="linear | mlp, as fit's --head"),
                unfreeze: int = typer.Option(0, min=0, help="0: head only (cached features); n: also the last n stages"),
                lr_decay: Optional[float] = typer.Option(
                    None, help="LR ratio between unfrozen stages (default: the fine-tune's: 3, text 1.3)"),
                steps: int = typer.Option(100, min=5, help="LRs tried, one batch each"),
                batch_size: int = typer.Option(32, min=1), workers: int = typer.Option(2, min=0), seed: int = 0,
                start_lr: float = typer.Option(1e-7, min=1e-12),
                end_lr: float = typer.Option(10.0, min=1e-12),
                quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
                task: Optional[str] = typer.Option(None, help="multiclass | regression | multilabel (as fit's)"),
                text_column: Optional[str] = typer.Option(None, help="text CSVs: the column holding the text"),
                image_column: Optional[str] = typer.Option(None, help="image CSVs: the path column"),
                label_column: Optional[str] = typer.Option(None, help="the column holding the label")):
    """LR range test: a plot and a suggested range. Weights, optimizer and RNG are left untouched."""
    from .fit import find_lr
    if start_lr >= end_lr:
        raise ValueError(f"--start-lr {start_lr:g} must be below --end-lr {end_lr:g}: the test sweeps the LR upwards")
    c = int(cut) if cut is not None and cut.lstrip("-").isdigit() else cut
    given = {"lr_decay": lr_decay, "task": task, "text_column": text_column, "image_column": image_column,
             "label_column": label_column}
    find_lr(data, model=model, out=out or f"runs/lr_find-{Path(data).stem}", cut=c, head=head, unfreeze=unfreeze,
            steps=steps, batch_size=batch_size, workers=workers, seed=seed, start_lr=start_lr, end_lr=end_lr,
            progress=not quiet, **{k: v for k, v in given.items() if v is not None})


COLUMN_HELP = "a CSV's column of {} (default: the one the fit read)"


def _evaluate_multitask(run_dir: str, data: Optional[str], as_json: bool) -> None:
    """Each head of a multi-task run on its own: on DATA's test rows (else val, else all), or its val rows."""
    from .multitask import evaluate_multitask_run
    res = evaluate_multitask_run(run_dir, data)
    for r in res.values():
        if r.get("warning"):
            typer.echo(f"warning: {r['warning']}", err=True)
    if as_json:
        typer.echo(json.dumps({"kind": "multitask", "tasks": res}, indent=1))
        return
    where = f"of {data}" if data else "of the run's val split"
    for task, r in res.items():
        if r["accuracy"] is None:
            typer.echo(f"{task}: no labelled row {where}")
            continue
        flag = "" if r["accuracy"] > r["majority_baseline"] else "  (not above its majority class)"
        typer.echo(f"{task}: accuracy {r['accuracy']:.4f} on {r['n']} labelled rows {where} "
                   f"(majority-class baseline {r['majority_baseline']:.4f}){flag}")


def _columns(run, **given) -> dict:
    """The run's data options (the columns its fit read), with the ones given on the command line."""
    return {**run.data_kw(), **{k: v for k, v in given.items() if v}}


@app.command()
@guarded
def evaluate(run_dir: str, data: Optional[str] = typer.Argument(None),
             as_json: bool = typer.Option(False, "--json"),
             workers: int = typer.Option(0, min=0, help="data-loading processes (0: in this process)"),
             tta: bool = typer.Option(
                 False, "--tta", help="images: average the probabilities of each image and its horizontal flip"),
             source_agreement: Optional[str] = typer.Option(
                 None, "--source-agreement", help="DATA (images): share of them on which the run and the pretrained "
                                                  "model agree on the source task (forgetting)"),
             text_column: Optional[str] = typer.Option(None, help=COLUMN_HELP.format("texts")),
             image_column: Optional[str] = typer.Option(None, help=COLUMN_HELP.format("image paths")),
             label_column: Optional[str] = typer.Option(None, help=COLUMN_HELP.format("labels"))):
    """Accuracy, per-class precision/recall and the confusion matrix (regression: RMSE, MAE, R²;
    multilabel: per-label F1, micro/macro F1, mAP), on the run's val split or DATA."""
    from .ensemble import kind_said
    from .runs import open_run, run_kind
    _run_first("evaluate", run_dir, data)
    if run_kind(run_dir) == "multitask":
        if source_agreement or tta:
            fail("--source-agreement and --tta are for image runs; a multi-task run is a table's: leave them out")
        return _evaluate_multitask(run_dir, data, as_json)
    if source_agreement and data:  # one measure a call: DATA was dropped unsaid
        fail(f"--source-agreement measures forgetting on its own images and scores no DATA: run `rehead evaluate "
             f"{run_dir} {data}` for accuracy, and --source-agreement in a call of its own")
    if source_agreement and tta:
        fail("--tta does not apply to --source-agreement (each image's source label, as it is): leave --tta out")
    run = open_run(run_dir)
    columns = _columns(run, text_column=text_column, image_column=image_column, label_column=label_column)
    if source_agreement:
        res = run.source_agreement(expand_inputs([source_agreement], run.modality, columns))
        typer.echo(json.dumps(res) if as_json else
                   f"source-task agreement with the pretrained model: {res['source_agreement']:.4f} on {res['n']} "
                   "images (1.0: nothing of the source task forgotten)")
        return
    if tta:
        run.check_tta()
    if data is None:
        res = run.evaluate(*run.val_split(), workers=workers, tta=tta)
    else:
        res = run.evaluate(data, workers=workers, tta=tta, columns=columns)
    for w in res.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    _say_truncated(run, res.get("items") or [])
    if as_json:
        per_item = ("predictions", "targets", "items", "probs", "probs_uncalibrated")
        typer.echo(json.dumps(_finite({"kind": run.kind, **{k: v for k, v in res.items() if k not in per_item}}),
                              indent=1))
        return
    if kind_said(run):  # an ensemble or a soup is said as such, never read as one model's score
        typer.echo(kind_said(run))
    counted = f" on {res['n']} samples" + (" of the run's val split" if data is None else "") \
        + (f" ({res['skipped']} skipped, unreadable: {', '.join(res.get('skipped_items', []))}"
           f"{' ...' if res['skipped'] > len(res.get('skipped_items', [])) else ''})" if res["skipped"] else "") \
        + (f"; {res['unlabelled']} unlabelled row(s) left out" if res.get("unlabelled") else "") \
        + ("; with flip TTA" if tta else "")
    if res.get("task") in ("regression", "multilabel"):
        _echo_task_metrics(res, counted)
        return
    typer.echo(f"accuracy {res['accuracy']:.4f}{counted}")
    if "ece" in res:  # an ensemble's T are its members', each applied to its own logits before the mean
        temps = res.get("member_temperatures") or [res["temperature"]]
        said = ("members' T = " if "member_temperatures" in res else "T = ") + ", ".join(f"{t:.3f}" for t in temps)
        if run.kind == "soup" and temps == [1.0]:  # its members' T were fitted to other weights: none carried over
            said += " (none fitted for the soup)"
        typer.echo(f"calibration: ECE {res['ece']:.4f} (uncalibrated {res['ece_uncalibrated']:.4f}), NLL "
                   f"{res['nll']:.4f} (uncalibrated {res['nll_uncalibrated']:.4f}), {said}"
                   + (" fitted on this val split: optimistic" if data is None and any(t != 1.0 for t in temps) else ""))
    typer.echo(f"{'class':20} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>5}")
    for c, m in res["per_class"].items():
        typer.echo(f"{c:20} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1-score']:6.3f} {int(m['support']):5}")
    typer.echo("confusion matrix (rows: true, columns: predicted)")
    w = max(len(c) for c in res["classes"]) + 1
    typer.echo(" " * w + " ".join(f"{c[:8]:>8}" for c in res["classes"]))
    for c, row in zip(res["classes"], res["confusion_matrix"]):
        typer.echo(f"{c:{w}}" + " ".join(f"{v:8d}" for v in row))


def _run_first(command: str, run_dir: str, *others) -> None:
    """`rehead evaluate DATA RUN`: the arguments swapped, said as such (not only "DATA is not a run directory")."""
    from .rundir import is_run_dir
    if not Path(run_dir).exists() or is_run_dir(Path(run_dir)):
        return
    run = next((o for o in others if o and is_run_dir(Path(o))), None)
    if run is not None:
        fail(f"{run_dir} is not a rehead run directory and {run} is: give the run directory first "
             f"(`rehead {command} {run} {run_dir}`)")


def _echo_task_metrics(res: dict, counted: str) -> None:
    from .tasks import macro_said
    if res["task"] == "regression":
        typer.echo(f"rmse {res['rmse']:.4f}, mae {res['mae']:.4f}, r2 {res['r2']:.4f}{counted} "
                   f"(target {res['classes'][0]!r}, in its own units"
                   + ("; r2 is undefined: every target scored here is the same value" if res.get("n") and
                      res["r2"] != res["r2"] else "") + ")")
        return
    typer.echo(f"micro f1 {res['micro_f1']:.4f}, macro f1 {res['macro_f1']:.4f}, mAP {res['map']:.4f}{counted} "
               f"(f1 at p >= 0.5{macro_said(res)})")
    typer.echo(f"{'label':20} {'f1':>6} {'ap':>6} {'n':>5}")
    for c, m in res["per_label"].items():  # a label with no positive here has no recall: no f1 or ap to show
        f1, ap = (f"{m['f1']:6.3f}", f"{m['ap']:6.3f}") if m["ap"] is not None else (f"{'-':>6}", f"{'-':>6}")
        typer.echo(f"{c:20} {f1} {ap} {m['support']:5}")


@app.command()
@guarded
def predict(run_dir: str = typer.Argument(..., help="a run directory, or a backbone spec whose pretrained head "
                                                    "is known (e.g. packaged:efficientnet_lite0): the source task's labels"),
            inputs: List[str] = typer.Argument(..., help="image files, folders; texts, or CSV / .txt files of texts"),
            top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="labels shown per item"),
            as_json: bool = typer.Option(False, "--json"),
            tta: bool = typer.Option(
                False, "--tta", help="images: average the probabilities of each image and its horizontal flip"),
            text_column: Optional[str] = typer.Option(None, help=COLUMN_HELP.format("texts")),
            image_column: Optional[str] = typer.Option(None, help=COLUMN_HELP.format("image paths"))):
    """Top-k labels with calibrated probabilities (the run's temperature) for images or texts
    (multilabel: every label with p >= 0.5; regression: the value)."""
    from .runs import open_run
    if ":" in run_dir and not Path(run_dir).exists():
        if tta:
            fail("--tta needs a run directory, not a backbone spec")
        rows = _source_predict(run_dir, inputs, top_k)
    else:
        from .ensemble import kind_said
        _run_first("predict", run_dir, *inputs)
        run = open_run(run_dir)
        if kind_said(run):  # an ensemble or a soup is said as such (stderr: --json and scripts read stdout)
            typer.echo(kind_said(run), err=True)
        if tta:
            run.check_tta()  # before the inputs are listed
        columns = _columns(run, text_column=text_column, image_column=image_column)
        items = expand_inputs(inputs, run.modality, columns)
        rows = run.predict(items, top_k=top_k, tta=tta)
        _say_truncated(run, items)
    _print_predictions(rows, as_json, top_k)
    if rows and all("error" in r for r in rows):  # a script must be able to tell that nothing was predicted
        fail(f"none of the {len(rows)} input(s) could be read (e.g. {rows[0]['item']}: {rows[0]['error']})")


def _say_truncated(run, items: list) -> None:
    """Texts past the backbone's max length are read cut, as fit says of its own: said by predict and
    evaluate too (stderr: --json stays JSON)."""
    from .data import refs
    if run.modality != "text":
        return
    backbone = (getattr(run, "members", None) or [run])[0].model.backbone  # an ensemble: its first member's
    count = getattr(backbone, "count_truncated", None)
    texts = [t for t in items if isinstance(t, str) and not refs.is_ref(t)]
    cut = count(texts) if count and texts else 0
    if cut:
        ml = backbone.data_config["max_length"]
        typer.echo(f"note: {cut} of {len(texts)} texts are longer than {ml} tokens, the backbone's max length: "
                   f"they were read cut to their first {ml} tokens", err=True)


def _print_predictions(rows: list[dict], as_json: bool, top_k: int) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        r = {**r, "item": _one_line(r["item"])}
        if "error" in r:
            typer.echo(f"{r['item']}: {r['error']}")
            continue
        if "value" in r:  # regression
            typer.echo(f"{r['item']}: {r['value']:.6g}" + (f"  ({r['note']}: an extrapolation)" if r.get("note") else ""))
            continue
        if "labels" in r:  # multilabel: every label at p >= 0.5, then the top probabilities
            top = sorted(r["probs"].items(), key=lambda kv: -kv[1])[:top_k]
            typer.echo(f"{r['item']}: {'|'.join(r['labels']) or '(none)'}  ("
                       + ", ".join(f"{c} {p:.3f}" for c, p in top) + ")")
            continue
        tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
        typer.echo(f"{r['item']}: {tops}")


def _one_line(item) -> str:
    """A text with line breaks (a quoted CSV cell) shown on its one output line: escaped as in JSON."""
    s = str(item)
    return s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n") if ("\n" in s or "\r" in s) else s


def _source_predict(spec: str, inputs: list[str], top_k: int) -> list[dict]:
    """The pretrained model used as it is, on its own task (e.g. ImageNet's 1000 classes)."""
    from . import zoo
    from .data import pipeline
    bb = zoo.load(spec)
    items = expand_inputs(inputs, bb.modality)
    rows, seen = [], set()
    for idx, x, _ in pipeline(bb.modality).make_loader(bb, items, None, batch_size=32, workers=0):
        if len(idx):
            for i, top in zip(idx.tolist(), bb.source_predict(x, top_k)):
                rows.append({"item": items[i], "top": [{"label": t["label"], "prob": t["prob"]} for t in top]})
                seen.add(i)
    return rows + [{"item": items[i], "error": "unreadable"} for i in range(len(items)) if i not in seen]


def expand_inputs(inputs: list[str], modality: str, columns: dict | None = None) -> list:
    """Items to predict from the command line's inputs; ``columns``: the run's data options (which
    column of a streamed table holds the images or texts)."""
    if modality == "tabular":
        from .data.tabular import expand_inputs as table_rows
        return table_rows(inputs)
    from .data.inputs import path_items
    items = [it for s in inputs for it in path_items(s, modality, columns)]
    if not items:
        fail("no images found in the given inputs")
    return items


def _finite(obj):
    """``obj`` with NaN and infinite floats as None: ``--json`` output is JSON (a bare NaN is not, for jq
    or JSON.parse); the text output says why a figure is undefined (an R² on one target value)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@app.command()
@guarded
def restore(run_dir: str = typer.Argument(..., help="a run directory holding .replaced (an --overwrite that never "
                                                    "finished)")):
    """Put back the run an unfinished --overwrite (killed) set aside in RUN/.replaced; the new run's files go."""
    from .rundir import RunDir
    typer.echo(RunDir.restore(run_dir))


@app.command()
@guarded
def demo(out: str = typer.Option("runs/demo", "--out", "-o"),
         overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite",
                                                  help="replace --out (default: only an earlier demo run there)")):
    """Transfer the default backbone (the packaged ImageNet EfficientNet-Lite2) to scikit-learn's handwritten digits."""
    from .demo import run_demo
    run_demo(out, overwrite=overwrite)


def _register_commands():
    import importlib
    import pkgutil
    from . import commands
    for m in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{m.name}")


_register_commands()
interrupts.catch_ignored()  # a Ctrl-C that Python would ignore (in a destructor) still stops the command


def main():
    interrupts.install()
    try:
        app()
    except SystemExit as e:
        if not e.code:
            from .distributed import close
            close()
        raise


if __name__ == "__main__":
    sys.exit(main())
