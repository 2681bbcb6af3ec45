"""``timm:`` and ``torchvision:`` backbones: pretrained weights from their hubs when online.

Specs, as timm takes them: ``timm:NAME`` (timm's default weights), ``timm:NAME.TAG`` (one pretrained
tag, e.g. ``timm:resnet18.a1_in1k``), ``timm:hf-hub:ORG/NAME`` (a Hugging Face hub repo) and
``timm:local-dir:FOLDER`` (such a repo downloaded: ``config.json`` + weights). Every one is cut by
timm's own API (``rehead.zoo.timm_stages``).

``torchvision:NAME`` builds timm's copy of that architecture with torchvision's ImageNet weights
(timm hosts them under the tags ``tv_in1k`` / ``tv2_in1k``; the state-dict names are torchvision's
for the ResNet family), so it is cut the same way. The names timm has an equivalent for are in
``TORCHVISION``.
"""
from __future__ import annotations

import difflib
import functools

import torch

from . import ModelNotFound, register_source
from .timm_stages import TimmBackbone, timm_backbone

# torchvision name -> timm name.tag holding torchvision's DEFAULT ImageNet weights.
TORCHVISION = {
    "resnet18": "resnet18.tv_in1k", "resnet34": "resnet34.tv_in1k", "resnet50": "resnet50.tv2_in1k",
    "resnet101": "resnet101.tv2_in1k", "resnet152": "resnet152.tv2_in1k",
    "resnext50_32x4d": "resnext50_32x4d.tv2_in1k", "resnext101_32x8d": "resnext101_32x8d.tv2_in1k",
    "resnext101_64x4d": "resnext101_64x4d.tv_in1k",
    "wide_resnet50_2": "wide_resnet50_2.tv2_in1k", "wide_resnet101_2": "wide_resnet101_2.tv2_in1k",
    "densenet121": "densenet121.tv_in1k", "densenet161": "densenet161.tv_in1k",
    "densenet169": "densenet169.tv_in1k", "densenet201": "densenet201.tv_in1k",
    "inception_v3": "inception_v3.tv_in1k",
    "vgg11": "vgg11.tv_in1k", "vgg11_bn": "vgg11_bn.tv_in1k", "vgg13": "vgg13.tv_in1k", "vgg13_bn": "vgg13_bn.tv_in1k",
    "vgg16": "vgg16.tv_in1k", "vgg16_bn": "vgg16_bn.tv_in1k", "vgg19": "vgg19.tv_in1k", "vgg19_bn": "vgg19_bn.tv_in1k",
    "regnet_x_400mf": "regnetx_004_tv.tv2_in1k", "regnet_x_800mf": "regnetx_008.tv2_in1k",
    "regnet_x_1_6gf": "regnetx_016.tv2_in1k", "regnet_x_3_2gf": "regnetx_032.tv2_in1k",
    "regnet_x_8gf": "regnetx_080.tv2_in1k", "regnet_x_16gf": "regnetx_160.tv2_in1k", "regnet_x_32gf": "regnetx_320.tv2_in1k",
    "regnet_y_400mf": "regnety_004.tv2_in1k", "regnet_y_800mf": "regnety_008_tv.tv2_in1k",
    "regnet_y_1_6gf": "regnety_016.tv2_in1k", "regnet_y_3_2gf": "regnety_032.tv2_in1k",
    "regnet_y_8gf": "regnety_080_tv.tv2_in1k", "regnet_y_16gf": "regnety_160.tv2_in1k", "regnet_y_32gf": "regnety_320.tv2_in1k",
}


def _offline_error(spec: str, err: Exception, arch: str | None = None) -> ModelNotFound:
    arch = arch or spec
    return ModelNotFound(
        f"could not fetch pretrained weights for {spec} ({type(err).__name__}: {err}). "
        f"Offline? Download the weights on a machine with network, then load them with "
        f"file:PATH#{arch} (a .safetensors or state_dict .pth for that architecture); a timm hub repo "
        "downloaded whole (`huggingface-cli download timm/NAME --local-dir FOLDER`) loads as "
        "timm:local-dir:FOLDER; or use a packaged: model (`rehead models`).")


