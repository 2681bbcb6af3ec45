"""An ``nn.Module`` of the user's as a backbone (``rehead.fit(data, model=my_module)``).

A timm model goes through timm's own stages; any other module is one stage whose output is
pooled (mean over spatial or token axes), with the preprocessing its ``pretrained_cfg`` names or
ImageNet's defaults. The run stores the module's weights but not its architecture, so such a run
is for the Python session that made it (``Run(dir)`` says so); a spec (``timm:NAME``,
``file:WEIGHTS#timm:NAME``) makes a run that reloads anywhere.
"""
from __future__ import annotations

from torch import nn

from .backbone import Backbone, image_data_config


def backbone_from_module(module: nn.Module, spec: str) -> Backbone:
    if hasattr(module, "forward_intermediates") and hasattr(module, "pretrained_cfg"):
        from .timm_stages import timm_backbone
        return timm_backbone(module, spec)
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    return Backbone({"module": module}, image_data_config(cfg), spec)
