"""fit: load -> cut -> graft -> (extract) -> train -> save, into a run directory."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import zoo
from .data import Dataset, load_dataset, pipeline
from .features import FeatureCache, extract
from .heads import make_head
from .model import TransferModel
from .recipes import build_recipe
from .run import Run, prepare_run_dir, read_config, save_tensors, save_weights, write_yaml
from .zoo.backbone import Backbone, stage_index
from .train.loop import IndexedTensors, TrainConfig, Trainer, seed_everything

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
        weight_decay: float = 0.01, warmup: float = 0.1, sgdr_cycle: float = 1.0, sgdr_mult: float = 2.0,
        train_frozen_bn: bool = False, freeze_bn: bool = False, precision: str = "no", find_lr: bool = False, select_best: bool = True,
        echo=print, accelerator=None) -> Run:
    """Train a new head (and as much of the backbone as the strategy says) on ``data``."""
    t_start = time.perf_counter()
    out = Path(out)
    args = {k: v for k, v in locals().items() if k in FIT_ARGS}
    accelerator = accelerator or _accelerator(precision)
    if not accelerator.is_main_process:
        echo = _silent
    progress = progress and accelerator.is_local_main_process
    if resume:
        return _resume(out, echo=echo, progress=progress, accelerator=accelerator)
    args["data"] = str(data) if not isinstance(data, Dataset) else data.source
    if accelerator.is_main_process:
        prepare_run_dir(out, overwrite=overwrite)
    accelerator.wait_for_everyone()
    return _run(out, args, data, echo, progress, hooks or [], accelerator, t_start)


def _accelerator(precision: str = "no"):
    from accelerate import Accelerator
    return Accelerator(mixed_precision=precision)


def _silent(*_a, **_k):
    pass


FIT_ARGS = ("model", "strategy", "cut", "head", "hidden", "dropout", "epochs", "lr", "unfreeze", "lr_decay",
            "lr_min", "schedule", "augment", "batch_size", "workers", "seed", "patience", "cache_dir",
            "use_cache", "strict", "val_fraction", "data_kw", "weight_decay", "warmup", "sgdr_cycle", "sgdr_mult",
            "train_frozen_bn", "freeze_bn", "precision", "find_lr", "select_best")


def _load_data(args: dict, data) -> Dataset:
    seed_everything(args["seed"])
    return data if isinstance(data, Dataset) else load_dataset(
        data, val_fraction=args["val_fraction"], seed=args["seed"], **(args.get("data_kw") or {}))


def _new_head(args: dict, in_dim: int, n_classes: int):
    seed_everything(args["seed"])
    return make_head(in_dim, n_classes, args["head"], args["hidden"], args["dropout"])


def _build(args: dict, data):
    """Data, backbone prefix and a fresh model as ``args`` describe them."""
    ds = _load_data(args, data)
    backbone = zoo.load(args["model"])
    if backbone.modality != ds.modality:
        from .data import DataError
        hint = {"text": " (e.g. --model packaged:minilm)"}.get(ds.modality, "")
        raise DataError(f"{args.get('data', data)} is {ds.modality} data but {args['model']} is a backbone for "
                        f"{backbone.modality} data: choose a {ds.modality} model{hint}; `rehead models` lists them")
    pipe = pipeline(backbone.modality)
    if hasattr(pipe, "prepare_backbone"):  # e.g. a table encoder fits its standardisation on train rows
        pipe.prepare_backbone(backbone, ds)
    k = backbone.stage_index(args["cut"])
    prefix = backbone.cut(k)
    in_dim = prefix.forward_cuts(_example(prefix), [k])[k].shape[1]
    head = _new_head(args, in_dim, len(ds.classes))
    return ds, backbone, k, TransferModel(prefix, head, train_frozen_bn=args.get("train_frozen_bn", False),
                                          freeze_bn=args.get("freeze_bn", False))


@dataclass
class _Warm:
    """An extract-only fit served from the cache alone: no backbone is built."""
    stamp: str
    cut: int
    cut_name: str
    backbone: Backbone  # hollow: no stages, the recorded preprocessing
    in_dim: int
    features: tuple


def _snapshot_stamp(args: dict, ds: Dataset, cache, hooks) -> str | None:
    """The weights stamp under which an extract-only fit records and reuses its backbone snapshot;
    None where snapshots do not apply: no cache, method hooks, live phases, tables (their encoder
    checks and standardises the table's columns when built), or a source without a stamp."""
    if not cache or hooks or ds.modality == "tabular" or not _recipe(args, len(ds.train), 1).uses_only_features:
        return None
    return zoo.weights_stamp(args["model"])


def _warm_start(args: dict, ds: Dataset, cache: FeatureCache, stamp: str) -> _Warm | None:
    """The snapshot of the backbone and every sample's features, when the cache has them all."""
    meta = cache.snapshot(stamp)
    if meta is None or meta["modality"] != ds.modality:
        return None
    try:
        k = stage_index(meta["stage_names"], args["cut"])
    except ValueError:
        return None  # the usual path reports it
    cut = meta["cuts"].get(str(k))
    if cut is None:
        return None
    hollow = Backbone({}, meta["data_config"], args["model"])
    pipe = pipeline(ds.modality)
    mkey = cache.key(args["model"], cut["weights_id"], k, cut["preprocessing_id"])
    features = []
    for split in (ds.train, ds.val):
        x = cache.get_all(mkey, [pipe.sample_key(item, cache, hollow) for item in split.items])
        if x is None:
            return None
        features.append(IndexedTensors(torch.from_numpy(x), torch.tensor(split.labels)))
    return _Warm(stamp, k, meta["stage_names"][k - 1], hollow, cut["in_dim"], tuple(features))


def _recipe(args: dict, n_train: int, depth: int):
    return build_recipe(args["strategy"], n_train, depth, epochs=args["epochs"], lr=args["lr"],
                        unfreeze=args["unfreeze"], lr_decay=args["lr_decay"], lr_min=args["lr_min"],
                        schedule=args["schedule"], augment=bool(args["augment"]),
                        **{key: args[key] for key in ("weight_decay", "warmup", "sgdr_cycle", "sgdr_mult") if key in args})


def _run(out: Path, args: dict, data, echo, progress, hooks, accelerator, t_start, resume_state=None) -> Run:
    if args.get("find_lr") and args.get("lr") is None and resume_state is None:
        # fastai-style: run the LR range test into the run directory and train at its suggestion.
        res = find_lr(data, model=args["model"], out=out if accelerator.is_main_process else None,
                      cut=args["cut"], head=args["head"], hidden=args["hidden"], dropout=args["dropout"],
                      batch_size=args["batch_size"], workers=args["workers"], seed=args["seed"],
                      cache_dir=args["cache_dir"], use_cache=args["use_cache"], val_fraction=args["val_fraction"],
                      data_kw=args.get("data_kw"), progress=progress, echo=echo)
        args["lr"] = res["suggested"]
    t0 = time.perf_counter()
    ds = _load_data(args, data)
    cache = FeatureCache(args["cache_dir"]) if args["use_cache"] else None
    stamp = _snapshot_stamp(args, ds, cache, hooks)
    warm = _warm_start(args, ds, cache, stamp) if stamp and resume_state is None else None
    if warm:
        k, backbone = warm.cut, warm.backbone
        model = TransferModel(backbone, _new_head(args, warm.in_dim, len(ds.classes)))
        cut_name, in_dim = warm.cut_name, warm.in_dim
    else:
        ds, backbone, k, model = _build(args, ds)
        # The head's first linear layer takes the features (an MLP head's last one takes `hidden`).
        in_dim = next(m for m in model.head if isinstance(m, torch.nn.Linear)).in_features
        cut_name = model.backbone.stage_names[-1]
    recipe = _recipe(args, len(ds.train), k)
    if recipe.reason:
        echo(f"strategy auto -> {recipe.strategy}: {recipe.reason}")
    if args["augment"] and recipe.strategy == "extract":
        echo("note: --augment is ignored by --strategy extract (features are cached once); "
             "use --strategy head or finetune to train on augmented images")
    elif args["augment"]:
        echo("augmentation on: features are computed live each epoch, not cached")
    head_cfg = {"kind": args["head"], "in_dim": int(in_dim), "out_dim": len(ds.classes),
                "hidden": args["hidden"], "dropout": args["dropout"]}
    config = {"kind": "fit", "model": args["model"], "cut": k, "cut_name": cut_name,
              "head": head_cfg, "strategy": recipe.strategy, "strategy_reason": recipe.reason,
              "phases": [asdict(p) for p in recipe.phases], "data_config": backbone.data_config,
              "data_summary": ds.summary(), "train_frozen_bn": args.get("train_frozen_bn", False),
              "freeze_bn": args.get("freeze_bn", False), "args": args,
              "methods": [h.config() for h in hooks if hasattr(h, "config")]}
    if any(getattr(h, "replaces_weight_decay", False) for h in hooks):
        for p in recipe.phases:  # L2-SP replaces decay towards 0 by decay towards the pretrained weights
            p.weight_decay = 0.0
        config["phases"] = [asdict(p) for p in recipe.phases]
    if resume_state is None and accelerator.is_main_process:
        write_yaml(out / "config.yaml", config)
        (out / "labels.json").write_text(json.dumps(ds.classes))
        (out / "split.json").write_text(json.dumps({s: {"items": [str(i) for i in getattr(ds, s).items],
                                                       "labels": getattr(ds, s).labels} for s in ("train", "val")}))
    only_features = recipe.uses_only_features  # extract: the backbone never trains
    # A run of feature phases only takes seconds to redo: it writes no checkpoints.
    trainer = Trainer(TrainConfig(seed=args["seed"], patience=args["patience"], progress=progress, hooks=hooks,
                                  select_best=args.get("select_best", True), checkpoints=not only_features),
                      run_dir=out, accelerator=accelerator)
    for h in hooks:
        if hasattr(h, "setup"):  # before training: L2-SP records w0, guided runs its scouts
            h.setup(model, ds=ds, phases=recipe.phases, args=args, out=out, uses_cache=only_features,
                    resume=resume_state is not None)
    info, features = {}, None
    if warm:
        features, info = warm.features, {"extract_seconds": time.perf_counter() - t0, "skipped": [],
                                         "backbone_built": False}
    elif recipe.uses_cache:
        features, info = _cached_features(model, ds, cache, args, progress, echo)
        if stamp:  # lets the next identical fit skip building the backbone
            cache.save_snapshot(stamp, backbone, model.backbone, in_dim)
    make_loader = None
    if any(not p.on_features for p in recipe.phases):
        make_loader = _live_loaders(model, ds, args, echo)
    resume = trainer.load_checkpoint() if resume_state is not None else None
    trainer.fit(model, "train", "val", recipe.phases, batch_size=args["batch_size"], make_loader=make_loader,
                features=features, resume=resume)
    if not trainer.acc.is_main_process:
        return None
    if warm:  # the run holds the whole model: the recorded prefix plus the trained head
        sd = {f"backbone.{n}": t for n, t in cache.snapshot_prefix(warm.stamp, k).items()}
        sd.update({f"head.{n}": t for n, t in model.head.state_dict().items()})
        save_tensors(sd, out / "model.safetensors")
    else:
        save_weights(model, out / "model.safetensors")
    last = trainer.history[-1] if trainer.history else {}
    best = max(trainer.history, key=lambda r: (r["val_acc"], -r["val_loss"])) if trainer.history else {}
    summary = {"strategy": recipe.strategy, "val_acc": best.get("val_acc"), "val_loss": best.get("val_loss"),
               "best_epoch": best.get("global_epoch"), "epochs_run": len(trainer.history),
               "last_val_acc": last.get("val_acc"), "wall_seconds": time.perf_counter() - t_start, **info}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "checkpoint.pt").unlink(missing_ok=True)
    (out / "best.safetensors").unlink(missing_ok=True)
    echo(f"val accuracy {summary['val_acc']:.4f} ({len(ds.val)} samples) -> {out}\n"
         f"next: rehead evaluate {out} | rehead predict {out} FILES | rehead report {out}")
    return Run(out, lazy=True) if warm else Run(out, model=model)


