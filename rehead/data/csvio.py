"""Reading CSVs and checking their labels, the same way for image, text and table CSVs.

Label policy (one for every modality): an empty or whitespace-only label drops its row from
training data with a warning that counts and locates them; at evaluation the row is left
out and counted (``EvalData.n_unlabelled``). It is never mapped to a class.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from pathlib import Path

from . import DataError
from ..config import LABEL_SEP

log = logging.getLogger(__name__)
KEPT_APART = " (each item's copies are kept on one side of the train/val split)"
NUMERIC_HINT_MIN = 20  # more distinct numeric labels than this look like a regression target


class Rows(list):
    """A CSV's data rows, each with the file line it starts on (``line``): a quoted newline
    makes a row span lines, and blank lines are skipped, so a row's index is not its line."""

    def __init__(self, rows=(), line=()):
        super().__init__(rows)
        self.line = list(line)

    def take(self, idx) -> "Rows":
        return Rows([self[i] for i in idx], [self.line[i] for i in idx])


def read_rows(path) -> tuple[list[str], Rows]:
    """(header, rows) of a UTF-8 CSV (a BOM, as Excel writes it, is accepted); blank lines
    are skipped. Every failure is a DataError that names the file; so are duplicate column
    names and rows with more cells than the header (an unquoted comma in a text)."""
    path = Path(path)
    csv.field_size_limit(1 << 24)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows, after = Rows(), reader.line_num
            for r in reader:
                if r:
                    rows.append(r)
                    rows.line.append(after + 1)
                after = reader.line_num
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                        "re-save it as UTF-8 (in Excel: Save As > 'CSV UTF-8')") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a valid CSV ({e}): check its quoting") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not header or not any(c.strip() for c in header):
        raise DataError(f"{path} is empty: a CSV needs a header row, then data rows")
    header = [c.strip() for c in header]
    if len(header) == 1 and (sep := next((c for c in ";\t|" if c in header[0]), None)):
        raise DataError(f"{path} looks separated by {sep!r}, not commas (header: {header[0][:60]!r}): rehead reads "
                        "comma-separated CSV; re-save it with commas")
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    dup = sorted(c for c, n in Counter(header).items() if n > 1)
    if dup:  # a column read by name would silently be the first of its namesakes
        raise DataError(f"{path} has duplicate column name(s) {names(dup)}: rename them so each column has its own")
    long = [i for i, r in enumerate(rows) if len(r) > len(header) and any(c.strip() for c in r[len(header):])]
    if long:
        raise DataError(f"{path}: {len(long)} row(s) have more cells than the header's {len(header)} "
                        f"({lines(long, rows.line)}): a cell holding a comma must be quoted (\"a, b\"); re-save the "
                        "file from a spreadsheet or with a CSV writer")
    return header, rows


def column(header, rows, name: str, path) -> list[str]:
    """The stripped cells of one column; short rows give ''."""
    j = header.index(name)
    return [(r[j] if j < len(r) else "").strip() for r in rows]


def lines(idx: list[int], at: list[int] | None = None) -> str:
    """'line(s) 3, 7 ...' for row indices: ``at[i]`` is row i's file line (``Rows.line``); without
    it, data row 0 is line 2 (line 1 is the header)."""
    shown = ", ".join(str(at[i] if at is not None else i + 2) for i in idx[:10])
    return f"line(s) {shown}{' ...' if len(idx) > 10 else ''}"


def drop_unlabelled(labels: list[str], where, items: list | None = None,
                    line_of: list[int] | None = None) -> tuple[list[int], str | None]:
    """Indices of labelled rows, and a warning counting the rows left out (or None). Rows are
    located by CSV line (``line_of``: each row's, see ``lines``), or, for references into shards and
    tables (``items``), by name."""
    keep = [i for i, y in enumerate(labels) if y.strip()]
    if len(keep) == len(labels):
        return keep, None
    empty = [i for i, y in enumerate(labels) if not y.strip()]
    from . import refs
    if items is not None and refs.is_ref(items[empty[0]]):
        shown = ", ".join(refs.display(items[i]) for i in empty[:3])
        at = f"e.g. {shown}{' ...' if len(empty) > 3 else ''}"
    elif str(where).startswith("<"):  # in memory (a DataFrame, a list of pairs): positions, not file lines
        pos = [line_of[i] if line_of is not None else i for i in empty]  # in memory, ``lines`` are positions
        at = f"position(s) {', '.join(map(str, pos[:10]))}{' ...' if len(pos) > 10 else ''}, counting from 0"
    else:
        at = lines(empty, line_of)
    return keep, (f"{where}: {len(empty)} row(s) with an empty label were left out ({at}): "
                  "label or delete them")


