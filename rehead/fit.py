"""fit: load -> cut -> graft -> (extract) -> train -> save, into a run directory."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import zoo
from .data import Dataset, load_dataset, pipeline
from .features import FeatureCache, extract
from .heads import make_head
from .model import TransferModel
from .recipes import build_recipe
from .run import Run, prepare_run_dir, read_config, save_weights, write_yaml
from .train.loop import IndexedTensors, Phase, TrainConfig, Trainer, seed_everything

log = logging.getLogger("rehead")

DEFAULT_MODEL = "packaged:efficientnet_lite0"


def fit(data, model: str = DEFAULT_MODEL, out: str | Path = "runs/latest", strategy: str = "auto",
        cut: int | str | None = None, head: str = "linear", hidden: int = 512, dropout: float = 0.0,
        epochs: int | None = None, lr: float | None = None, unfreeze: int = 2, lr_decay: float = 3.0,
        lr_min: float | None = None, schedule: str = "onecycle", augment: str | None = None,
        batch_size: int = 32, workers: int = 2, seed: int = 0, patience: int | None = None,
        cache_dir: str | None = None, use_cache: bool = True, strict: bool = False,
        val_fraction: float = 0.2, overwrite: bool = False, resume: bool = False,
        progress: bool = True, hooks: list | None = None, data_kw: dict | None = None,
        echo=print, accelerator=None) -> Run:
    """Train a new head (and as much of the backbone as the strategy says) on ``data``."""
    t_start = time.perf_counter()
    out = Path(out)
    if resume:
        return _resume(out, echo=echo, progress=progress, accelerator=accelerator)
    args = {k: v for k, v in locals().items() if k in FIT_ARGS}
    args["data"] = str(data) if not isinstance(data, Dataset) else data.source
    prepare_run_dir(out, overwrite=overwrite)
    return _run(out, args, data, echo, progress, hooks or [], accelerator, t_start)


FIT_ARGS = ("model", "strategy", "cut", "head", "hidden", "dropout", "epochs", "lr", "unfreeze", "lr_decay",
            "lr_min", "schedule", "augment", "batch_size", "workers", "seed", "patience", "cache_dir",
            "use_cache", "strict", "val_fraction", "data_kw")


def _run(out: Path, args: dict, data, echo, progress, hooks, accelerator, t_start, resume_state=None) -> Run:
    seed_everything(args["seed"])
    ds = data if isinstance(data, Dataset) else load_dataset(
        data, val_fraction=args["val_fraction"], seed=args["seed"], **(args.get("data_kw") or {}))
    backbone = zoo.load(args["model"])
    if backbone.modality != ds.modality:
        from .data import DataError
        hint = {"text": " (e.g. --model packaged:minilm)"}.get(ds.modality, "")
        raise DataError(f"{args['data']} is {ds.modality} data but {args['model']} is a backbone for {backbone.modality} "
                        f"data: choose a {ds.modality} model{hint}; `rehead models` lists them")
    k = len(backbone) if args["cut"] is None else backbone.stage_index(args["cut"])
    prefix = backbone.cut(k)
    recipe = build_recipe(args["strategy"], len(ds.train), k, epochs=args["epochs"], lr=args["lr"],
                          unfreeze=args["unfreeze"], lr_decay=args["lr_decay"], lr_min=args["lr_min"],
                          schedule=args["schedule"], augment=bool(args["augment"]))
    if recipe.reason:
        echo(f"strategy auto -> {recipe.strategy}: {recipe.reason}")
    if args["augment"] and recipe.uses_cache:
        echo("note: --augment is ignored by --strategy extract (features are cached once); "
             "use --strategy head to train on augmented images")
    if args["augment"] and not recipe.uses_cache:
        echo("augmentation on: features are computed live each epoch, not cached")
    in_dim = prefix.forward_cuts(_example(prefix), [k])[k].shape[1]
    head_cfg = {"kind": args["head"], "in_dim": int(in_dim), "out_dim": len(ds.classes),
                "hidden": args["hidden"], "dropout": args["dropout"]}
    config = {"kind": "fit", "model": args["model"], "cut": k, "cut_name": prefix.stage_names[-1],
              "head": head_cfg, "strategy": recipe.strategy, "strategy_reason": recipe.reason,
              "phases": [asdict(p) for p in recipe.phases], "data_config": backbone.data_config,
              "data_summary": ds.summary(), "args": args}
    if resume_state is None:
        write_yaml(out / "config.yaml", config)
        (out / "labels.json").write_text(json.dumps(ds.classes))
        (out / "split.json").write_text(json.dumps({s: {"items": [str(i) for i in getattr(ds, s).items],
                                                       "labels": getattr(ds, s).labels} for s in ("train", "val")}))
    seed_everything(args["seed"])
    head = make_head(in_dim, len(ds.classes), args["head"], args["hidden"], args["dropout"])
    model = TransferModel(prefix, head)
    trainer = Trainer(TrainConfig(seed=args["seed"], patience=args["patience"], progress=progress, hooks=hooks),
                      run_dir=out, accelerator=accelerator)
    cache = FeatureCache(args["cache_dir"]) if args["use_cache"] else None
    if recipe.uses_cache:
        info = _fit_on_features(model, ds, recipe.phases, trainer, cache, args, progress, echo, resume_state)
    else:
        info = _fit_live(model, ds, recipe.phases, trainer, args, echo, resume_state)
    if not trainer.acc.is_main_process:
        return None
    save_weights(model, out / "model.safetensors")
    last = trainer.history[-1] if trainer.history else {}
    best = max(trainer.history, key=lambda r: (r["val_acc"], -r["val_loss"])) if trainer.history else {}
    summary = {"strategy": recipe.strategy, "val_acc": best.get("val_acc"), "val_loss": best.get("val_loss"),
               "best_epoch": best.get("global_epoch"), "epochs_run": len(trainer.history),
               "last_val_acc": last.get("val_acc"), "wall_seconds": time.perf_counter() - t_start, **info}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "checkpoint.pt").unlink(missing_ok=True)
    (out / "best.safetensors").unlink(missing_ok=True)
    echo(f"val accuracy {summary['val_acc']:.4f} ({len(ds.val)} samples) -> {out}")
    return Run(out)


def _example(backbone):
    from .data import pipeline
    return pipeline(backbone.modality).example_input(backbone)


def _fit_on_features(model, ds, phases, trainer, cache, args, progress, echo, resume_state) -> dict:
    k = len(model.backbone)
    feats, y = {}, {}
    skipped = []
    t0 = time.perf_counter()
    for split in ("train", "val"):
        s = getattr(ds, split)
        f, kept, sk = extract(model.backbone, s.items, [k], cache, batch_size=args["batch_size"],
                              workers=args["workers"], strict=args["strict"], progress=progress,
                              desc=f"extract {split}")
        feats[split], y[split] = f[k], torch.tensor([s.labels[i] for i in kept])
        skipped += sk
    if skipped:
        echo(f"skipped {len(skipped)} unreadable item(s): " + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    extract_s = time.perf_counter() - t0
    resume = trainer.load_checkpoint() if resume_state is not None else None
    trainer.fit(model.head, IndexedTensors(feats["train"], y["train"]), IndexedTensors(feats["val"], y["val"]),
                phases, batch_size=args["batch_size"], resume=resume)
    return {"extract_seconds": extract_s, "skipped": skipped}


def _fit_live(model, ds, phases: list[Phase], trainer, args, echo, resume_state) -> dict:
    pipe = pipeline(model.backbone.modality)
    if hasattr(pipe, "check_items"):
        bad = pipe.check_items(ds, strict=args["strict"])
        if bad:
            echo(f"skipped {len(bad)} unreadable item(s): " + ", ".join(bad[:5]))
    train_tf = pipe.train_transform(model.backbone, args["augment"]) if args["augment"] else None

    def make_loader(split, shuffle, generator):
        s = getattr(ds, split)
        return pipe.make_loader(model.backbone, s.items, s.labels, batch_size=args["batch_size"],
                                workers=args["workers"], shuffle=shuffle, generator=generator,
                                transform=train_tf if split == "train" else None, strict=args["strict"])
    resume = trainer.load_checkpoint() if resume_state is not None else None
    trainer.fit(model, "train", "val", phases, make_loader=make_loader, resume=resume)
    return {}


def _resume(out: Path, echo, progress, accelerator) -> Run:
    cfg = read_config(out)
    if (out / "model.safetensors").exists() and not (out / "checkpoint.pt").exists():
        echo(f"{out} already finished; nothing to resume")
        return Run(out)
    if not (out / "checkpoint.pt").exists():
        echo(f"{out} has no checkpoint yet: starting it again from the beginning")
    echo(f"resuming {out}")
    return _run(out, cfg["args"], cfg["args"]["data"], echo, progress, [], accelerator, time.perf_counter(),
                resume_state=True)
