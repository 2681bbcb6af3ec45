"""What ``rehead.fit`` accepts as data: a path, a DataFrame, (item, label) pairs, or a Dataset.

In-memory data becomes the same ``Dataset`` a folder or CSV gives: class names sorted, a seeded
stratified val split, empty labels dropped and counted.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

from . import DataError, Dataset, from_items, load_dataset
from .images import IMAGE_EXTS, tensor_image
from .splits import has_split_column


def as_dataset(data, cfg, memo=None) -> Dataset:
    """``data`` as a Dataset, split as ``cfg`` (a FitConfig) says; ``memo``: see ``load_dataset``."""
    if isinstance(data, Dataset):
        return _already_split(data, cfg)
    if isinstance(data, (str, Path)):
        return load_dataset(data, val_fraction=cfg.val_fraction, seed=cfg.seed, strict=cfg.strict, task=cfg.task,
                            memo=memo,
                            **cfg.data_kw)
    if _is_dataframe(data):
        return _from_frame(data, cfg)
    if isinstance(data, (list, tuple)):
        return from_pairs(list(data), cfg.val_fraction, cfg.seed, source="<list of (item, label) pairs>", task=cfg.task)
    if _is_torch_dataset(data):
        return load_dataset(materialise(data, cfg.cache_dir, cfg.task), val_fraction=cfg.val_fraction, seed=cfg.seed,
                            strict=cfg.strict, task=cfg.task, memo=memo, **cfg.data_kw)
    raise DataError(f"cannot train on a {type(data).__name__}: give a folder or CSV path, a pandas DataFrame, "
                    "a list of (item, label) pairs (items: image paths or texts) or a torch Dataset of (image, label)")


def _already_split(ds: Dataset, cfg) -> Dataset:
    """A Dataset comes split: fit's val_fraction and seed, when not the defaults, do not re-split it.
    Said as the data's own val split says an unused --val-fraction, through the Dataset's warnings
    (on a copy: the caller's Dataset is left as it was)."""
    default = {f.name: f.default for f in dataclasses.fields(cfg)}
    how = ds.info.get("split", "as given")
    said = []
    if cfg.val_fraction != default["val_fraction"]:
        said.append(f"--val-fraction {cfg.val_fraction:g} is not used: the Dataset given to fit is already split "
                    f"({how}); split it with load_dataset(..., val_fraction={cfg.val_fraction:g})")
    if cfg.seed != default["seed"]:
        said.append(f"--seed {cfg.seed} does not re-split the Dataset given to fit (it seeds training only): its "
                    f"split is {how}; split it with load_dataset(..., seed={cfg.seed})")
    if not said:
        return ds
    out = copy.copy(ds)
    out.info = {**ds.info, "warnings": [*ds.info.get("warnings", []), *said]}
    return out


def _is_torch_dataset(obj) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.utils.data.Dataset)


