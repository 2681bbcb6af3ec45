"""TransferModel: a cut backbone plus a grafted head, with per-stage freezing."""
from __future__ import annotations

import torch
from torch import nn

from .zoo.backbone import Backbone


class TransferModel(nn.Module):
    """A cut ``Backbone`` with a grafted ``head``: ``model(x)`` is ``head(backbone(x))``.

    ``freeze(stages)`` / ``unfreeze(stages)`` set which backbone stages train (frozen stages run in
    eval mode unless ``train_frozen_bn``); ``freeze_bn`` keeps every BatchNorm's pretrained
    statistics; ``layer_decay`` scales LRs per block. ``rehead.fit`` builds and trains one; a run's
    is ``Run(dir).model``."""

    def __init__(self, backbone: Backbone, head: nn.Module, train_frozen_bn: bool = False,
                 freeze_bn: bool = False, layer_decay: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.train_frozen_bn = train_frozen_bn
        # Keep every BatchNorm's pretrained statistics, in trainable stages too: on a few hundred
        # images re-estimated statistics are noise, and they are what most changes the source task.
        self.freeze_bn = freeze_bn
        self.frozen = [False] * len(backbone)
        # Layer-wise LR decay (BEiT / timm): per block from the backbone's own layer grouping.
        self.layer_decay = layer_decay

    # -- freezing --------------------------------------------------------------
    def freeze(self, stages=None) -> "TransferModel":
        """Freeze the given stage indices (0-based), or every backbone stage."""
        for i in range(len(self.backbone)) if stages is None else stages:
            self.frozen[i] = True
        self._apply_flags()
        return self

    def unfreeze(self, stages=None) -> "TransferModel":
        for i in range(len(self.backbone)) if stages is None else stages:
            self.frozen[i] = False
        self._apply_flags()
        return self

    def set_trainable_last(self, n: int) -> "TransferModel":
        """Train the head and the last ``n`` stages; freeze the rest (n=-1: everything)."""
        depth = len(self.backbone)
        n = depth if n < 0 else min(n, depth)
        self.frozen = [i < depth - n for i in range(depth)]
        self._apply_flags()
        return self

    def _apply_flags(self):
        for flag, stage in zip(self.frozen, self.backbone.stages.values()):
            for p in stage.parameters():
                p.requires_grad_(not flag)
        self.train(self.training)

    @property
    def n_frozen_prefix(self) -> int:
        n = 0
        while n < len(self.frozen) and self.frozen[n]:
            n += 1
        return n

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.train_frozen_bn:
            # A frozen BatchNorm keeps its pretrained statistics (eval mode).
            for flag, stage in zip(self.frozen, self.backbone.stages.values()):
                if flag:
                    stage.eval()
        if mode and self.freeze_bn and not self.train_frozen_bn:  # asking for updates wins
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- forward ---------------------------------------------------------------
    def features(self, inputs) -> torch.Tensor:
        bb, k = self.backbone, self.n_frozen_prefix
        if k:
            # The frozen prefix runs without autograd: no activations are stored for it.
            with torch.no_grad():
                state = bb.begin(inputs)
                for i in range(k):
                    state = bb.run_stage(i, state)
        else:
            state = bb.begin(inputs)
        for i in range(k, len(bb)):
            state = bb.run_stage(i, state)
        return bb.pool(state)

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.features(inputs))

    # -- parameter groups --------------------------------------------------------
    def param_groups(self, lr: float, lr_decay: float = 1.0, weight_decay: float = 0.0,
                     lr_min: float | None = None, layer_decay: float | None = None) -> list[dict]:
        """One group per trainable stage plus the head, the head at ``lr``.

        Discriminative LRs: each earlier stage is ``lr_decay`` times lower, or, with
        ``lr_min``, the LRs are spread geometrically from lr_min (first trainable stage)
        to lr (head). Norms and biases get no weight decay.

        ``layer_decay`` (default: the model's ``layer_decay``; e.g. 0.75 for ViTs): layer-wise LR
        decay instead, per layer of the backbone's own grouping where it has one (timm's
        ``group_matcher``, as ``timm.optim`` uses it: the embeddings, then every transformer / conv
        block, the final norm with the last block): the head trains at ``lr``, each layer below it
        ``layer_decay`` times lower than the one above. A backbone without such a grouping (a
        Hugging Face encoder, whose stages are its layers) decays per stage: ``lr_decay = 1/layer_decay``.
        Groups are named ``layer<i>`` (``:no_decay``); timm's ``no_weight_decay()`` names (position
        embeddings, class tokens) get no weight decay either.
        """
        layer_decay = self.layer_decay if layer_decay is None else layer_decay
        layered = (self.backbone.layer_param_groups(weight_decay, layer_decay)
                   if layer_decay is not None and hasattr(self.backbone, "layer_param_groups") else None)
        if layered is not None:
            groups = [{"params": g["params"], "lr": lr * g["lr_scale"], "weight_decay": g["weight_decay"],
                       "name": f"layer{g['layer']}" + ("" if g["decay"] else ":no_decay")} for g in layered]
            return groups + self._groups("head", self.head, lr, weight_decay)
        if layer_decay is not None:  # no grouping of its own (a text encoder: its stages are its layers)
            lr_decay, lr_min = 1 / layer_decay, None
        trainable = [i for i, f in enumerate(self.frozen) if not f]
        units = [(f"stage:{self.backbone.stage_names[i]}", self.backbone.stages[self.backbone.stage_names[i]])
                 for i in trainable] + [("head", self.head)]
        n = len(units)
        if lr_min is not None and n > 1:
            lrs = [lr_min * (lr / lr_min) ** (j / (n - 1)) for j in range(n)]
        else:
            lrs = [lr / lr_decay ** (n - 1 - j) for j in range(n)]
        groups = []
        for (name, mod), group_lr in zip(units, lrs):
            groups += self._groups(name, mod, group_lr, weight_decay)
        return groups

    @staticmethod
    def _groups(name: str, mod: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        decay, no_decay = [], []
        for p in mod.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": params, "lr": lr, "weight_decay": wd, "name": name + tag}
                for params, wd, tag in ((decay, weight_decay, ""), (no_decay, 0.0, ":no_decay")) if params]