def numeric_hint(labels: list[str], where, column_name: str = "label") -> str | None:
    """A hint when labels look like a continuous number rather than classes."""
    distinct = set(labels)
    if len(distinct) <= NUMERIC_HINT_MIN:
        return None
    try:
        [float(v) for v in distinct]
    except ValueError:
        return None
    return (f"{where}: the labels in column {column_name!r} are {len(distinct)} distinct numbers: they are trained "
            "as that many classes: "
            "for a numeric target use --task regression (or bin the values into a few classes)")


def multilabel_hint(labels: list[str], where, column_name: str = "label") -> str | None:
    """A hint when multiclass labels look like label sets ('a|b'; '|' for none of them)."""
    sets = Counter(y for y in labels if LABEL_SEP in y)
    if not sets:
        return None
    many = [y for y, _ in sets.most_common() if sum(bool(c.strip()) for c in y.split(LABEL_SEP)) > 1]
    example = many[0] if many else sets.most_common(1)[0][0]
    empty = sum(n for y, n in sets.items() if not y.replace(LABEL_SEP, "").strip())
    none = (f"; its {empty} row(s) labelled {LABEL_SEP!r}, none of the labels under multilabel, are a class named "
            f"{LABEL_SEP!r}") if empty else ""
    return (f"{where}: labels like {example!r} in column {column_name!r} look like several labels per row: "
            f"--task multilabel reads them so (--task multiclass makes each distinct cell a class{none})")


def duplicate_report(items: list, labels: list[str], where, split: bool = False) -> list[str]:
    """Warnings for items listed more than once: conflicting labels first, then plain repeats.
    ``split``: rehead carves val out of these rows, keeping each item's copies on one side."""
    side = KEPT_APART if split else ""
    seen: dict = defaultdict(list)
    for it, y in zip(items, labels):
        seen[_key(it)].append(y)
    out = []
    conflict = {k: ys for k, ys in seen.items() if len(set(ys)) > 1}
    if conflict:
        k, ys = next(iter(conflict.items()))
        out.append(f"{where}: {len(conflict)} item(s) carry conflicting labels, e.g. {_show(k)} is labelled "
                   f"{' and '.join(map(repr, sorted(set(ys))))}: keep one label per item{side}")
    repeats = sum(len(ys) - 1 for k, ys in seen.items() if len(ys) > 1 and k not in conflict)
    if repeats:
        out.append(f"{where}: {repeats} repeated row(s) (same item, same label): they weigh double in "
                   f"training{side}; remove the copies")
    return out


def require_distinct(items: list, where) -> None:
    """Rows that are all one item (the same text in every row: a wrong --text-column) leave nothing
    to learn from: refused before any work, not a solver's crash on constant features."""
    if len(items) > 1 and len(set(map(_key, items))) == 1:
        raise DataError(f"{where}: all {len(items)} rows have the same input ({_show(_key(items[0]))}): nothing tells "
                        "their labels apart; check the input column (--text-column, --image-column)")


def overlap_report(a: list, b: list, a_name: str, b_name: str, where) -> str | None:
    """A warning when the same item is in two splits (the held-out numbers are then optimistic)."""
    both = set(map(_key, a)) & set(map(_key, b))
    if not both:
        return None
    return (f"{where}: {len(both)} item(s) are in both {a_name} and {b_name}, e.g. {_show(next(iter(both)))}: "
            f"the {b_name} score is optimistic; remove them from one side")


def once_report(labels: list[str], where) -> str | None:
    once = sorted(c for c, n in Counter(labels).items() if n == 1)
    if not once:
        return None
    return (f"{where}: label(s) {names(once)} appear only once: the model can hardly learn "
            "a class from one example; add examples or merge the label")


def names(xs, n: int = 8) -> str:
    """'a', 'b', 'c' ... (N in all): a message stays one readable line however many there are."""
    xs = list(xs)
    shown = ", ".join(map(repr, xs[:n]))
    return shown if len(xs) <= n else f"{shown} ... ({len(xs)} in all)"


def _key(item):
    return tuple(item) if isinstance(item, list) else item


def _show(k) -> str:
    s = repr(k)
    return s if len(s) <= 80 else s[:77] + "...'"
