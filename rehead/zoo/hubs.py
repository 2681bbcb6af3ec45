"""``timm:`` and ``torchvision:`` backbones: pretrained weights from their hubs when online."""
from __future__ import annotations

import difflib

import torch

from . import ModelNotFound, register_source
from .backbone import Backbone, image_data_config, split_stages


def _offline_error(spec: str, err: Exception) -> ModelNotFound:
    return ModelNotFound(
        f"could not fetch pretrained weights for {spec} ({type(err).__name__}: {err}). "
        f"Offline? Download the weights on a machine with network, then load them with "
        f"file:PATH#{spec} (a .safetensors or state_dict .pth for that architecture), "
        "or use a packaged: model (`rehead models`).")


def build_timm(name: str, pretrained: bool) -> torch.nn.Module:
    import timm  # imported when a model is built: timm pulls in torchvision and torch._dynamo (~2 s)
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ModelNotFound(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        return timm.create_model(name, pretrained=pretrained)
    except Exception as e:  # download failures come as many exception types
        raise _offline_error(f"timm:{name}", e) from e


def wrap_timm(model: torch.nn.Module, spec: str) -> Backbone:
    model.eval()
    stages, classifier = split_stages(model)
    return Backbone(stages, image_data_config(model.pretrained_cfg), spec, source_head=classifier)


@register_source("timm", "any timm model: timm:<name> (weights download from the HF hub; offline use file:)")
def load_timm(name: str, pretrained: bool = True) -> Backbone:
    return wrap_timm(build_timm(name, pretrained), f"timm:{name}")


def build_torchvision(name: str, pretrained: bool):
    import torchvision
    if name not in torchvision.models.list_models():
        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
        raise ModelNotFound(f"torchvision has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights if pretrained else None)
    except Exception as e:
        raise _offline_error(f"torchvision:{name}", e) from e
    t = weights.transforms()
    crop = t.crop_size[0]
    cfg = {"input_size": (3, crop, crop), "crop_pct": crop / t.resize_size[0],
           "interpolation": t.interpolation.value, "mean": t.mean, "std": t.std}
    return model, cfg


def wrap_torchvision(model, cfg, spec: str) -> Backbone:
    model.eval()
    stages, classifier = split_stages(model)
    return Backbone(stages, image_data_config(cfg), spec, source_head=classifier)


@register_source("torchvision", "torchvision.models: torchvision:<name> (weights download; offline use file:)")
def load_torchvision(name: str, pretrained: bool = True) -> Backbone:
    model, cfg = build_torchvision(name, pretrained)
    return wrap_torchvision(model, cfg, f"torchvision:{name}")
