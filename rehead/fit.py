"""fit: check -> load -> cut -> graft -> (extract) -> train -> save, into a run directory.

Everything that can be checked (options, data, model, cut, modality) is checked before the run
directory is created, so a fit that fails on bad input leaves nothing behind. ``RunDir`` writes
every file of the run.
"""
from __future__ import annotations

import io
import logging
import os
import shlex
import sys
import time
import types
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import distributed, interrupts, zoo
from .calibration import calibrate, is_multiclass, summary_line
from .config import DEFAULT_MODEL, DEFAULT_MODELS, ConfigError, FitConfig
from .data import DataError, Dataset, load_dataset, pipeline
from .data.inputs import as_dataset
from .features import FeatureCache, extract, sample_keys
from .heads import make_head
from .model import TransferModel
from .precision import extraction_device, feature_precision, training_note
from .recipes import build_recipe
from .run import Run, head_logits
from .rundir import LR_FIND_FILES, REPLACED, UNSTARTED, BadRun, RunDir, RunExists
from .tasks import epoch_metrics, per_item, target_stats, to_tensor
from .train.callbacks import MixImages, WeightEMA, score
from .train.loop import IndexedTensors, TrainConfig, Trainer, seed_everything
from .zoo.backbone import Backbone, stage_index
from .zoo.paths import spec_path

log = logging.getLogger("rehead")


def fit(data=None, out: str | Path | None = None, *, config: FitConfig | dict | None = None, overwrite: bool = False,
        resume: bool = False, progress: bool = True, hooks: list | None = None, echo=print,
        accelerator=None, **options) -> Run:
    """Train a new head (and as much of the backbone as the strategy says) on ``data``.

    ``data``: a path (folder of class folders, train/val(/test) folders, a CSV), a pandas
    DataFrame, a list of (item, label) pairs, a torch Dataset of (input, label), or a
    ``rehead.data.Dataset``. ``options``: any field of ``FitConfig`` (``model=``, ``strategy=``, ...);
    ``model`` may also be a ``Backbone`` or an ``nn.Module``. ``resume=True`` continues ``out``.
    """
    with interrupts.ignored_caught():  # a Ctrl-C Python ignores (in a destructor) still stops a fit from Python
        return _fit(data, out, config, overwrite, resume, progress, hooks, echo, accelerator, options)


def _fit(data, out, config, overwrite, resume, progress, hooks, echo, accelerator, options) -> Run:
    t_start = time.perf_counter()
    if resume:
        if out is None:
            raise BadRun("resume needs the run directory: rehead fit --resume RUN_DIR")
        _refuse_with_resume(Path(out), data, config, hooks, options)
        # the steps go on in the precision they started in
        accelerator, echo, progress = _process(accelerator, _recorded_precision(Path(out)) or "no", echo, progress)
        return _resume(Path(out), echo, progress, accelerator, t_start, workers=options.pop("workers", None))
    config = _config(config, {}) if config is not None else None  # a dict of options, checked, as a FitConfig
    model_obj = options.pop("model", None)
    if isinstance(model_obj, os.PathLike):  # a run directory or a weights file given as a Path: its spec, as text
        model_obj = os.fspath(model_obj)
    module = model_obj if isinstance(model_obj, torch.nn.Module) else None  # a Backbone is a Module too
    if module is not None:
        options["model"] = getattr(module, "spec", None) or f"module:{type(module).__name__}"
    elif model_obj is not None:
        options["model"] = model_obj  # a spec; FitConfig refuses what is not one by its type
    cfg = _config(config, options)  # every option checked before accelerate is asked for its precision
    accelerator, echo, progress = _process(accelerator, cfg.precision, echo, progress)
    main = accelerator.is_main_process
    if isinstance(cfg.model, str):  # config.yaml's spec rebuilds the model from any working directory
        from .zoo.paths import absolute_spec
        cfg = cfg.replace(model=absolute_spec(cfg.model))
    _refuse_idle_find_lr(cfg)
    _refuse_overridden(cfg)
    _refuse_idle_method(cfg)
    if data is None:
        raise DataError("give the data: a folder, a CSV, a DataFrame, a list of (item, label) pairs or a Dataset")
    out = Path(out or f"runs/{Path(str(data)).stem if isinstance(data, (str, Path)) else 'latest'}")
    reads = [data, spec_path(cfg.model)]  # never emptied by --overwrite, nor the runs the model is made from
    if main:  # before the data is read and the model loads, not after (create, the other processes' no-op, later)
        RunDir.check_free(out, overwrite, resumable=True, inputs=reads)
    job = _prepare(cfg, data, module, hooks, echo)
    run = RunDir.create(out, overwrite=overwrite, writer=main, resumable=True, inputs=reads)
    accelerator.wait_for_everyone()
    try:
        return _train(job, run, echo, progress, accelerator, t_start)
    except BaseException as e:
        if main and not run.exists("checkpoint.pt") and not run.exists("summary.json"):  # nothing to resume
            if isinstance(e, (DataError, ConfigError)):  # refused on its data before any training
                run.discard()
            else:  # stopped: a run --overwrite replaced comes back (none: the run restarts on --resume)
                run.restore_replaced()
        raise
    finally:
        if run.exists("summary.json"):  # finished: the run --overwrite replaced goes
            run.finish()
        run.release()


def _config(config: FitConfig | None, options: dict) -> FitConfig:
    """``config`` (a FitConfig, or a dict of its fields) with ``options`` on top, every name checked."""
    if isinstance(config, dict):
        return FitConfig.from_dict({**config, **options})
    elif config is not None and not isinstance(config, FitConfig):
        raise ConfigError(f"config= takes a rehead.FitConfig (or a dict of its options), not a "
                          f"{type(config).__name__}")
    return config.replace(**options) if config else FitConfig.from_dict(options)


def _refuse_idle_find_lr(cfg: FitConfig) -> None:
    """``--find-lr`` with ``--strategy extract`` and a linear head: that head is solved on cached features
    (L-BFGS, one step) with no learning rate, so the range test would run for a suggestion nothing uses."""
    if cfg.find_lr and cfg.strategy == "extract" and cfg.head == "linear":
        raise ConfigError("--find-lr has nothing to set with --strategy extract: its linear head is solved on cached "
                          "features (L-BFGS), with no learning rate; leave --find-lr out, or use --head mlp (a trained "
                          "head) or --strategy finetune")


def _refuse_overridden(cfg: FitConfig) -> None:
    """Options a fresh fit was given that another option given with them overrides: each was recorded as if it
    ran (checked on the options as given, before the data's defaults fill any)."""
    if cfg.strategy == "auto" and cfg.unfreeze is not None:
        raise ConfigError(f"--strategy auto plans its own unfreezing from the data (its size and the probe), so "
                          f"--unfreeze {cfg.unfreeze} would not be used: give --strategy finetune --unfreeze "
                          f"{cfg.unfreeze} to train that many stages, or leave --unfreeze out")
    if cfg.find_lr and cfg.lr is not None:
        raise ConfigError(f"--find-lr picks the learning rate and --lr {cfg.lr:g} sets it: give one of the two")
    if cfg.strategy == "extract":  # no schedule or LR spread runs at all: the idle-options note names them
        return
    if cfg.layer_decay is not None and (cfg.lr_decay is not None or cfg.lr_min is not None):
        raise ConfigError("--layer-decay sets every stage's LR (the top's times layer_decay per layer down), which "
                          "replaces --lr-decay and --lr-min: give --layer-decay alone, or those without it")
    if cfg.warmup != FitConfig.__dataclass_fields__["warmup"].default and cfg.schedule not in ("cosine", "linear"):
        raise ConfigError(f"--warmup applies to --schedule cosine or linear; --schedule {cfg.schedule} has its own "
                          "shape (onecycle warms up over its first 25 %): leave --warmup out, or change --schedule")
    given = [f for f in ("sgdr_cycle", "sgdr_mult") if getattr(cfg, f) != FitConfig.__dataclass_fields__[f].default]
    if given and cfg.schedule != "sgdr":
        raise ConfigError(f"--{given[0].replace('_', '-')} shapes --schedule sgdr's restarts; this fit's schedule is "
                          f"{cfg.schedule}: add --schedule sgdr, or leave it out")


