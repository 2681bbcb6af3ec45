"""``file:PATH#ARCH``: your own weights (safetensors or a state_dict) for a known architecture.

ARCH is ``timm:<name>`` or ``torchvision:<name>``. Nothing is unpickled: ``.pth`` files
load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import ModelNotFound, file_stamp, register_source
from .backbone import Backbone


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ModelNotFound(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # truncated or not safetensors at all
            raise ModelNotFound(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]}): "
                                "download it again, or export it with safetensors.torch.save_file") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelNotFound(f"{path} is not a safetensors file or a plain state_dict "
                            f"loadable with weights_only=True: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelNotFound(f"{path} holds a {type(sd).__name__}, not a state_dict")
    return sd


def load_into(model: torch.nn.Module, sd: dict, what: str) -> None:
    """Strict load that names the keys that do not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def show(xs):
            return ", ".join(xs[:4]) + (f" ... ({len(xs)} in all)" if len(xs) > 4 else "")
        parts = [f"missing: {show(missing)}" if missing else "",
                 f"unexpected: {show(unexpected)}" if unexpected else "",
                 f"shape mismatch: {show(wrong)}" if wrong else ""]
        other = len(missing) + len(wrong) > len(own) // 2  # most of the model unmatched: not its weights
        raise ModelNotFound(f"{what} does not fit the architecture"
                            + (f" ({len(own) - len(missing) - len(wrong)} of its {len(own)} tensors match: "
                               "weights of another architecture?)" if other else "")
                            + ": " + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=True)


def _stamp(name: str) -> str | None:
    from . import timm_stages  # how stages are formed is part of what a snapshot records
    return file_stamp(name.rsplit("#", 1)[0], timm_stages.__file__) if "#" in name else None


@register_source("file", "your weights: file:PATH#timm:<arch> or file:PATH#torchvision:<arch>", stamp=_stamp)
def load_file(name: str, pretrained: bool = True) -> Backbone:
    if "#" not in name:
        raise ModelNotFound(f"file:{name} needs its architecture: file:{name}#timm:<arch> "
                            "(or #torchvision:<arch>)")
    path, arch = name.rsplit("#", 1)
    from .hubs import build_timm, build_torchvision, timm_backbone
    src, arch_name = arch.split(":", 1) if ":" in arch else ("", arch)
    if src not in ("timm", "torchvision"):
        raise ModelNotFound(f"architecture {arch!r} in file:{name}: use timm:<name> or torchvision:<name>")
    build = build_timm if src == "timm" else build_torchvision
    model = build(arch_name, pretrained=False)
    # Without weights too: the checkpoint's classifier size is the architecture a run reloads into.
    sd = read_state_dict(Path(path)) if pretrained else _try_read(Path(path))
    if sd is not None:
        if src == "torchvision":
            sd = _from_torchvision(model, sd)
        model = with_checkpoint_classes(model, sd, lambda **kw: build(arch_name, pretrained=False, **kw))
    if pretrained:
        load_into(model, sd, f"file:{path}")
    return timm_backbone(model, f"file:{name}")


def _try_read(path: Path) -> dict | None:
    try:
        return read_state_dict(path)
    except ModelNotFound:  # the architecture alone was asked for: its weights come from elsewhere
        return None


def classifier_keys(model: torch.nn.Module) -> set[str]:
    """The state-dict keys of a timm model's classifier (``pretrained_cfg['classifier']`` names it)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = tuple(n + "." for n in ((names,) if isinstance(names, str) else names))
    return {k for k in model.state_dict() if prefixes and k.startswith(prefixes)}


def checkpoint_classes(model: torch.nn.Module, sd: dict) -> int | None:
    """The number of classes of a checkpoint that differs from ``model`` in its classifier alone (a
    fine-tuned model: 0 for one saved without its classifier); None where it fits, or differs elsewhere
    too (``load_into`` then names the keys)."""
    own, heads = model.state_dict(), classifier_keys(model)
    differ = {k for k in own if k not in sd or tuple(sd[k].shape) != tuple(own[k].shape)}
    differ |= {k for k in sd if k not in own}
    if not differ or not heads or not differ <= heads:
        return None
    weights = [sd[k] for k in sorted(heads) if k.endswith("weight") and k in sd]
    return int(weights[0].shape[0]) if weights else 0


def with_checkpoint_classes(model: torch.nn.Module, sd: dict, build) -> torch.nn.Module:
    """``model``, or ``build(num_classes=N)`` with the checkpoint's own N classes: rehead keeps the
    checkpoint's head as its source head (never trained), so its size must be the checkpoint's."""
    n = checkpoint_classes(model, sd)
    return model if n is None else build(num_classes=n)


def _from_torchvision(model, sd: dict) -> dict:
    """A torchvision state dict in timm's names (the ResNet family needs no renaming: timm kept
    torchvision's names)."""
    own = model.state_dict()
    if not any(k.startswith("AuxLogits.") for k in own):  # Inception-v3's training-only auxiliary head
        sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
    return through_filter(model, sd)


def through_filter(model, sd: dict) -> dict:
    """``sd`` in the model's own names by its module's checkpoint filter, where its names are not the
    model's already; ``sd`` as it is when the filter does not give exactly the model's names (then
    ``load_into`` names the checkpoint's own keys, not a filter's half-renamed ones)."""
    import sys
    own = model.state_dict()
    if set(sd) == set(own):
        return sd
    mod = sys.modules[type(model).__module__]
    fn = getattr(mod, "checkpoint_filter_fn", None) or getattr(mod, "_filter_fn", None)
    if fn is None:
        return sd
    try:
        try:
            out = fn(dict(sd), model)
        except TypeError:
            out = fn(dict(sd))
    except Exception:  # weights of another architecture: the filter's own error would say less than load_into's
        return sd
    return out if isinstance(out, dict) and set(out) == set(own) else sd
