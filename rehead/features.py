"""FeatureCache: pooled features of every sample at a cut, on disk, shared across runs.

Key = hash(backbone spec + weights, cut, preprocessing, sample content). Features live in
shards of many samples, indexed in one SQLite database (``rehead.store``): a warm fit opens a
few dozen files, not one per sample, and every row is checked when read. The content hash of
a file is remembered by (path, inode, size, mtime, ctime), so on a full cache hit no image is
even opened.

Snapshots (``snapshots/<stamp hash>/``) record what a run learnt about a backbone whose
weights have a stat-based stamp (``zoo.weights_stamp``): its stages, preprocessing, weights
(safetensors) and, per cut, the prefix's weights id and feature width. A fit whose features
are all cached reads them instead of building the model: no timm, no torchvision import.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .store import CacheError, ShardStore, atomic_write_bytes, default_cache_dir

__all__ = ["FeatureCache", "extract", "CacheError", "atomic_write_bytes", "default_cache_dir"]


class FeatureCache(ShardStore):
    # -- keys ------------------------------------------------------------------
    def model_key(self, backbone, cut: int) -> str:
        # Features at cut k depend on the first k stages only: key them by that prefix's weights,
        # so a probe over every depth (full backbone) and `fit --cut k` (the prefix) share entries.
        wid = backbone.weights_id if cut == len(backbone) else backbone.cut(cut).weights_id
        return self.key(backbone.spec, wid, cut, backbone.preprocessing_id())

    @staticmethod
    def key(spec: str, weights_id: str, cut: int, preprocessing_id: str) -> str:
        return hashlib.sha256("|".join([spec, weights_id, str(cut), preprocessing_id]).encode()).hexdigest()[:24]

    def get_all(self, model_key: str, sample_keys: list[str]) -> np.ndarray | None:
        """Every sample's features stacked, or None as soon as one is missing or fails its check."""
        try:
            return super().get_all(model_key, sample_keys)
        finally:
            self.flush()  # the digests the sample keys needed

    # -- backbone snapshots ----------------------------------------------------------
    def _snap_dir(self, stamp: str) -> Path:
        return self.root / "snapshots" / hashlib.sha256(stamp.encode()).hexdigest()[:24]

    def snapshot(self, stamp: str) -> dict | None:
        """What an earlier run recorded about the backbone with this weights stamp, or None."""
        d = self._snap_dir(stamp)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if meta.get("stamp") == stamp and (d / "weights.safetensors").exists() else None

    def save_snapshot(self, stamp: str, backbone, prefix, in_dim: int) -> None:
        """Record ``backbone`` (full, pretrained) and its cut ``prefix`` (features of width
        ``in_dim``) under ``stamp``."""
        from safetensors.torch import save
        self._ensure_root()
        d = self._snap_dir(stamp)
        meta = self.snapshot(stamp) or {"stamp": stamp, "spec": backbone.spec, "modality": backbone.modality,
                                         "stage_names": backbone.stage_names, "data_config": backbone.data_config,
                                         "cuts": {}}
        cut = len(prefix)
        if str(cut) in meta["cuts"]:
            return
        with self._writing(d):
            if not (d / "weights.safetensors").exists():
                sd = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
                atomic_write_bytes(d / "weights.safetensors", save(sd))
            meta["cuts"][str(cut)] = {"weights_id": prefix.weights_id,
                                      "preprocessing_id": prefix.preprocessing_id(), "in_dim": int(in_dim)}
            atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=1).encode())

    def snapshot_prefix(self, stamp: str, cut: int) -> dict:
        """The first ``cut`` stages' weights (Backbone state-dict names) from a snapshot."""
        from safetensors.torch import load_file
        meta = self.snapshot(stamp)
        kept = {f"stages.{n}." for n in meta["stage_names"][:cut]}
        sd = load_file(str(self._snap_dir(stamp) / "weights.safetensors"))
        return {k: v for k, v in sd.items()
                if not k.startswith("stages.") or any(k.startswith(p) for p in kept)}


