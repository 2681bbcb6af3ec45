"""Text data: a CSV of ``text,label`` (column names configurable, optional ``split`` column),
or a folder holding ``train.csv``, optionally ``val.csv`` and ``test.csv``. Without a val
file, val is carved from train.csv; test.csv is the test split, scored once and never used
to choose epochs or models.

Tokenisation belongs to the backbone (``backbone.tokenize``): its tokenizer and max length
travel with it, so a run directory predicts on raw strings.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from . import DataError, Part, Parts, refs
from .csvio import column, drop_unlabelled, lines, read_rows
from .splits import has_split_column, split_column_parts, split_where

log = logging.getLogger(__name__)
MODALITY = "text"
VAL_FILES = ("val.csv", "valid.csv", "validation.csv")
TEST_FILES = ("test.csv",)


def _read(path: Path, text_column: str, label_column: str | None):
    """(texts, raw labels ('' when empty), warnings, header, kept rows); rows with
    empty text are left out with a warning."""
    if text_column == label_column:  # the model would read its answer
        raise DataError(f"--text-column and --label-column both name {text_column!r}: the texts and the labels "
                        "must be two columns")
    header, rows = read_rows(path)
    missing = [c for c in (text_column, label_column) if c and c not in header]
    if missing:
        raise DataError(f"{path} has no column(s) {', '.join(repr(c) for c in missing)} (columns: "
                        f"{', '.join(header) or 'none'}): name yours with "
                        + ("--text-column / --label-column" if label_column else "--text-column"))
    texts = column(header, rows, text_column, path)
    labels = column(header, rows, label_column, path) if label_column else [""] * len(texts)
    keep = [i for i, t in enumerate(texts) if t]
    warnings = []
    if len(keep) < len(texts):
        empty = [i for i, t in enumerate(texts) if not t]
        warnings.append(f"{path}: {len(empty)} row(s) with empty text were left out ({lines(empty, rows.line)}): "
                        "fill or delete them")
    if not keep:
        raise DataError(f"{path} has no row with a text in column {text_column!r}")
    return [texts[i] for i in keep], [labels[i] for i in keep], warnings, header, rows.take(keep)


def read_csv(path: Path, text_column: str = "text", label_column: str | None = "label") -> tuple[list[str], list[str], list[str]]:
    """(texts, labels, warnings). Rows with empty text, or an empty label when there is a
    label column, are left out with a warning."""
    texts, labels, warnings, _, rows = _read(Path(path), text_column, label_column)
    if label_column:
        keep, w = drop_unlabelled(labels, path, line_of=rows.line)
        if w:
            warnings.append(w)
        if not keep:
            raise DataError(f"{path} has no row with both a text and a label")
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return texts, labels, warnings


def _header_of(path: Path) -> list[str]:
    from . import _header
    return _header(path)


def _file_part(path: Path, text_column, label_column, warnings) -> Part:
    t, y, w, _, rows = _read(path, text_column, label_column)
    warnings += w
    return Part(t, y, str(path), lines=rows.line)


def read_parts(path: Path, eval_only: bool = False, text_column: str = "text", label_column: str = "label",
               split_column: str = "split", **_) -> Parts:
    """Parts of a text source: a folder's train.csv / val.csv / test.csv, or one CSV (its
    split column's parts, else all of it). ``eval_only`` reads only the file evaluation scores."""
    path = Path(path)
    warnings: list[str] = []
    if path.is_dir():
        files = {"train": path / "train.csv" if (path / "train.csv").is_file() else None,
                 "val": next((path / n for n in VAL_FILES if (path / n).is_file()), None),
                 "test": next((path / n for n in TEST_FILES if (path / n).is_file()), None)}
        if eval_only:
            first = next((k for k in ("test", "val", "train") if files[k] is not None), None)
            files = {first: files[first]} if first else {}
        if not files.get("train") and not eval_only:
            raise DataError(f"{path} is a folder without train.csv: give a CSV of text,label or a folder "
                            "with train.csv (and test.csv)")
        if not any(files.values()):
            raise DataError(f"{path} has no test.csv, val.csv or train.csv to evaluate on")
        if not eval_only and files["test"] and label_column not in _header_of(files["test"]):
            warnings.append(f"{files['test']} has no {label_column!r} column: it is not scored as a test split "
                            "(`rehead predict RUN` labels it)")
            files["test"] = None
        parts = {k: _file_part(f, text_column, label_column, warnings) for k, f in files.items() if f}
        return Parts(parts, str(path), warnings=warnings, labels_from=label_column,
                     files=[str(f.absolute()) for f in files.values() if f])
    t, y, w, header, rows = _read(path, text_column, label_column)
    warnings += w
    if has_split_column(header, split_column, path):
        values = column(header, rows, split_column, path)
        idx = split_column_parts(values, path)
        parts = {k: Part([t[i] for i in ix], [y[i] for i in ix], split_where(path, k, values, ix),
                         lines=[rows.line[i] for i in ix]) for k, ix in idx.items()}
    else:
        parts = {"all": Part(t, y, str(path), lines=rows.line)}
    return Parts(parts, str(path), warnings=warnings, labels_from=label_column, files=[str(path.absolute())])