def _refuse_idle_method(cfg: FitConfig) -> None:
    """A method acting on backbone training (l2sp, guided, lora) under a strategy that trains no backbone
    weight changed nothing, and was recorded as if it ran (extract: FitConfig refuses it). Auto plans live
    phases for such a method (auto.decide), except where it always extracts: other tasks than classes."""
    from .methods import BACKBONE_METHODS, idle_method_error
    if cfg.method not in BACKBONE_METHODS:
        return
    if cfg.strategy == "head":
        raise idle_method_error(cfg.method, "--strategy head trains the head alone on a frozen backbone", "head")
    if cfg.strategy == "auto" and cfg.task != "multiclass":
        raise idle_method_error(cfg.method, f"--strategy auto extracts for --task {cfg.task} (no backbone weight "
                                "trains)")


def _check_method_trains(hooks: list, recipe) -> None:
    """The same refusal on the recipe itself, for hooks given as ``hooks=`` and a resumed run's: before
    the run directory exists (a method's own refusal in ``prepare`` came after it)."""
    from .methods import backbone_method, idle_method_error
    method = backbone_method(hooks)
    if method and not any(p.trainable != 0 and not p.on_features for p in recipe.phases):
        raise idle_method_error(method, f"--strategy {recipe.strategy} trains no backbone weight", recipe.strategy)


# Options that change nothing when every phase trains the head alone on cached features (extract): the
# backbone never trains, and the head phase keeps its own patience. A linear head there is solved in one
# step (_solved_heads), which leaves the options of gradient training idle too. Checked by fitting with
# each one changed: the same weights (tests/test_fit.py keeps a few of those checks).
_IDLE_ON_FEATURES = ("unfreeze", "lr_decay", "lr_min", "layer_decay", "optimizer", "ema", "patience", "freeze_bn",
                     "train_frozen_bn", "budget")
_IDLE_SOLVED = ("epochs", "lr", "find_lr", "schedule", "warmup", "sgdr_cycle", "sgdr_mult", "weight_decay",
                "keep_last", "dropout", "hidden")
_IDLE_ORDER = ("epochs", "lr", "find_lr", "unfreeze", "lr_decay", "lr_min", "layer_decay", "schedule", "warmup",
               "sgdr_cycle", "sgdr_mult", "optimizer", "weight_decay", "ema", "patience", "keep_last", "dropout",
               "hidden", "freeze_bn", "train_frozen_bn", "budget")


def _idle_options_note(cfg: FitConfig, recipe, modality: str) -> str | None:
    """One note naming every option given (away from its default) that an extract fit leaves idle; None
    when there is none, or when some phase runs the backbone."""
    if not recipe.phases or not recipe.uses_only_features:
        return None
    solved = all(p.solver for p in recipe.phases)
    idle = set(_IDLE_ON_FEATURES) | (set(_IDLE_SOLVED) if solved else set())
    given = cfg.given(modality)
    names = [FitConfig.flag(n, getattr(cfg, n)) for n in _IDLE_ORDER if n in idle and n in given]
    if not names:
        return None
    which = "--strategy extract" if cfg.strategy == "extract" else f"extract (--strategy {cfg.strategy}'s choice)"
    verb = "has" if len(names) == 1 else "have"
    if solved:
        return (f"note: {which} solves the {cfg.head} head on cached features: {', '.join(names)} {verb} no effect "
                "(use --strategy finetune, or --head mlp for a trained head)")
    return (f"note: {which} trains only the {cfg.head} head, on cached features: {', '.join(names)} {verb} no effect "
            "(use --strategy finetune to train backbone stages)")


def _process(accelerator, precision: str, echo, progress):
    """(accelerator, echo, progress) of this process: the other processes of a launch say nothing."""
    accelerator = accelerator or distributed.accelerator(precision)
    return (accelerator, echo if accelerator.is_main_process else _silent,
            progress and accelerator.is_local_main_process)


def _refuse_with_resume(out: Path, data, config, hooks, options: dict) -> None:
    """A resume continues the run as its config.yaml says: data, options, config= or hooks= given with it
    would be ignored, so they are refused (as `rehead fit --resume RUN --epochs 10` is)."""
    given = ([f"data ({data!r:.60})"] if data is not None else []) + (["config="] if config is not None else []) \
        + (["hooks="] if hooks else []) + [f"{k}=" for k in options if k != "workers"]
    if given:
        raise ConfigError(f"resume=True continues {out} with the data and options in its config.yaml; "
                          f"{', '.join(given)} would be ignored: leave them out, or start a new run "
                          "(overwrite=True, or another out=)")


def _recorded_precision(out: Path) -> str | None:
    """The --precision a run directory's config.yaml records; None where it cannot be read (_resume names why)."""
    import yaml
    try:
        return str(yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["fit"].get("precision") or "no")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def _silent(*_a, **_k):
    pass


@dataclass
class _Job:
    """Everything a fit needs, checked: the run directory is created only once this exists."""
    cfg: FitConfig
    ds: Dataset
    recipe: object
    cut: int
    cut_name: str
    in_dim: int
    backbone: Backbone      # the full backbone (hollow when served from a snapshot)
    model: TransferModel | None  # None when warm (the head is made at train time)
    hooks: list
    cache: FeatureCache | None
    stamp: str | None
    warm: "_Warm | None"


def _prepare(cfg: FitConfig, data, module, hooks, echo, resume_split: dict | None = None,
             warm_ok: bool = True) -> _Job:
    """Options, data, model, cut, modality and strategy checked, before anything is written."""
    from .methods import method_hooks
    hooks = hooks if hooks is not None else method_hooks(
        cfg.method, alpha=cfg.alpha, beta=cfg.beta, scouts=cfg.scouts, scout_size=cfg.scout_size,
        scout_epochs=cfg.scout_epochs, guide_on=cfg.guide_on, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets)
    seed_everything(cfg.seed)
    cache = FeatureCache(cfg.cache_dir) if cfg.use_cache else None  # opens nothing until used
    if resume_split is not None:
        from .data import dataset_from_split
        ds = dataset_from_split(resume_split)
    else:
        ds = as_dataset(data, cfg, memo=cache)  # the cache remembers which images were readable
    cfg = cfg.for_data(ds.modality)  # options left unset, filled for this data (e.g. text fine-tuning)
    if cfg.model is None:  # no default backbone for this kind of data (tables): say so before loading any
        cfg = cfg.replace(model=default_model(ds))
    if (cfg.mixup or cfg.cutmix) and ds.modality != "image":
        raise ConfigError(f"--mixup and --cutmix mix images: {ds.source} is {ds.modality} data; leave them out")
    if cfg.augment_asked and ds.modality != "image":  # its presets crop, flip and recolour images
        raise ConfigError(f"--augment {cfg.augment} transforms images: {ds.source} is {ds.modality} data; leave it out")
    if getattr(ds, "task", "multiclass") != cfg.task:
        raise DataError(f"the Dataset was built for --task {ds.task} but the fit asks for --task {cfg.task}: "
                        f"build it with task={cfg.task!r}, or pass the data as a path")
    if cfg.task != "multiclass" and cfg.strategy == "auto":
        # auto's probes score classifiers (accuracy against chance): for other tasks take the
        # cached-feature path, whose linear head is solved exactly
        cfg = cfg.replace(strategy="extract")
        echo(f"note: --strategy auto plans by classification accuracy; --task {cfg.task} uses --strategy extract "
             "(give --strategy head/finetune/full to train more of the backbone)")
    ds.say_warnings(echo)  # skipped items among them (data.splits._skipped_warning)
    for h in hooks:  # what a method can check of the data (guided: its scouts' size) before any file is written
        if hasattr(h, "check_data"):
            h.check_data(ds)
    stamp = _snapshot_stamp(cfg, ds, cache, hooks) if module is None else None
    warm = _warm_start(cfg, ds, cache, stamp) if stamp and warm_ok and resume_split is None \
        and cfg.strategy != "auto" else None  # auto measures the backbone first
    if cache is not None and not warm:  # a fit the cache serves whole only reads it (a team's read-only cache)
        cache.check_writable()  # a read-only or full cache stops here, before the run directory exists
    if warm:
        if ds.modality == "tabular":  # the encoder's columns, checked as prepare_backbone checks them
            from .data.tabular import check_encoder_columns
            check_encoder_columns(warm.backbone.data_config, ds, echo)
        recipe = _recipe(cfg, len(ds.train), warm.cut)
        return _Job(cfg, ds, recipe, warm.cut, warm.cut_name, warm.in_dim, warm.backbone, None,
                    hooks, cache, stamp, warm)
    backbone = _backbone(cfg, module)
    check_modality(backbone, ds, cfg.model)
    pipe = pipeline(backbone.modality)
    if hasattr(pipe, "prepare_backbone"):  # e.g. a table encoder fits its standardisation on train rows
        pipe.prepare_backbone(backbone, ds, echo)
    if cfg.strategy == "auto":  # size x similarity from one cached pass: sets cfg.cut and cfg.auto_plan (auto.py)
        from .auto import plan_auto
        cfg, hooks = plan_auto(cfg, backbone, ds, cache, hooks, echo)
    k = backbone.stage_index(cfg.cut)
    prefix = backbone.cut(k)
    if cfg.auto_plan is None:  # auto chose its cut by a probe's val score, which already says what it reads
        _check_last_token_cut(prefix, ds)
    with torch.inference_mode():
        in_dim = prefix.forward_cuts(pipe.example_input(prefix), [k])[k].shape[1]
    head = _new_head(cfg, in_dim, len(ds.classes))
    model = TransferModel(prefix, head, train_frozen_bn=cfg.train_frozen_bn, freeze_bn=cfg.freeze_bn,
                          layer_decay=cfg.layer_decay)
    recipe = _recipe(cfg, len(ds.train), k)
    _check_method_trains(hooks, recipe)
    return _Job(cfg, ds, recipe, k, prefix.stage_names[-1], int(in_dim), backbone, model, hooks,
                cache, stamp, None)


