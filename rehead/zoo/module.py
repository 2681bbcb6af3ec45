"""An ``nn.Module`` of the user's as a backbone (``rehead.fit(data, model=my_module)``).

A timm model goes through timm's own stages; any other module is one stage whose output is
pooled (mean over spatial or token axes), with the preprocessing its ``pretrained_cfg`` names or
ImageNet's defaults. Its final classifier, where it has one where torchvision models keep it (``fc``,
``classifier``, ``head``, ``heads``: a Linear, or a Sequential ending in one), is cut off as fastai's
``create_body`` does and kept aside as the source head: the new head then reads the penultimate
features, not the 1000 ImageNet logits. The user's module is copied, never changed. The run stores the
module's weights but not its architecture, so such a run is for the Python session that made it
(``Run(dir)`` says so); a spec (``timm:NAME``, ``file:WEIGHTS#timm:NAME``) makes a run that reloads anywhere.
"""
from __future__ import annotations

import copy

from torch import nn

from .backbone import Backbone, image_data_config

CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads")


def backbone_from_module(module: nn.Module, spec: str) -> Backbone:
    if hasattr(module, "forward_intermediates") and hasattr(module, "pretrained_cfg"):
        from .timm_stages import timm_backbone
        return timm_backbone(module, spec)
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    body, head = without_classifier(module)
    return Backbone({"module": body}, image_data_config(cfg), spec, source_head=head)


def without_classifier(module: nn.Module) -> tuple[nn.Module, nn.Linear | None]:
    """(a copy of ``module`` whose final Linear classifier is an Identity, that Linear), or (module, None)
    where no classifier sits under one of ``CLASSIFIER_NAMES`` as the module's last child."""
    children = list(module.named_children())
    if not children or children[-1][0] not in CLASSIFIER_NAMES:
        return module, None
    name, last = children[-1]
    if isinstance(last, nn.Linear):
        path = [name]
    elif isinstance(last, nn.Sequential) and len(last) and isinstance(last[-1], nn.Linear):
        path = [name, list(last.named_children())[-1][0]]  # torchvision's ViT names it: heads.head
    else:
        return module, None
    body = copy.deepcopy(module)
    parent = body.get_submodule(".".join(path[:-1])) if len(path) > 1 else body
    head = parent.get_submodule(path[-1])
    setattr(parent, path[-1], nn.Identity())
    return body, head
