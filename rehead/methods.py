"""Fine-tuning methods: callbacks of the training loop (``TrainConfig.hooks``).

``L2SP``            Li, Grandvalet, Davoine (2018), "Explicit inductive bias for transfer
                    learning with convolutional networks": penalise the distance of the
                    transferred weights from their pretrained values (alpha/2 * ||w - w0||^2)
                    and plain L2 on the new head (beta/2 * ||w_head||^2), instead of weight decay.
``GuidedTransfer``  Nikolic, Andric, Nikolic (2023), "Guided Transfer Learning", arXiv 2303.16154:
                    scouts (copies of the pretrained model) train briefly on small sub-problems
                    drawn from the target data; each weight's guide value is the mean squared
                    change across scouts, min-max normalised per tensor to [0, 1]; during
                    fine-tuning every gradient (default here: every step, see GuidedTransfer)
                    is multiplied by its guide value.

Each is a ``rehead.train.callbacks.Callback``: ``setup(tr)`` (before training), ``penalty(tr) -> loss
term``, ``after_backward(tr)``, ``after_step(tr)``, where ``tr.model`` is the whole model (even when
only its head trains on cached features). ``prepare(model, ...)`` gives a method what ``fit`` knows
(the data, the phases, the config) before training; ``config()`` records it in the run so
``--resume`` rebuilds it.
``LoRA`` (low-rank adapters through peft) lives in ``rehead.lora``.
``source_agreement`` measures forgetting: how often the backbone's original task head
(e.g. ImageNet) still predicts what it predicted before fine-tuning.
"""
from __future__ import annotations

import copy
import random
import time

import torch
from torch import nn

from .precision import to_device_of
from .recipes import Phase
from .train.callbacks import Callback

METHODS = ("plain", "l2sp", "guided", "lora")
# Methods that act on backbone weights as they train: where none trains, each changes nothing (l2sp's
# alpha, guided's scouts on the backbone, lora's adapters), so a fit with one must train some stage.
BACKBONE_METHODS = ("l2sp", "guided", "lora")
TRAINING_STRATEGIES = "--strategy finetune, gradual or full"  # the strategies that train backbone stages


def backbone_method(hooks: list) -> str | None:
    """The name of the first hook acting on backbone training (``BACKBONE_METHODS``), else None."""
    for h in hooks or []:
        name = h.config().get("method") if hasattr(h, "config") else None
        if name in BACKBONE_METHODS:
            return name
    return None


def idle_method_error(method: str, why: str, strategy: str | None = None, also: str = ""):
    """The one refusal of a backbone method where no backbone weight would train (``why``: what stops it;
    ``also``: a remedy said before the strategies)."""
    from .config import ConfigError
    instead = f", not {strategy}" if strategy in ("extract", "head") else ""
    return ConfigError(f"--method {method} needs backbone training, and {why}: {also}use {TRAINING_STRATEGIES}"
                       f"{instead}")


def _split_params(model) -> tuple[list, list]:
    """(transferred, new) trainable-or-not parameters with their names. A bare head (the
    extract strategy trains the head alone on cached features) has no transferred part."""
    if hasattr(model, "backbone") and hasattr(model, "head"):
        return list(model.backbone.named_parameters()), list(model.head.named_parameters())
    return [], list(model.named_parameters())


def _get(cfg, key):
    """A fit option from a FitConfig or an older args dict."""
    return cfg[key] if isinstance(cfg, dict) else getattr(cfg, key)


def _fit_context(model, ctx: dict) -> bool:
    """fit's older call ``setup(model, ds=..., ...)`` (a model, not the loop's trainer)."""
    return bool(ctx) or not hasattr(model, "callbacks")


