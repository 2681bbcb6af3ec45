"""Backbone: a pretrained network as an ordered list of stages, input side first.

A backbone runs in three steps so that every modality fits one shape:
``begin(inputs) -> state``, ``stage i: state -> state``, ``pool(state) -> (B, D)``.
For images the state is a feature map; for text it is (hidden states, attention mask).
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


class Backbone(nn.Module):
    """A pretrained network as an ordered list of stages (``rehead.load(spec)`` makes one).

    ``len(bb)`` stages, named by ``bb.stage_names``; ``bb.cut(n)`` keeps the first ``n`` (or up to a
    stage name); ``bb(x)`` gives pooled features (N, D) after the last kept stage;
    ``bb.describe()`` lists stages with output shapes and parameter counts (``rehead inspect``).
    ``data_config`` holds its preprocessing (input size, mean/std; tokenizer settings for text;
    feature columns for tables), ``spec`` the string that rebuilds it, ``modality`` image, text or
    tabular, and ``source_head`` the pretrained task head, kept aside (never trained)."""
    modality = "image"

    def __init__(self, stages: dict[str, nn.Module], data_config: dict, spec: str,
                 source_head: nn.Module | None = None):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.data_config = dict(data_config)
        self.spec = spec
        # The pretrained task head (e.g. ImageNet classifier), kept aside, never trained.
        self.source_head = [source_head]  # a list so it is not a registered submodule
        self.source_labels: list[str] | None = None  # the source head's class names, where known
        self.source_head_note: str | None = None  # why a classifier the model has is not kept, where it is not
        self.full_depth = len(stages)
        self._weights_id = None

    # -- structure -------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def __len__(self) -> int:
        return len(self.stages)

    def stage_index(self, cut: int | str) -> int:
        """Number of stages kept for a cut given as a count or a stage name (inclusive)."""
        return stage_index(self.stage_names, cut)

    def cut(self, cut: int | str) -> "Backbone":
        """Keep the first k stages; shares modules with self."""
        k = self.stage_index(cut)
        new = self.__class__.__new__(self.__class__)
        nn.Module.__init__(new)
        new.__dict__.update({key: v for key, v in self.__dict__.items()
                             if key not in ("_modules", "_parameters", "_buffers")})
        new.stages = nn.ModuleDict(list(self.stages.items())[:k])
        for name, mod in self._modules.items():
            if name != "stages":
                new.add_module(name, mod)
        new._weights_id = None  # identity of the prefix alone: equal weights, equal id
        return new

    # -- forward ---------------------------------------------------------------
    def begin(self, inputs):
        return inputs

    def run_stage(self, i: int, state):
        return self.stages[self.stage_names[i]](state)

    def pool(self, state) -> torch.Tensor:
        if state.dim() == 4:
            return state.mean((2, 3))
        if state.dim() == 3:
            return state.mean(1)
        return state

    def forward(self, inputs) -> torch.Tensor:
        state = self.begin(inputs)
        for i in range(len(self)):
            state = self.run_stage(i, state)
        return self.pool(state)

    def forward_cuts(self, inputs, cuts: list[int]) -> dict[int, torch.Tensor]:
        """Pooled features after each of several cuts, from one forward pass."""
        state, out = self.begin(inputs), {}
        for i in range(max(cuts)):
            state = self.run_stage(i, state)
            if i + 1 in cuts:
                out[i + 1] = self.pool(state)
        return out

    @torch.no_grad()
    def source_predict(self, inputs, top_k: int = 5) -> list[list[dict]]:
        """The pretrained network used as it is: top-k of its own head (e.g. ImageNet classes) per
        input, ``[[{"label", "index", "prob"}, ...], ...]``. Needs the full depth and a known head."""
        head = self.source_head[0]
        note = getattr(self, "source_head_note", None)
        if head is None and note:
            raise ValueError(note)
        if head is None or len(self) != self.full_depth:
            raise ValueError(f"{self.spec} has no pretrained head to predict with"
                             + (" at this cut" if head is not None else ""))
        was = self.training
        self.eval()
        probs = head(self(inputs)).float().softmax(-1)
        self.train(was)
        p, idx = probs.topk(min(top_k, probs.shape[-1]))
        names = self.source_labels
        return [[{"label": names[i] if names else str(i), "index": i, "prob": float(q)}
                 for q, i in zip(pr.tolist(), ix.tolist())] for pr, ix in zip(p, idx)]

    # -- identity --------------------------------------------------------------
    @property
    def weights_id(self) -> str:
        """Hash of the architecture spec and every weight this (possibly cut) backbone holds."""
        if self._weights_id is None:
            h = hashlib.sha256(self.spec.encode())
            for name, t in self.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            self._weights_id = h.hexdigest()[:32]
        return self._weights_id

    def preprocessing_id(self) -> str:
        return hashlib.sha256(json.dumps(self.data_config, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, example=None) -> list[dict]:
        """One row per stage: index, name, output shape, parameter count."""
        rows, state = [], None
        if example is not None:
            state = self.begin(example)
        for i, name in enumerate(self.stage_names):
            shape = None
            if state is not None:
                with torch.inference_mode():
                    state = self.run_stage(i, state)
                t = state[0] if isinstance(state, tuple) else state
                shape = tuple(t.shape[1:])
            params = sum(p.numel() for p in self.stages[name].parameters())
            rows.append({"index": i + 1, "name": name, "output_shape": shape, "params": params})
        return rows


def stage_index(names: list[str], cut: int | str | None) -> int:
    """Stages kept for a cut given as a count, a negative count, or a stage name (inclusive);
    ``None``: all of them."""
    if cut is None:
        return len(names)
    if isinstance(cut, str) and not cut.lstrip("-").isdigit():
        if cut not in names:
            raise ValueError(f"no stage named {cut!r}; stages are: {', '.join(names)}")
        return names.index(cut) + 1
    k = int(cut)
    if k < 0:
        k = len(names) + k
    if not 1 <= k <= len(names):
        raise ValueError(f"cut must be between 1 and {len(names)} stages (-1 .. -{len(names) - 1}: all but the last "
                         f"N; or a stage name), got {cut}")
    return k


def image_data_config(cfg: dict) -> dict:
    """Preprocessing from a timm pretrained_cfg: nothing guessed, everything recorded."""
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return {
        "modality": "image",
        "input_size": int(size),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))],
    }