TEXT_FILES = (".csv", ".txt")


def input_texts(arg: str, text_column: str = "text") -> list[str]:
    """For ``predict``: a CSV's text column (the column the fit read) or a .txt file's non-empty
    lines, else the argument itself as one text. A missing .csv / .txt, a folder or another file is
    an error, not a text to classify: "new.csv" scored as a sentence is a silent wrong answer."""
    if not arg.strip():  # a shell variable that expanded to nothing, most likely: no text to classify
        raise DataError("an empty text was given: pass the texts, a CSV of texts or a .txt file (one text a line)")
    p = Path(arg)
    try:
        exists = "\n" not in arg and os.path.lexists(arg)
    except (OSError, ValueError):  # a sentence too long for a file name
        exists = False
    if not exists:
        if p.suffix.lower() in TEXT_FILES and not any(c.isspace() for c in arg):
            raise DataError(f"{arg} does not exist")
        return [arg]  # a text (a sentence that ends in ".csv" is still a sentence)
    if p.is_dir():
        raise DataError(f"{arg} is a folder: give texts, a CSV of texts or a .txt file (one text a line)")
    if not p.is_file():
        raise DataError(f"{arg} is not a regular file")
    if p.suffix.lower() not in TEXT_FILES:
        raise DataError(f"{arg} is a file, not a text: this run classifies texts; give them as arguments, in a CSV "
                        "or in a .txt file (one text a line)")
    if p.suffix.lower() == ".csv":
        header, rows = read_rows(p)
        if text_column not in header:
            raise DataError(f"{arg} has no {text_column!r} column (columns: {', '.join(header)}): the run reads texts "
                            f"from the column {text_column!r}: name the column that holds them with --text-column")
        texts = column(header, rows, text_column, p)
        if not any(texts):
            raise DataError(f"{arg} has no text in its {text_column!r} column")
        if not all(texts):  # a row left out would shift every prediction after it
            raise DataError(f"{arg}: {texts.count('')} row(s) with empty text "
                            f"({lines([i for i, t in enumerate(texts) if not t], rows.line)}): fill or delete them")
        return texts
    try:
        texts = [t.strip() for t in p.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError:
        raise DataError(f"{arg} is not UTF-8 text: re-save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read {arg}: {e.strerror or e}") from None
    if not any(texts):
        raise DataError(f"{arg} has no text: one text a line")
    return [t for t in texts if t]


# -- the pipeline interface (see rehead.data.pipeline) -------------------------------------
unit = "sent"


def resolve(item) -> str:
    """The text of an item: itself, or the text a reference into a tar shard, an Arrow or a Parquet
    file points to (read when needed). A string that only looks like a reference (its file does
    not exist) is taken as text."""
    if refs.is_ref(item):
        try:
            if os.path.isfile(refs.container(item)):
                return refs.read_text(item)
        except refs.RefError as e:
            raise DataError(str(e)) from None
    return str(item)


def sample_key(item: str, cache, backbone) -> str:
    cfg = backbone.data_config
    ident = f"{cfg.get('tokenizer_id')}|{cfg.get('max_length')}|".encode()
    return hashlib.sha256(ident + resolve(item).encode("utf-8")).hexdigest()


def batch_len(inputs, idx) -> int:
    return len(idx)


class TextItems(torch.utils.data.Dataset):
    def __init__(self, texts: list[str], labels: list[int] | None):
        self.texts, self.labels = texts, labels

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return i, resolve(self.texts[i]), (self.labels[i] if self.labels is not None else -1)


def token_lengths(backbone, items: list[str], chunk: int = 1024) -> list[int]:
    """Tokens per text after truncation (word counts for a tokenizer without a mask)."""
    out = []
    for i in range(0, len(items), chunk):
        part = [resolve(t) for t in items[i:i + chunk]]
        mask = backbone.tokenize(part).get("attention_mask")
        out += mask.sum(1).tolist() if mask is not None else [len(t.split()) for t in part]
    return out


def prepare_backbone(backbone, ds, echo=None) -> None:
    """Before extraction or training, once for every split: what the backbone's loading left unsaid
    (transformers' load report, kept quiet) and how many texts its max length cuts."""
    if echo is None:
        return
    for note in getattr(backbone, "load_notes", ()):
        echo(note)
    count = getattr(backbone, "count_truncated", None)
    if count is None:
        return
    # texts held inline; a reference into a shard would be read a second time just to count
    texts = [t for s in (ds.train, ds.val, ds.test) if s is not None for t in s.items if not refs.is_ref(t)]
    cut, ml = count(texts), backbone.data_config["max_length"]
    if cut:
        echo(f"note: {cut} of {len(texts)} texts are longer than {ml} tokens, the backbone's max length: "
             f"they are cut to their first {ml} tokens (the rest is not read)")


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
