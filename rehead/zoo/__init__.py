"""The model zoo: one registry of sources, each a small module.

``load("packaged:efficientnet_lite0")`` -> Backbone. A source is a prefix before the
colon; a bare path to a run directory (an adapted LM, a pretrained tabular encoder)
also loads as a backbone.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from .backbone import Backbone

_SOURCES: dict[str, dict] = {}


def register_source(prefix: str, describe: str, list_models: Callable[[], list[dict]] | None = None,
                    stamp: Callable[[str], str | None] | None = None):
    """Register ``fn(name, pretrained: bool) -> Backbone`` under ``prefix``.

    ``stamp(name)``: a cheap identity of the weights ``name`` loads (``file_stamp`` of their
    files), computed without building the model; ``None`` where there is none (hub downloads).
    """
    def deco(fn):
        _SOURCES[prefix] = {"load": fn, "describe": describe, "list": list_models, "stamp": stamp}
        return fn
    return deco


def file_stamp(*paths) -> str:
    """Identity of files by path, inode, size, mtime and ctime. The ctime cannot be set back by
    hand, so new bytes in the same file (even with its old size and mtime) are a new stamp."""
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{os.path.abspath(p)}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}")
    return ";".join(parts)


def weights_stamp(spec: str) -> str | None:
    """A stat-based identity of the pretrained weights ``spec`` loads, or None when there is none.

    It lets a warm ``fit`` reuse what an earlier run recorded about the backbone (see
    ``FeatureCache.snapshot``) without building it. It includes rehead's version and the source
    module's file, so a change to how rehead maps the weights is a different stamp.
    """
    _import_sources()
    spec = str(spec)
    try:
        path = Path(spec)
        if path.is_dir() and (path / "config.yaml").exists():  # a run directory
            weights = [w for w in ("backbone.safetensors", "model.safetensors") if (path / w).exists()]
            return f"run|{file_stamp(path / 'config.yaml', *(path / w for w in weights))}" if weights else None
        prefix, name = spec.split(":", 1)
        src = _SOURCES.get(prefix)
        if not src or not src["stamp"]:
            return None
        own = src["stamp"](name)
        if own is None:
            return None
        from ..version import __version__
        return f"{spec}|{__version__}|{file_stamp(sys.modules[src['load'].__module__].__file__)}|{own}"
    except (OSError, ValueError, ModelNotFound):
        return None  # no stamp: the backbone is built as usual and reports its own errors


class ModelNotFound(ValueError):
    pass


def load(spec: str, pretrained: bool = True) -> Backbone:
    """Load a backbone. ``pretrained=False`` builds the architecture only (to load saved weights into)."""
    _import_sources()
    spec = str(spec)
    if ":" not in spec or Path(spec).exists():
        path = Path(spec)
        if path.is_dir() and (path / "config.yaml").exists():
            from .runs import load_backbone_from_run
            return load_backbone_from_run(path, pretrained=pretrained)
        if os.sep in spec and not path.exists():  # a path: a run directory moved or deleted, or a typo
            hub = f"; a Hugging Face Hub model is hf:{spec}" if spec.count("/") == 1 and not path.is_absolute() else ""
            raise ModelNotFound(f"{spec} does not exist: a run directory (or model folder) that was moved or "
                                f"deleted? give its new path; a run made from it needs it to rebuild its model{hub}")
        hint = _path_hint(path) or _did_you_mean(spec)
        raise ModelNotFound(
            f"{spec!r} is not a model spec" + (f"{hint} " if hint else ". ") + "Use SOURCE:NAME with SOURCE one of "
            f"{', '.join(sorted(_SOURCES))} (e.g. packaged:efficientnet_lite0), or a run directory; "
            "`rehead models` lists them")
    prefix, name = spec.split(":", 1)
    if prefix not in _SOURCES:
        hint = f"; did you mean timm:{spec}?" if prefix in ("hf-hub", "local-dir") else ""
        raise ModelNotFound(f"unknown source {prefix!r} in {spec!r}{hint}; sources are: {', '.join(sorted(_SOURCES))}")
    try:
        bb = _SOURCES[prefix]["load"](name, pretrained=pretrained)
    except ModelNotFound as e:
        hint = _cut_hint(spec)
        if hint is None:
            raise
        raise ModelNotFound(hint) from e
    bb.spec = spec
    return bb


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


def _path_hint(path: Path) -> str:
    """': did you mean hf:DIR?' for a model folder or weights file given without its source ('' if not one)."""
    cfg = path / "config.json"
    if cfg.is_file():
        import json
        try:
            timm = "architecture" in json.loads(cfg.read_text())
        except (OSError, ValueError, TypeError):
            return ""
        return (f": did you mean timm:local-dir:{path} (a timm folder)?" if timm else
                f": did you mean hf:{path} (a Hugging Face transformers folder)?")
    if path.suffix in WEIGHT_SUFFIXES:
        return f": did you mean file:{path}#timm:ARCH (or #torchvision:ARCH), ARCH the weights' architecture?"
    return ""


def _cut_hint(spec: str) -> str | None:
    """`rehead rank` names a cut as SPEC@CUT (its split_candidate); elsewhere that is no model. None where
    ``spec`` has no @CUT, or its @ is a hub revision (timm:hf-hub:ORG/NAME@REV)."""
    base, sep, cut = spec.rpartition("@")
    if not (sep and base and cut) or "/" in cut or ":" in cut or spec.startswith("timm:hf-hub:"):
        return None
    return (f"{spec!r}: @{cut} names a cut only in `rehead rank --models`; here give the model alone "
            f"(--model {base}) and the cut as --cut {cut} (`rehead inspect {base}` lists the stages)")


def is_spec(spec: str) -> bool:
    """Whether ``spec`` names a source rehead has (or an existing path): a typo, not a model missing offline."""
    _import_sources()
    return Path(spec).exists() or (":" in spec and spec.split(":", 1)[0] in _SOURCES)


def _did_you_mean(name: str) -> str:
    """': did you mean timm:NAME?' for a bare model name some source knows ('' if none does)."""
    from .packaged import _PACKAGED
    if name in _PACKAGED:
        return f": did you mean packaged:{name}?"
    try:
        import timm
        from timm.models import split_model_name_tag
        if timm.is_model(split_model_name_tag(name)[0]):
            return f": did you mean timm:{name}?"
    except ImportError:
        pass
    from .hubs import TORCHVISION
    if name in TORCHVISION:
        return f": did you mean torchvision:{name}?"
    return ""


def list_models() -> list[dict]:
    """Rows of {spec, modality, source, note}: what this install can load, and from where."""
    _import_sources()
    rows = []
    for prefix, src in sorted(_SOURCES.items()):
        if src["list"]:
            rows.extend(src["list"]())
        else:
            rows.append({"spec": f"{prefix}:<name>", "modality": "", "offline": False, "note": src["describe"]})
    return rows


def _import_sources():
    from . import packaged, hubs, file, tabular  # noqa: F401  (registration side effects)
    try:
        from . import hf  # noqa: F401
    except ImportError:
        pass


__all__ = ["Backbone", "load", "list_models", "register_source", "weights_stamp", "ModelNotFound", "is_spec"]
