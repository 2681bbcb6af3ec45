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

from .interrupts import check as check_interrupt
from .precision import autocast, device_of, extraction_device, feature_precision
from .store import CacheError, ShardStore, atomic_write_bytes, default_cache_dir

__all__ = ["FeatureCache", "extract", "CacheError", "atomic_write_bytes", "default_cache_dir"]


class FeatureCache(ShardStore):
    # -- keys ------------------------------------------------------------------
    def model_key(self, backbone, cut: int, precision: str = "fp32") -> str:
        # Features at cut k depend on the first k stages only: key them by that prefix's weights,
        # so a probe over every depth (full backbone) and `fit --cut k` (the prefix) share entries.
        wid = backbone.weights_id if cut == len(backbone) else backbone.cut(cut).weights_id
        mkey = self.key(backbone.spec, wid, cut, backbone.preprocessing_id(), precision)
        self.name(mkey, backbone.spec, cut, backbone.stage_names[cut - 1], precision)
        return mkey

    def name(self, mkey: str, spec: str, cut: int, stage: str, precision: str = "fp32") -> None:
        """What ``mkey`` is, for `rehead cache info` (stored with its next shard or read)."""
        self.names[mkey] = f"{spec} cut {cut} ({stage})" + (f" {precision}" if precision != "fp32" else "")

    @staticmethod
    def key(spec: str, weights_id: str, cut: int, preprocessing_id: str, precision: str = "fp32") -> str:
        parts = [spec, weights_id, str(cut), preprocessing_id] + ([precision] if precision != "fp32" else [])
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

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
        if str(cut) in meta["cuts"] or self.read_only():  # a shared read-only cache: the next fit builds it
            return
        with self._writing(d):
            if not (d / "weights.safetensors").exists():
                sd = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
                atomic_write_bytes(d / "weights.safetensors", save(sd))
            source = backbone.source_head[0]
            if source is not None and not (d / "source_head.safetensors").exists():  # a warm run keeps it too
                sd = {k: v.detach().cpu().contiguous() for k, v in source.state_dict().items()}
                atomic_write_bytes(d / "source_head.safetensors", save(sd))
            meta["cuts"][str(cut)] = {"weights_id": prefix.weights_id,
                                      "preprocessing_id": prefix.preprocessing_id(), "in_dim": int(in_dim)}
            atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=1).encode())

    def snapshot_source_head(self, stamp: str) -> dict | None:
        """The pretrained task head recorded with a snapshot (None: the backbone has none, or an older
        snapshot did not keep it)."""
        from safetensors.torch import load_file
        p = self._snap_dir(stamp) / "source_head.safetensors"
        return load_file(str(p)) if p.exists() else None

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
    for all cuts, in ``rehead.precision.feature_precision`` (bf16 where the hardware has it). Their
    features are written in shards as they come, so a killed extraction resumes from the last
    finished shard. Under ``accelerate launch`` every process calls this with
    the same items: each computes its share of the missing samples, and all return everything
    (``rehead.distributed``).
    """
    from . import distributed
    from .data import pipeline
    pipe = pipeline(backbone.modality)
    st = distributed.state()
    # launched: each process on its own device (its GPU; with CPU processes, the CPU); else the GPU if any
    device = st.device if st.num_processes > 1 else extraction_device()
    precision = feature_precision(device)
    cuts = sorted(set(cuts))
    keys, mkeys, hits = None, {}, {}
    ok = np.zeros(len(items), dtype=bool)
    if cache:
        keys = distributed.split_map(lambda part: _sample_keys(pipe, part, cache, backbone), items, st)
        mkeys = {k: cache.model_key(backbone, k, precision) for k in cuts}
        hits = {k: cache.read(mkeys[k], keys) for k in cuts}
        ok = np.logical_and.reduce([h[1] for h in hits.values()])
        if st.num_processes > 1:
            st.wait_for_everyone()  # every process has read the store before any writes to it: one split
    todo = np.flatnonzero(~ok).tolist()
    if cache and todo:
        cache.refuse_misses(len(todo), len(items), _split_of(desc))  # a read-only cache cannot take them
        if ok.any() and progress and st.is_local_main_process:
            _say_cached(int(ok.sum()), len(items), desc)
    mine = distributed.batch_share(todo, batch_size, st)
    computed: dict[int, dict[int, np.ndarray]] = {k: {} for k in cuts}
    skipped: list[int] = []
    if mine:
        writers = {k: cache.writer(mkeys[k]) for k in cuts} if cache else {}
        try:
            home = device_of(backbone)
            try:  # the caller gets its backbone back where it was
                backbone.to(device)
                with autocast(device, precision):
                    seen = _forward(backbone, pipe, items, mine, cuts, keys, computed, writers,
                                    dict(batch_size=batch_size, workers=workers, strict=strict),
                                    progress and st.is_local_main_process, desc, device)
            finally:
                backbone.to(home)
            for w in writers.values():
                w.flush()
        except BaseException:
            _flush_quietly(writers)  # keep what was computed: the next run resumes from it
            raise
        skipped = [mine[j] for j in range(len(mine)) if j not in seen]
    if st.num_processes > 1 and todo:  # todo is the same on every process: all exchange, or none
        hits, ok, computed, skipped = _exchange(st, cache, mkeys, keys, cuts, computed, skipped, ok)
    kept = sorted(set(np.flatnonzero(ok).tolist()) | set(computed[cuts[0]]))
    out = {k: _assemble(hits.get(k, (None, None))[0], computed[k], kept) for k in cuts}
    return out, kept, [str(items[i]) for i in skipped]


def _split_of(desc: str) -> str:
    """"extract train" -> "train": what the features are of, where the bar's label says it."""
    return desc[len("extract"):].strip() if desc.startswith("extract") else ""