def _backbone(cfg: FitConfig, module) -> Backbone:
    if module is None:
        return zoo.load(cfg.model)
    if isinstance(module, Backbone):
        return module
    from .zoo.module import backbone_from_module
    return backbone_from_module(module, cfg.model)


_MODEL_HINT = {"text": " (e.g. --model packaged:minilm)",
               "tabular": " (e.g. --model tabular:mlp-<features>-64x2, an MLP encoder of its feature columns)"}


def default_model(ds: Dataset) -> str:
    """The data's default backbone (fit's, probe's); tables have none: refused, saying what to give."""
    if ds.modality not in DEFAULT_MODELS:
        raise DataError(f"{ds.source} is {ds.modality} data, which has no default backbone: give one with --model"
                        f"{_MODEL_HINT.get(ds.modality, '')}; `rehead models` lists them{_column_hint(ds)}")
    return DEFAULT_MODELS[ds.modality]


def check_modality(backbone: Backbone, ds: Dataset, model: str) -> None:
    """Refuse a backbone for other data (fit's, probe's), before any extraction reads an item wrongly."""
    if backbone.modality != ds.modality:
        hint = _MODEL_HINT.get(ds.modality, "")
        a = "an" if ds.modality[0] in "aeiou" else "a"
        raise DataError(f"{ds.source} is {ds.modality} data but {model} is a backbone for "
                        f"{backbone.modality} data: choose {a} {ds.modality} model{hint}; `rehead models` lists them"
                        f"{_column_hint(ds)}")


def _column_hint(ds: Dataset) -> str:
    if ds.modality != "tabular":
        return ""
    from .data.tabular import column_hint
    return column_hint(ds)


def task_loss(cfg: FitConfig, ds: Dataset):
    """The loss the run trains on: the task's, with balanced class weights, label smoothing and
    (regression) the training split's target mean/std."""
    from .tasks import balanced_weights, loss_for, target_stats
    weights = balanced_weights(ds.train.labels, cfg.task, len(ds.classes)) if cfg.class_weight == "balanced" else None
    target = target_stats(ds.train.labels) if cfg.task == "regression" else None
    return loss_for(cfg.task, class_weights=weights, label_smoothing=cfg.label_smoothing, target=target)


def _new_head(cfg: FitConfig, in_dim: int, n_classes: int):
    seed_everything(cfg.seed)
    return make_head(in_dim, n_classes, cfg.head, cfg.hidden, cfg.dropout)


def _recipe(cfg: FitConfig, n_train: int, depth: int):
    return _solved_heads(cfg, build_recipe(cfg.strategy, n_train, depth, epochs=cfg.epochs, lr=cfg.lr, unfreeze=cfg.unfreeze,
                        lr_decay=cfg.lr_decay, lr_min=cfg.lr_min, schedule=cfg.schedule,
                        augment=bool(cfg.augment_asked), weight_decay=cfg.weight_decay, warmup=cfg.warmup,
                        sgdr_cycle=cfg.sgdr_cycle, sgdr_mult=cfg.sgdr_mult, optimizer=cfg.optimizer,
                        plan=cfg.auto_plan))


def _solved_heads(cfg: FitConfig, recipe):
    """A linear head on cached features is a convex problem: solve it (one "epoch") instead of
    60 epochs of AdamW that stop short of its optimum. An MLP head keeps SGD with early stopping."""
    if cfg.head == "linear":
        solver = {"regression": "ridge"}.get(cfg.task, "lbfgs")  # what solves it (train/task_heads.py), as recorded
        for p in recipe.phases:
            if p.on_features:
                p.solver, p.epochs, p.patience = solver, 1, None
    return recipe


# -- warm start: an extract-only fit served from the cache alone ------------------------------------
@dataclass
class _Warm:
    stamp: str
    cut: int
    cut_name: str
    backbone: Backbone  # hollow: no stages, the recorded preprocessing
    in_dim: int
    features: tuple
    mkey: str  # the features' model key in the store


def _snapshot_stamp(cfg: FitConfig, ds: Dataset, cache, hooks) -> str | None:
    """The weights stamp under which an extract-only fit records and reuses its backbone snapshot;
    None where snapshots do not apply: no cache, method hooks, live phases, tables (their encoder
    checks and standardises the table's columns when built), or a source without a stamp."""
    if not cache or hooks or ds.modality == "tabular" or not _recipe(cfg, len(ds.train), 1).uses_only_features:
        return None
    return zoo.weights_stamp(cfg.model)


def _warm_start(cfg: FitConfig, ds: Dataset, cache: FeatureCache, stamp: str) -> _Warm | None:
    """The snapshot of the backbone and every sample's features, when the cache has them all."""
    meta = cache.snapshot(stamp)
    if meta is None or meta["modality"] != ds.modality:
        return None
    try:
        k = stage_index(meta["stage_names"], cfg.cut)
    except ValueError:
        return None  # the usual path reports it
    cut = meta["cuts"].get(str(k))
    if cut is None:
        return None
    hollow = Backbone({}, meta["data_config"], cfg.model)
    pipe = pipeline(ds.modality)
    precision = feature_precision(extraction_device())
    mkey = cache.key(cfg.model, cut["weights_id"], k, cut["preprocessing_id"], precision)
    cache.name(mkey, cfg.model, k, meta["stage_names"][k - 1], precision)
    features = []
    for split in (ds.train, ds.val):
        x = cache.get_all(mkey, sample_keys(pipe, split.items, cache, hollow))
        if x is None:
            return None
        features.append(IndexedTensors(torch.from_numpy(x), to_tensor(split.labels, ds.task, len(ds.classes))))
    return _Warm(stamp, k, meta["stage_names"][k - 1], hollow, cut["in_dim"], tuple(features), mkey)


