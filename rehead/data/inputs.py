"""What ``rehead.fit`` accepts as data: a path, a DataFrame, (item, label) pairs, or a Dataset.

In-memory data becomes the same ``Dataset`` a folder or CSV gives: class names sorted, a seeded
stratified val split, empty labels dropped and counted.
"""
from __future__ import annotations

from pathlib import Path

from . import DataError, Dataset, from_items, load_dataset
from .images import IMAGE_EXTS


def as_dataset(data, cfg) -> Dataset:
    """``data`` as a Dataset, split as ``cfg`` (a FitConfig) says."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_dataset(data, val_fraction=cfg.val_fraction, seed=cfg.seed, strict=cfg.strict, **cfg.data_kw)
    if _is_dataframe(data):
        return _from_frame(data, cfg)
    if isinstance(data, (list, tuple)):
        return from_pairs(list(data), cfg.val_fraction, cfg.seed, source="<list of (item, label) pairs>")
    raise DataError(f"cannot train on a {type(data).__name__}: give a folder or CSV path, a pandas DataFrame "
                    "or a list of (item, label) pairs (items: image paths or texts)")


def _is_dataframe(obj) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _from_frame(df, cfg) -> Dataset:
    cols = [str(c) for c in df.columns]
    if cfg.label_column not in cols:
        raise DataError(f"the DataFrame has no {cfg.label_column!r} column (columns: {', '.join(cols[:10])}): "
                        "name it with label_column=")
    item_col = "path" if "path" in cols else cfg.text_column if cfg.text_column in cols else None
    if item_col is None:
        raise DataError(f"the DataFrame has neither a 'path' column (images) nor a {cfg.text_column!r} column "
                        "(texts): name the text column with text_column=, or save a table with "
                        "df.to_csv('table.csv', index=False) and fit that file")
    pairs = list(zip(df[item_col].tolist(), df[cfg.label_column].tolist()))
    return from_pairs(pairs, cfg.val_fraction, cfg.seed, source="<DataFrame>")


def from_pairs(pairs: list, val_fraction: float, seed: int, source: str) -> Dataset:
    """(item, label) pairs by the CSV rules (``data.from_items``): empty labels dropped and counted."""
    if not pairs:
        raise DataError(f"{source} is empty: give at least two labelled samples per class")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{source}: element {i} is not an (item, label) pair: {pair!r:.80}")
    items = [str(i) if isinstance(i, Path) else i for i, _ in pairs]
    return from_items(items, [y for _, y in pairs], _modality(items, source), source, val_fraction, seed)


def _modality(items: list, source: str) -> str:
    if all(isinstance(i, str) and Path(i).suffix.lower() in IMAGE_EXTS and Path(i).is_file() for i in items[:50]):
        return "image"
    if all(isinstance(i, str) for i in items):
        return "text"
    kinds = sorted({type(i).__name__ for i in items})
    raise DataError(f"{source}: items must be image paths or texts, got {', '.join(kinds)}; save images to files "
                    "(or pass their paths)")
