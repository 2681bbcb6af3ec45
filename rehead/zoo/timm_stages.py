"""Image backbones cut with timm's own surgery.

A timm model already says where its stages end and how to run a prefix of it:

- stage boundaries: ``model.feature_info`` (the module after which each feature map is taken),
  or, for the EfficientNet / MobileNet classes, the finer ``extra_blocks`` index space of
  ``forward_intermediates`` (the stem, then every block group);
- features at an intermediate cut: ``forward_intermediates(x, indices=[i], intermediates_only=True,
  stop_early=True)``, NCHW, averaged over every spatial position (for ViT-like models timm drops the
  prefix / class tokens, so this is the mean of the patch tokens; no final norm);
- features of the whole network: ``forward_head(forward_features(x), pre_logits=True)``, i.e. the
  model's own pooling, final norm and pre-logits layers;
- a cut: a structural copy of the model (same parameter tensors) pruned by
  ``prune_intermediate_layers``.

Which parameters belong to which stage is read off one traced forward pass: a module belongs to
the stage during which it first runs (the boundaries are the ``feature_info`` modules finishing);
what runs after the last boundary (final norm, ``conv_head``, a pre-logits MLP) is one more stage,
``pre_logits`` (``head_conv`` where the model has a ``conv_head``), when it holds any weights. A
module that never runs belongs with its parent (EVA's attention reads its ``qkv`` weight directly);
the classifier (``get_classifier()``) belongs to no stage and is kept aside as ``source_head``.
Stage modules hold those timm modules under their timm names, so a backbone's state dict reads
``stages.<stage>.<timm name>``; tensors of a module split between stages (the class token and
position embedding on the model itself, EVA's q/v biases) are held one by one.

Stages run lazily: ``begin``/``run_stage`` only count how deep the state is, and ``pool`` runs timm
once to that depth. Frozen stages still cost no stored activations: their weights do not require
grad, so autograd records nothing for them.
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from .backbone import Backbone, image_data_config


class Pending:
    """The state after ``depth`` stages of a timm backbone: the inputs, not yet run."""
    __slots__ = ("inputs", "depth")

    def __init__(self, inputs: torch.Tensor, depth: int = 0):
        self.inputs, self.depth = inputs, depth


class TimmStage(nn.Module):
    """The timm modules of one stage (held under their timm names). Calling it advances a
    ``Pending`` state by one stage; the network runs when the state is pooled."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, state: Pending) -> Pending:
        if not isinstance(state, Pending) or state.depth != self.index:
            got = getattr(state, "depth", type(state).__name__)
            raise ValueError(f"stage {self.index} of a timm backbone takes the state after {self.index} stages "
                             f"(from Backbone.begin / run_stage), got {got}")
        return Pending(state.inputs, self.index + 1)

    def extra_repr(self) -> str:
        return f"index={self.index}"


def _extra_blocks(model) -> dict:
    """timm's finer index space for EfficientNet / MobileNet (stem, then every block group)."""
    if ("extra_blocks" in inspect.signature(model.forward_intermediates).parameters
            and "extra_blocks" in inspect.signature(model.prune_intermediate_layers).parameters
            and isinstance(getattr(model, "bn1", None), nn.Module) and hasattr(model, "blocks")):
        return {"extra_blocks": True}
    return {}


def _points(model, extra: dict) -> list[str]:
    """The module after which each intermediate of ``forward_intermediates`` is taken."""
    if extra.get("extra_blocks"):
        return ["bn1"] + [f"blocks.{j}" for j in range(len(model.blocks))]
    return [f["module"] for f in model.feature_info]


_STEMS = ("stem", "conv_stem", "bn1", "act1", "conv1", "act2")


def _stage_name(path: str, i: int) -> str:
    parts = path.split(".")
    if len(parts) >= 2 and parts[1].isdigit():  # blocks.3 -> block3, stages.0 -> stage0, layers.2 -> layer2
        base = parts[0][:-1] if parts[0].endswith("s") else parts[0]
        return f"{base}{parts[1]}"
    if i == 0 and (parts[0] in _STEMS or parts[0].startswith("stem")):
        return "stem"
    if len(parts) > 1 and parts[0][-1].isdigit():  # legacy xception: block2.rep.0 -> block2
        return parts[0]
    return path.replace(".", "_")


