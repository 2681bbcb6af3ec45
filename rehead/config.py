"""FitConfig: every option of a fit, spelled once, typed and validated when built.

The CLI builds its ``fit`` options from these fields (help and choices included), ``rehead.fit``
takes them as keywords, ``config.yaml`` stores them under ``fit`` and ``--resume`` reads them back.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field, fields

# Lite2 over Lite0 for 2x the extraction time: +1.3 points of val on hymenoptera (0.967 vs 0.954) and
# +10 on the demo's digits (0.88 vs 0.78), extract strategy (docs/notes/issue-14.md, eighth session).
DEFAULT_MODEL = "packaged:efficientnet_lite2"
# Without --model a fit takes its data's default: nothing to choose for a first run on text either.
DEFAULT_MODELS = {"image": DEFAULT_MODEL, "text": "packaged:minilm"}
STRATEGIES = ("extract", "head", "finetune", "gradual", "full", "auto")
SCHEDULES = ("onecycle", "cosine", "sgdr", "constant")
OPTIMIZERS = ("adamw", "sgd")
HEADS = ("linear", "mlp")
AUGMENTS = ("none", "light", "crop", "trivial", "randaug", "classic")
METHODS = ("plain", "l2sp", "guided", "lora")
_METHOD_OF = {"alpha": "l2sp", "beta": "l2sp", "scouts": "guided", "scout_size": "guided", "scout_epochs": "guided",
              "guide_on": "guided", "lora_rank": "lora", "lora_alpha": "lora", "lora_dropout": "lora",
              "lora_targets": "lora"}  # options that only their method reads
_METHOD_ACTS = {"l2sp": "pulls fine-tuned backbone weights towards the pretrained ones",
                "guided": "scales each backbone weight's fine-tuning step by its scouts' guide value",
                "lora": "trains low-rank adapters on backbone layers"}
PRECISIONS = ("no", "fp16", "bf16")
MISSING = ("error", "mean")
GUIDE_ON = ("update", "gradient")
DEFAULT_AUGMENT = "light"  # for unfrozen image phases; from the on/off table in docs/notes/issue-14.md
TASKS = ("multiclass", "multilabel", "regression")  # rehead.tasks owns what each means
CLASS_WEIGHTS = ("none", "balanced")
LABEL_SEP = "|"  # multilabel: the labels of one item, in one cell
VAL_FRACTION = 0.2  # share of training data held out for val when the data has no val split


class ConfigError(ValueError):
    """An option out of range or not one of its choices; the message names the option."""


SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds; torch refused 2**64 with a raw overflow


def check_seed(seed: int) -> None:
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed must be >= 0 and <= {SEED_MAX}, got {seed}")


def opt(help: str, choices: tuple | None = None, flag: str | None = None, short: str | None = None,
        group: str = "training", cli: bool = True):
    """Field metadata: the CLI's help text, choices and flag spelling."""
    return {"help": help, "choices": choices, "flag": flag, "short": short, "group": group, "cli": cli}