@functools.lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm
    return tuple(timm.list_models())


def _no_such_timm_model(arch: str) -> ModelNotFound:
    close = difflib.get_close_matches(arch, _timm_names(), n=3)
    return ModelNotFound(f"timm has no model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                         + " (`python -c \"import timm; print(timm.list_models('*NAME*'))\"` lists them)")


def build_timm(name: str, pretrained: bool, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` for a spec's name (``NAME``, ``NAME.TAG``, ``hf-hub:ORG/NAME``,
    ``local-dir:FOLDER``), with rehead's errors."""
    import timm  # imported when a model is built: timm pulls in torchvision and torch._dynamo (~2 s)
    from timm.models import split_model_name_tag
    if name.split(":", 1)[0] in ("hf-hub", "local-dir"):
        try:  # even the architecture comes from the hub repo's config.json
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as e:
            raise _offline_error(f"timm:{name}", e, "timm:<architecture> (the repo's config.json says which), "
                                 "or timm:local-dir:FOLDER with the repo downloaded") from e
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise _no_such_timm_model(arch)
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        raise ModelNotFound(f"timm has no pretrained weights {name!r}; tags for {arch}: "
                            + (", ".join(tags) if tags else "none (use timm:" + arch + ")"))
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # download failures come as many exception types
        raise _offline_error(f"timm:{name}", e) from e


def wrap_timm(model: torch.nn.Module, spec: str) -> TimmBackbone:
    return timm_backbone(model, spec)


def _timm_stamp(name: str) -> str | None:
    """``timm:local-dir:FOLDER``: the folder's files (a warm fit then skips building the model);
    hub downloads have no stamp."""
    from pathlib import Path
    from . import file_stamp, timm_stages
    if not name.startswith("local-dir:"):
        return None
    files = sorted(p for p in Path(name.split(":", 1)[1]).iterdir() if p.is_file())
    return file_stamp(*files, timm_stages.__file__) if files else None


@register_source("timm", "any timm model: timm:<name>[.<tag>], timm:hf-hub:<org>/<name>, timm:local-dir:<folder> "
                         "(weights download from the HF hub; offline use file: or local-dir:)", stamp=_timm_stamp)
def load_timm(name: str, pretrained: bool = True) -> TimmBackbone:
    return wrap_timm(build_timm(name, pretrained), f"timm:{name}")


def torchvision_to_timm(name: str) -> str:
    if name not in TORCHVISION:
        import timm
        same = f"timm has its own {name}: timm:{name} (timm's weights, not torchvision's). " if timm.is_model(name) else ""
        close = difflib.get_close_matches(name, list(TORCHVISION), n=3)
        raise ModelNotFound(
            f"torchvision:{name} has no timm equivalent in rehead"
            + (f" (did you mean {', '.join(close)}?)" if close else "") + ". " + same
            + f"torchvision names rehead maps onto timm: {', '.join(TORCHVISION)}. "
            "Any timm model loads as timm:<name> (e.g. timm:efficientnet_b0, timm:mobilenetv3_large_100).")
    return TORCHVISION[name]


def build_torchvision(name: str, pretrained: bool):
    """timm's copy of a torchvision architecture (with torchvision's weights when pretrained)."""
    return build_timm(torchvision_to_timm(name), pretrained)


@register_source("torchvision", "torchvision ImageNet models, as timm's copies holding torchvision's weights: "
                                "torchvision:<name> (e.g. resnet50, vgg16, regnet_y_400mf; offline use file:)")
def load_torchvision(name: str, pretrained: bool = True) -> TimmBackbone:
    try:
        model = build_torchvision(name, pretrained)
    except ModelNotFound as e:
        if name not in TORCHVISION:
            raise
        raise ModelNotFound(str(e).replace(f"timm:{TORCHVISION[name]}", f"torchvision:{name}")) from e
    return timm_backbone(model, f"torchvision:{name}")
