"""A run directory as a backbone source: an encoder saved by `pretrain`/`adapt`, or the (trained)
prefix of a fit run. The registry reads run directories here, without importing ``rehead.run``."""
from __future__ import annotations

from pathlib import Path

from ..rundir import BadRun, RunDir, load_tensors, read_yaml


def save_backbone(backbone, out, extra: dict | None = None) -> None:
    """Save only an encoder so `fit --model DIR` can reuse it; ``out``: a claimed RunDir or a path."""
    run = out if isinstance(out, RunDir) else RunDir(out)
    cfg = {"kind": "backbone", "model": backbone.spec, "depth": len(backbone), **(extra or {})}
    run.write_yaml("config.yaml", cfg)
    run.save_tensors("backbone.safetensors", backbone.state_dict())


def load_backbone_from_run(run_dir: Path, pretrained: bool = True):
    from . import load
    run_dir = Path(run_dir)
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