@dataclass
class FitConfig:
    # -- model and surgery
    model: str | None = field(default=None, metadata=opt(
        "backbone spec: packaged:NAME, timm:NAME, hf:NAME_OR_DIR, file:PATH#ARCH, or a run directory "
        f"(default: {DEFAULT_MODELS['image']} for images, {DEFAULT_MODELS['text']} for text)",
        short="-m", group="model"))
    cut: int | str | None = field(default=None, metadata=opt(
        "keep the first N stages, -N: all but the last N, or up to a stage name (default: all)", group="model"))
    head: str = field(default="linear", metadata=opt("the new head", HEADS, group="model"))
    hidden: int = field(default=512, metadata=opt("mlp head: hidden units", group="model"))
    dropout: float | None = field(default=None, metadata=opt(
        "dropout before the head's last layer (default 0; text finetune and auto: 0.1)", group="model"))
    task: str = field(default="multiclass", metadata=opt(
        "multiclass: one class per item; multilabel: labels like a|b in a CSV (BCE, F1, mAP); "
        "regression: a numeric label (MSE; RMSE, MAE, R2)", TASKS, group="model"))
    # -- strategy and schedule
    strategy: str = field(default="auto", metadata=opt("how much of the backbone trains", STRATEGIES))
    budget: float | None = field(default=None, metadata=opt(
        "auto: minutes for the live (unfrozen) phases, from measured step times (default 5)"))
    auto_plan: dict | None = field(default=None, metadata=opt(
        "what --strategy auto measured and chose (written by auto, read back by --resume)", cli=False))
    epochs: int | None = field(default=None, metadata=opt("epochs per phase (strategy default when unset)"))
    lr: float | None = field(default=None, metadata=opt("top learning rate, the head's (strategy default when unset; text finetune and auto: 2e-3)"))
    find_lr: bool = field(default=False, metadata=opt("run the LR finder and train at its suggestion: with unfrozen phases it steps the first one's stages and sets that phase's LR (the others keep the recipe's ratios); else the head's"))
    unfreeze: int | None = field(default=None, metadata=opt(
        "finetune/gradual: how many last stages to unfreeze, -1 every one (default 2; text finetune: -1)"))
    lr_decay: float | None = field(default=None, metadata=opt(
        "each earlier stage's LR is this many times lower (default 3; text finetune and auto: 1.3)"))
    lr_min: float | None = field(default=None, metadata=opt("or spread LRs geometrically from lr-min to lr"))
    layer_decay: float | None = field(default=None, metadata=opt(
        "layer-wise LR decay per block (ViTs, transformers; e.g. 0.75), from the model's own grouping"))
    schedule: str = field(default="onecycle", metadata=opt(
        "LR schedule within a phase (under onecycle a head trained by steps on cached features runs at a constant LR)",
        SCHEDULES))
    optimizer: str = field(default="adamw", metadata=opt(
        "optimizer of the phases that train on images or texts: adamw, or sgd (momentum 0.9, Nesterov) at 10x "
        "the LRs: its steps follow the gradient's size, so where the head already fits the training data the "
        "pretrained weights stay nearly where they are (AdamW's first steps move every weight by about the LR)",
        OPTIMIZERS))
    warmup: float = field(default=0.1, metadata=opt("cosine: fraction of steps warming up"))
    sgdr_cycle: float = field(default=1.0, metadata=opt("sgdr: first cycle length in epochs"))
    sgdr_mult: float = field(default=2.0, metadata=opt("sgdr: each cycle this many times longer"))
    weight_decay: float = field(default=0.01, metadata=opt("AdamW weight decay (never on norms and biases)"))
    train_frozen_bn: bool = field(default=False, metadata=opt(
        "let every BatchNorm layer update its statistics, frozen stages included"))
    freeze_bn: bool = field(default=True, metadata=opt(
        "keep every BatchNorm's pretrained statistics, in unfrozen stages too (the measured default; "
        "--train-frozen-bn overrides it)", flag="--freeze-bn/--no-freeze-bn"))
    precision: str = field(default="no", metadata=opt(
        "mixed precision of the training steps (fp16: CUDA only, fp32 on a CPU); val, T and test are scored in fp32",
        PRECISIONS))
    augment: str | None = field(default=None, metadata=opt(
        "augment training images in live phases (default: light when image stages are unfrozen, "
        "else none; see docs/notes/issue-14.md for the measured table)", AUGMENTS))
    ema: float | None = field(default=None, metadata=opt(
        "keep an exponential moving average of the weights in unfrozen phases (decay per step, e.g. "
        "0.99); val scores and the kept weights are the average's"))
    mixup: float = field(default=0.0, metadata=opt(
        "Mixup on the training images of live phases: its Beta alpha (e.g. 0.2); 0 off"))
    cutmix: float = field(default=0.0, metadata=opt(
        "CutMix on the training images of live phases: its Beta alpha (e.g. 1.0); 0 off; with --mixup, "
        "each batch takes one of the two"))
    batch_size: int = field(default=32, metadata=opt("samples per step"))
    patience: int | None = field(default=None, metadata=opt("early stopping: epochs without val improvement"))
    class_weight: str = field(default="none", metadata=opt(
        "balanced: weigh classes by n/(k*count) (multiclass loss weights and the linear solver's sample "
        "weights; multilabel: BCE pos_weight, negatives/positives per label)", CLASS_WEIGHTS))
    label_smoothing: float = field(default=0.0, metadata=opt(
        "label smoothing for gradient-trained phases (multiclass, multilabel); the convex linear-head "
        "solver on cached features ignores it"))
    keep_last: bool = field(default=False, metadata=opt("keep the last epoch's weights, not the best val epoch's"))
    seed: int = field(default=0, metadata=opt("seed of the split, the head's init and the shuffling"))
    # -- data
    val_fraction: float = field(default=VAL_FRACTION, metadata=opt("share of training data held out for val", group="data"))
    strict: bool = field(default=False, metadata=opt("an unreadable image is an error, not skipped", group="data"))
    workers: int | None = field(default=None, metadata=opt(
        "data loading processes (default 2; on a GPU machine every core but one, at most 16)", group="data"))
    text_column: str = field(default="text", metadata=opt("text: the column holding the text", group="data"))
    image_column: str | None = field(default=None, metadata=opt(
        "images: the column holding them: paths in a CSV (default 'path'), image bytes in Parquet or a datasets "
        "folder (default: the one image column), the member extension in tar shards", group="data"))
    label_column: str = field(default="label", metadata=opt("the column holding the label", group="data"))
    id_columns: str | None = field(default=None, metadata=opt(
        "tables: comma-separated identifier columns to leave out", group="data"))
    split_column: str = field(default="split", metadata=opt(
        "a column whose 'train' rows train (val/test rows are held out)", group="data"))
    missing: str = field(default="error", metadata=opt("tables: empty cells are an error, or the column mean",
                                                       MISSING, group="data"))
    cache_dir: str | None = field(default=None, metadata=opt(
        "feature cache (default $REHEAD_CACHE or ~/.cache/rehead)", group="data"))
    use_cache: bool = field(default=True, metadata=opt("use the feature cache", flag="--cache/--no-cache", group="data"))
    # -- methods
    method: str = field(default="plain", metadata=opt("transfer method", METHODS, group="method"))
    alpha: float = field(default=0.1, metadata=opt("l2sp: pull of transferred weights towards pretrained", group="method"))
    beta: float = field(default=0.01, metadata=opt("l2sp: plain L2 on the new head", group="method"))
    scouts: int = field(default=5, metadata=opt("guided: number of scout models", group="method"))
    scout_size: int = field(default=8, metadata=opt("guided: training samples per scout", group="method"))
    scout_epochs: int = field(default=5, metadata=opt("guided: epochs each scout trains", group="method"))
    guide_on: str = field(default="update", metadata=opt("guided: scale each optimizer update or each gradient",
                                                         GUIDE_ON, group="method"))
    lora_rank: int = field(default=8, metadata=opt("lora: rank of each adapter", group="method"))
    lora_alpha: float = field(default=16.0, metadata=opt("lora: scaling; an adapter's update is alpha/rank * B A",
                                                         group="method"))
    lora_dropout: float = field(default=0.0, metadata=opt("lora: dropout on the adapters' input", group="method"))
    lora_targets: str | None = field(default=None, metadata=opt(
        "lora: comma-separated layer names or suffixes (qkv, query,value), or linear / conv "
        "(default: attention projections; convolutions and linear layers in CNNs)", group="method"))

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, os.PathLike):  # the Python API takes paths as Path too; config.yaml holds text
                v = os.fspath(v)
            v = _typed(f, v)  # first: every later check compares values of the annotated type
            setattr(self, f.name, v)
            choices = f.metadata.get("choices")
            if choices and v is not None and v not in choices:
                raise ConfigError(f"--{_flag(f.name)} must be one of {', '.join(choices)}, got {v!r}")
        if isinstance(self.cut, str) and self.cut.lstrip("-").isdigit():
            self.cut = int(self.cut)
        if self.workers is None:  # resolved here: config.yaml records what ran
            from .precision import default_workers
            self.workers = default_workers()
        self._check_ranges()

    def _check_ranges(self):
        positive = ("lr", "hidden", "batch_size", "scouts", "scout_size", "scout_epochs", "lr_decay",
                    "lr_min", "sgdr_cycle", "sgdr_mult", "epochs", "patience", "lora_rank", "lora_alpha")
        for name in positive:
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"--{_flag(name)} must be > 0, got {v}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"--ema must be in (0, 1), got {self.ema}")
        for name in ("dropout", "warmup", "lora_dropout", "label_smoothing"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise ConfigError(f"--{_flag(name)} must be in [0, 1), got {v}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        for name in ("weight_decay", "alpha", "beta", "workers", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        check_seed(self.seed)
        if self.unfreeze is not None and self.unfreeze < -1:
            raise ConfigError(f"--unfreeze must be >= 0 (or -1: every stage), got {self.unfreeze}")
        if self.lr_min is not None and self.lr is not None and self.lr_min > self.lr:
            raise ConfigError(f"--lr-min ({self.lr_min}) must not exceed --lr ({self.lr})")
        self._check_method_options()
        if self.task != "multiclass" and self.method == "guided":
            raise ConfigError(f"--method guided trains its scouts as classifiers: not for --task {self.task}")
        if self.task != "multiclass" and (self.mixup or self.cutmix):
            raise ConfigError(f"--mixup and --cutmix mix the labels of one class per image: not for --task {self.task}")
        if self.task == "regression" and (self.class_weight != "none" or self.label_smoothing):
            raise ConfigError("--class-weight and --label-smoothing apply to classes: not to --task regression")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"--budget must be > 0 (minutes), got {self.budget}")
        if self.budget is not None and self.strategy != "auto":
            raise ConfigError(f"--budget bounds what --strategy auto plans; --strategy {self.strategy} runs "
                              "--epochs per phase instead: leave --budget out, or use --strategy auto")

    def _check_method_options(self):
        """An option of a method not chosen changed nothing and was recorded as if it had: refused."""
        for f in fields(self):
            owner = _METHOD_OF.get(f.name)
            if owner and owner != self.method and getattr(self, f.name) != f.default:
                raise ConfigError(f"--{_flag(f.name)} is an option of --method {owner}, and this fit's method is "
                                  f"{self.method}: add --method {owner}, or leave --{_flag(f.name)} out")
        if self.method != "plain" and self.strategy == "extract":  # refused here, before a run directory exists
            raise ConfigError(f"--method {self.method} {_METHOD_ACTS[self.method]}: with --strategy extract no "
                              "backbone weight trains; use --strategy finetune, gradual or full, not extract")

    # -- round trips ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        return cls(**cls._known(d))

    @classmethod
    def _known(cls, d: dict) -> dict:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown fit option(s): {', '.join(unknown)}; options are: "
                              + ", ".join(f.name for f in fields(cls)))
        return d

    def replace(self, **kw) -> "FitConfig":
        return dataclasses.replace(self, **self._known(kw))

    def for_data(self, modality: str) -> "FitConfig":
        """The options left unset, filled for this data. ``--strategy finetune`` on a text encoder
        trains every stage with gently spread LRs and head dropout (``TEXT_FINETUNE``): measured on
        rt_polarity and financial_phrasebank, 0.846 and 0.949 test against 0.793 and 0.909 for the
        image recipe (the last 2 stages, LRs 3x lower a stage; docs/notes/issue-14.md). ``auto`` on
        text keeps its own unfreezing plan and epochs, at those LRs (``TEXT_AUTO``): val 0.786 -> 0.823
        on rt_polarity, 0.942 -> 0.956 on financial_phrasebank."""
        fill = {**_fills(modality, self.strategy), "model": DEFAULT_MODELS.get(modality)}
        if self.find_lr:
            fill.pop("lr", None)  # the LR finder chooses it
        return self.replace(**{k: v for k, v in fill.items() if getattr(self, k) is None})

    def given(self, modality: str) -> set[str]:
        """The options set away from their defaults: from the field's own and from what ``for_data``
        fills for this data (so a config already filled, a run's config.yaml, reads as the user gave it).
        ``auto`` on a task other than multiclass runs as extract: its text fills are defaults there too."""
        fills = [_fills(modality, self.strategy)]
        if self.strategy == "extract" and self.task != "multiclass":
            fills.append(_fills(modality, "auto"))
        return {f.name for f in fields(self) if getattr(self, f.name) != f.default
                and all(f.name not in fill or getattr(self, f.name) != fill[f.name] for fill in fills)}

    @staticmethod
    def flag(name: str, value=None) -> str:
        """An option as the CLI spells it: ``--batch-size``; a switch as ``value`` sets it (``--no-freeze-bn``)."""
        flag = FitConfig.__dataclass_fields__[name].metadata.get("flag") or "--" + _flag(name)
        if "/" in flag:
            on, off = flag.split("/")
            flag = flag if value is None else on if value else off
        return flag

    @property
    def augment_asked(self) -> str | None:
        """The preset ``--augment`` names, None when unset or ``none``."""
        return None if self.augment in (None, "none") else self.augment

    def augment_for(self, modality: str, unfreezes: bool) -> str | None:
        """The augmentation preset live training uses: ``--augment`` when given (``none``: off), else
        ``light`` for image phases that train backbone stages (the measured default, issue 14)."""
        if self.augment is not None:
            return self.augment_asked
        return DEFAULT_AUGMENT if modality == "image" and unfreezes else None

    @property
    def data_kw(self) -> dict:
        """What the data loaders take."""
        return {"text_column": self.text_column, "image_column": self.image_column, "label_column": self.label_column,
                "id_columns": self.id_columns, "split_column": self.split_column, "missing": self.missing}


