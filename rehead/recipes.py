"""Strategies: a strategy is a list of phases; a ``Phase`` is what the training loop runs.

``extract``  head on cached features (no augmentation; the fastest)
``head``     frozen prefix, live forward (augmentation applies)
``finetune`` head first, then the last n stages at a much lower LR (fastai ``fine_tune``)
``gradual``  ULMFiT: head, then one more stage per phase, discriminative LRs
``full``     everything trains from the start, discriminative LRs
``auto``     picks the cut and how much to unfreeze from the data's size and its measured
             similarity to the source (``rehead.auto``), and says why
"""
from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("extract", "head", "finetune", "gradual", "full", "auto")


@dataclass
class Phase:
    """Which stages train, at what LRs, for how many epochs, on which schedule."""
    name: str
    epochs: int
    lr: float
    trainable: int | None = 0   # last n backbone stages that train (0: head only, -1: all, None: as set)
    lr_decay: float = 1.0       # each earlier stage group this many times lower
    lr_min: float | None = None  # or: spread LRs geometrically from lr_min to lr
    schedule: str = "onecycle"  # see rehead.train.schedules
    warmup: float = 0.1         # fraction of steps (cosine, linear) warming up
    sgdr_cycle: float = 1.0     # first restart cycle length, epochs
    sgdr_mult: float = 2.0      # each next cycle this many times longer
    weight_decay: float = 0.01
    on_features: bool = False   # train the head alone on cached features of the frozen prefix
    patience: int | None = None  # early stopping for this phase (else TrainConfig.patience)
    solver: str | None = None   # "lbfgs" ("ridge": regression): a linear head on cached features solved, not stepped
    optimizer: str = "adamw"    # live phases: "adamw" or "sgd" (rehead.train.loop.Trainer._optimizer)


@dataclass
class Recipe:
    strategy: str
    phases: list[Phase]
    reason: str = ""
    uses_cache: bool = False

    @property
    def uses_only_features(self) -> bool:
        """Every phase trains the head on cached features: the backbone is never needed live."""
        return all(p.on_features for p in self.phases)


def auto_strategy(n_train: int) -> tuple[str, str]:
    """The size axis alone (what ``auto`` falls back to before it has measured anything): the
    less data, the less of the backbone should move. ``rehead.auto`` adds the similarity axis."""
    if n_train < 1000:
        return "extract", (f"{n_train} training samples (< 1000): train only a new head on frozen "
                           "features; fine-tuning the backbone would overfit")
    if n_train < 50000:
        return "finetune", (f"{n_train} training samples (1000-50000): train the head, then unfreeze "
                            "the last stages at a lower LR")
    return "full", f"{n_train} training samples (>= 50000): enough data to train every stage"


def _join(reason: str, note: str) -> str:
    return f"{reason}; {note}" if reason else note


def build_recipe(strategy: str, n_train: int, depth: int, epochs: int | None = None, lr: float | None = None,
                 unfreeze: int = 2, lr_decay: float = 3.0, lr_min: float | None = None,
                 schedule: str = "onecycle", augment: bool = False, plan: dict | None = None, **phase_kw) -> Recipe:
    """Phases for ``strategy`` on a backbone of ``depth`` stages. ``plan``: what ``rehead.auto``
    measured and decided (``strategy="auto"``): the head, then its unfreezing steps."""
    reason = ""
    planned = strategy == "auto" and plan is not None
    if planned:
        strategy, reason = plan["strategy"], plan["reason"]
        if strategy == "extract" and augment:
            strategy, reason = "head", reason + "; augmentation is on, so features are computed live"
    elif strategy == "auto":
        strategy, reason = auto_strategy(n_train)
        if strategy == "extract" and augment:
            strategy, reason = "head", reason + "; augmentation is on, so features are computed live"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")

    def ph(name, ep, lr_, trainable, **kw):
        return Phase(name, ep, lr_, trainable=trainable, **{"schedule": schedule, **phase_kw, **kw})

    def head_phase():
        # Linear probe, then fine-tune: the head before unfreezing trains on cached features of the
        # frozen prefix (a linear head is solved to its optimum; fit._solved_heads), so the unfrozen
        # stages start under a good head; augmentation is for the live phases that follow.
        return ph("head", epochs or 60, lr or 3e-3, 0, on_features=True, patience=15,
                  schedule="constant" if schedule == "onecycle" else schedule)

    if strategy == "extract":
        return Recipe("extract", [ph("head", epochs or 60, lr or 3e-3, 0, on_features=True, patience=15,
                                     schedule="constant" if schedule == "onecycle" else schedule)],
                      reason, uses_cache=True)
    if strategy == "head":
        phases = [ph("head", epochs or 8, lr or 3e-3, 0)]
    elif planned and plan.get("unfreeze"):
        # auto: the head, then each unfreezing step at the fine-tune LR (rehead.auto.AutoGuard
        # starts a step only if the one before improved val, and keeps to the budget)
        top = lr or 1e-3
        phases = [head_phase()] + [
            ph("full" if u == -1 else f"unfreeze{min(u, depth)}", epochs or plan.get("epochs") or 1, top / 10,
               u if u == -1 else min(u, depth), lr_decay=lr_decay, lr_min=lr_min) for u in plan["unfreeze"]]
    elif strategy == "finetune":
        if unfreeze == 0:
            raise ValueError("--unfreeze 0 unfreezes no stage: --strategy finetune needs 1 or more (-1: every "
                             "stage); --strategy extract trains the head alone")
        if unfreeze > depth:
            reason = _join(reason, f"--unfreeze {unfreeze} > the backbone's {depth} stages: all {depth} unfrozen")
        unfreeze = min(unfreeze, depth) if unfreeze >= 0 else depth
        e = epochs or 5
        top = lr or 1e-3
        # fastai fine_tune: the head first, then the unfrozen stages at a much lower LR, spread down.
        phases = [head_phase(),
                  ph(f"unfreeze{unfreeze}", e, top / 10, unfreeze, lr_decay=lr_decay, lr_min=lr_min)]
    elif strategy == "gradual":
        e = epochs or 2
        top = lr or 1e-3
        n = min(unfreeze if unfreeze > 0 else depth, depth)
        if unfreeze > depth:
            reason = _join(reason, f"--unfreeze {unfreeze} > the backbone's {depth} stages: up to all {depth}")
        phases = [head_phase()]
        phases += [ph(f"unfreeze{k}", e, top / (2 * k), k, lr_decay=lr_decay, lr_min=lr_min) for k in range(1, n + 1)]
    else:  # full
        phases = [ph("full", epochs or 10, lr or 1e-3, -1, lr_decay=lr_decay, lr_min=lr_min)]
    return Recipe(strategy, phases, reason, uses_cache=any(p.on_features for p in phases))
