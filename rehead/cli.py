"""The ``rehead`` command line: thin wrappers over the Python API."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning in one command: reuse a pretrained network, cut, graft, train.")
cache_app = typer.Typer(no_args_is_help=True, help="The shared feature cache.")
app.add_typer(cache_app, name="cache")


def fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def user_errors():
    """Exceptions whose message is meant for the user (bad input), not a traceback."""
    from .data import DataError
    from .run import BadRun, RunExists
    from .zoo import ModelNotFound
    return (DataError, ModelNotFound, RunExists, BadRun, FileNotFoundError, ValueError)


def guarded(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except user_errors() as e:
            fail(str(e))
    return wrapper


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
    from . import zoo
    from .data import pipeline
    bb = zoo.load(model)
    rows = bb.describe(pipeline(bb.modality).example_input(bb))
    if as_json:
        typer.echo(json.dumps({"model": model, "stages": rows, "data_config": bb.data_config}, indent=1, default=str))
        return
    typer.echo(f"{model}: {len(rows)} stages, {sum(r['params'] for r in rows):,} parameters")
    typer.echo(f"{'#':>3}  {'stage':14} {'output shape':18} {'params':>12}")
    for r in rows:
        typer.echo(f"{r['index']:>3}  {r['name']:14} {str(r['output_shape']):18} {r['params']:>12,}")
    cfg = {k: v for k, v in bb.data_config.items() if k not in ("feature_mean", "feature_std", "columns", "tokenizer")}
    typer.echo(f"preprocessing: {json.dumps(cfg)}")
    typer.echo("cut with --cut INDEX or --cut NAME (keeps stages 1..INDEX)")


@app.command()
@guarded
def fit(data: Optional[str] = typer.Argument(None, help="folder of class folders, train/val folder, or CSV"),
        model: str = typer.Option("packaged:efficientnet_lite0", "--model", "-m"),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="run directory (default runs/<data name>)"),
        strategy: str = typer.Option("auto", help="extract | head | finetune | gradual | full | auto"),
        cut: Optional[str] = typer.Option(None, help="keep the first N stages, or up to a stage name"),
        head: str = typer.Option("linear", help="linear | mlp"),
        hidden: int = 512, dropout: float = 0.0,
        epochs: Optional[int] = typer.Option(None, help="epochs per phase (strategy default when unset)"),
        lr: Optional[float] = typer.Option(None, help="top learning rate (the head's)"),
        find_lr: bool = typer.Option(False, "--find-lr", help="run the LR finder first and use its suggestion"),
        keep_last: bool = typer.Option(False, "--keep-last", help="keep the last epoch's weights, not the best val epoch's"),
        unfreeze: int = typer.Option(2, help="finetune/gradual: how many last stages to unfreeze"),
        lr_decay: float = typer.Option(3.0, help="each earlier stage's LR is this many times lower"),
        lr_min: Optional[float] = typer.Option(None, help="or spread LRs geometrically from lr-min to lr"),
        schedule: str = typer.Option("onecycle", help="onecycle | cosine | sgdr | constant"),
        warmup: float = typer.Option(0.1, help="cosine: fraction of steps warming up"),
        sgdr_cycle: float = typer.Option(1.0, help="sgdr: first cycle length in epochs"),
        sgdr_mult: float = typer.Option(2.0, help="sgdr: each cycle this many times longer"),
        weight_decay: float = typer.Option(0.01, help="AdamW weight decay (never on norms and biases)"),
        train_frozen_bn: bool = typer.Option(False, help="let frozen BatchNorm layers update their statistics"),
        freeze_bn: bool = typer.Option(False, "--freeze-bn", help="keep every BatchNorm's pretrained statistics, in trainable stages too"),
        precision: str = typer.Option("no", help="mixed precision: no | fp16 | bf16"),
        augment: Optional[str] = typer.Option(None, help="light | classic (training data only)"),
        batch_size: int = 32, workers: int = 2, seed: int = 0,
        patience: Optional[int] = typer.Option(None, help="early stopping: epochs without val improvement"),
        cache_dir: Optional[str] = typer.Option(None, help="feature cache (default $REHEAD_CACHE or ~/.cache/rehead)"),
        no_cache: bool = typer.Option(False, "--no-cache"),
        strict: bool = typer.Option(False, help="an unreadable image is an error, not skipped"),
        val_fraction: float = 0.2,
        overwrite: bool = typer.Option(False, help="replace an existing run directory"),
        resume: Optional[str] = typer.Option(None, help="continue an interrupted run directory"),
        text_column: str = "text", label_column: str = "label",
        id_columns: Optional[str] = typer.Option(None, help="tables: comma-separated identifier columns to leave out"),
        split_column: str = typer.Option("split", help="tables: a column whose 'train' rows train (others: val)"),
        missing: str = typer.Option("error", help="tables: empty cells are an error, or the column 'mean'"),
        method: str = typer.Option("plain", help="plain | l2sp | guided"),
        alpha: float = typer.Option(0.1, help="l2sp: pull of transferred weights towards their pretrained values"),
        beta: float = typer.Option(0.01, help="l2sp: plain L2 on the new head"),
        scouts: int = typer.Option(5, help="guided: number of scout models"),
        scout_size: int = typer.Option(8, help="guided: training samples per scout"),
        scout_epochs: int = typer.Option(5, help="guided: epochs each scout trains"),
        guide_on: str = typer.Option("update", help="guided: scale each optimizer 'update' or each 'gradient' (the paper's rule)"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Train a new head (and as much of the backbone as the strategy says) on DATA."""
    from .fit import fit as run_fit
    if resume:
        run_fit(None, out=resume, resume=True, progress=not quiet)
        return
    if data is None:
        fail("give DATA (a folder or CSV), or --resume RUN_DIR")
    out = out or f"runs/{Path(data).stem}"
    from .methods import method_hooks
    hooks = method_hooks(method, alpha=alpha, beta=beta, scouts=scouts, scout_size=scout_size,
                         scout_epochs=scout_epochs, guide_on=guide_on)
    c = int(cut) if cut is not None and cut.lstrip("-").isdigit() else cut
    run_fit(data, model=model, hooks=hooks, out=out, strategy=strategy, cut=c, head=head, hidden=hidden, dropout=dropout,
            epochs=epochs, lr=lr, unfreeze=unfreeze, lr_decay=lr_decay, lr_min=lr_min, schedule=schedule,
            augment=augment, batch_size=batch_size, workers=workers, seed=seed, patience=patience,
            cache_dir=cache_dir, use_cache=not no_cache, strict=strict, val_fraction=val_fraction,
            overwrite=overwrite, progress=not quiet, warmup=warmup, sgdr_cycle=sgdr_cycle, sgdr_mult=sgdr_mult,
            weight_decay=weight_decay, train_frozen_bn=train_frozen_bn, freeze_bn=freeze_bn, precision=precision, find_lr=find_lr, select_best=not keep_last,
            data_kw={"text_column": text_column, "label_column": label_column, "id_columns": id_columns,
                     "split_column": split_column, "missing": missing})