class L2SP(Callback):
    """alpha/2 * ||w_S - w0_S||^2 over transferred weights + beta/2 * ||w_new||^2 over the head.

    w0 is captured when the hook first sees the model, i.e. before the first optimizer step:
    the pretrained values. Norm and bias parameters of the head are penalised too, as in the
    paper (it penalises every new parameter). Weight decay is switched off (``replaces_weight_decay``):
    decay towards 0 is exactly what L2-SP replaces.
    """
    replaces_weight_decay = True

    def __init__(self, alpha: float = 0.1, beta: float = 0.01):
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2-SP alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self._w0: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        self._new: list[nn.Parameter] = []

    def config(self) -> dict:
        return {"method": "l2sp", "alpha": self.alpha, "beta": self.beta}

    def bind(self, model) -> None:
        transferred, new = _split_params(model)
        self._w0 = [(p, p.detach().clone()) for _, p in transferred]
        self._new = [p for _, p in new]

    def prepare(self, model, uses_cache: bool = False, **_) -> None:
        if uses_cache:  # extract: only the head trains, on cached features
            self._w0, self._new = [], list(model.head.parameters())
        else:
            self.bind(model)

    def setup(self, tr, **ctx) -> None:
        """Before training and before a resume's weights are loaded: w0 is the pretrained weights."""
        if _fit_context(tr, ctx):
            return self.prepare(tr, **ctx)
        if self._w0 is None:
            self.bind(tr.model)

    def penalty(self, tr) -> torch.Tensor:
        if self._w0 is None:
            self.bind(tr.model)
        if self._w0 and self._w0[0][1].device != self._w0[0][0].device:  # the loop moved the model (a GPU)
            self._w0 = [(p, w0.to(p.device)) for p, w0 in self._w0]
        sp = sum(((p - w0) ** 2).sum() for p, w0 in self._w0 if p.requires_grad)
        l2 = sum((p ** 2).sum() for p in self._new if p.requires_grad)
        return 0.5 * self.alpha * sp + 0.5 * self.beta * l2

    def distance(self) -> float:
        """||w - w0|| over the transferred weights now (how far fine-tuning moved them)."""
        return float(sum(((p.detach() - w0) ** 2).sum() for p, w0 in self._w0 or []) ** 0.5)


# -- Guided Transfer Learning -------------------------------------------------------------------
def scout_subsets(labels: list[int], n_scouts: int, size: int, seed: int) -> list[list[int]]:
    """Index subsets (sub-problems) of the training set, one per scout: ``size`` samples drawn
    at random, stratified so every class present appears at least once when size allows."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    n = len(labels)
    size = max(1, min(size, n))
    subsets = []
    for _ in range(n_scouts):
        first = [rng.choice(v) for v in by_class.values()][:size]
        rest = [i for i in rng.sample(range(n), n) if i not in first][: size - len(first)]
        subsets.append(sorted(first + rest))
    return subsets


def train_scout(model, loader, epochs: int, lr: float, loss_fn, accelerator=None) -> None:
    """A short plain fine-tune through the training loop: AdamW, constant LR, no weight decay,
    the model's own trainable set, where the model is; nothing written, no val pass."""
    from .train.loop import TrainConfig, Trainer
    cfg = TrainConfig(seed=None, progress=False, local=True, select_best=False, checkpoints=False)
    Trainer(cfg, accelerator=accelerator, callbacks=[], loss_fn=loss_fn).fit(
        model, loader, None, [Phase("scout", epochs, lr, trainable=None, schedule="constant", weight_decay=0.0)],
        make_loader=lambda data, shuffle, generator: data)


def compute_guide(model, make_loader, labels: list[int], n_scouts: int = 5, scout_size: int = 8,
                  epochs: int = 5, lr: float = 1e-3, trainable: int | None = None, seed: int = 0,
                  loss_fn=None, accelerator=None) -> dict[str, torch.Tensor]:
    """Guide values for every parameter of ``model`` (names as in ``model.named_parameters()``).

    ``make_loader(indices, generator)`` gives a shuffled loader over those training samples.
    ``trainable``: the scouts train the head and the last ``trainable`` stages (a TransferModel);
    parameters no scout trains get guide 0 (they stay where the pretrained model put them).
    """
    if n_scouts < 1:
        raise ValueError(f"guided transfer learning needs at least 1 scout, got {n_scouts}")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    sq = {n: torch.zeros_like(p) for n, p in start.items()}
    for s, idx in enumerate(scout_subsets(labels, n_scouts, scout_size, seed)):
        scout = copy.deepcopy(model)
        if trainable is not None and hasattr(scout, "set_trainable_last"):
            scout.set_trainable_last(trainable)
        torch.manual_seed(seed * 7919 + s)
        train_scout(scout, make_loader(idx, torch.Generator().manual_seed(seed * 7919 + s)), epochs, lr, loss_fn,
                    accelerator)
        for n, p in scout.named_parameters():
            sq[n] += (p.detach().to(start[n].device) - start[n]) ** 2
        del scout
    guide = {}
    for n, v in sq.items():
        v = v / n_scouts
        lo, hi = v.min(), v.max()
        # Min-max per tensor (as the authors' code does); a tensor no scout moved stays 0.
        guide[n] = (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)
    return guide