# -- training --------------------------------------------------------------------------------------
def _train(job: _Job, run: RunDir, echo, progress, accelerator, t_start, resuming: bool = False) -> Run | None:
    cfg, ds, recipe = job.cfg, job.ds, job.recipe
    said = training_note(accelerator.mixed_precision, accelerator.device, any(not p.on_features for p in recipe.phases))
    if said:  # once, before any extraction or step
        echo(said)
    if job.cfg.find_lr and cfg.lr is None and not resuming:
        _find_lr_for(job, run, echo, progress)
        cfg, recipe = job.cfg, job.recipe
    t0 = time.perf_counter()
    if recipe.reason:
        echo(f"strategy {'auto -> ' if cfg.strategy == 'auto' else ''}{recipe.strategy}: {recipe.reason}")
    augment = _augment(cfg, job.backbone, recipe)
    if cfg.augment_asked and recipe.strategy == "extract":
        echo("note: --augment is ignored by --strategy extract (features are cached once); "
             "use --strategy head or finetune to train on augmented images")
    elif augment:
        echo(f"augmentation {augment} on the live phases' training images"
             + (" (the default when image stages are unfrozen; --augment none turns it off)" if not cfg.augment else ""))
    idle = _idle_options_note(cfg, recipe, ds.modality)
    if idle:
        echo(idle)
    model = job.model or TransferModel(job.backbone, _new_head(cfg, job.in_dim, len(ds.classes)))
    if any(getattr(h, "replaces_weight_decay", False) for h in job.hooks):
        for p in recipe.phases:  # L2-SP replaces decay towards 0 by decay towards the pretrained weights
            p.weight_decay = 0.0
    if not resuming:
        _write_start(run, job)
    only_features = recipe.uses_only_features  # extract: the backbone never trains
    # A run of feature phases only takes seconds to redo: it writes no checkpoints.
    if cfg.label_smoothing and any(p.solver for p in recipe.phases):
        echo("note: --label-smoothing applies to gradient-trained phases; the linear head solved on cached "
             "features ignores it")
    hooks = job.hooks + ([WeightEMA(cfg.ema)] if cfg.ema else [])
    if cfg.mixup or cfg.cutmix:
        if recipe.uses_only_features:
            echo("note: --mixup/--cutmix are ignored by a fit on cached features only; use --strategy head or "
                 "finetune to train on mixed images")
        hooks.append(MixImages(len(ds.classes), cfg.mixup, cfg.cutmix))
    # smoothing that no phase applies stays out of the losses reported too (plain cross-entropy)
    trainer = Trainer(TrainConfig(seed=cfg.seed, patience=cfg.patience, progress=progress, hooks=hooks,
                                  select_best=not cfg.keep_last, checkpoints=not only_features, task=cfg.task,
                                  class_weight="balanced" if cfg.class_weight == "balanced" else None),
                      run=run, accelerator=accelerator, loss_fn=task_loss(
                          cfg.replace(label_smoothing=0.0) if all(p.solver for p in recipe.phases) else cfg, ds))
    for h in job.hooks:
        if hasattr(h, "prepare"):  # what a method needs before the loop's setup event (the data for scouts)
            h.prepare(model, ds=ds, phases=recipe.phases, args=cfg, uses_cache=only_features,
                      echo=echo)
    info, features = {}, None
    if job.warm:
        features, info = job.warm.features, {"extract_seconds": time.perf_counter() - t0, "skipped": [],
                                             "backbone_built": False}
    elif recipe.uses_cache:
        features, info = _cached_features(model, ds, job.cache, cfg, progress, echo)
        if job.stamp and accelerator.is_main_process:  # lets the next identical fit skip building the backbone
            job.cache.save_snapshot(job.stamp, job.backbone, model.backbone, job.in_dim)
    make_loader = _live_loaders(model, ds, cfg, augment, echo) if any(not p.on_features for p in recipe.phases) else None
    resume_state = run.load_checkpoint() if resuming else None
    if resume_state is not None:
        _check_checkpoint(resume_state, model, run / "checkpoint.pt")
    trainer.fit(model, "train", "val", recipe.phases, batch_size=cfg.batch_size, make_loader=make_loader,
                features=features, resume=resume_state)
    if not trainer.acc.is_main_process:
        return None
    _save_model(run, job, model)
    summary = _summary(trainer, recipe, info, t_start)
    for p in summary["phases"]:  # a phase that ended before its epochs (--patience, a budget) is said so
        p["epochs_planned"] = recipe.phases[p["phase_index"]].epochs
    summary["note"] = _keep_last_note(summary) if cfg.keep_last else \
        _no_gain_note(summary, model.backbone.modality, augment, [p.trainable for p in recipe.phases],
                      mixed=bool(cfg.mixup or cfg.cutmix), planned=cfg.strategy == "auto", method=cfg.method)
    summary["augment"] = augment
    summary["input_note"] = _input_note(summary, cfg.auto_plan)
    summary["budget_note"] = _budget_note(summary, cfg, job.hooks)
    solved = getattr(trainer, "solved", None)
    if solved:  # the L2 strength cross-validation chose on the training split
        keys = ("C", "scaling", "class_weight", "folds", "seconds") if cfg.task == "multiclass" else (
            "solver", "alpha", "l2", "scaling", "folds", "seconds")
        summary["head_solver"] = {k: solved.get(k) for k in keys if k in solved or cfg.task == "multiclass"}
    summary["skipped"] = [str(s) for s in ds.skipped] + list(summary.get("skipped", []))
    run_obj = Run(run.path, lazy=True) if job.warm else Run(run.path, model=model)
    summary["kept_on_features"] = _kept_on_features(trainer, recipe, features)
    run_obj.inference_precision = summary["inference_precision"] = \
        feature_precision(extraction_device()) if summary["kept_on_features"] else "fp32"
    summary["training_precision"] = trainer.precision
    rescore = trainer.precision != "fp32" and summary.get("val_loss") is not None
    val = _val_logits(run_obj, model, ds, cfg, features, only_features) if rescore or is_multiclass(cfg) else None
    if rescore:
        _rescore_val(summary, trainer, cfg.task, len(ds.classes), *val)
    if is_multiclass(cfg):  # before the test split is scored, so that its figures use T
        summary["calibration"] = calibrate(run, *val)
        echo(summary_line(summary["calibration"]))
    if getattr(ds, "test", None) is not None and len(ds.test):
        # Scored once, after every choice was made on val: reported, never selected on.
        res = run_obj.evaluate(ds.test.items, ds.test.labels, batch_size=cfg.batch_size,
                               views=_test_views(job, model, only_features, progress))
        summary.update({f"test_{k}": res["accuracy" if k == "acc" else k] for k in headline(cfg.task)}, test_n=res["n"])
        if "ece" in res:  # held out from both training and the temperature: the fair calibration figures
            summary.update(test_ece=res["ece"], test_ece_uncalibrated=res["ece_uncalibrated"],
                           test_nll=res["nll"], test_nll_uncalibrated=res["nll_uncalibrated"])
    run.write_json("summary.json", summary)
    run.remove("checkpoint.pt", "best.safetensors")
    _report_end(echo, summary, ds, run.path)
    return run_obj