GENERAL_DEFAULTS = {"unfreeze": 2, "lr_decay": 3.0, "dropout": 0.0}
TEXT_FINETUNE = {"unfreeze": -1, "lr_decay": 1.3, "dropout": 0.1, "lr": 2e-3, "epochs": 3}
TEXT_AUTO = {k: TEXT_FINETUNE[k] for k in ("lr_decay", "dropout", "lr")}


def _fills(modality: str | None, strategy: str) -> dict:
    """What ``for_data`` gives the options left unset, for this data and strategy (model aside)."""
    text = {"finetune": TEXT_FINETUNE, "auto": TEXT_AUTO}.get(strategy, {}) if modality == "text" else {}
    return {**GENERAL_DEFAULTS, **text}


def _flag(name: str) -> str:
    return name.replace("_", "-")


_KINDS: dict[str, tuple[tuple, bool]] = {}  # field name -> (the annotated types but None, whether None is one)
_WHAT = {int: "an integer", float: "a number", bool: "True or False", str: "a string", dict: "a dict"}


def _kinds(name: str) -> tuple[tuple, bool]:
    if not _KINDS:
        import typing
        for n, hint in typing.get_type_hints(FitConfig).items():
            args = typing.get_args(hint) or (hint,)
            _KINDS[n] = tuple(a for a in args if a is not type(None)), type(None) in args
    return _KINDS[name]


