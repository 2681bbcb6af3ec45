"""Text data: a CSV of ``text,label`` (column names configurable), or a folder holding
``train.csv`` and ``test.csv`` (or ``val.csv``); the second is the val / evaluation split.

Tokenisation belongs to the backbone (``backbone.tokenize``): its tokenizer and max length
travel with it, so a run directory predicts on raw strings.
"""
from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from pathlib import Path

import torch

from . import DataError, Dataset, Samples, stratified_split

log = logging.getLogger(__name__)
EVAL_FILES = ("test.csv", "val.csv", "valid.csv", "validation.csv")


def read_csv(path: Path, text_column: str = "text", label_column: str | None = "label") -> tuple[list[str], list[str], list[str]]:
    """(texts, labels, warnings). Rows with empty text are dropped with a warning."""
    csv.field_size_limit(1 << 24)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        need = [c for c in (text_column, label_column) if c]
        missing = [c for c in need if c not in header]
        if missing:
            raise DataError(f"{path} has no column(s) {', '.join(repr(c) for c in missing)} (columns: "
                            f"{', '.join(header) or 'none'}): name yours with --text-column / --label-column")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    texts, labels, empty, nolabel = [], [], [], []
    for n, r in enumerate(rows, 2):  # line 1 is the header
        t = (r.get(text_column) or "").strip()
        y = (r.get(label_column) or "").strip() if label_column else ""
        if not t:
            empty.append(n)
            continue
        if label_column and not y:
            nolabel.append(n)
            continue
        texts.append(t)
        labels.append(y)
    warnings = []
    if empty:
        warnings.append(f"{path}: {len(empty)} row(s) with empty text were left out (line(s) "
                        f"{', '.join(map(str, empty[:10]))}{' ...' if len(empty) > 10 else ''}): fill or delete them")
    if nolabel:
        warnings.append(f"{path}: {len(nolabel)} row(s) with an empty label were left out (line(s) "
                        f"{', '.join(map(str, nolabel[:10]))}{' ...' if len(nolabel) > 10 else ''})")
    if not texts:
        raise DataError(f"{path} has no row with both a text and a label")
    return texts, labels, warnings


def _warn(ds_warnings: list[str], msgs: list[str]):
    for m in msgs:
        log.warning(m)
        ds_warnings.append(m)


def _classes(labels: list[str], where) -> list[str]:
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"{where} has a single label ({classes[0]!r}): a classifier needs at least two")
    return classes


def load_text(path: Path, text_column: str = "text", label_column: str = "label", val_fraction: float = 0.2,
              seed: int = 0, eval_only: bool = False, **_) -> Dataset:
    """Discover a text dataset. ``eval_only``: the split to evaluate on (test.csv of a folder,
    or every row of a single CSV)."""
    path = Path(path)
    warnings: list[str] = []
    if path.is_dir():
        train_csv = path / "train.csv"
        eval_csv = next((path / n for n in EVAL_FILES if (path / n).exists()), None)
        if eval_only:
            if eval_csv is None and not train_csv.exists():
                raise DataError(f"{path} has no test.csv (or val.csv) to evaluate on")
            t, y, w = read_csv(eval_csv or train_csv, text_column, label_column)
            _warn(warnings, w)
            classes = sorted(set(y))
            return Dataset("text", classes, Samples([], []), Samples(t, [classes.index(v) for v in y]), str(path),
                           info={"warnings": warnings} if warnings else {})
        if not train_csv.exists():
            raise DataError(f"{path} is a folder without train.csv: give a CSV of text,label or a folder "
                            "with train.csv and test.csv")
        t, y, w = read_csv(train_csv, text_column, label_column)
        _warn(warnings, w)
        classes = _classes(y, train_csv)
        once = [c for c, n in Counter(y).items() if n == 1]
        if once:
            _warn(warnings, [f"{train_csv}: label(s) {', '.join(map(repr, sorted(once)))} appear only once: "
                             "the model can hardly learn a class from one example; add examples or merge the label"])
        train = Samples(t, [classes.index(v) for v in y])
        if eval_csv is None:
            return _split(classes, train, val_fraction, seed, str(path), warnings)
        vt, vy, vw = read_csv(eval_csv, text_column, label_column)
        _warn(warnings, vw)
        extra = sorted(set(vy) - set(classes))
        if extra:
            raise DataError(f"{eval_csv} has label(s) not in {train_csv}: {', '.join(map(repr, extra))}")
        return Dataset("text", classes, train, Samples(vt, [classes.index(v) for v in vy]), str(path),
                       info={"split": f"{train_csv.name} / {eval_csv.name}", **({"warnings": warnings} if warnings else {})})
    t, y, w = read_csv(path, text_column, label_column)
    _warn(warnings, w)
    if eval_only:
        classes = sorted(set(y))
        return Dataset("text", classes, Samples([], []), Samples(t, [classes.index(v) for v in y]), str(path))
    classes = _classes(y, path)
    return _split(classes, Samples(t, [classes.index(v) for v in y]), val_fraction, seed, str(path), warnings)