def extract(backbone, items: list, cuts: list[int], cache: FeatureCache | None = None,
            batch_size: int = 32, workers: int = 2, strict: bool = False, progress: bool = True,
            desc: str = "extract") -> tuple[dict[int, torch.Tensor], list[int], list[str]]:
    """Features of ``items`` after each cut: ``({cut: (N_kept, D)}, kept indices, skipped items)``.

    Only samples missing from the cache (or failing its checks) go through the backbone, once,
    for all cuts. Their features are written in shards as they come, so a killed extraction
    resumes from the last finished shard.
    """
    from .data import pipeline
    pipe = pipeline(backbone.modality)
    cuts = sorted(set(cuts))
    keys, mkeys, hits = None, {}, {}
    ok = np.zeros(len(items), dtype=bool)
    if cache:
        keys = sample_keys(pipe, items, cache, backbone)
        cache.flush()
        mkeys = {k: cache.model_key(backbone, k) for k in cuts}
        hits = {k: cache.read(mkeys[k], keys) for k in cuts}
        ok = np.logical_and.reduce([h[1] for h in hits.values()])
    todo = np.flatnonzero(~ok).tolist()
    computed: dict[int, dict[int, np.ndarray]] = {k: {} for k in cuts}
    skipped: list[str] = []
    if todo:
        writers = {k: cache.writer(mkeys[k]) for k in cuts} if cache else {}
        try:
            seen = _forward(backbone, pipe, items, todo, cuts, keys, computed, writers,
                            dict(batch_size=batch_size, workers=workers, strict=strict), progress, desc)
            for w in writers.values():
                w.flush()
        except BaseException:
            _flush_quietly(writers)  # keep what was computed: the next run resumes from it
            raise
        skipped = [str(items[todo[j]]) for j in range(len(todo)) if j not in seen]
    kept = sorted(set(np.flatnonzero(ok).tolist()) | set(computed[cuts[0]]))
    out = {k: _assemble(hits.get(k, (None, None))[0], computed[k], kept) for k in cuts}
    return out, kept, skipped


def sample_keys(pipe, items: list, cache, backbone) -> list[str]:
    """Every item's cache key; a pipeline with a batch lookup (image files) makes them in one pass."""
    if hasattr(pipe, "sample_keys"):
        return pipe.sample_keys(items, cache, backbone)
    return [pipe.sample_key(item, cache, backbone) for item in items]


def _forward(backbone, pipe, items, todo, cuts, keys, computed, writers, loader_kw, progress, desc) -> set:
    """Run the ``todo`` items through the backbone; fills ``computed`` and the shard writers."""
    backbone.eval()
    loader = pipe.make_loader(backbone, [items[i] for i in todo], None, **loader_kw)
    bar = tqdm(total=len(todo), desc=desc, unit=pipe.unit, disable=not progress)
    seen = set()
    with torch.inference_mode():
        for idx, inputs, _ in loader:
            if len(idx):
                out = backbone.forward_cuts(inputs, cuts)
                for j, local in enumerate(idx.tolist()):
                    i = todo[local]
                    seen.add(local)
                    for k in cuts:
                        v = out[k][j].float().cpu().numpy()
                        computed[k][i] = v
                        if writers:
                            writers[k].add(keys[i], v)
            bar.update(pipe.batch_len(inputs, idx))
    bar.close()
    return seen


def _flush_quietly(writers: dict) -> None:
    for w in writers.values():
        try:
            w.flush()
        except Exception:
            pass  # the original error is the one to report


def _assemble(rows: np.ndarray | None, computed: dict[int, np.ndarray], kept: list[int]) -> torch.Tensor:
    """The cached rows with the computed ones filled in, for the kept samples."""
    if not kept:
        return torch.empty(0)
    if rows is None:
        return torch.from_numpy(np.stack([computed[i] for i in kept]))
    for i, v in computed.items():
        rows[i] = v
    return torch.from_numpy(rows if len(kept) == len(rows) else rows[kept])