def _find_lr_for(job: _Job, run: RunDir, echo, progress) -> None:
    """--find-lr inside fit: sets ``job.cfg.lr`` (and the recipe) from a range test. With unfrozen phases
    the test steps the first one's stages (their LR spread as the recipe's), and its suggestion is that
    phase's LR: the head alone on cached features suggested 0.115 on MiniLM, whose unfrozen phases then ran
    at 0.0115, 57x text's default, and the fine-tune fell apart. --lr is set so that the recipe gives that
    phase the suggestion (the other phases keep the recipe's ratios to it): --resume rebuilds it from --lr."""
    cfg, ds, recipe = job.cfg, job.ds, job.recipe
    if recipe.phases and all(p.solver for p in recipe.phases):  # auto chose extract: no LR to find
        echo(f"note: --find-lr has nothing to set: this fit runs extract, whose {cfg.head} head is solved on "
             "cached features with no learning rate; the range test is skipped")
        job.cfg = cfg.replace(find_lr=False)  # config.yaml records what ran
        return
    live = [i for i, p in enumerate(recipe.phases) if not p.on_features and p.trainable != 0]
    if not live:
        res = find_lr(ds, config=cfg, out=run, progress=progress, echo=echo)
        job.cfg = cfg.replace(lr=res["suggested"])
        job.recipe = _recipe(job.cfg, len(ds.train), job.cut)
        return
    first = recipe.phases[live[0]]
    res = find_lr(ds, config=cfg, out=run, unfreeze=first.trainable, progress=progress, echo=echo, hint=False)
    share = _recipe(cfg.replace(lr=1.0), len(ds.train), job.cut).phases[live[0]].lr  # the phase's LR per unit --lr
    job.cfg = cfg.replace(lr=res["suggested"] / share)
    job.recipe = _recipe(job.cfg, len(ds.train), job.cut)
    echo(_found_lr_line(job.recipe, live, first.trainable))


def _found_lr_line(recipe, live: list[int], unfreeze: int) -> str:
    """Which LR --find-lr found, and what each phase runs at."""
    stages = "every stage" if unfreeze == -1 else f"the last {unfreeze} stage(s)"
    found = recipe.phases[live[0]].lr
    said = [f"{p.name} {p.lr:.2e}" if i in live else f"{p.name} solved (no LR)" if p.solver else
            f"{p.name} {p.lr:.2e} (the recipe's ratio to it)" for i, p in enumerate(recipe.phases)]
    return f"--find-lr: {found:.2e}, measured with {stages} training; phases: {', '.join(said)}"


def _kept_on_features(trainer, recipe, features) -> bool:
    """Whether the kept weights are a head trained on cached features (the backbone as pretrained):
    the run then scores new data on features made as those were (precision, and the store)."""
    pi = (trainer.kept or {}).get("phase_index")
    return bool(features is not None and pi is not None and recipe.phases[int(pi)].on_features)


def _val_logits(run_obj: Run, model, ds: Dataset, cfg: FitConfig, features, only_features: bool):
    """The kept weights' val logits and labels: from the cached features when the backbone never
    trained (no second pass over the images), else one pass of the run's model over val."""
    if features is not None and only_features:
        return head_logits(model, features[1].x, len(ds.classes)), features[1].y
    logits, kept, _ = run_obj.logits(ds.val.items, batch_size=cfg.batch_size, workers=cfg.workers)
    return logits, [ds.val.labels[i] for i in kept]


def _rescore_val(summary: dict, trainer, task: str, n_classes: int, logits, labels) -> None:
    """The summary's val figures of the kept weights out of autocast, as `rehead evaluate` scores the run: the
    loop's (metrics.csv, the phases line) ran under the steps' autocast. Those stay in ``val_in_training``."""
    y = labels if torch.is_tensor(labels) else to_tensor(labels, task, n_classes)
    loss_fn, dev = trainer.loss_fn, getattr(trainer, "device", "cpu")  # class weights sit where the loop put them
    with torch.no_grad():
        figures = {"loss": float(loss_fn(logits.to(dev), y.to(dev))),
                   **epoch_metrics(task, logits, y, getattr(loss_fn, "target", None))}
    summary["val_in_training"] = {f"val_{k}": summary.get(f"val_{k}") for k in figures}
    summary.update({f"val_{k}": v for k, v in figures.items()})


def _test_views(job: _Job, model, only_features: bool, progress: bool) -> tuple | None:
    """``([logits], kept, skipped)`` of the test split from the store's features, where the kept head
    was trained on them (the backbone never trained): a warm fit then reads the test split as it reads
    train and val, and a cold one extracts it once for the next. None (the run's model scores it)
    under a launch, without a cache, or for a warm fit whose store lacks some of the test split."""
    from .distributed import state
    cfg, ds, cache = job.cfg, job.ds, job.cache
    if not only_features or cache is None or state().num_processes > 1:
        return None
    if job.warm:  # no backbone was built: only what the store holds
        x = cache.get_all(job.warm.mkey, sample_keys(pipeline(ds.modality), ds.test.items, cache, job.warm.backbone))
        if x is None:
            return None
        return [head_logits(model, torch.from_numpy(x), len(ds.classes))], list(range(len(ds.test))), []
    k = len(model.backbone)
    f, kept, skipped = extract(model.backbone, ds.test.items, [k], cache, batch_size=cfg.batch_size,
                               workers=cfg.workers, progress=progress, desc="extract test")
    return [head_logits(model, f[k], len(ds.classes))], kept, skipped