def _typed(f, v):
    """``v`` as field ``f``'s annotation types it, or a ConfigError naming the option as the CLI spells it.
    An int is an int (a bool is not one; an integral float such as 3.0 is taken as 3), a float any finite
    real number, a bool only True or False (the string "false" would read as True), a string a str."""
    kinds, optional = _kinds(f.name)
    if v is None and optional:
        return v
    if isinstance(v, bool):
        if bool in kinds:
            return v
    elif isinstance(v, numbers.Real) and (int in kinds or float in kinds):
        if isinstance(v, numbers.Integral):
            return int(v) if int in kinds else float(v)
        if not math.isfinite(v):
            raise ConfigError(f"{_option(f)} must be {'a finite number' if float in kinds else 'an integer'}, got {v!r}")
        if float in kinds:
            return float(v)
        if float(v).is_integer():
            return int(v)
    elif any(isinstance(v, k) for k in kinds if k not in (int, float, bool)):
        return v
    choices = f.metadata.get("choices")
    what = f"one of {', '.join(choices)}" if choices else " or ".join(_WHAT[k] for k in kinds)
    if f.name == "cut":
        what = "a stage count (an integer) or a stage name"
    raise ConfigError(f"{_option(f)} must be {what}{' (or None: unset)' if optional else ''}, got {v!r}")


def _option(f) -> str:
    """The option as the CLI spells it, with the keyword where the flag reads otherwise (--cache: use_cache)."""
    if not f.metadata.get("cli", True):
        return f.name
    flag = FitConfig.flag(f.name)
    return flag if _flag(f.name) in flag else f"{flag} ({f.name}=)"