@app.command("lr-find")
@guarded
def lr_find_cmd(data: str, model: str = typer.Option("packaged:efficientnet_lite0", "--model", "-m"),
                out: Optional[str] = typer.Option(None, "--out", "-o", help="where lr_find.png/json go"),
                cut: Optional[str] = None, head: str = "linear",
                unfreeze: int = typer.Option(0, help="0: head only (cached features); n: also the last n stages"),
                lr_decay: float = 3.0, steps: int = 100, batch_size: int = 32, workers: int = 2, seed: int = 0,
                start_lr: float = 1e-7, end_lr: float = 10.0, quiet: bool = typer.Option(False, "--quiet", "-q")):
    """LR range test: a plot and a suggested range. Weights, optimizer and RNG are left untouched."""
    from .fit import find_lr
    c = int(cut) if cut is not None and cut.lstrip("-").isdigit() else cut
    find_lr(data, model=model, out=out or f"runs/lr_find-{Path(data).stem}", cut=c, head=head, unfreeze=unfreeze,
            lr_decay=lr_decay, steps=steps, batch_size=batch_size, workers=workers, seed=seed,
            start_lr=start_lr, end_lr=end_lr, progress=not quiet)


def _eval_items(run, data: Optional[str]):
    """The run's own val split, or DATA (its val/test split if it has one, else all of it)."""
    if data is None:
        return run.val_split()
    ds = _load_eval_data(run, data)
    mapping = [run.classes.index(c) if c in run.classes else None for c in ds.classes]
    unknown = [c for c, m in zip(ds.classes, mapping) if m is None]
    if unknown:
        fail(f"{data} has classes the run never saw: {', '.join(unknown)} (run classes: {', '.join(run.classes)})")
    return ds.val.items, [mapping[y] for y in ds.val.labels]


