"""Datasets: discover samples and labels, split them, turn them into tensors.

Every modality module reads its source into named *parts* (``train``/``val``/``test``, or
``all`` when the source has no split) of raw string labels; the code here turns parts into a
:class:`Dataset` the same way for images, text and tables: unlabelled rows dropped and
counted, unreadable items dropped and the classes recounted, val carved from train when the
source has none (a test split is never used for selection), and into :class:`EvalData` for
scoring new data against a run's classes.

Large sources are read in place (``streams.py``): WebDataset tar shards, Hugging Face
``datasets`` saved on disk and Parquet. Their items are references (``refs.py``: plain strings
such as ``tar:/data/train-000.tar::abc.jpg``) whose bytes are read when a batch needs them; the
parts they give go through the same rules.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..config import VAL_FRACTION

log = logging.getLogger(__name__)


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
    """A labelled dataset: class names, train and val splits (val chooses epochs and models),
    an optional test split (scored once, never used for selection), and where it came from.
    ``files``: the CSVs read, whose digests fingerprint the data for ``--resume``."""
    modality: str
    classes: list[str]
    train: Samples
    val: Samples
    source: str
    skipped: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    test: Samples | None = None
    files: list[str] = field(default_factory=list)
    task: str = "multiclass"  # rehead.tasks: what a label in Samples.labels is

    def say_warnings(self, echo=print) -> None:
        """What reading the data found (repeated rows, empty labels, ...): the data layer only logs it
        (at info), so each command says it once, through its own output."""
        for w in self.info.get("warnings", []):
            echo(f"warning: {w}")

    def summary(self) -> dict:
        def counts(s):
            if self.task == "multilabel":
                return {c: sum(1 for ys in s.labels if i in ys) for i, c in enumerate(self.classes)}
            return {c: sum(1 for y in s.labels if y == i) for i, c in enumerate(self.classes)}
        test = self.test or Samples([], [])
        out = {"source": self.source, "modality": self.modality, "classes": self.classes,
               "train": len(self.train), "val": len(self.val), "test": len(test)}
        if self.task == "regression":
            import numpy as np
            y = np.asarray(self.train.labels, dtype=float)
            out.update(task="regression", train_target={"mean": float(y.mean()), "std": float(y.std()),
                                                        "min": float(y.min()), "max": float(y.max())})
        else:
            out.update(train_per_class=counts(self.train), val_per_class=counts(self.val), test_per_class=counts(test))
            if self.task != "multiclass":
                out["task"] = self.task
        return {**out, "skipped": len(self.skipped), **self.info}

    def to_split(self) -> dict:
        """The splits as JSON-able data plus a fingerprint of the source, for split.json;
        :func:`dataset_from_split` rebuilds this Dataset from it (``--resume``)."""
        from .splits import to_split
        return to_split(self)


@dataclass
class Part:
    """One split as read from the source: items, raw label strings ('' = unlabelled), and
    ``where`` (the file or folder, for messages). ``keys``: what makes two rows the same
    item when that is not the item itself (a table row's cells); ``lines``: each row's line in
    the CSV it came from (header = line 1; in memory, ``where`` '<...>': its position from 0), for messages."""
    items: list
    labels: list[str]
    where: str
    keys: list | None = None
    lines: list[int] | None = None


@dataclass
class Parts:
    """What a modality module read: parts keyed train/val/test or all, and notes on them."""
    parts: dict[str, Part]
    source: str
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # item -> why it was left out
    files: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # for the Dataset's summary
    extra: dict = field(default_factory=dict)  # attributes the Dataset carries (table columns)
    labels_from: str | None = None  # the label column; None: class folder names (never a number line)
    lazy: bool = False  # items are references into containers (streams.py): checked when decoded, not listed


@dataclass
class EvalData:
    """Data to score a run on: items with labels as indices into the run's classes (as
    ``Samples.labels`` for the run's task: index lists for multilabel, floats for regression)."""
    items: list
    labels: list[int]
    n_unlabelled: int
    source: str
    split: str  # which part of the source is scored, in words
    classes: list[str]  # the data's own class names (all of them are run classes)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self):
        return len(self.items)


def stratified_split(labels: list[int], val_fraction: float, seed: int, where=None, hint: str | None = None):
    """Indices (train, val), stratified by label and seeded; ``hint`` ends the error message."""
    from sklearn.model_selection import train_test_split
    idx = list(range(len(labels)))
    try:
        tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError as e:
        raise DataError(f"cannot split {where or 'the data'} into train and a stratified {val_fraction:.0%} val "
                        f"({len(labels)} samples, {len(set(labels))} classes: {e}): add samples, change "
                        "--val-fraction, or give a val split" + (f". {hint}" if hint else "")) from None
    return sorted(tr), sorted(va)


DATA_KW = ("text_column", "image_column", "label_column", "id_columns", "split_column", "missing")


def load_dataset(path, modality: str | None = None, val_fraction: float = VAL_FRACTION, seed: int = 0,
                 strict: bool = False, eval_only: bool = False, check: bool = True, task: str = "multiclass",
                 memo=None, **kw) -> Dataset:
    """Discover a dataset at ``path``; the modality is inferred when not given.

    Unreadable images are found here (a header check, about 0.1 ms an image) and left out,
    named in ``skipped`` (``strict``: the first is an error), so the class counts are those
    trained on. ``eval_only``: the part to evaluate on as ``val`` (see :func:`load_eval`),
    with the data's own classes. Other keywords: ``text_column``, ``label_column``,
    ``id_columns``, ``split_column``, ``missing``.

    ``path`` may also be a streaming source (see :mod:`rehead.data.streams`): a folder of tar
    shards, a brace pattern ``shards-{000..009}.tar``, a ``save_to_disk`` folder or Parquet. Its
    items are references; they are checked when decoded (unreadable ones are named and skipped
    then, and the classes recounted), not here.

    ``memo``: a feature store (``rehead.store.ShardStore``) that remembers readable images across
    processes by their stat, so an unchanged image is not decoded again.
    """
    mod, kw, stream = _reader(path, modality, kw)
    if eval_only:
        mod, name, parts = _eval_part(mod, path, kw, strict, check, stream)
        from .splits import eval_dataset
        return eval_dataset(mod.MODALITY, name, parts)
    if not stream:
        _check_columns_apply(Path(path), mod.MODALITY, kw)
    if stream:
        mod, parts = _stream_parts(path, stream, modality, kw)
    else:
        parts = mod.read_parts(Path(path), **kw)
    _check_readable(mod, parts, [i for p in parts.parts.values() for i in p.items], strict, check, memo)
    from .splits import assemble
    ds = assemble(mod.MODALITY, parts, val_fraction, seed, task)
    for k, v in parts.extra.items():
        setattr(ds, k, v)
    return ds


def load_eval(path, modality: str, classes: list[str], data_kw: dict | None = None,
              strict: bool = False, task: str = "multiclass") -> EvalData:
    """Data to evaluate a run on: every labelled row of a CSV (with a ``split`` column: its
    test rows, else its non-train rows); of a folder with ``test/`` or ``val/`` (``test.csv``
    / ``val.csv``), that split; of a folder of class folders, every image. Unlabelled rows are
    left out and counted; class names are mapped onto the run's ``classes``, and a class the
    run never saw is an error."""
    mod, kw, stream = _reader(path, modality, dict(data_kw or {}))
    _, name, parts = _eval_part(mod, path, kw, strict, True, stream)
    from .splits import eval_data
    return eval_data(name, parts, classes, task)


def dataset_from_split(d: dict, modality: str | None = None, classes: list[str] | None = None,
                       where="split.json", check: bool = True) -> Dataset:
    """Rebuild the Dataset that :meth:`Dataset.to_split` saved; with ``check``, a DataError
    if the data files changed since (so a resumed run trains on exactly what it started on).
    ``modality``/``classes`` are needed only for a split.json written before they were saved."""
    from .splits import from_split
    return from_split(d, modality, classes, where, check)


def from_items(items: list, labels: list, modality: str, source: str, val_fraction: float = VAL_FRACTION,
               seed: int = 0, task: str = "multiclass", splits: list[str] | None = None) -> Dataset:
    """In-memory (item, label) data as a Dataset, by the same rules as a CSV: empty labels
    dropped and counted, duplicates reported, a stratified seeded val split. ``splits``: each
    item's value of a split column (train / val / test), read as a CSV's split column is."""
    from .csvio import drop_unlabelled
    from .splits import assemble, split_column_parts, split_where
    from .streams import label_set
    # a label set (a list, tuple or set: multilabel) is written as a CSV cell is, 'a|b'; str() gave "['a', 'b']"
    labels = ["" if y is None else label_set(y) if isinstance(y, (list, tuple, set, frozenset)) else str(y)
              for y in labels]
    labels = ["" if y.strip().lower() == "nan" else y for y in labels]  # pandas' empty cell
    items = list(items)
    warnings = []
    if splits is None:
        parts = {"all": Part(items, labels, source, lines=list(range(len(items))))}  # positions, for messages
    else:
        idx = split_column_parts(splits, source)  # every row's split checked, labelled or not
        # unlabelled rows dropped here, not per split: the positions said count over all the rows
        keep, w = drop_unlabelled(labels, source)
        warnings += [w] if w else []
        keep = set(keep)
        parts = {k: Part([items[i] for i in ix if i in keep], [labels[i] for i in ix if i in keep],
                         split_where(source, k, splits, ix), lines=[i for i in ix if i in keep])
                 for k, ix in idx.items()}
    return assemble(modality, Parts(parts, source, warnings=warnings, labels_from="label"), val_fraction, seed, task)


def drop_items(ds: Dataset, bad, why: str = "unreadable") -> list:
    """Remove ``bad`` items from every split, add them to ``ds.skipped`` and recount: a class
    left without a training sample is a DataError. Returns the items removed."""
    from .splits import drop_items as _drop
    return _drop(ds, bad, why)


def _reader(path, modality, kw):
    """(modality module, data options, streaming kind or None)."""
    kw = {k: v for k, v in kw.items() if v is not None}
    unknown = set(kw) - set(DATA_KW)
    if unknown:
        raise DataError(f"unknown data option(s) {', '.join(sorted(unknown))}: known are {', '.join(DATA_KW)}")
    from .streams import kind
    stream = kind(path)  # tar shards, a save_to_disk folder, Parquet: read in place
    if stream:
        return (pipeline(modality) if modality else None), kw, stream
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist: give a folder of class folders, a train/val folder, a CSV, tar "
                        "shards (a folder or shards-{000..009}.tar), a datasets save_to_disk folder or Parquet")
    from .images import _is_run
    if p.is_dir() and _is_run(str(p)):  # `rehead fit RUN` / `rehead evaluate DATA RUN`: a run is never data
        raise DataError(f"{p} is a rehead run directory, not data: give the data folder or CSV (a run's own data "
                        "is the `data:` line of its config.yaml)")
    if modality is None:
        modality = infer_modality(p, kw.get("text_column", "text"), kw.get("label_column", "label"),
                                  kw.get("image_column"))
    return pipeline(modality), kw, None