def _has_state(mod: nn.Module) -> bool:
    return bool(mod._parameters) or bool(mod._buffers)


FAMILIES_THAT_CUT = ("timm:resnet50, timm:convnext_tiny, timm:efficientnet_b0, timm:vit_base_patch16_224, "
                     "timm:swin_tiny_patch4_window7_224 or another family the README lists as tested")


def uncuttable(model: nn.Module, why: str) -> ValueError:
    """The refusal for a timm family whose stage boundaries rehead cannot read."""
    return ValueError(f"timm's {type(model).__name__} models cannot be cut into stages by rehead: {why}, so rehead "
                      "cannot tell which layers make up each stage (it needs that to cut the network, cache features "
                      f"per stage and fine-tune the last stages). Use another family, e.g. {FAMILIES_THAT_CUT}")


def trace_plan(model: nn.Module, input_size: int) -> dict:
    """Stage names and the timm modules (by name) each stage owns, from one traced forward pass."""
    extra = _extra_blocks(model)
    points = _points(model, extra)
    named = dict(model.named_modules())
    missing = [p for p in points if p not in named]
    if missing:
        raise uncuttable(model, "timm's description of its stages (feature_info) names layers the model does not "
                                f"have ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")
    n = len(points)
    stage = [0]
    first: dict[str, int] = {}
    hooks = []
    def seen(name):
        def pre(m, a):
            first.setdefault(name, stage[0])  # returns None: the inputs pass unchanged
        return pre
    for name, mod in named.items():
        if name:
            hooks.append(mod.register_forward_pre_hook(seen(name)))
    for i, p in enumerate(points):
        def done(m, a, o, i=i):
            if stage[0] == i:
                stage[0] = i + 1
        hooks.append(named[p].register_forward_hook(done))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_head(model.forward_features(torch.zeros(1, 3, input_size, input_size)), pre_logits=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if stage[0] != n:
        raise uncuttable(model, f"its forward pass does not go through its {n} stages one after the other the way "
                                f"timm's description of them (feature_info) says (only {stage[0]} of them were reached "
                                "in order)")

    # Owner of each module: the stage it first ran in. A module that never ran belongs with its
    # parent (its weights are used by the parent's code, e.g. EVA's qkv); the classifier belongs to none.
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = {id(m) for h in (head if isinstance(head, (tuple, list)) else [head]) if isinstance(h, nn.Module)
             for m in h.modules()}
    owner: dict[str, int | None] = {}
    for name, mod in named.items():
        if not name:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        owner[name] = None if id(mod) in heads else first.get(name, owner.get(parent))
    sub: dict[str, set] = {}
    for name in reversed(list(named)):  # children before parents
        if name:
            sub[name] = {owner[name]}.union(*(sub[f"{name}.{c}"] for c, _ in named[name].named_children()))
    owned: list[list[str]] = [[] for _ in range(n + 1)]
    loose: list[list[tuple[str, str]]] = [[] for _ in range(n + 1)]  # (module, tensor) held one by one
    loose[0] = [("", k) for k in list(model._parameters) + list(model._buffers) if getattr(model, k) is not None]
    for name in sub:
        s = owner[name]
        if s is None:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if sub[name] == {s}:
            if not (parent and sub[parent] == {s}):
                owned[s].append(name)  # the largest module wholly this stage's
        else:
            mod = named[name]
            loose[s] += [(name, k) for k in list(mod._parameters) + list(mod._buffers) if getattr(mod, k) is not None]
    names = []
    for i, p in enumerate(points):
        name = _stage_name(p, i)
        names.append(name if name not in names else f"{name}_{i}")
    tail = bool(loose[n]) or any(_has_state(m) for path in owned[n] for m in named[path].modules())
    if tail:
        conv_head = getattr(model, "conv_head", None)
        names.append("head_conv" if isinstance(conv_head, nn.Module) and _has_state(conv_head) else "pre_logits")
    else:  # parameter-free pooling: it belongs with the last stage
        owned[n - 1] += owned[n]
        loose[n - 1] += loose[n]
    return {"names": names, "owned": owned[:len(names)], "loose": loose[:len(names)], "points": points,
            "extra": extra, "n_points": n}


def structural_copy(model: nn.Module, memo=None) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer tensor with ``model``:
    pruning it (attributes reassigned) leaves ``model`` as it was."""
    memo = {} if memo is None else memo
    if id(model) in memo:
        return memo[id(model)]
    new = copy.copy(model)
    memo[id(model)] = new
    new._parameters = dict(model._parameters)
    new._buffers = dict(model._buffers)
    new._non_persistent_buffers_set = set(model._non_persistent_buffers_set)
    new._modules = {k: (structural_copy(m, memo) if m is not None else None) for k, m in model._modules.items()}
    for k, v in list(vars(model).items()):  # plain lists / dicts that prune may edit in place
        if isinstance(v, (list, dict)) and not k.startswith("_"):
            new.__dict__[k] = copy.copy(v)
    return new


def _holder(stage: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The placeholder module in ``stage`` at the parent of ``path`` (made on the way)."""
    parts = path.split(".")
    cur = stage
    for p in parts[:-1]:
        if p not in cur._modules:
            cur.add_module(p, nn.Module())
        cur = cur._modules[p]
    return cur, parts[-1]


class TimmBackbone(Backbone):
    """A timm model as rehead stages (see the module docstring)."""

    def __init__(self, model: nn.Module, plan: dict, data_config: dict, spec: str, depth: int | None = None,
                 source_head: nn.Module | None = None, full_depth: int | None = None):
        depth = len(plan["names"]) if depth is None else depth
        stages = {}
        for i in range(depth):
            st = TimmStage(i)
            for path in plan["owned"][i]:
                try:
                    mod = model.get_submodule(path)
                except AttributeError:  # pruned away by timm: this cut's features do not use it
                    continue
                parent, leaf = _holder(st, path)
                parent.add_module(leaf, mod)
            for path, k in plan["loose"][i]:  # tensors of modules this stage shares with another
                try:
                    real = model.get_submodule(path)
                except AttributeError:
                    continue
                t = getattr(real, k, None)
                holder = _holder(st, f"{path}.{k}")[0] if path else st
                if isinstance(t, nn.Parameter):
                    holder.register_parameter(k, t)
                elif isinstance(t, torch.Tensor):
                    holder.register_buffer(k, t, persistent=k not in real._non_persistent_buffers_set)
            stages[plan["names"][i]] = st
        super().__init__(stages, data_config, spec, source_head=source_head)
        self.full_depth = len(plan["names"]) if full_depth is None else full_depth
        self.plan = plan
        self.runner = [model]  # a list: the stages own the weights, the model only runs them

    @property
    def model(self) -> nn.Module:
        return self.runner[0]

    # -- structure -------------------------------------------------------------
    def cut(self, cut) -> "TimmBackbone":
        k = self.stage_index(cut)
        if k == len(self):
            model = self.model
        else:
            model = structural_copy(self.model)
            model.prune_intermediate_layers(indices=[k - 1], prune_norm=True, prune_head=True, **self.plan["extra"])
        new = TimmBackbone(model, self.plan, self.data_config, self.spec, depth=k,
                           source_head=self.source_head[0], full_depth=self.full_depth)
        new.source_labels = self.source_labels
        new.source_head_note = self.source_head_note
        new.train(self.training)
        return new

    def train(self, mode: bool = True):
        self.model.train(mode)  # modules outside the stages too (dropout, the root's own flag)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # Tensors held one by one (class token, EVA's q/v biases): the model follows the stage's copy.
        for i, name in enumerate(self.stage_names):
            for path, k in self.plan["loose"][i]:
                try:
                    real, holder = self.model.get_submodule(path), self.stages[name].get_submodule(path)
                except AttributeError:
                    continue
                for d in ("_parameters", "_buffers"):
                    if k in getattr(holder, d):
                        getattr(real, d)[k] = getattr(holder, d)[k]
        return self

    # -- forward ---------------------------------------------------------------
    def begin(self, inputs):
        return Pending(inputs, 0)

    def pool(self, state) -> torch.Tensor:
        if isinstance(state, Pending):
            return self._features(state.inputs, [state.depth])[state.depth]
        return super().pool(state)

    def forward(self, inputs) -> torch.Tensor:
        return self._features(inputs, [len(self)])[len(self)]

    def forward_cuts(self, inputs, cuts: list[int]) -> dict[int, torch.Tensor]:
        state = self.begin(inputs)
        for i in range(max(cuts)):  # each stage once (lazily): one pass of timm for every cut
            state = self.run_stage(i, state)
        return self._features(inputs, cuts)

    def _features(self, x: torch.Tensor, cuts) -> dict[int, torch.Tensor]:
        """Pooled features after each cut (stage counts), from one call into timm."""
        m, full = self.model, self.full_depth
        cuts = sorted(set(int(c) for c in cuts))
        if cuts[-1] > len(self) or cuts[0] < 1:
            raise ValueError(f"cuts must be between 1 and {len(self)}, got {cuts}")
        inner = [c for c in cuts if c < full]
        out = {}
        if full in cuts:
            if inner:
                final, inter = m.forward_intermediates(x, indices=[c - 1 for c in inner], **self.plan["extra"])
            else:
                final, inter = m.forward_features(x), []
            out[full] = m.forward_head(final, pre_logits=True)
        else:
            inter = m.forward_intermediates(x, indices=[c - 1 for c in inner], intermediates_only=True,
                                            stop_early=True, **self.plan["extra"])
        for c, t in zip(inner, inter):
            out[c] = t.mean((2, 3))
        return out

    def describe(self, example=None) -> list[dict]:
        shapes = [None] * len(self)
        if example is not None:
            with torch.inference_mode():
                n = min(len(self), self.plan["n_points"])
                kw = {} if len(self) == self.full_depth else {"intermediates_only": True, "stop_early": True}
                res = self.model.forward_intermediates(example, indices=list(range(n)), **kw, **self.plan["extra"])
                final, inter = (None, res) if kw else res
                shapes[:n] = [tuple(t.shape[1:]) for t in inter]
                if len(self) > n:  # the last stage's output is the pre-logits feature vector, not the raw map
                    shapes[-1] = tuple(self.model.forward_head(final, pre_logits=True).shape[1:])
        return [{"index": i + 1, "name": name, "output_shape": shapes[i],
                 "params": sum(p.numel() for p in self.stages[name].parameters())}
                for i, name in enumerate(self.stage_names)]

    # -- layer-wise learning rates ------------------------------------------------
    def layer_param_groups(self, weight_decay: float, layer_decay: float) -> list[dict] | None:
        """Layer-wise LR decay groups from timm: ``timm.optim``'s ``param_groups_layer_decay`` over the
        model's ``group_matcher(coarse=False)`` (embeddings lowest, then every block, the final norm
        highest), keeping the trainable parameters of this backbone's stages. Each group has
        ``lr_scale`` (``layer_decay ** (last layer - layer)``), ``layer`` and ``decay`` (False for
        norms, biases and the model's ``no_weight_decay()`` names such as the position embedding).
        None when the model has no ``group_matcher``."""
        from timm.models import group_parameters
        from timm.optim._param_groups import param_groups_layer_decay
        m = self.model
        if not hasattr(m, "group_matcher"):
            return None
        layer_map = group_parameters(m, m.group_matcher(coarse=False), reverse=True)
        last = max(layer_map.values())
        layer_of = {id(p): layer_map.get(n, last) for n, p in m.named_parameters()}
        nwd = m.no_weight_decay() if hasattr(m, "no_weight_decay") else set()
        mine = {id(p) for p in self.stages.parameters() if p.requires_grad}
        groups = []
        # weight_decay=1.0 marks which groups timm decays; the caller's value is set after.
        for g in param_groups_layer_decay(m, weight_decay=1.0, no_weight_decay_list=nwd, layer_decay=layer_decay):
            params = [p for p in g["params"] if id(p) in mine]
            if params:
                decay = g["weight_decay"] > 0
                groups.append({"params": params, "lr_scale": g["lr_scale"], "layer": layer_of[id(params[0])],
                               "decay": decay, "weight_decay": weight_decay if decay else 0.0})
        return sorted(groups, key=lambda g: (g["layer"], not g["decay"]))


def timm_backbone(model: nn.Module, spec: str, data_config: dict | None = None) -> TimmBackbone:
    """Wrap a timm model (built by ``timm.create_model``) as a rehead backbone."""
    missing = [f for f in ("forward_intermediates", "prune_intermediate_layers", "feature_info", "forward_head")
               if not hasattr(model, f)]
    if missing:
        raise ValueError(f"timm's {type(model).__name__} has no {', '.join(missing)}: rehead cuts image models "
                         "through timm's feature API, which nearly every timm family has (e.g. timm:resnet50, "
                         "timm:vit_base_patch16_224, timm:convnext_tiny)")
    model.eval()
    cfg = data_config or image_data_config(model.pretrained_cfg)
    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int) and chans != 3:
        raise _not_rgb(model, spec, chans)
    try:
        plan = trace_plan(model, int(cfg["input_size"]))
    except RuntimeError as e:  # a model that does not say its input channels, and takes other than 3
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None and conv.in_channels != 3:
            raise _not_rgb(model, spec, conv.in_channels) from e
        raise
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    note = None
    if isinstance(head, (tuple, list)):  # distilled models: (head, head_dist)
        head, note = _distilled_head(model, spec, head, int(cfg["input_size"]))
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        head = None
    bb = TimmBackbone(model, plan, cfg, spec, source_head=head)
    bb.source_head_note = note
    bb.source_labels = source_labels(model) if head is not None else None
    bb.eval()
    return bb