def _load_eval_data(run, data: str):
    from .data import load_dataset
    kw = dict(run.config.get("args", {}).get("data_kw") or {})
    return load_dataset(data, modality=run.modality, val_fraction=0.2, seed=0, eval_only=True, **kw)


@app.command()
@guarded
def evaluate(run_dir: str, data: Optional[str] = typer.Argument(None),
             as_json: bool = typer.Option(False, "--json"), workers: int = 0):
    """Accuracy, per-class precision/recall and the confusion matrix, on the run's val split or DATA."""
    from .run import open_run
    run = open_run(run_dir)
    items, labels = _eval_items(run, data)
    res = run.evaluate(items, labels, workers=workers)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in res.items() if k not in ("predictions", "targets", "items", "probs")},
                              indent=1))
        return
    typer.echo(f"accuracy {res['accuracy']:.4f} on {res['n']} samples" + (f" ({res['skipped']} skipped)" if res["skipped"] else ""))
    typer.echo(f"{'class':20} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>5}")
    for c, m in res["per_class"].items():
        typer.echo(f"{c:20} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1-score']:6.3f} {int(m['support']):5}")
    typer.echo("confusion matrix (rows: true, columns: predicted)")
    w = max(len(c) for c in res["classes"]) + 1
    typer.echo(" " * w + " ".join(f"{c[:8]:>8}" for c in res["classes"]))
    for c, row in zip(res["classes"], res["confusion_matrix"]):
        typer.echo(f"{c:{w}}" + " ".join(f"{v:8d}" for v in row))


@app.command()
@guarded
def predict(run_dir: str, inputs: List[str] = typer.Argument(..., help="image files, folders, or texts"),
            top_k: int = typer.Option(3, "--top-k", "-k"), as_json: bool = typer.Option(False, "--json")):
    """Top-k labels with probabilities for images (files or folders) or texts."""
    from .run import open_run
    run = open_run(run_dir)
    items = expand_inputs(inputs, run.modality)
    rows = run.predict(items, top_k=top_k)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['item']}: {r['error']}")
            continue
        tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
        typer.echo(f"{r['item']}: {tops}")


def expand_inputs(inputs: list[str], modality: str) -> list:
    if modality == "tabular":
        from .data.tabular import expand_inputs as table_rows
        return table_rows(inputs)
    if modality != "image":
        return list(inputs)
    from .data.images import IMAGE_EXTS
    items = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            items += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        elif p.exists():
            items.append(str(p))
        else:
            fail(f"{s} does not exist")
    if not items:
        fail("no images found in the given inputs")
    return items


@cache_app.command("info")
def cache_info(cache_dir: Optional[str] = typer.Option(None)):
    """Where the feature cache is and how big it is."""
    from .features import FeatureCache
    s = FeatureCache(cache_dir).size()
    typer.echo(f"{s['path']}: {s['entries']} feature files for {s['models']} backbone/cut keys, "
               f"{s['bytes'] / 1e6:.1f} MB; backbone snapshots {s['snapshot_bytes'] / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(cache_dir: Optional[str] = typer.Option(None), yes: bool = typer.Option(False, "--yes", "-y")):
    """Delete every cached feature."""
    from .features import FeatureCache
    c = FeatureCache(cache_dir)
    if not yes and not typer.confirm(f"delete the feature cache at {c.root}?"):
        raise typer.Exit(1)
    c.clear()
    typer.echo(f"cleared {c.root}")


@app.command()
@guarded
def demo(out: str = typer.Option("runs/demo", "--out", "-o"), overwrite: bool = typer.Option(True)):
    """Transfer the packaged ImageNet EfficientNet-Lite0 to scikit-learn's handwritten digits."""
    from .demo import run_demo
    run_demo(out, overwrite=overwrite)


def _register_commands():
    import importlib
    import pkgutil
    from . import commands
    for m in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{m.name}")


_register_commands()


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
