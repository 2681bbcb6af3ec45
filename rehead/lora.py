"""LoRA through peft: low-rank adapters in the backbone's trainable stages (``--method lora``).

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models": a frozen weight W gets a
trainable update (alpha / r) * B A of rank r, B starting at zero (so training starts from the
pretrained network exactly). The layers are peft's own (``peft.LoraModel``, what
``inject_adapter_in_model`` builds), merged back by peft's ``merge_and_unload``.

Where the adapters go
    In the stages the strategy trains (``full``: every stage; ``finetune`` / ``gradual``: the last
    ``--unfreeze``), on modules the model actually calls:

    - attention families (timm ViT, DeiT, Swin, EVA..., BERT-like and decoder text models): every
      linear layer inside an attention module: queries, keys and values (timm's fused ``qkv``,
      BERT's ``query``/``key``/``value``, GPT-2's ``c_attn``) and the output projection;
    - convolutional families (no attention in those stages): every Conv2d with groups=1 (peft
      cannot merge grouped / depthwise convolutions) and every linear layer.

    ``--lora-targets`` overrides that: comma-separated module names or name suffixes
    (``qkv``, ``attn.proj``, ``query,value``) or the words ``linear`` and ``conv``.
    A module that never runs in the forward pass (EVA reads its ``qkv`` weight directly) is left out.

What trains
    The adapters and the head; every original backbone weight is frozen in every phase
    (``LoraTransferModel``: TransferModel's freezing flags only ever switch adapters on).

What the run keeps
    ``model.safetensors`` holds the adapters, the head and the backbone's buffers (BatchNorm
    statistics move in trainable stages), nothing else; ``lora.json`` holds peft's LoraConfig (the
    adapted modules by full name), the adapted stages and a hash of the base weights. ``Run`` rebuilds
    the base from the spec in config.yaml, checks that hash, injects the same adapters and loads them.
    ``merge`` (what ``rehead export`` calls) folds them into the base weights: a plain TransferModel.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from .model import TransferModel
from .train.callbacks import Callback

log = logging.getLogger("rehead")

LORA_FILE = "lora.json"
PREFIX = "lora_"  # peft's prefix of every adapter parameter
_ATTENTION = re.compile(r"(^|\.)[^.]*(attn|attention)[^.]*\.", re.IGNORECASE)


# -- which modules ---------------------------------------------------------------------------------
def _supported(mod: nn.Module) -> bool:
    """Layers peft's LoRA adapts and can merge back."""
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, nn.Conv2d):
        return mod.groups == 1
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")  # transformers' GPT-2 linear


def _candidates(backbone, stages: list[str]) -> dict[str, nn.Module]:
    """Adaptable modules of the given stages, by their full name in the backbone."""
    out = {}
    for s in stages:
        for name, mod in backbone.stages[s].named_modules():
            if name and _supported(mod):
                out[f"stages.{s}.{name}"] = mod
    return out


def _in_stage(full: str) -> str:
    """The module's name below its stage (``stages.block3.attn.qkv`` -> ``attn.qkv``)."""
    return full.split(".", 2)[2]


def default_targets(cands: dict[str, nn.Module]) -> tuple[list[str], str]:
    """(names, rule) for the family the candidates come from."""
    attn = [n for n, m in cands.items() if _ATTENTION.search(_in_stage(n)) and not isinstance(m, nn.Conv2d)]
    if attn:
        return attn, "attention projections"
    return list(cands), "convolutions (groups=1) and linear layers"


def match_targets(cands: dict[str, nn.Module], targets: str) -> list[str]:
    """``--lora-targets``: names or name suffixes, or ``linear`` / ``conv``, comma-separated."""
    items = [t.strip() for t in targets.split(",") if t.strip()]
    if not items:
        raise ValueError("--lora-targets is empty: give module names (e.g. qkv or query,value), linear or conv")
    chosen = []
    for n, m in cands.items():
        rel = _in_stage(n)
        for t in items:
            if (t == "linear" and not isinstance(m, nn.Conv2d)) or (t == "conv" and isinstance(m, nn.Conv2d)) \
                    or rel == t or rel.endswith("." + t) or n == t:
                chosen.append(n)
                break
    if not chosen:
        leaves = sorted({_in_stage(n).split(".")[-1] for n in cands})
        raise ValueError(f"--lora-targets {targets!r} matches no linear or convolution layer of the trained "
                         f"stages; their layers are named: {', '.join(leaves[:12]) or 'none'}"
                         + (" ..." if len(leaves) > 12 else ""))
    return chosen