def materialise(ds, cache_dir=None, task: str = "multiclass") -> Path:
    """A torch Dataset of (image, label) as PNGs under the cache, once: its images get an identity (the
    feature cache, split.json and --resume need one). Multiclass: a folder of class folders; regression and
    multilabel: ``train/`` of PNGs and a ``labels.csv`` (path,label: a number, or a label set 'a|b'), whose
    path is returned. The folder is named by a hash of every PNG's bytes, label and the task, so the same
    data is written once."""
    import hashlib
    import shutil
    import tempfile
    from ..store import default_cache_dir
    names = _class_names(ds)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root / "datasets", prefix=".tmp-"))
    h = hashlib.sha256(b"train-layout\0" + (b"" if task == "multiclass" else task.encode() + b"\0"))
    rows = ["path,label"]
    try:
        for i in range(len(ds)):
            png, label = _png_and_label(ds[i], i, names, task)
            h.update(label.encode() + b"\0" + png)
            # under train/: a class named train, val or test is then a class, not a split folder
            folder = tmp / "train" / (label if task == "multiclass" else "items")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:07d}.png").write_bytes(png)
            rows.append(f"train/items/{i:07d}.png,{_csv_cell(label)}")
        if task != "multiclass":
            (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
        dest = root / "datasets" / h.hexdigest()[:24]
        if dest.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
        return dest if task == "multiclass" else dest / "labels.csv"
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _png_and_label(item, i: int, names, task: str) -> tuple[bytes, str]:
    """One Dataset item as (PNG bytes, its label as a CSV cell would hold it)."""
    import io
    import torch
    from PIL import Image
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise DataError(f"the Dataset's item {i} is not an (image, label) pair")
    img, label = item
    if isinstance(img, torch.Tensor):  # CHW, float in [0, 1] or uint8
        arr = img.detach().cpu()
        if arr.is_floating_point() and arr.numel():
            lo, hi = arr.min().item(), arr.max().item()
            if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # normalised (or NaN): clamping would change it
                raise DataError(f"the Dataset's item {i} is a tensor with values in [{lo:.3g}, {hi:.3g}], "
                                "outside [0, 1]: rehead applies the backbone's own normalisation, so give "
                                "it un-normalised tensors in [0, 1] (drop T.Normalize from the transform) "
                                "or PIL images")
        img = tensor_image(arr)
    if not isinstance(img, Image.Image):
        raise DataError(f"the Dataset's item {i} holds a {type(img).__name__}: give PIL images or CHW tensors")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return buf.getvalue(), _label_text(label, i, names, task)


def _label_text(label, i: int, names, task: str) -> str:
    """A Dataset label as text: a class name (an index through the Dataset's ``classes``), a number
    (regression), or a label set 'a|b' from names or a multi-hot vector (multilabel)."""
    import torch
    from .streams import label_set
    if isinstance(label, torch.Tensor):
        label = label.item() if label.numel() == 1 and task != "multilabel" else label.tolist()
    if task == "multilabel":
        if isinstance(label, (list, tuple, set)) and label and all(isinstance(v, (int, float)) for v in label) \
                and set(label) <= {0, 1}:  # a multi-hot vector: the names of its ones
            label = [names[j] if names is not None and j < len(names) else str(j) for j, v in enumerate(label) if v]
        if not isinstance(label, (list, tuple, set)):
            raise DataError(f"the Dataset's item {i} has label {label!r:.40}: --task multilabel needs a list of "
                            "label names or a multi-hot vector")
        return label_set(label)
    if task == "regression":
        return str(label)
    return names[int(label)] if names is not None and not isinstance(label, str) else str(label)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _class_names(ds):
    """A Dataset's class names; a Subset (``random_split``) reaches through to the dataset it wraps, a
    ConcatDataset to its parts when they share them (else labels would become '0', '1', ...)."""
    if getattr(ds, "classes", None) is not None:
        return ds.classes
    if getattr(ds, "dataset", None) is not None:
        return _class_names(ds.dataset)
    parts = [_class_names(d) for d in getattr(ds, "datasets", None) or []]
    return parts[0] if parts and parts[0] is not None and all(list(q or []) == list(parts[0]) for q in parts) else None


def _is_dataframe(obj) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _from_frame(df, cfg) -> Dataset:
    cols = [str(c) for c in df.columns]
    if cfg.label_column not in cols:
        raise DataError(f"the DataFrame has no {cfg.label_column!r} column (columns: {', '.join(cols[:10])}): "
                        "name it with label_column=")
    image_col = cfg.image_column or "path"
    item_col = image_col if image_col in cols else cfg.text_column if cfg.text_column in cols else None
    if item_col is None:
        raise DataError(f"the DataFrame has neither a {image_col!r} column (images) nor a {cfg.text_column!r} column "
                        "(texts): name them with image_column= or text_column=, or save a table with "
                        "df.to_csv('table.csv', index=False) and fit that file")
    pairs = list(zip(df[item_col].tolist(), df[cfg.label_column].tolist()))
    splits = frame_splits(df, cfg.split_column, "<DataFrame>")
    return from_pairs(pairs, cfg.val_fraction, cfg.seed, source="<DataFrame>", task=cfg.task, splits=splits)


def frame_splits(df, split_column: str, source: str) -> list[str] | None:
    """Each row's value of a DataFrame's split column, as a CSV's is read (an empty cell: ""),
    or None when it has none."""
    if not has_split_column([str(c) for c in df.columns], split_column, source):
        return None
    col = df[split_column]
    return ["" if empty else str(v) for v, empty in zip(col.tolist(), col.isna().tolist())]


def from_pairs(pairs: list, val_fraction: float, seed: int, source: str, task: str = "multiclass",
               splits: list[str] | None = None) -> Dataset:
    """(item, label) pairs by the CSV rules (``data.from_items``): empty labels dropped and counted;
    ``splits``: each pair's split column value (train / val / test)."""
    if not pairs:
        raise DataError(f"{source} is empty: give at least two labelled samples per class")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{source}: element {i} is not an (item, label) pair: {pair!r:.80}")
    items = [str(i) if isinstance(i, Path) else i for i, _ in pairs]
    modality = _modality(items, source)
    if modality == "image":  # split.json names them: valid from any directory, as a folder's are
        items = [os.path.abspath(i) for i in items]
    return from_items(items, [y for _, y in pairs], modality, source, val_fraction, seed, task, splits)


def _modality(items: list, source: str) -> str:
    looks = [i for i in items if isinstance(i, str) and Path(i).suffix.lower() in IMAGE_EXTS]
    if 2 * len(looks) > len(items):  # mostly image paths: a missing one is a wrong path, not a text to train on
        gone = [i for i in looks if not os.path.exists(i)]
        if gone:
            raise DataError(f"{len(gone)} of {len(items)} items look like image paths but do not exist "
                            f"(e.g. {gone[0]}): fix the paths")
    if all(isinstance(i, str) and Path(i).suffix.lower() in IMAGE_EXTS and Path(i).is_file() for i in items[:50]):
        return "image"
    if all(isinstance(i, str) for i in items):
        return "text"
    kinds = sorted({type(i).__name__ for i in items})
    raise DataError(f"{source}: items must be image paths or texts, got {', '.join(kinds)}; save images to files "
                    "(or pass their paths)")


def path_items(s: str, modality: str, columns: dict | None = None, must_exist: bool = True) -> list:
    """One input path as the items it names, as `rehead predict` and ``Run.predict`` read it: a stream's
    references (tar shards, a datasets folder, Parquet); text, a CSV's text column or a .txt file's lines
    (a string that names no file is one text); images, a folder's image files (regular files only: no
    pipes, symlink loops or dot-folders), a CSV's image paths, else the path itself (``must_exist``: a
    path that is not there is a DataError; else it stays, to be named unreadable)."""
    columns = {k: v for k, v in (columns or {}).items() if v is not None}
    from .streams import expand_input
    streamed = expand_input(s, modality, **columns)
    if streamed is not None:
        return streamed
    if modality != "image":
        from .text import input_texts
        return input_texts(s, columns.get("text_column", "text"))
    from .images import csv_images, list_image_files
    p = Path(s)
    if p.is_dir():
        return list_image_files(p)[0]
    if p.suffix.lower() == ".csv" and p.is_file():  # a CSV of image paths, as fit reads one
        return csv_images(p, columns.get("image_column"))
    if must_exist and not p.exists():
        raise DataError(f"{s} does not exist")
    return [str(p)]
