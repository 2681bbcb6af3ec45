"""Datasets: discover samples and labels, split them, turn them into tensors."""
from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input data: the message says what was wrong and how to fix it."""


@dataclass
class Samples:
    """Samples of one split: items (image paths, texts, table rows) and integer labels."""
    items: list
    labels: list[int]

    def __len__(self):
        return len(self.items)

    def subset(self, idx) -> "Samples":
        return Samples([self.items[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class Dataset:
    """A labelled dataset: class names, a train and a val split, and where it came from."""
    modality: str
    classes: list[str]
    train: Samples
    val: Samples
    source: str
    skipped: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def counts(s):
            return {c: sum(1 for y in s.labels if y == i) for i, c in enumerate(self.classes)}
        return {"source": self.source, "modality": self.modality, "classes": self.classes,
                "train": len(self.train), "val": len(self.val),
                "train_per_class": counts(self.train), "val_per_class": counts(self.val),
                "skipped": len(self.skipped), **self.info}


def stratified_split(labels: list[int], val_fraction: float, seed: int):
    """Indices (train, val), stratified by label and seeded."""
    from sklearn.model_selection import train_test_split
    idx = list(range(len(labels)))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    return sorted(tr), sorted(va)


def load_dataset(path, modality: str | None = None, **kw) -> Dataset:
    """Discover a dataset at ``path``; the modality is inferred when not given."""
    from pathlib import Path
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist: give a folder of class folders, a train/val folder, or a CSV")
    if modality is None:
        modality = infer_modality(p, kw.get("text_column") or "text")
    if modality == "image":
        from .images import load_images
        return load_images(p, **kw)
    if modality == "text":
        from .text import load_text
        return load_text(p, **kw)
    if modality == "tabular":
        from .tabular import load_table
        return load_table(p, **kw)
    raise DataError(f"unknown modality {modality!r}")


def infer_modality(p, text_column: str = "text") -> str:
    import csv
    from .images import IMAGE_EXTS
    csvs = [p] if p.is_file() else [p / "train.csv"] if (p / "train.csv").exists() else []
    if csvs and csvs[0].suffix == ".csv":
        with open(csvs[0], newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if "path" in header:
            return "image"
        if text_column in header:
            return "text"
        return "tabular"
    if p.is_dir():
        return "image"
    raise DataError(f"cannot tell what kind of data {p} is: expected a folder of images or a .csv "
                    f"(image extensions: {', '.join(sorted(IMAGE_EXTS))})")


def pipeline(modality: str):
    """The module that turns items of a modality into model inputs: it defines
    ``sample_key(item, cache, backbone)``, ``make_loader(...)``, ``batch_len`` and ``unit``."""
    import importlib
    mod = {"image": "images", "text": "text", "tabular": "tabular"}.get(modality)
    if mod is None:
        raise DataError(f"unknown modality {modality!r}")
    return importlib.import_module(f"{__name__}.{mod}")