def _called(model: TransferModel, names: list[str]) -> set[str]:
    """Which of the named backbone modules run in one forward pass of an example input."""
    from .data import pipeline
    bb, seen, handles = model.backbone, set(), []
    for n in names:
        handles.append(bb.get_submodule(n).register_forward_hook(lambda *_a, n=n: seen.add(n)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            bb(pipeline(bb.modality).example_input(bb))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return seen


def resolve(model: TransferModel, trainable: int, targets: str | None = None) -> tuple[list[str], list[str], str]:
    """(module names, stage names, rule): where adapters go when the last ``trainable`` stages
    train (-1: every stage)."""
    bb = model.backbone
    n = len(bb) if trainable < 0 else min(trainable, len(bb))
    stages = bb.stage_names[len(bb) - n:]
    if not stages:
        raise ValueError("--method lora puts adapters in the stages that train, and this strategy trains none: "
                         "use --strategy full (every stage), finetune or gradual (the last --unfreeze stages)")
    cands = _candidates(bb, stages)
    if targets:
        names, rule = match_targets(cands, targets), f"--lora-targets {targets}"
    else:
        names, rule = default_targets(cands)
    if names:
        ran = _called(model, names)
        skipped = [x for x in names if x not in ran]
        if skipped:
            log.info("lora: %d module(s) never run in the forward pass, left out: %s", len(skipped),
                     ", ".join(skipped[:5]))
        names = [x for x in names if x in ran]
    if not names:
        raise ValueError(f"--method lora found no layer to adapt in stage(s) {', '.join(stages)} of {bb.spec} "
                         f"(rule: {rule}): unfreeze more stages (--unfreeze, --strategy full) or name layers "
                         "with --lora-targets")
    return names, stages, rule


# -- the model -------------------------------------------------------------------------------------
class LoraTransferModel(TransferModel):
    """A TransferModel whose backbone carries peft LoRA adapters: freezing a stage freezes its
    adapters, unfreezing it trains only them (the original weights never train)."""

    def _apply_flags(self):
        super()._apply_flags()
        for n, p in self.backbone.named_parameters():
            if PREFIX not in n:
                p.requires_grad_(False)

    @property
    def lora_modules(self) -> list[str]:
        return sorted(self.lora_config.target_modules)  # peft keeps them as a set


def _sync_runner(bb, names: list[str]) -> None:
    """timm backbones run a timm model whose modules the stages hold; a stage holds some of them
    directly (``conv_stem``), so a module peft swapped there is swapped in the model too."""
    runner = getattr(bb, "runner", None)
    if not runner:
        return
    model = runner[0]
    for n in names:
        rel = _in_stage(n)
        parent, _, leaf = rel.rpartition(".")
        real = model.get_submodule(parent) if parent else model
        new = bb.get_submodule(n)
        if real._modules.get(leaf) is not new:
            real._modules[leaf] = new


def peft_config(names: list[str], rank: int, alpha: float, dropout: float):
    from peft import LoraConfig
    return LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=list(names),
                      bias="none")


def inject(model: TransferModel, config) -> LoraTransferModel:
    """Put peft's LoRA layers (``config``: a peft LoraConfig naming modules by full name in the
    backbone) into ``model``'s backbone, in place; the model becomes a LoraTransferModel."""
    from peft import LoraModel
    names = list(config.target_modules)
    tuner = LoraModel(model.backbone, config, "default")  # what peft.inject_adapter_in_model does
    _sync_runner(model.backbone, names)
    model.__class__ = LoraTransferModel
    object.__setattr__(model, "_lora_tuner", tuner)  # not a submodule: its model is the backbone
    model.lora_config = config
    model._apply_flags()
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run saves: adapters, head, and the backbone's buffers."""
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items()
            if k.startswith("head.") or PREFIX in k or k in buffers}


def merge(model: TransferModel) -> TransferModel:
    """Fold the adapters into the base weights (peft's ``merge_and_unload``), in place: a plain
    TransferModel with the same outputs. A model without adapters is returned as it is."""
    if not isinstance(model, LoraTransferModel):
        return model
    names = model.lora_modules
    model._lora_tuner.merge_and_unload()
    _sync_runner(model.backbone, names)
    model.__class__ = TransferModel
    del model.__dict__["_lora_tuner"], model.lora_config
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model


