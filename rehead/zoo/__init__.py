"""The model zoo: one registry of sources, each a small module.

``load("packaged:efficientnet_lite0")`` -> Backbone. A source is a prefix before the
colon; a bare path to a run directory (an adapted LM, a pretrained tabular encoder)
also loads as a backbone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .backbone import Backbone

_SOURCES: dict[str, dict] = {}


def register_source(prefix: str, describe: str, list_models: Callable[[], list[dict]] | None = None):
    """Register ``fn(name, pretrained: bool) -> Backbone`` under ``prefix``."""
    def deco(fn):
        _SOURCES[prefix] = {"load": fn, "describe": describe, "list": list_models}
        return fn
    return deco


class ModelNotFound(ValueError):
    pass


def load(spec: str, pretrained: bool = True) -> Backbone:
    """Load a backbone. ``pretrained=False`` builds the architecture only (to load saved weights into)."""
    _import_sources()
    spec = str(spec)
    if ":" not in spec or Path(spec).exists():
        path = Path(spec)
        if path.is_dir() and (path / "config.yaml").exists():
            from ..run import load_backbone_from_run
            return load_backbone_from_run(path, pretrained=pretrained)
        raise ModelNotFound(
            f"{spec!r} is not a model spec: use SOURCE:NAME with SOURCE one of {', '.join(sorted(_SOURCES))} "
            "(e.g. packaged:efficientnet_lite0), or a run directory; `rehead models` lists them")
    prefix, name = spec.split(":", 1)
    if prefix not in _SOURCES:
        raise ModelNotFound(f"unknown source {prefix!r} in {spec!r}; sources are: {', '.join(sorted(_SOURCES))}")
    bb = _SOURCES[prefix]["load"](name, pretrained=pretrained)
    bb.spec = spec
    return bb


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


__all__ = ["Backbone", "load", "list_models", "register_source", "ModelNotFound"]