def guide_line(guide: dict[str, torch.Tensor], seconds: float) -> str:
    """One line on what the scouts found: how much of the model the guide lets move."""
    v = torch.cat([g.flatten().float() for g in guide.values()])
    still, free = float((v < 0.01).float().mean()), float((v > 0.5).float().mean())
    return (f"guided: guide values from the scouts in {seconds:.0f} s: {still:.0%} of {v.numel():,} weights ~0 "
            f"(held at their pretrained values), {free:.0%} over 0.5; saved as guide.safetensors")


GUIDE_ON = ("update", "gradient")


class GuidedTransfer(Callback):
    """Scale learning by guide values. ``setup`` runs the scouts (the loop's first event).

    ``guide_on="gradient"`` is the paper's rule: every gradient is multiplied by its guide value.
    Under an adaptive optimizer (rehead trains with AdamW) that is nearly a no-op: Adam divides
    each gradient by its own running RMS, so a constant per-weight factor cancels (only guide
    values near 0, where Adam's eps dominates, still slow a weight down). ``guide_on="update"``
    (the default) multiplies each weight's *step* by its guide value instead, which is what the
    gradient rule does under plain SGD (with or without momentum) and keeps that meaning under AdamW.
    """

    def __init__(self, scouts: int = 5, scout_size: int = 8, scout_epochs: int = 5,
                 scout_lr: float | None = None, guide: dict[str, torch.Tensor] | None = None,
                 guide_on: str = "update"):
        if guide_on not in GUIDE_ON:
            raise ValueError(f"guide_on must be one of {', '.join(GUIDE_ON)}, got {guide_on!r}")
        self.scouts, self.scout_size, self.scout_epochs, self.scout_lr = scouts, scout_size, scout_epochs, scout_lr
        self.guide, self.guide_on = guide, guide_on
        self._by_param: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        self._before: list[torch.Tensor] | None = None
        self._scout_loader = None  # (make_loader(indices, generator), train labels, phases, seed): from prepare
        self._echo = lambda *a: None

    def config(self) -> dict:
        return {"method": "guided", "scouts": self.scouts, "scout_size": self.scout_size,
                "scout_epochs": self.scout_epochs, "scout_lr": self.scout_lr, "guide_on": self.guide_on}

    def prepare(self, model, ds=None, phases=None, args=None, uses_cache=False, echo=None, **_) -> None:
        """What ``fit`` knows that the scouts need: the training split, a loader over its
        subsets (live data, as the fine-tune sees it) and the phases; ``echo`` says what the scouts did."""
        self._echo = echo or (lambda *a: None)
        if uses_cache:
            raise idle_method_error("guided", "on cached features no backbone weight trains", "extract")
        if self.guide is not None or ds is None:
            return
        self.check_data(ds)
        from .data import pipeline
        pipe = pipeline(model.backbone.modality)

        def make_loader(idx, generator):
            s = ds.train.subset(idx)
            return pipe.make_loader(model.backbone, s.items, s.labels, batch_size=_get(args, "batch_size"),
                                    workers=_get(args, "workers"), shuffle=True, generator=generator,
                                    strict=_get(args, "strict"))
        self._scout_loader = (make_loader, ds.train.labels, phases, _get(args, "seed"))

    def check_data(self, ds) -> None:
        """Before any file is written (``fit`` calls it once the data is read)."""
        n = len(ds.train)
        if self.guide is None and self.scout_size >= n:  # every scout would train on the same samples: a guide of noise
            raise ValueError(f"--scout-size {self.scout_size} is the whole training split ({n} samples): every scout "
                             f"would train on the same data; give fewer than {n} (each scout learns a small "
                             "sub-problem, e.g. the default 8)")

    def setup(self, tr, **ctx) -> None:
        """Before training, on the pretrained weights: the guide is read back on resume, else
        the scouts run (through the same loop) and it is saved as guide.safetensors."""
        if _fit_context(tr, ctx):
            return self.prepare(tr, **ctx)
        run = tr.run
        if tr.resume and run is not None and run.exists("guide.safetensors"):
            self.guide = run.load_tensors("guide.safetensors")
            return
        if self.guide is None:
            if self._scout_loader is None:
                raise RuntimeError("GuidedTransfer has no guide values and no data for its scouts: call "
                                   "prepare(model, ds=..., phases=..., args=...) or compute_guide() first")
            make_loader, labels, phases, seed = self._scout_loader
            model = tr.model
            trainable = max((p.trainable if p.trainable >= 0 else len(model.backbone)) for p in phases)
            lr = self.scout_lr or max(p.lr for p in phases)
            say = self._echo
            say(f"guided: {self.scouts} scouts of {self.scout_size} training samples, {self.scout_epochs} epochs "
                f"each at lr {lr:g} on the head and the last {trainable} stage(s)")
            t0 = time.perf_counter()
            self.guide = compute_guide(model, make_loader, labels, self.scouts, self.scout_size, self.scout_epochs,
                                       lr, trainable, seed=seed, accelerator=tr.acc)
            say(guide_line(self.guide, time.perf_counter() - t0))
        if run is not None:
            run.save_tensors("guide.safetensors", self.guide)

    def _bind(self, model) -> None:
        if self._by_param is None:
            if self.guide is None:
                raise RuntimeError("GuidedTransfer has no guide values: call setup() or compute_guide() first")
            named = dict(model.named_parameters())
            missing = [n for n in named if n not in self.guide]
            if missing:
                raise ValueError(f"guide values do not cover parameter(s) {', '.join(missing[:5])}: "
                                 "they were computed for another model")
            self._by_param = [(p, self.guide[n].to(p.device, p.dtype)) for n, p in named.items()]

    def after_backward(self, tr) -> None:
        self._bind(tr.model)
        if self.guide_on == "gradient":
            for p, g in self._by_param:
                if p.grad is not None:
                    p.grad.mul_(g)
        else:  # remember the weights; after_step scales the optimizer's step
            self._before = [p.detach().clone() if p.requires_grad else None for p, _ in self._by_param]

    @torch.no_grad()
    def after_step(self, tr) -> None:
        if self.guide_on != "update" or self._before is None:
            return
        for (p, g), w in zip(self._by_param, self._before):
            if w is not None:
                p.copy_(w + g * (p - w))
        self._before = None


