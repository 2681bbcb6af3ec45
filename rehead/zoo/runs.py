"""A run directory as a backbone source: an encoder saved by `pretrain`/`adapt`, or the (trained)
prefix of a fit run. The registry reads run directories here, without importing ``rehead.run``."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from ..rundir import BadRun, RunDir, load_tensors, read_yaml

_loading = threading.local()  # .dirs: the run directories this thread is loading, outermost first


def save_backbone(backbone, out, extra: dict | None = None) -> None:
    """Save only an encoder so `fit --model DIR` can reuse it; ``out``: a claimed RunDir or a path."""
    run = out if isinstance(out, RunDir) else RunDir(out)
    cfg = {"kind": "backbone", "model": backbone.spec, "depth": len(backbone), **(extra or {})}
    run.write_yaml("config.yaml", cfg)
    run.save_tensors("backbone.safetensors", backbone.state_dict())


def source_paths(spec) -> list[Path]:
    """The local paths a model spec is built from, resolved: the folder or file it names, then, while
    that is a run directory, the one its config.yaml names as its model, and so on (a cycle stops)."""
    paths: list[Path] = []
    p = _named_path(spec)
    while p is not None and p not in paths:
        paths.append(p)
        try:
            p = _named_path(read_yaml(p / "config.yaml").get("model")) if (p / "config.yaml").is_file() else None
        except BadRun:
            p = None
    return paths


def _named_path(spec) -> Path | None:
    from .paths import spec_path
    p = spec_path(spec)
    return Path(p).resolve() if p else None


def load_backbone_from_run(run_dir: Path, pretrained: bool = True):
    """Through a guard: a run whose model leads back to itself (a fit written over its own model
    directory) is one clear error, not a RecursionError."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    stack = _loading.__dict__.setdefault("dirs", [])
    if key in stack:
        chain = " -> ".join(str(p) for p in stack[stack.index(key):] + [key])
        raise BadRun(f"{run_dir}'s model leads back to itself ({chain}): its config.yaml names itself, or a run "
                     "made from it, as its model (a fit with --out over its own model replaced those weights); fit "
                     "it again from the model it was first made from")
    stack.append(key)
    try:
        return _load_from_run(run_dir, pretrained)
    finally:
        stack.pop()


def _load_from_run(run_dir: Path, pretrained: bool):
    from . import load
    cfg = read_yaml(run_dir / "config.yaml")
    kind = cfg.get("kind", "fit")
    if kind not in ("backbone", "fit", "soup"):
        raise BadRun(f"{run_dir} is a {kind!r} directory: only an encoder (pretrain/adapt) or a fit run "
                     "can be a backbone")
    if pretrained and kind == "fit" and (cfg.get("fit") or {}).get("method") == "lora":
        from ..lora import load_run, merge  # adapters merged into the base weights: a plain backbone
        bb = merge(load_run(run_dir, cfg)).backbone
        bb.spec = str(run_dir.resolve())
        return bb
    bb = load(cfg["model"], pretrained=False)
    depth = cfg["depth"] if kind == "backbone" else cfg["cut"]
    if len(bb) != depth:
        bb = bb.cut(depth)
    if cfg.get("data_config"):
        bb.data_config = dict(cfg["data_config"])
    if pretrained:
        if kind == "backbone":
            sd = load_tensors(run_dir / "backbone.safetensors")
        else:  # a fit run's prefix: its model's backbone.* tensors
            sd = {k[len("backbone."):]: v for k, v in load_tensors(run_dir / "model.safetensors").items()
                  if k.startswith("backbone.")}
        from .file import load_into
        try:
            load_into(bb, sd, str(run_dir))
        except ValueError as e:
            raise BadRun(f"{run_dir}'s weights do not fit the architecture its config.yaml names: {e}") from e
        _source_head_of(bb, run_dir)
    bb.spec = str(run_dir.resolve())
    return bb


def _source_head_of(bb, run_dir: Path) -> None:
    """The pretrained task head a fit kept aside (source_head.safetensors), else none: the architecture
    was built without weights, so its head is random, and a run made from this one would keep that head
    as its "pretrained" one (forgetting measured through random logits)."""
    path = run_dir / "source_head.safetensors"
    if bb.source_head[0] is None:
        return
    if not path.exists():
        bb.source_head = [None]
        return
    from .file import load_into
    load_into(bb.source_head[0], load_tensors(path), str(path))
