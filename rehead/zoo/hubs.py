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

import contextlib
import difflib
import functools
from pathlib import Path

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
        f"could not fetch pretrained weights for {spec} ({_why(err)}). "
        f"Offline? Download the weights on a machine with network, then load them with "
        f"file:PATH#{arch} (a .safetensors or state_dict .pth for that architecture); a timm hub repo "
        "downloaded whole (`huggingface-cli download timm/NAME --local-dir FOLDER`) loads as "
        "timm:local-dir:FOLDER; or use a packaged: model (`rehead models`).")


def _why(err: Exception) -> str:
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or _unreachable():
        return f"they are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub is unreachable"
    return _one_line(err)


def _one_line(err: Exception) -> str:
    """An exception's first line (hub and state-dict errors span many)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _unreachable() -> bool:
    from .hf import hub_reachable
    return not hub_reachable()


def _hub_guard(name: str, pretrained: bool):
    """Offline, huggingface_hub retries each request for ~40 s: when the Hub does not answer, timm
    reads its weights from the local Hugging Face cache alone and fails at once if they are not there
    (``hf.hub_or_cache``, keyed by the hub repo timm fetches from)."""
    from .hf import hub_or_cache
    if name.startswith("hf-hub:"):
        return hub_or_cache(name.split(":", 1)[1].split("@")[0])
    if not pretrained:
        return contextlib.nullcontext()
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return hub_or_cache(repo) if repo else contextlib.nullcontext()  # url weights fail fast offline


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
    if name.startswith("local-dir:"):
        return build_local_dir(Path(name.split(":", 1)[1]).expanduser(), pretrained, **kwargs)
    if name.startswith("hf-hub:"):
        try:  # even the architecture comes from the hub repo's config.json
            with _hub_guard(name, pretrained):
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
        with _hub_guard(name, pretrained):
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # download failures come as many exception types
        raise _offline_error(f"timm:{name}", e) from e


# -- timm:local-dir:FOLDER ----------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
WEIGHT_EXTS = (".safetensors", ".pth", ".pth.tar", ".bin")  # timm's order when no file has a usual name


def _local_dir_config(folder: Path, spec: str) -> dict:
    """The folder's config.json, checked to be a timm hub repo's (with an architecture timm has)."""
    import json
    import timm
    if not folder.is_dir():
        raise ModelNotFound(f"{spec}: no folder {folder}. It takes a timm hub repo downloaded whole "
                            "(`hf download timm/NAME --local-dir FOLDER`: config.json + model.safetensors); "
                            "a weights file alone loads as file:PATH#timm:ARCH")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ModelNotFound(f"{folder} has no config.json: {spec} takes a timm hub repo downloaded whole "
                            "(config.json + model.safetensors); a weights file alone loads as file:PATH#timm:ARCH")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"{cfg_file} is not readable JSON ({e}): download the repo again") from e
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        hf = isinstance(cfg, dict) and ("model_type" in cfg or "architectures" in cfg)
        raise ModelNotFound(f"{folder} is not a timm folder (its config.json has no 'architecture')"
                            + (f": it is a Hugging Face transformers model, use hf:{folder}" if hf else
                               ": give a timm hub repo downloaded whole, or your weights as file:PATH#timm:ARCH"))
    if not timm.is_model(cfg["architecture"]):
        raise ModelNotFound(f"{cfg_file} names architecture {cfg['architecture']!r}, which this timm "
                            f"({timm.__version__}) does not have: upgrade timm (pip install -U timm)")
    return cfg


def _local_dir_weights(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    for ext in WEIGHT_EXTS:
        found = sorted(folder.glob(f"*{ext}"))
        if found:
            return found[0]
    return None


def build_local_dir(folder: Path, pretrained: bool, **kwargs) -> torch.nn.Module:
    """A timm hub repo downloaded whole: the model its config.json describes, with the folder's weights,
    its classifier sized as the checkpoint's (a fine-tuned repo keeps its own head)."""
    import timm
    from .file import load_into, through_filter, with_checkpoint_classes
    spec = f"timm:local-dir:{folder}"
    arch = _local_dir_config(folder, spec)["architecture"]
    weights = _local_dir_weights(folder)
    if weights is None and pretrained:
        raise ModelNotFound(f"{folder} has no weights ({', '.join(WEIGHT_FILES[:2])} or another "
                            f"{'/'.join(WEIGHT_EXTS)} file): download the repo whole, with its weights")

    def build(**kw):
        try:
            return timm.create_model(f"local-dir:{folder}", pretrained=False, **{**kwargs, **kw})
        except Exception as e:  # model arguments this timm does not take
            raise ModelNotFound(f"{folder}/config.json does not build timm's {arch} ({_one_line(e)}): "
                                "download the repo again, or upgrade timm") from e
    model = build()
    if weights is None:
        return model
    sd = _read_timm_weights(weights)
    sd = through_filter(model, sd)
    model = with_checkpoint_classes(model, sd, build)
    if pretrained:
        load_into(model, sd, f"{weights} (for {arch}, as config.json says)")
    return model


def _read_timm_weights(path: Path) -> dict:
    from timm.models import load_state_dict
    try:  # timm's reader: EMA / 'state_dict' / 'model' keys, 'module.' prefixes
        return load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise ModelNotFound(f"{path} is not a readable checkpoint ({_one_line(e)}): download it again") from e


def wrap_timm(model: torch.nn.Module, spec: str) -> TimmBackbone:
    return timm_backbone(model, spec)


def _timm_stamp(name: str) -> str | None:
    """``timm:local-dir:FOLDER``: the folder's files (a warm fit then skips building the model);
    hub downloads have no stamp."""
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


def build_torchvision(name: str, pretrained: bool, **kwargs):
    """timm's copy of a torchvision architecture (with torchvision's weights when pretrained)."""
    return build_timm(torchvision_to_timm(name), pretrained, **kwargs)


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