def _split(classes, samples: Samples, val_fraction, seed, source, warnings) -> Dataset:
    counts = Counter(samples.labels)
    once = [classes[i] for i in range(len(classes)) if counts[i] < 2]
    if once:
        raise DataError(f"label(s) {', '.join(map(repr, once))} in {source} appear only once: a stratified "
                        "train/val split needs at least 2 examples of each label; add examples, remove those "
                        "rows, or give a folder with train.csv and test.csv")
    tr, va = stratified_split(samples.labels, val_fraction, seed)
    info = {"split": f"stratified {val_fraction:.0%} val, seed {seed}"}
    if warnings:
        info["warnings"] = warnings
    return Dataset("text", classes, samples.subset(tr), samples.subset(va), source, info=info)


# -- the pipeline interface (see rehead.data.pipeline) -------------------------------------
unit = "sent"


def sample_key(item: str, cache, backbone) -> str:
    cfg = backbone.data_config
    ident = f"{cfg.get('tokenizer_id')}|{cfg.get('max_length')}|".encode()
    return hashlib.sha256(ident + str(item).encode("utf-8")).hexdigest()


def batch_len(inputs, idx) -> int:
    return len(idx)


class TextItems(torch.utils.data.Dataset):
    def __init__(self, texts: list[str], labels: list[int] | None):
        self.texts, self.labels = texts, labels

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return i, str(self.texts[i]), (self.labels[i] if self.labels is not None else -1)


def token_lengths(backbone, items: list[str], chunk: int = 1024) -> list[int]:
    """Tokens per text after truncation (word counts for a tokenizer without a mask)."""
    out = []
    for i in range(0, len(items), chunk):
        part = [str(t) for t in items[i:i + chunk]]
        mask = backbone.tokenize(part).get("attention_mask")
        out += mask.sum(1).tolist() if mask is not None else [len(t.split()) for t in part]
    return out


def make_loader(backbone, items, labels, batch_size=32, workers=2, strict=False, shuffle=False,
                transform=None, generator=None, drop_last=False):
    """Batches tokenized with dynamic padding (to the longest text of the batch)."""
    tokenize = backbone.tokenize

    def collate(batch):
        idx, texts, ys = zip(*batch)
        return torch.tensor(idx), tokenize(list(texts)), torch.tensor(ys)
    sampler = None
    if shuffle:
        # Training batches of similar lengths (Hugging Face Trainer's group_by_length): random
        # mega-batches of 50 batches, sorted by length inside, so little compute goes to padding.
        from transformers.trainer_pt_utils import LengthGroupedSampler
        sampler = LengthGroupedSampler(batch_size, lengths=token_lengths(backbone, items), generator=generator)
    # No worker processes: a fast tokenizer takes well under a millisecond per sentence,
    # far less than forking workers each epoch would cost on a few cores.
    return torch.utils.data.DataLoader(TextItems(items, labels), batch_size=batch_size, sampler=sampler,
                                       num_workers=0, collate_fn=collate, drop_last=drop_last)


def example_input(backbone):
    return backbone.tokenize(["An example sentence."])