def _check_checkpoint(state: dict, model, path: Path) -> None:
    """A checkpoint for another architecture (or another cut, head) is named, not a size-mismatch traceback."""
    own = model.state_dict()
    theirs = state.get("model") if isinstance(state, dict) else None
    if not isinstance(theirs, dict) or set(theirs) != set(own) or any(
            tuple(theirs[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise BadRun(f"{path} holds weights of another architecture than {path.parent}/config.yaml describes: "
                     "delete the checkpoint and rerun with --overwrite")


def _write_start(run: RunDir, job: _Job) -> None:
    """config.yaml, labels.json and split.json: what --resume, evaluate and predict read back."""
    cfg, ds, recipe = job.cfg, job.ds, job.recipe
    extra = {"target": target_stats(ds.train.labels)} if cfg.task == "regression" else {}
    head_cfg = {"kind": cfg.head, "in_dim": job.in_dim, "out_dim": len(ds.classes), "hidden": cfg.hidden,
                "dropout": cfg.dropout}
    run.write_yaml("config.yaml", {
        "kind": "fit", "model": cfg.model, "data": job.ds.source, "cut": job.cut, "cut_name": job.cut_name,
        "head": head_cfg, "strategy": recipe.strategy, "strategy_reason": recipe.reason,
        "phases": [asdict(p) for p in recipe.phases], "data_config": job.backbone.data_config,
        "data_summary": ds.summary(), "train_frozen_bn": cfg.train_frozen_bn, "freeze_bn": cfg.freeze_bn,
        "layer_decay": cfg.layer_decay,
        "fit": cfg.to_dict(), "methods": [h.config() for h in job.hooks if hasattr(h, "config")], **extra})
    run.write_json("labels.json", ds.classes)
    run.write_json("split.json", ds.to_split())


def _save_model(run: RunDir, job: _Job, model: TransferModel) -> None:
    if job.warm:  # the run holds the whole model: the recorded prefix plus the trained head
        sd = {f"backbone.{n}": t for n, t in job.cache.snapshot_prefix(job.warm.stamp, job.cut).items()}
        sd.update({f"head.{n}": t for n, t in model.head.state_dict().items()})
    elif getattr(model, "lora_config", None) is not None:  # LoRA: adapters + head only, and lora.json
        from .lora import adapter_state, save_meta
        sd = adapter_state(model)
        save_meta(run, model)
    else:
        sd = model.state_dict()
    run.save_tensors("model.safetensors", sd)
    source = job.backbone.source_head[0]  # the pretrained task head, kept aside: forgetting is measured through it
    source_sd = job.cache.snapshot_source_head(job.warm.stamp) if job.warm else \
        source.state_dict() if source is not None else None
    if source_sd is not None:
        run.save_tensors("source_head.safetensors", source_sd)


def _summary(trainer, recipe, info: dict, t_start: float) -> dict:
    hist, kept = trainer.history, trainer.kept or {}
    figures = {k: v for k, v in kept.items() if k.startswith("val_") and k not in ("val_acc", "val_loss")}
    return {"strategy": recipe.strategy, "val_acc": kept.get("val_acc"), "val_loss": kept.get("val_loss"), **figures,
            "kept_phase": kept.get("phase"), "kept_epoch": kept.get("epoch"),
            "best_epoch": kept.get("global_epoch"), "epochs_run": len(hist),
            "last_val_acc": hist[-1].get("val_acc") if hist else None, "phases": trainer.phase_best,
            "diverged": trainer.diverged,
            "wall_seconds": time.perf_counter() - t_start, **info}


def headline(task: str) -> tuple[str, ...]:
    """The figures a task is summed up by (summary.json's test_*, the closing line)."""
    return {"regression": ("rmse", "mae", "r2"), "multilabel": ("micro_f1", "macro_f1", "map")}.get(task, ("acc",))


def _no_gain_note(s: dict, modality: str = "image", augment: str | None = None,
                  trainable: list = (), mixed: bool = False, planned: bool = False,
                  method: str = "plain") -> str | None:
    """When unfreezing never beat the head phase, the run keeps the head's weights: say so, and what
    to try among what this run did not do (augmentation only for images not already augmented,
    fewer stages only when a phase unfroze more than one; ``trainable``: the phases' stage counts)."""
    phases = s["phases"]
    if len(phases) < 2 or s["kept_phase"] != phases[0]["phase"]:
        return None
    if phases[0]["best_val_acc"] is None:  # regression, multilabel: compared by val loss
        best_later = min(phases[1:], key=lambda p: p["best_val_loss"])
        said = (f"{best_later['phase']} best val loss {best_later['best_val_loss']:.4f} >= {phases[0]['phase']} "
                f"{phases[0]['best_val_loss']:.4f}")
    else:
        best_later = max(phases[1:], key=lambda p: p["best_val_acc"])
        said = (f"{best_later['phase']} best {best_later['best_val_acc']:.4f} <= {phases[0]['phase']} "
                f"{phases[0]['best_val_acc']:.4f}")
    same = "accuracy" if phases[0]["best_val_acc"] is not None else "result"
    from .methods import BACKBONE_METHODS  # extract refuses a backbone method: the advice says to drop it
    extract = f"--strategy extract{' --method plain' if method in BACKBONE_METHODS else ''} (the same {same} in seconds)"
    kept = f"{said}: kept the {phases[0]['phase']} weights; unfreezing did not pay here"
    flat = _barely_learned(phases[0], best_later)
    if flat:  # the unfrozen stages hardly moved: too little training, not too much
        return (f"{kept}, and it barely trained ({flat}). Try a higher --lr (or --find-lr), more --epochs, or "
                f"{extract}")
    solved = _fits_its_samples(phases[0])
    if solved:  # the unfrozen phases start at ~zero loss: too little to learn from (bench/digits_large.py)
        tries = ["--mixup 0.2 --cutmix 1.0"] if modality == "image" and not mixed else []
        tries += ["a higher --lr with --unfreeze -1", extract]
        return (f"{kept}, and the head already fit its training samples ({solved}), which leaves the unfrozen "
                f"stages little to learn from. Try {', '.join(tries[:-1])} or {tries[-1]}")
    # the head's train loss is on clean features: compared only with a phase that saw clean inputs too
    rose = _loss_rose(phases[0], best_later) if not (modality == "image" and augment) else None
    if rose:  # the unfrozen steps undid the head's fit: too large, not too small (a higher --lr would be wrong)
        return (f"{kept}, and its train loss rose ({rose}): the unfrozen steps undid what the head had fit. "
                f"Try a lower --lr or {extract}")
    tries = [extract, "a lower --lr"]
    if modality == "image" and not augment:  # only what this run did not already do
        tries.append("--augment light")
    if not planned and any(t is not None and (t == -1 or t > 1) for t in trainable):  # auto plans its own stages
        tries.append("fewer --unfreeze stages")
    return f"{kept}. Try {', '.join(tries[:-1])} or {tries[-1]}"


def _keep_last_note(s: dict) -> str | None:
    """--keep-last ends with the last epoch whatever val says: when an earlier epoch scored val better (a
    later phase undid what the head had fit), say which, as a run keeping its best epoch would have."""
    def best(p):  # a phase's best row, in the loop's own order (callbacks.score)
        return score({"val_loss": p["best_val_loss"], **({"val_acc": p["best_val_acc"]}
                                                           if p["best_val_acc"] is not None else {})})
    if not s["phases"] or s.get("val_loss") is None:
        return None
    top = max(s["phases"], key=best)
    kept = score({k: s[k] for k in ("val_acc", "val_loss") if s.get(k) is not None})
    if best(top) <= kept:
        return None
    fig = (lambda acc, loss: f"val {acc:.4f}") if s.get("val_acc") is not None else \
        (lambda acc, loss: f"val loss {loss:.4f}")
    return (f"--keep-last kept the last epoch ({s['kept_phase']} epoch {s['kept_epoch']}, "
            f"{fig(s.get('val_acc'), s['val_loss'])}), below {top['phase']} epoch {top['epoch']} "
            f"({fig(top['best_val_acc'], top['best_val_loss'])}): the later epochs made val worse; leave --keep-last "
            "out to keep the best val epoch")


def _input_note(s: dict, plan: dict | None) -> str | None:
    """When auto's probe of the input itself (``auto.input_row``) scored val as well as the kept
    model, say so: the source did not pay for itself on this data."""
    ref = (plan or {}).get("reference") or {}
    v = ref.get("val_acc")
    if v is None or v != v or s.get("val_acc") is None or v < s["val_acc"]:  # v != v: NaN, no val split
        return None
    return (f"a linear model of the input itself ({ref['what']}) scored val {ref['val_acc']:.4f} in auto's probe, "
            f">= this model's {s['val_acc']:.4f}: the source reads this data no better than its input; a model "
            "of the input alone may serve it as well")


def _budget_note(s: dict, cfg: FitConfig, hooks: list) -> str | None:
    """When auto's budget ended its live phases, dropped one from its plan or set their epochs, and its
    last epoch was still its best, more minutes may well pay: say so, rather than end as if the data
    allowed no more (rt_polarity's default run: 1 epoch a phase in 5 minutes, val rising at the end)."""
    from .auto import MAX_EPOCHS, AutoGuard
    plan = cfg.auto_plan or {}
    stopped = next((h.stopped or "" for h in hooks if isinstance(h, AutoGuard)), "")
    fewer = cfg.epochs is None and 0 < (plan.get("epochs") or MAX_EPOCHS) < MAX_EPOCHS  # epochs set by the budget
    cut = stopped.startswith("budget:") or "not unfreezing" in plan.get("reason", "") or fewer
    if not cut or s.get("best_epoch") is None or s["best_epoch"] != s.get("epochs_run") or len(s["phases"]) < 2:
        return None
    b = plan.get("budget_minutes") or cfg.budget
    # --strategy finetune first: on rt_polarity (text) it beat auto at --budget 15 on val (0.830 vs 0.815)
    return (f"auto's budget ({b:g} min of live training) limited the fit while val was still improving (its last "
            f"epoch is the one kept): more training may pay: --strategy finetune, or a larger --budget (e.g. {3 * b:g})")


ROSE = 1.5  # a live phase whose train loss ends above this multiple of the head's undid its fit
FLAT_LOSS = 0.8  # a live phase whose train loss ends above this share of the head's barely learned ...
FLAT_ACC = 0.9   # ... unless it fits its training samples this well


SOLVED_LOSS = 0.02  # a head phase whose train loss ends under this, every training sample right, ...
# ... fits its samples: the unfrozen phases start with almost no gradient


def _fits_its_samples(head: dict) -> str | None:
    loss, acc = head.get("train_loss_last"), head.get("train_acc_last")
    if loss is None or acc is None or loss > SOLVED_LOSS or acc < 1.0:
        return None
    return f"train loss {loss:.3f}, train accuracy {acc:.3f}"


def _loss_rose(head: dict, phase: dict) -> str | None:
    """The unfrozen phase's last train loss over ``ROSE`` times the head phase's, else None."""
    before, last = head.get("train_loss_last"), phase.get("train_loss_last")
    if before is None or last is None or before <= 0 or last <= ROSE * before:
        return None
    return f"train loss {before:.3f} -> {last:.3f}"


def _barely_learned(head: dict, phase: dict) -> str | None:
    """What says an unfrozen phase hardly trained: its last train loss fell by under a fifth from the
    head phase's (and did not rise past ``ROSE`` times it) and, for classes, its train accuracy stayed under
    ``FLAT_ACC``; else None."""
    before, last, acc = head.get("train_loss_last"), phase.get("train_loss_last"), phase.get("train_acc_last")
    if before is None or last is None or before <= 0 or not FLAT_LOSS * before <= last <= ROSE * before \
            or (acc is not None and acc >= FLAT_ACC):
        return None
    return f"train loss {before:.3f} -> {last:.3f}" + (f", train accuracy {acc:.3f}" if acc is not None else "")


def _stopped(p: dict) -> str:
    planned = p.get("epochs_planned")
    return f" (stopped after {p['epochs_run']} of {planned} epochs)" if planned and p["epochs_run"] < planned else ""


def _report_end(echo, s: dict, ds: Dataset, out: Path) -> None:
    phases = s["phases"]
    acc = s.get("val_acc") is not None
    if len(phases) > 1:  # say which phase the kept weights come from, and how each phase did
        echo("phases: " + ", ".join(f"{p['phase']} best " + (f"{p['best_val_acc']:.4f}" if acc else
                                                              f"val loss {p['best_val_loss']:.4f}") + _stopped(p)
                                    for p in phases)
             + f" -> kept {s['kept_phase']} epoch {s['kept_epoch']}")
    elif phases and _stopped(phases[0]):  # one phase: no phases line, but an early stop is still worth saying
        echo(f"{phases[0]['phase']}{_stopped(phases[0])}; kept epoch {s['kept_epoch']}")
    for note in (s.get("diverged") and "stopped: " + s["diverged"], s.get("note"), s.get("input_note"),
                 s.get("budget_note")):
        if note:
            echo(note)
    keys = headline(ds.task)
    if acc:
        val = f"val accuracy {s['val_acc']:.4f}"
    else:
        val = "val " + ", ".join(f"{k} {s.get('val_' + k, float('nan')):.4f}" for k in keys)
    test = ""
    if "test_n" in s:
        test = "; test " + ", ".join(f"{'accuracy' if k == 'acc' else k} {s['test_' + k]:.4f}" for k in keys) \
            + f" ({s['test_n']} samples, scored once, not used for selection)"
    n = f"{len(ds.val)} samples"
    if s.get("val_in_training"):  # the phases line's figures are the loop's, under autocast
        n += f", scored as evaluate scores the run; the phases' figures ran in {s['training_precision']}"
    q = shlex.quote(str(out))  # a path with spaces pastes into a shell as one argument
    echo(f"{val} ({n}){test} -> {out}\n"
         f"next: rehead evaluate {q} | rehead predict {q} FILES | rehead report {q}")


def _cached_features(model, ds, cache, cfg: FitConfig, progress, echo):
    """(train, val) datasets of the prefix's features, through the shared cache."""
    k = len(model.backbone)
    t0 = time.perf_counter()
    out, skipped = [], []
    for split in ("train", "val"):
        s = getattr(ds, split)
        f, kept, sk = extract(model.backbone, s.items, [k], cache, batch_size=cfg.batch_size,
                              workers=cfg.workers, strict=cfg.strict, progress=progress,
                              desc=f"extract {split}")
        out.append(IndexedTensors(f[k], to_tensor([s.labels[i] for i in kept], ds.task, len(ds.classes))))
        skipped += sk
    if skipped:
        echo(f"skipped {len(skipped)} unreadable item(s): " + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if ds.task == "multiclass":  # a label set or a number cannot lose a class
        _check_classes_left(out[0].y, ds)
    _check_features_vary(out[0].x, model.backbone)
    return tuple(out), {"extract_seconds": time.perf_counter() - t0, "skipped": skipped}


def _check_features_vary(x: torch.Tensor, backbone) -> None:
    """Features that are the same for every training sample hold nothing to learn from: a head on them
    can only answer the commonest class (the solver crashed on them). A text encoder pooled by its [CLS]
    token and cut at its embeddings is one: every text starts with the same token."""
    if len(x) > 1 and bool((x == x[0]).all()):
        text = " (a text encoder pooled by [CLS] and cut at its embeddings sees only that token: add ?pooling=mean " \
               "to the model spec)" if backbone.modality == "text" else ""
        raise DataError(f"the features at cut {len(backbone)} ({backbone.stage_names[-1]}) are the same for every "
                        f"training sample: nothing to learn from{text}; cut deeper (--cut), or check the model's weights")


def _check_last_token_cut(prefix, ds: Dataset) -> None:
    """A decoder pooled by its last token and cut at its embeddings reads that token's embedding and
    position alone: where its tokenizer ends every text with the same token (EOS, [SEP]), the features
    carry only each text's length (the [CLS] case of encoders is caught as features that never vary)."""
    if prefix.modality != "text" or len(prefix) != 1 or prefix.data_config.get("pooling") != "last":
        return
    from .data import refs
    texts = [t for t in ds.train.items[:64] if isinstance(t, str) and not refs.is_ref(t)]
    if len(texts) < 2:
        return
    enc = prefix.tokenize(texts)
    last = enc["input_ids"][torch.arange(len(texts)), enc["attention_mask"].sum(1) - 1]
    if len(set(last.tolist())) == 1:
        raise ConfigError(f"--cut {prefix.stage_names[-1]} keeps only the embeddings of a model pooled by its last "
                          "token, and its tokenizer ends every text with the same token: the features would hold "
                          "each text's length and nothing else; cut deeper (--cut), or add ?pooling=mean to the "
                          "model spec")


def _check_classes_left(y: torch.Tensor, ds: Dataset) -> None:
    """A class whose every training item was unreadable cannot be learnt: stop, never train without it."""
    present = set(y.tolist())
    empty = [c for i, c in enumerate(ds.classes) if i not in present]
    if empty:
        raise DataError(f"no readable training sample left for class(es) {', '.join(empty)} in {ds.source}: "
                        "fix or remove the unreadable files, or remove the class")


def _augment(cfg: FitConfig, backbone, recipe) -> str | None:
    live = any(not p.on_features and p.trainable != 0 for p in recipe.phases)
    return cfg.augment_for(backbone.modality, live)


def _live_loaders(model, ds, cfg: FitConfig, augment: str | None, echo):
    """``make_loader(split, shuffle, generator)`` for phases that run the backbone live."""
    pipe = pipeline(model.backbone.modality)
    if hasattr(pipe, "check_items"):
        bad = pipe.check_items(ds, strict=cfg.strict)
        if bad:
            echo(f"skipped {len(bad)} unreadable item(s): " + ", ".join(bad[:5]))
    train_tf = pipe.train_transform(model.backbone, augment) if augment else None

    def make_loader(split, shuffle, generator):
        s = getattr(ds, split)
        return pipe.make_loader(model.backbone, s.items, per_item(s.labels, ds.task, len(ds.classes)),
                                batch_size=cfg.batch_size,
                                workers=cfg.workers, shuffle=shuffle, generator=generator,
                                transform=train_tf if split == "train" else None, strict=cfg.strict)
    return make_loader


def _added_since(ds: Dataset, cfg: FitConfig) -> int:
    """Samples the data at the run's source holds now that its split does not (new photos, new shards);
    0 when the source is not a path that can be read again (a DataFrame, a list) or cannot be read."""
    if not os.path.exists(ds.source):
        return 0
    try:
        now = load_dataset(ds.source, val_fraction=cfg.val_fraction, seed=cfg.seed, task=cfg.task, **cfg.data_kw)
    except (DataError, OSError):
        return 0
    had = {i for s in (ds.train, ds.val, ds.test) if s is not None for i in s.items}
    return sum(1 for s in (now.train, now.val, now.test) if s is not None for i in s.items if i not in had)


def _resume(out: Path, echo, progress, accelerator, t_start, workers: int | None = None) -> Run:
    main = accelerator.is_main_process
    if not out.exists():  # "not a rehead run directory (no config.yaml)" read as if a folder were there
        raise BadRun(f"{out} does not exist: nothing to resume (a fit interrupted before it wrote anything leaves "
                     "nothing: run the same command again, without --resume)")
    seen = RunDir.open(out, writer=False)  # read first: a finished run (read-only, a colleague's) needs no lock
    cfg_yaml = seen.read_yaml()
    if cfg_yaml.get("kind", "fit") != "fit" or "fit" not in cfg_yaml:
        raise BadRun(f"{out} is not a fit run made by this version of rehead: nothing to resume")
    if seen.exists("model.safetensors") and not seen.exists("checkpoint.pt"):
        if main and (out / REPLACED).is_dir():  # killed after it finished, before the run it replaced went
            done = RunDir.open(out)  # its lock: refused while a process still writes there
            done.finish()
            done.release()
            echo(f"{out} already finished; the run its --overwrite replaced ({out / REPLACED}) is deleted now, "
                 "as that --overwrite asked")
        else:
            echo(f"{out} already finished; nothing to resume")
        return Run(out)
    run = RunDir.open(out, writer=main)
    try:
        cfg = FitConfig.from_dict(cfg_yaml["fit"])
        if workers is not None and workers != cfg.workers:  # loading processes only: the run's options stay its own
            echo(f"note: loading data with {workers} worker process(es) for this resume (the run started with "
                 f"{cfg.workers}); augmentation draws differ, so the result may differ slightly from an unbroken run")
            cfg = replace(cfg, workers=workers)  # checked as any option is
        job = _prepare(cfg, None, None, _hooks_from(cfg_yaml), echo, resume_split=run.read_json("split.json"))
        added = _added_since(job.ds, cfg)
        if added:
            echo(f"note: {added} sample(s) added to {job.ds.source} since the run started are not used: a resume "
                 "trains on the split it started with; start a new run (--overwrite) to use them")
        resuming = run.exists("checkpoint.pt")
        if not resuming:
            echo(f"{out} has no checkpoint yet: starting it again from the beginning")
            run.remove("metrics.csv")
        echo(f"resuming {out}")
        return _train(job, run, echo, progress, accelerator, t_start, resuming=resuming)
    finally:
        if run.exists("summary.json"):  # finished: the run --overwrite replaced goes
            run.finish()
        run.release()


def _hooks_from(cfg_yaml: dict) -> list:
    from .methods import hooks_from_config
    return hooks_from_config(cfg_yaml.get("methods"))


# -- LR finder -------------------------------------------------------------------------------------
def find_lr(data, *, config: FitConfig | None = None, out: str | Path | RunDir | None = None, unfreeze: int = 0,
            steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0, progress: bool = True,
            echo=print, hint: bool = True, **options) -> dict:
    """LR range test for the head (``unfreeze=0``: on cached features) or the head plus the last
    ``unfreeze`` stages (live, discriminative LRs kept in ratio). Writes lr_find.json/png to ``out``.
    ``hint``: say what to give `rehead fit` (off when fit runs the test itself)."""
    from .train.lr_find import lr_find, plot
    cfg = _config(config, options)
    if unfreeze == 0 and "lr_decay" in options:  # it would be recorded and unused: no backbone stage trains
        raise ConfigError(f"--lr-decay {options['lr_decay']:g} is the LR ratio between unfrozen stages; with "
                          "--unfreeze 0 only the head is tested: give --unfreeze N, or leave --lr-decay out")
    lora = cfg.method == "lora" and unfreeze != 0  # its adapters are what trains: the test steps them
    lora_cfg, cfg = cfg, _range_test_config(cfg, unfreeze)
    if out is not None and not isinstance(out, RunDir) and Path(out).exists() and not _is_lr_dir(Path(out)) \
            and any(Path(out).iterdir()):  # before the range test, not after it
        raise RunExists(f"{out} exists and holds more than an lr-find output (lr_find.json/png): choose another --out")
    job = _prepare(cfg, data, None, [], echo, warm_ok=False)  # the range test steps the real model
    tm, ds, k = job.model, job.ds, job.cut
    loss_fn = task_loss(cfg, ds)
    gen = torch.Generator().manual_seed(cfg.seed)
    if unfreeze == 0:
        f, kept, _ = extract(tm.backbone, ds.train.items, [k], job.cache, batch_size=cfg.batch_size,
                             workers=cfg.workers, progress=progress, desc="extract train")
        y = to_tensor([ds.train.labels[i] for i in kept], ds.task, len(ds.classes))
        loader = torch.utils.data.DataLoader(IndexedTensors(f[k], y), batch_size=cfg.batch_size, shuffle=True,
                                             generator=gen)
        res = lr_find(tm.head, loader, loss_fn, start_lr, end_lr, steps)
    else:
        tm.set_trainable_last(unfreeze)
        if lora:  # the plain backbone's weights, stepped instead, suggested an LR for another problem
            from .lora import LoRA
            LoRA().prepare(tm, ds, phases=[types.SimpleNamespace(trainable=unfreeze)], args=lora_cfg)
        pipe = pipeline(tm.backbone.modality)
        loader = pipe.make_loader(tm.backbone, ds.train.items, per_item(ds.train.labels, ds.task, len(ds.classes)),
                                  batch_size=cfg.batch_size,
                                  workers=cfg.workers, shuffle=True, generator=gen)
        res = lr_find(tm, loader, loss_fn, start_lr, end_lr, steps,
                      param_groups=tm.param_groups(1.0, job.cfg.lr_decay))
    where = None
    if out is not None:
        run = out if isinstance(out, RunDir) else RunDir.create(out, overwrite=_is_lr_dir(Path(out)))
        run.write_json("lr_find.json", res)
        buf = io.BytesIO()
        plot(res, buf)
        run.write_bytes("lr_find.png", buf.getvalue())
        where = run / "lr_find.png"
        if run is not out:
            run.release()
    lo, hi = res["range"]
    echo(f"suggested LR {res['suggested']:.2e} (steepest descent over a decade, at most the minimum's / 10); "
         f"try {lo:.1e} .. {hi:.1e}" + (f"; plot: {where}" if where else ""))
    if unfreeze and hint:  # measured with the stages training: finetune's unfrozen phase runs at --lr / 10
        echo(f"note: measured with the last {unfreeze} stage(s) training, as the top group's LR: `rehead fit "
             f"--strategy finetune --unfreeze {unfreeze}` runs its unfrozen phase at --lr / 10, so give it "
             f"--lr {res['suggested'] * 10:.1e}")
    if res.get("flat"):
        echo("note: the loss barely fell anywhere in the range test: the suggestion is weak; "
             "the data may be far from what this model learned (try an earlier --cut or more --unfreeze)")
    return res


def _range_test_config(cfg: FitConfig, unfreeze: int) -> FitConfig:
    """The options the range test runs on: auto's plan, its budget and the --method (the test steps the
    model with no method hooks; lora's adapters find_lr puts in itself) do not apply to it, and FitConfig refuses them beside the strategy
    the test takes (extract; finetune with stages): `fit --strategy auto --find-lr --budget 0.5` crashed."""
    from dataclasses import fields
    plain = {f.name: f.default for f in fields(FitConfig) if f.metadata.get("group") == "method"}
    cfg = cfg.replace(budget=None, auto_plan=None, **plain)
    if cfg.strategy == "auto":  # the range test needs no plan: skip auto's probe at several cuts; with stages
        cfg = cfg.replace(strategy="finetune" if unfreeze else "extract")  # ... at a fine-tune's LR spread
    return cfg


def _is_lr_dir(p: Path) -> bool:
    """An lr-find output directory (only its own files): safe to refresh."""
    return p.is_dir() and all(c.name in UNSTARTED + LR_FIND_FILES for c in p.iterdir())


__all__ = ["fit", "find_lr", "FitConfig", "DEFAULT_MODEL"]


class _CallableModule(types.ModuleType):
    """`rehead.fit(...)` is this module's `fit` whether Python bound the name to the function (the
    package's lazy export) or to this submodule (any `import rehead.fit` rebinds it)."""

    def __call__(self, *args, **kwargs):
        return self.fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