def _example(backbone):
    return pipeline(backbone.modality).example_input(backbone)


def _cached_features(model, ds, cache, args, progress, echo):
    """(train, val) datasets of the prefix's features, through the shared cache."""
    k = len(model.backbone)
    t0 = time.perf_counter()
    out, skipped = [], []
    for split in ("train", "val"):
        s = getattr(ds, split)
        f, kept, sk = extract(model.backbone, s.items, [k], cache, batch_size=args["batch_size"],
                              workers=args["workers"], strict=args["strict"], progress=progress,
                              desc=f"extract {split}")
        out.append(IndexedTensors(f[k], torch.tensor([s.labels[i] for i in kept])))
        skipped += sk
    if skipped:
        echo(f"skipped {len(skipped)} unreadable item(s): " + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return tuple(out), {"extract_seconds": time.perf_counter() - t0, "skipped": skipped}


def _live_loaders(model, ds, args, echo):
    """``make_loader(split, shuffle, generator)`` for phases that run the backbone live."""
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
    return make_loader


def _resume(out: Path, echo, progress, accelerator) -> Run:
    cfg = read_config(out)
    if (out / "model.safetensors").exists() and not (out / "checkpoint.pt").exists():
        echo(f"{out} already finished; nothing to resume")
        return Run(out)
    if not (out / "checkpoint.pt").exists():
        echo(f"{out} has no checkpoint yet: starting it again from the beginning")
        (out / "metrics.csv").unlink(missing_ok=True)
    echo(f"resuming {out}")
    from .methods import hooks_from_config
    return _run(out, cfg["args"], cfg["args"]["data"], echo, progress, hooks_from_config(cfg.get("methods")),
                accelerator, time.perf_counter(), resume_state=True)


def find_lr(data, model: str = DEFAULT_MODEL, out: str | Path | None = None, cut=None, head: str = "linear",
            hidden: int = 512, dropout: float = 0.0, unfreeze: int = 0, lr_decay: float = 3.0,
            batch_size: int = 32, workers: int = 2, seed: int = 0, steps: int = 100, start_lr: float = 1e-7,
            end_lr: float = 10.0, cache_dir: str | None = None, use_cache: bool = True,
            val_fraction: float = 0.2, data_kw: dict | None = None, progress: bool = True, echo=print) -> dict:
    """LR range test for the head (``unfreeze=0``: on cached features) or the head plus the last
    ``unfreeze`` stages (live, discriminative LRs kept in ratio). Writes lr_find.json/png to ``out``."""
    from .train.lr_find import lr_find, plot
    args = {"model": model, "cut": cut, "head": head, "hidden": hidden, "dropout": dropout, "seed": seed,
            "val_fraction": val_fraction, "data_kw": data_kw}
    ds, _, k, tm = _build(args, data)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    if unfreeze == 0:
        cache = FeatureCache(cache_dir) if use_cache else None
        f, kept, _ = extract(tm.backbone, ds.train.items, [k], cache, batch_size=batch_size, workers=workers,
                             progress=progress, desc="extract train")
        y = torch.tensor([ds.train.labels[i] for i in kept])
        loader = torch.utils.data.DataLoader(IndexedTensors(f[k], y), batch_size=batch_size, shuffle=True,
                                             generator=gen)
        res = lr_find(tm.head, loader, loss_fn, start_lr, end_lr, steps)
    else:
        tm.set_trainable_last(unfreeze)
        pipe = pipeline(tm.backbone.modality)
        loader = pipe.make_loader(tm.backbone, ds.train.items, ds.train.labels, batch_size=batch_size,
                                  workers=workers, shuffle=True, generator=gen)
        res = lr_find(tm, loader, loss_fn, start_lr, end_lr, steps, param_groups=tm.param_groups(1.0, lr_decay))
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "lr_find.json").write_text(json.dumps(res))
        plot(res, out / "lr_find.png")
    lo, hi = res["range"]
    echo(f"suggested LR {res['suggested']:.2e} (steepest descent); try {lo:.1e} .. {hi:.1e}"
         + (f"; plot: {out / 'lr_find.png'}" if out else ""))
    return res