def _not_rgb(model: nn.Module, spec: str, chans: int) -> ValueError:
    return ValueError(f"{spec} takes {chans}-channel input; rehead's image pipeline feeds RGB (every image is "
                      f"converted to 3 channels): use a 3-channel version of the model (timm's {type(model).__name__} "
                      "built with in_chans=3, its default)")


class DistilledHeads(nn.Module):
    """The pretrained classifier of a distilled timm model whose two heads read the same feature vector
    (LeViT, EfficientFormer): timm's prediction is the mean of both heads' logits."""

    def __init__(self, head: nn.Module, head_dist: nn.Module):
        super().__init__()
        self.head, self.head_dist = head, head_dist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.head(x) + self.head_dist(x)) / 2


def _distilled_head(model: nn.Module, spec: str, heads, input_size: int):
    """(source head, note): the pair of heads of a distilled model as one head on the pooled features
    when that gives timm's own logits (checked on a random input), else None and why."""
    heads = [h for h in heads if isinstance(h, nn.Module)]
    if len(heads) != 2 or not any(True for h in heads for _ in h.parameters()):
        return None, None  # no classifier (num_classes=0): nothing to carry
    pair = DistilledHeads(*heads)
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        final = model.forward_features(x)
        want, got = model.forward_head(final), pair(model.forward_head(final, pre_logits=True))
    if isinstance(want, torch.Tensor) and want.shape == got.shape and \
            torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max()))):
        return pair, None
    tokens = hasattr(model, "dist_token")  # DeiT: the heads read the class and the distillation token
    return None, (f"{spec} has a pretrained classifier, but it is a distilled pair of heads (timm's "
                  f"{type(model).__name__}: " + ("a class-token head and a distillation-token head whose logits timm "
                  "averages) that read two different tokens, while rehead keeps one feature vector per image (the "
                  "mean of both tokens)" if tokens else "two heads whose logits timm averages, not both on rehead's "
                  "one feature vector per image)") +
                  ": a head on it would not give timm's own predictions, so rehead does not carry "
                  "this classifier. Fitting a new head on its features works as usual; for the pretrained model's own "
                  "predictions use timm directly, or a model whose single head rehead keeps (e.g. the non-distilled "
                  "timm:deit_tiny_patch16_224)")


def source_labels(model: nn.Module) -> list[str] | None:
    """Class names of the model's pretrained head where timm knows them (ImageNet-1k/21k subsets,
    shipped with timm: no download), e.g. 'ant, emmet, pismire'; None otherwise."""
    from timm.data import ImageNetInfo, infer_imagenet_subset
    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]