def count(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = sum(p.numel() for n, p in model.named_parameters() if PREFIX in n)
    return {"total": total, "trainable": trainable, "adapters": adapters}


# -- a run's files ---------------------------------------------------------------------------------
def save_meta(run, model: LoraTransferModel) -> None:
    """lora.json: peft's LoraConfig, the adapted stages, the base weights' hash, parameter counts
    (``fit`` saves ``adapter_state`` as model.safetensors beside it)."""
    cfg = model.lora_config.to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    cfg["target_modules"] = model.lora_modules
    run.write_json(LORA_FILE, {"peft": cfg, "stages": getattr(model, "lora_stages", None),
                               "base_weights_id": getattr(model, "lora_base_id", None),
                               "params": count(model)})


def is_lora_run(cfg: dict) -> bool:
    return any((m or {}).get("method") == "lora" for m in cfg.get("methods") or [])


def load_run(run_dir, cfg: dict) -> LoraTransferModel | None:
    """A LoRA run's model: the base rebuilt from its spec, the adapters injected and loaded;
    None for any other run."""
    from peft import LoraConfig
    from .rundir import BadRun, load_tensors, read_json
    from .run import build_model
    run_dir = Path(run_dir)
    if not is_lora_run(cfg):
        return None
    meta_path = run_dir / LORA_FILE
    model = build_model(cfg, pretrained=True)
    if meta_path.exists():
        meta = read_json(meta_path)
        want = meta.get("base_weights_id")
        if want and model.backbone.weights_id != want:
            raise BadRun(f"{run_dir} holds LoRA adapters for the base weights of {cfg['model']} as they were when "
                         "it trained, and those weights have changed since: restore them or rerun the fit")
        known = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in meta["peft"].items() if k in known})
    else:  # a copy without lora.json (an ensemble's member): placed again by the rules, from config.yaml
        config = _config_from_yaml(model, cfg)
    inject(model, config)
    path = run_dir / "model.safetensors"
    sd, own = load_tensors(path), adapter_state(model)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise BadRun(f"{path} does not hold the adapters {LORA_FILE} describes: "
                     + "; ".join(f"{w}: {', '.join(v[:5])}" for w, v in (("missing", missing), ("unexpected", unexpected))
                                 if v))
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise BadRun(f"{path} does not fit the adapters {LORA_FILE} describes: {e}") from None
    return model


def _config_from_yaml(model: TransferModel, cfg: dict):
    """The LoraConfig a run's config.yaml implies: its method entry (else its fit options), the
    phases' trainable stages, the same placement rules."""
    entry = next(m for m in cfg["methods"] if (m or {}).get("method") == "lora")
    fit = cfg.get("fit") or {}
    val = {k: entry.get(f"lora_{k}") if entry.get(f"lora_{k}") is not None else fit.get(f"lora_{k}", d)
           for k, d in (("rank", 8), ("alpha", 16.0), ("dropout", 0.0), ("targets", None))}
    depth = len(model.backbone)
    trainable = max(((p.get("trainable", -1) if p.get("trainable", -1) >= 0 else depth) for p in cfg.get("phases") or []),
                    default=-1)
    names, _, _ = resolve(model, trainable, val["targets"])
    return peft_config(names, val["rank"], val["alpha"], val["dropout"])


# -- the method ------------------------------------------------------------------------------------
class LoRA(Callback):
    """``--method lora``: adapters injected by ``prepare`` (before the loop, so the optimizer of
    every phase sees them and checkpoints hold them); rank, alpha, dropout and targets default to
    the fit's ``lora_*`` options."""

    def __init__(self, rank: int | None = None, alpha: float | None = None, dropout: float | None = None,
                 targets: str | None = None):
        if rank is not None and rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {rank}")
        self.rank, self.alpha, self.dropout, self.targets = rank, alpha, dropout, targets

    def config(self) -> dict:
        return {"method": "lora", "lora_rank": self.rank, "lora_alpha": self.alpha,
                "lora_dropout": self.dropout, "lora_targets": self.targets}

    def prepare(self, model, ds=None, phases=None, args=None, uses_cache=False, **_) -> None:
        if uses_cache:
            raise ValueError("--method lora trains adapters inside the backbone: use --strategy full (every stage), "
                             "finetune or gradual (the last --unfreeze stages), not extract")
        if isinstance(model, LoraTransferModel):
            return
        from .methods import _get
        for k, default in (("rank", 8), ("alpha", 16.0), ("dropout", 0.0), ("targets", None)):
            if getattr(self, k) is None and args is not None:
                setattr(self, k, _get(args, f"lora_{k}"))
            if getattr(self, k) is None:
                setattr(self, k, default)
        phases = phases or []
        trainable = max(((p.trainable if p.trainable >= 0 else len(model.backbone)) for p in phases), default=-1)
        names, stages, rule = resolve(model, trainable, self.targets)
        base_id = model.backbone.weights_id  # before the adapters: what a reload checks the base against
        inject(model, peft_config(names, self.rank, self.alpha, self.dropout))
        model.lora_stages, model.lora_base_id = stages, base_id
        c = count(model)
        log.info("lora: rank %d adapters on %d module(s) (%s) in stage(s) %s: %d parameters, %.2f%% of the backbone",
                 self.rank, len(names), rule, ", ".join(stages), c["adapters"], 100 * c["adapters"] / max(c["total"], 1))