def method_hooks(method: str | None, alpha: float = 0.1, beta: float = 0.01, scouts: int = 5,
                 scout_size: int = 8, scout_epochs: int = 5, scout_lr: float | None = None,
                 guide_on: str = "update", lora_rank: int | None = None, lora_alpha: float | None = None,
                 lora_dropout: float | None = None, lora_targets: str | None = None) -> list:
    """Hooks for ``rehead fit --method``: plain (none), l2sp, guided, lora (``rehead.lora``; its
    settings default to the fit's ``lora_*`` options)."""
    if method in (None, "", "plain", "none"):
        return []
    if method == "l2sp":
        return [L2SP(alpha, beta)]
    if method == "guided":
        return [GuidedTransfer(scouts, scout_size, scout_epochs, scout_lr, guide_on=guide_on)]
    if method == "lora":
        from .lora import LoRA
        return [LoRA(lora_rank, lora_alpha, lora_dropout, lora_targets)]
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def hooks_from_config(rows: list[dict] | None) -> list:
    """Rebuild the hooks a run recorded (for --resume)."""
    hooks = []
    for r in rows or []:
        r = dict(r)
        hooks += method_hooks(r.pop("method"), **r)
    return hooks


# -- forgetting -------------------------------------------------------------------------------
@torch.no_grad()
def source_predictions(backbone, inputs: torch.Tensor, batch_size: int = 64, from_stage: int = 0) -> torch.Tensor:
    """argmax of the backbone's original task head (``source_head[0]``, e.g. the ImageNet
    classifier) on ``inputs``. ``from_stage``: the inputs are states entering that stage."""
    head = backbone.source_head[0]
    if head is None:
        raise ValueError(getattr(backbone, "source_head_note", None)  # why a classifier it has is not carried
                         or f"{backbone.spec} kept no source head: forgetting cannot be measured on it")
    was = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        x = to_device_of(backbone, inputs[i:i + batch_size])
        state = x if from_stage else backbone.begin(x)
        for k in range(from_stage, len(backbone)):
            state = backbone.run_stage(k, state)
        f = backbone.pool(state)
        out.append(head.to(f.device)(f).argmax(1).cpu())  # kept out of the backbone's modules: moved here
    backbone.train(was)
    return torch.cat(out)


def source_agreement(before: torch.Tensor, after: torch.Tensor) -> float:
    """Fraction of inputs whose source-task prediction did not change."""
    return float((before == after).float().mean())
