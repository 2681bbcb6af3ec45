"""FeatureCache: pooled features of every sample at a cut, on disk, shared across runs.

Key = hash(backbone spec + weights, cut, preprocessing, sample content). One ``.npy``
per sample and key, written to a temporary file and renamed, so a killed run never
leaves a file that loads as valid. The content hash of a file is remembered by
(path, size, mtime), so on a full cache hit no image is even opened.

Snapshots (``snapshots/<stamp hash>/``) record what a run learnt about a backbone whose
weights have a stat-based stamp (``zoo.weights_stamp``): its stages, preprocessing, weights
(safetensors) and, per cut, the prefix's weights id and feature width. A fit whose features
are all cached reads them instead of building the model: no timm, no torchvision import.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def default_cache_dir() -> Path:
    env = os.environ.get("REHEAD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rehead"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    # -- keys ------------------------------------------------------------------
    def model_key(self, backbone, cut: int) -> str:
        # Features at cut k depend on the first k stages only: key them by that prefix's weights,
        # so a probe over every depth (full backbone) and `fit --cut k` (the prefix) share entries.
        wid = backbone.weights_id if cut == len(backbone) else backbone.cut(cut).weights_id
        return self.key(backbone.spec, wid, cut, backbone.preprocessing_id())

    @staticmethod
    def key(spec: str, weights_id: str, cut: int, preprocessing_id: str) -> str:
        return hashlib.sha256("|".join([spec, weights_id, str(cut), preprocessing_id]).encode()).hexdigest()[:24]

    def file_digest(self, path: str) -> str:
        """sha256 of a file's bytes, remembered by (path, size, mtime) to skip rereads."""
        st = os.stat(path)
        stamp = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
        memo = self.root / "digests" / hashlib.sha1(stamp.encode()).hexdigest()
        try:
            return memo.read_text()
        except OSError:
            pass
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        atomic_write_bytes(memo, digest.encode())
        return digest

    def _path(self, model_key: str, sample_key: str) -> Path:
        return self.root / "features" / model_key / sample_key[:2] / f"{sample_key}.npy"

    # -- io ------------------------------------------------------------------
    def get(self, model_key: str, sample_key: str) -> np.ndarray | None:
        p = self._path(model_key, sample_key)
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def put(self, model_key: str, sample_key: str, arr: np.ndarray) -> None:
        import io
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        atomic_write_bytes(self._path(model_key, sample_key), buf.getvalue())

    def get_all(self, model_key: str, sample_keys: list[str]) -> np.ndarray | None:
        """Every sample's features stacked, or None as soon as one is missing."""
        rows = []
        for k in sample_keys:
            v = self.get(model_key, k)
            if v is None:
                return None
            rows.append(v)
        return np.stack(rows) if rows else None

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
        d = self._snap_dir(stamp)
        meta = self.snapshot(stamp) or {"stamp": stamp, "spec": backbone.spec, "modality": backbone.modality,
                                         "stage_names": backbone.stage_names, "data_config": backbone.data_config,
                                         "cuts": {}}
        cut = len(prefix)
        if str(cut) in meta["cuts"]:
            return
        if not (d / "weights.safetensors").exists():
            sd = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
            atomic_write_bytes(d / "weights.safetensors", save(sd))
        meta["cuts"][str(cut)] = {"weights_id": prefix.weights_id, "preprocessing_id": prefix.preprocessing_id(),
                                  "in_dim": int(in_dim)}
        atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=1).encode())

    def snapshot_prefix(self, stamp: str, cut: int) -> dict:
        """The first ``cut`` stages' weights (Backbone state-dict names) from a snapshot."""
        from safetensors.torch import load_file
        meta = self.snapshot(stamp)
        kept = {f"stages.{n}." for n in meta["stage_names"][:cut]}
        sd = load_file(str(self._snap_dir(stamp) / "weights.safetensors"))
        return {k: v for k, v in sd.items()
                if not k.startswith("stages.") or any(k.startswith(p) for p in kept)}

    # -- housekeeping ------------------------------------------------------------
    def size(self) -> dict:
        files = [p for p in (self.root / "features").rglob("*.npy")] if self.root.exists() else []
        snaps = [p for p in (self.root / "snapshots").rglob("*") if p.is_file()] if self.root.exists() else []
        return {"path": str(self.root), "entries": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "models": len(list((self.root / "features").iterdir())) if (self.root / "features").exists() else 0,
                "snapshot_bytes": sum(p.stat().st_size for p in snaps)}

    def clear(self) -> None:
        for sub in ("features", "digests", "snapshots"):
            shutil.rmtree(self.root / sub, ignore_errors=True)


def extract(backbone, items: list, cuts: list[int], cache: FeatureCache | None = None,
            batch_size: int = 32, workers: int = 2, strict: bool = False, progress: bool = True,
            desc: str = "extract") -> tuple[dict[int, torch.Tensor], list[int], list[str]]:
    """Features of ``items`` after each cut: ``({cut: (N_kept, D)}, kept indices, skipped items)``.

    Only samples missing from the cache go through the backbone, once, for all cuts.
    """
    from .data import pipeline
    pipe = pipeline(backbone.modality)
    cuts = sorted(set(cuts))
    keys = [pipe.sample_key(item, cache, backbone) for item in items] if cache else None
    mkeys = {k: cache.model_key(backbone, k) for k in cuts} if cache else {}
    feats: dict[int, dict[int, np.ndarray]] = {k: {} for k in cuts}
    todo = []
    for i in range(len(items)):
        hits = {k: cache.get(mkeys[k], keys[i]) for k in cuts} if cache else {}
        if cache and all(v is not None for v in hits.values()):
            for k in cuts:
                feats[k][i] = hits[k]
        else:
            todo.append(i)
    skipped: list[str] = []
    if todo:
        backbone.eval()
        loader = pipe.make_loader(backbone, [items[i] for i in todo], None, batch_size=batch_size,
                                  workers=workers, strict=strict)
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
                            feats[k][i] = v
                            if cache:
                                cache.put(mkeys[k], keys[i], v)
                bar.update(pipe.batch_len(inputs, idx))
        bar.close()
        skipped = [str(items[todo[j]]) for j in range(len(todo)) if j not in seen]
    kept = sorted(feats[cuts[0]])
    out = {k: torch.from_numpy(np.stack([feats[k][i] for i in kept])) if kept else torch.empty(0)
           for k in cuts}
    return out, kept, skipped