DATA_DEFAULTS = {"text_column": "text", "image_column": None, "label_column": "label", "id_columns": None,
                 "split_column": "split", "missing": "error"}


def _check_columns_apply(p: Path, modality: str, kw: dict) -> None:
    """Column options name columns of a CSV, Parquet or shards. A folder of class folders has none:
    the options would be recorded in config.yaml and ignored unsaid."""
    given = {k: v for k, v in kw.items() if v != DATA_DEFAULTS.get(k, v)}
    if not given or modality != "image" or not p.is_dir() or any(p.glob("*.csv")):
        return
    flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items())
    raise DataError(f"{flags}: {p} is a folder of image class folders, labelled by the folder names; column "
                    "options are for a CSV, Parquet or shards: leave them out")


def _stream_parts(path, stream: str, modality, kw, eval_only: bool = False):
    from .streams import read_parts
    found, parts = read_parts(path, stream, eval_only=eval_only, modality=modality,
                              **{k: v for k, v in kw.items()
                                 if k in ("text_column", "image_column", "label_column", "split_column")})
    return pipeline(found), parts


def _eval_part(mod, p, kw, strict, check, stream=None):
    from .splits import choose_eval
    if stream:
        mod, parts = _stream_parts(p, stream, mod.MODALITY if mod else None, kw, eval_only=True)
    else:
        parts = mod.read_parts(Path(p), eval_only=True, **kw)
    name = choose_eval(parts)
    part = parts.parts[name]
    _check_readable(mod, parts, part.items, strict, check)
    return mod, name, parts