def _say_cached(hits: int, total: int, desc: str) -> None:
    """One line above the bar, where an extraction resumes (e.g. after Ctrl-C): the bar counts only the rest."""
    what = _split_of(desc)
    tqdm.write(f"{hits} of {total} {what + ' ' if what else ''}features were already in the cache (an earlier run): "
               f"computing the other {total - hits}")


def sample_keys(pipe, items: list, cache, backbone) -> list[str]:
    """Every item's cache key; a pipeline with a batch lookup (image files) makes them in one pass."""
    if hasattr(pipe, "sample_keys"):
        return pipe.sample_keys(items, cache, backbone)
    return [pipe.sample_key(item, cache, backbone) for item in items]


def _sample_keys(pipe, items: list, cache: FeatureCache, backbone) -> list[str]:
    keys = sample_keys(pipe, items, cache, backbone)
    cache.flush()
    return keys


def _exchange(st, cache, mkeys, keys, cuts, computed, skipped, ok):
    """After every process extracted its share: the store read again (it now holds every process's
    shards), plus what it cannot hold (everything without a cache; non-finite rows, never stored)
    and the unreadable items, from every process. Returns (hits, ok, computed, skipped) for all samples."""
    from .distributed import gather
    unstored = {i: {k: computed[k][i] for k in cuts} for i in computed[cuts[0]]
                if cache is None or not all(np.isfinite(computed[k][i]).all() for k in cuts)}
    st.wait_for_everyone()  # every shard is written and indexed
    parts = gather((skipped, unstored), st)
    skipped = sorted(i for sk, _ in parts for i in sk)
    merged: dict[int, dict[int, np.ndarray]] = {k: {} for k in cuts}
    for _, rows in parts:
        for i, per_cut in rows.items():
            for k in cuts:
                merged[k][i] = per_cut[k]
    if cache is None:
        return {}, ok, merged, skipped
    hits = {k: cache.read(mkeys[k], keys) for k in cuts}
    ok = np.logical_and.reduce([h[1] for h in hits.values()])
    have = ok.copy()
    have[list(merged[cuts[0]]) + skipped] = True
    if not have.all():
        raise CacheError(f"{int((~have).sum())} sample(s) extracted by another process could not be read back "
                         f"from the feature cache at {cache.root}: run again (they are recomputed), or pass --no-cache")
    return hits, ok, merged, skipped


def _forward(backbone, pipe, items, todo, cuts, keys, computed, writers, loader_kw, progress, desc, device) -> set:
    """Run the ``todo`` items through the backbone (already on ``device``); fills ``computed`` and the
    shard writers."""
    from accelerate.utils import send_to_device
    backbone.eval()
    raw = raw_inputs(pipe, device)
    loader = pipe.make_loader(backbone, [items[i] for i in todo], None, **loader_kw, **({"raw": True} if raw else {}))
    bar = tqdm(total=len(todo), desc=desc, unit=pipe.unit, disable=not progress)
    seen = set()
    with torch.inference_mode():
        for idx, inputs, _ in loader:
            check_interrupt()
            if len(idx):
                inputs = send_to_device(inputs, device, non_blocking=True)
                out = backbone.forward_cuts(pipe.normalise(inputs, backbone.data_config) if raw else inputs, cuts)
                out = {k: out[k].float().cpu().numpy() for k in cuts}  # one copy per batch, not per row
                for j, local in enumerate(idx.tolist()):
                    i = todo[local]
                    seen.add(local)
                    for k in cuts:
                        computed[k][i] = out[k][j]
                        if writers:
                            writers[k].add(keys[i], out[k][j])
            bar.update(pipe.batch_len(inputs, idx))
    bar.close()
    return seen


def raw_inputs(pipe, device) -> bool:
    """On a GPU, images travel from the decoding workers as 8-bit crops and are normalised there:
    a quarter of the bytes to share, pin and copy, the same values (``images.normalise``)."""
    return device.type == "cuda" and hasattr(pipe, "normalise")


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