def _check_readable(mod, parts: Parts, items, strict: bool, check: bool, memo=None) -> None:
    """Record unreadable items in ``parts.skipped`` (strict: raise on the first)."""
    if not check or not hasattr(mod, "unreadable") or parts.lazy:  # references: checked as they are decoded
        return
    bad = mod.unreadable(items, memo) if memo is not None else mod.unreadable(items)
    if bad and strict:
        item, why = next(iter(bad.items()))
        raise DataError(f"cannot read {item}: {why} (remove it, or drop --strict to skip it)")
    parts.skipped.update(bad)


def infer_modality(p, text_column: str = "text", label_column: str = "label", image_column: str | None = None) -> str:
    """image for a folder or a CSV with a ``path`` column (or ``image_column``); text for a CSV
    with the text column; tabular for another CSV."""
    p = Path(p)
    from .images import IMAGE_EXTS
    csvs = [p] if p.is_file() else [p / n for n in ("train.csv", "test.csv", "val.csv") if (p / n).is_file()]
    if csvs and csvs[0].suffix.lower() == ".csv":
        header = _header(csvs[0])
        if (image_column or "path") in header:
            return "image"
        if image_column:  # the user named an image column this file does not have
            raise DataError(f"{csvs[0]} has no column {image_column!r} (columns: {', '.join(header[:12])}): "
                            "name the image-path column with --image-column")
        if text_column in header:
            return "text"
        if text_column != "text":  # the user named a text column this file does not have
            raise DataError(f"{csvs[0]} has no column {text_column!r} (columns: {', '.join(header[:12])}): "
                            "name the text column with --text-column")
        return "tabular"  # without its label column, the table reader names every column it looked for
    if p.is_dir():
        return "image"
    if p.suffix.lower() in IMAGE_EXTS:
        raise DataError(f"{p} is a single image: training data is a folder of class folders or a CSV of "
                        "path,label; to label one image, use `rehead predict RUN IMAGE`")
    raise DataError(f"cannot tell what kind of data {p} is: expected a folder of images or a .csv "
                    f"(image extensions: {', '.join(sorted(IMAGE_EXTS))})")


def _header(path: Path) -> list[str]:
    import csv
    try:
        with open(path, "rb") as f:
            line = f.readline().decode("utf-8-sig")  # only the header: the rest is decoded by the reader
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: re-save it as UTF-8 (in Excel: Save As > 'CSV UTF-8')") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return [c.strip() for c in next(csv.reader([line]), [])]


def pipeline(modality: str):
    """The module that turns items of a modality into model inputs: it defines
    ``sample_key(item, cache, backbone)``, ``make_loader(...)``, ``batch_len`` and ``unit``."""
    import importlib
    mod = {"image": "images", "text": "text", "tabular": "tabular"}.get(modality)
    if mod is None:
        raise DataError(f"unknown modality {modality!r}: one of image, text, tabular")
    return importlib.import_module(f"{__name__}.{mod}")
