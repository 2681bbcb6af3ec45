"""Tabular data: a CSV of numeric feature columns, one label column, optional id and split columns.

An item is a reference to one row, ``"/abs/path/table.csv#ROW"`` (ROW counts data rows
from 0, blank lines not counted), so run directories stay small and ``evaluate RUN`` can reread its val rows.
A plain sequence of numbers is accepted as an item too (the Python API).

Which columns are features: every column except the label, id and split columns, in file
order. A backbone fitted on a table records its feature columns (``data_config["columns"]``)
and later tables are read by those names, so column order and extra columns do not matter.

Standardisation is not done here: the encoder holds the training-row mean/std as buffers
(see ``rehead.zoo.tabular``), fitted by ``prepare_backbone`` on training rows only, so
they travel with the weights and predict/evaluate standardise identically.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from . import DataError, Dataset, Part, Parts
from .csvio import read_rows
from .splits import has_split_column, split_column_parts, split_where

MODALITY = "tabular"


class Table:
    """A parsed CSV: header, raw string cells. Numeric conversion happens per column on demand."""

    def __init__(self, path: Path, header: list[str], rows: list[list[str]]):
        self.path, self.header, self.rows = path, header, rows
        self.index = {c: i for i, c in enumerate(header)}
        self._numeric: dict[tuple, np.ndarray] = {}

    def column(self, name: str) -> list[str]:
        j = self.index[name]
        return [r[j] for r in self.rows]

    def _at(self, i: int) -> str:
        """Where data row ``i`` is in the file, for messages."""
        line = getattr(self.rows, "line", None)
        return f"line {line[i]}" if line else f"row {i + 1}"

    def matrix(self, columns: list[str]) -> np.ndarray:
        """(rows, columns) float32; empty / NaN cells become NaN; other text is an error."""
        key = tuple(columns)
        if key not in self._numeric:
            missing = [c for c in columns if c not in self.index]
            if missing:
                raise DataError(f"{self.path} lacks feature column(s) the model was trained on: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                                f"({len(missing)} missing)")
            cols = [self.index[c] for c in columns]
            cells = np.char.strip(np.array([[r[j] for j in cols] for r in self.rows], dtype=str).reshape(len(self.rows), len(cols)))
            cells = np.where(np.isin(np.char.lower(cells), ("", "na", "nan")), "nan", cells)  # not in place: '<U1' would cut "nan"
            try:
                out = cells.astype(np.float32)  # vectorised; the slow path below only names the bad cell
            except ValueError:
                for i, k in np.ndindex(cells.shape):
                    try:
                        float(cells[i, k])
                    except ValueError:
                        raise DataError(
                            f"{self.path}: column {columns[k]!r}, {self._at(i)} holds {str(cells[i, k])!r}, which is not "
                            "a number. Tabular features must be numeric: when fitting, leave identifier columns out "
                            "with --id-columns, encode categories as numbers, or for text data name the text "
                            "column with --text-column") from None
                raise
            bad = np.argwhere(np.isinf(out))
            if len(bad):
                i, k = bad[0]
                raise DataError(f"{self.path}: {len(bad)} infinite cell(s) (or beyond float32's range, |v| > 3.4e38), "
                                f"first in column {columns[k]!r}, {self._at(i)}: replace them with finite numbers")
            self._numeric[key] = out
        return self._numeric[key]


_TABLES: dict[tuple, Table] = {}


def read_table(path) -> Table:
    """Parse a CSV once per (path, size, mtime); later reads of the same file are free."""
    path = Path(path).resolve()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _TABLES:
        header, rows = read_rows(path)
        bad = [rows.line[i] for i, r in enumerate(rows) if len(r) != len(header)]
        if bad:
            raise DataError(f"{path}: line(s) {', '.join(map(str, bad[:5]))} have a different number of "
                            f"cells than the header ({len(header)})")
        _TABLES.clear()  # keep one table in memory: tables can be large
        _TABLES[key] = Table(path, header, rows)
    return _TABLES[key]


WHOLE = re.compile(r"[+-]?\d+(\.0*)?")


def label_cells(table: Table, name: str) -> list[str]:
    """A label column's stripped cells, as written; but a column of whole numbers written as floats reads as
    the whole numbers ("1.0" -> "1"): pandas writes an int column with an empty cell as floats (0 -> 0.0), so
    the classes the user gave as 0 and 1 came back as "0.0" and "1.0"."""
    cells = [v.strip() for v in table.column(name)]
    given = [v for v in cells if v]
    if not any("." in v for v in given) or not all(WHOLE.fullmatch(v) for v in given):
        return cells
    return [str(int(v.split(".")[0])) if "." in v else v for v in cells]


def feature_columns(table: Table, label_column, id_columns, split_column) -> list[str]:
    skip = set(id_columns) | {split_column} | set([label_column] if isinstance(label_column, str) else label_column or [])
    cols = [c for c in table.header if c not in skip]
    if not cols:
        raise DataError(f"{table.path} has no feature columns left after the label/id/split columns")
    return cols


ID_NAMES = {"id", "index", "idx", "patient", "sample", "subject", "row", "unnamed: 0", ""}


def id_like(table: Table, cols: list[str]) -> list[str]:
    """Feature columns that look like row identifiers: named like one, or holding a distinct whole
    number per row that together make a run of consecutive numbers (1..N). Read as a feature, such a
    column lets a model learn the row order (golub's "patient" numbers its training rows ALL first,
    then AML)."""
    out = []
    for c in cols:
        name = c.strip().lower()
        if name in ID_NAMES or name.endswith(("_id", " id")):
            out.append(c)
            continue
        cells = table.column(c)
        if len(cells) < 10 or not all(v.strip().isdigit() for v in cells):
            continue
        v = sorted(int(x) for x in cells)
        if len(set(v)) == len(v) and v[-1] - v[0] == len(v) - 1:
            out.append(c)
    return out


def id_warning(table: Table, cols: list[str]) -> str | None:
    ids = id_like(table, cols)
    return id_message(table.path, ids) if ids else None


def id_message(where, ids: list[str], pretrained: bool = False) -> str:
    """The warning for identifier-like columns a model reads; a pretrained encoder reads its own columns,
    so the fix is in its pretraining, not in this fit's --id-columns."""
    shown = ", ".join(repr(c) for c in ids[:5]) + (" ..." if len(ids) > 5 else "")
    if pretrained:
        return (f"{where}: column(s) {shown} look like row identifiers and the encoder reads them (it was pretrained "
                "with them as features; a model can learn the row order from them): pretrain it again leaving them "
                f"out with --id-columns {','.join(ids)}")
    return (f"{where}: column(s) {shown} look like row identifiers and are read as features (a model can "
            f"learn the row order from them): leave them out with --id-columns {','.join(ids)}")


def _as_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [c.strip() for c in v.split(",") if c.strip()]
    return list(v)


def load_table(path, label_column: str = "label", id_columns=None, split_column: str = "split",
               eval_only: bool = False, val_fraction: float = 0.2, seed: int = 0,
               missing: str = "error", **_) -> Dataset:
    """A CSV as a Dataset of row references (see :func:`read_parts` for the splits);
    ``missing``: ``error`` (default) or ``mean`` (empty cells take the training mean of
    their column)."""
    from . import load_dataset
    return load_dataset(path, "tabular", val_fraction=val_fraction, seed=seed, eval_only=eval_only,
                        label_column=label_column, id_columns=id_columns, split_column=split_column,
                        missing=missing)


def _some(header: list[str]) -> str:
    return ", ".join(header[:8]) + (" ..." if len(header) > 8 else "")


def read_parts(path, eval_only: bool = False, label_column: str = "label", id_columns=None,
               split_column: str = "split", missing: str = "error", text_column: str = "text", **_) -> Parts:
    """Parts of a table: with ``split_column`` (default ``split``), its train / val / test
    rows (values: see rehead.data.splits.SPLIT_VALUES); else all rows. Rows with an empty
    label are left out and counted (never scored as a class)."""
    table = read_table(path)
    ids = _as_list(id_columns)
    if label_column not in table.index:
        raise DataError(f"{table.path} has no column {label_column!r} (columns: {_some(table.header)}): rehead looked "
                        f"for 'path' (an image CSV of path,label: name yours with --image-column), {text_column!r} "
                        "(text: name yours with "
                        "--text-column) or a label column (a table: name it with --label-column)")
    for c in ids:
        if c not in table.index:
            raise DataError(f"{table.path} has no column {c!r} (columns: {_some(table.header)}): "
                            "name the label with --label-column and identifiers with --id-columns")
    if missing not in ("error", "mean"):
        raise DataError(f"missing must be 'error' or 'mean', got {missing!r}")
    # Cells are parsed later, for the columns the model actually reads (a pretrained encoder
    # reads its own columns by name, so extra text columns in the table are no obstacle).
    cols = feature_columns(table, label_column, ids, split_column)
    labels = label_cells(table, label_column)  # classes 0 and 1, not "0.0" and "1.0" (pandas's floats)
    items = [f"{table.path}#{i}" for i in range(len(table.rows))]
    fj = [table.index[c] for c in cols]
    keys = [tuple(r[j] for j in fj) for r in table.rows]  # same cells = same sample
    if has_split_column(table.header, split_column, table.path):
        values = [v.strip() for v in table.column(split_column)]
        idx = split_column_parts(values, table.path)
        where = {k: split_where(table.path, k, values, ix) for k, ix in idx.items()}
    else:
        idx, where = {"all": list(range(len(items)))}, {"all": str(table.path)}
    at = getattr(table.rows, "line", None)
    parts = {k: Part([items[i] for i in ix], [labels[i] for i in ix], where[k], [keys[i] for i in ix],
                     [at[i] for i in ix] if at else None) for k, ix in idx.items()}
    # Identifier-like columns are warned of by prepare_backbone, once the model is known: a pretrained
    # encoder reads its own columns, and a warning here said 'read as a feature' of a column it never reads.
    return Parts(parts, str(table.path), files=[str(table.path)], labels_from=label_column,
                 info={"features": len(cols), "missing": missing},
                 extra={"feature_columns": cols, "missing": missing,
                        "id_like": [] if eval_only else id_like(table, cols),
                        "held_columns": [c for c in table.header if c not in cols]})


def row_tables(items) -> set[str]:
    """The tables that row references ("/path/t.csv#7") name: a record of rows by number holds
    only while those files are as they were (their fingerprint; other items are left out)."""
    return {path for path, _, row in (str(it).rpartition("#") for it in items if isinstance(it, str))
            if path and row.isdigit()}


def row_ref(item) -> tuple[str, int]:
    """(path, row) of a table row reference ``/path/table.csv#ROW``."""
    path, _, row = str(item).rpartition("#")
    if not path or not row.isdigit():
        raise DataError(f"{item!r} is not a table row reference (expected /path/table.csv#ROW)")
    return path, int(row)


def row_cells(items: list, columns: list[str]) -> list[tuple]:
    """Each table row reference ("t.csv#7") as its stripped cells in ``columns``: what makes two rows
    the same sample, whichever file or position they are at. A file lacking a column gives ()."""
    out, tables = [], {}
    for it in items:
        path, row = row_ref(it)
        if path not in tables:  # one lookup per file, not per row
            t = read_table(path)
            tables[path] = (t, [t.index.get(c) for c in columns])
        t, js = tables[path]
        out.append(() if None in js else tuple(t.rows[row][j].strip() for j in js))
    return out


def rows_of(items: list, columns: list[str]) -> np.ndarray:
    """Raw feature values (N, F) float32 of row references or number sequences."""
    out, matrices = [], {}
    for it in items:
        if isinstance(it, str):
            path, r = row_ref(it)
            if path not in matrices:  # one lookup per file, not per row: gene tables are wide
                table = read_table(path)
                matrices[path] = table.matrix(columns)
            m = matrices[path]
            if r >= len(m):
                raise DataError(f"{path} has {len(m)} rows, no row {r}")
            out.append(m[r])
        else:
            v = np.asarray(it, dtype=np.float32)
            if v.shape != (len(columns),):
                raise DataError(f"a row of {v.size} values was given; the model expects {len(columns)} features")
            out.append(v)
    return np.stack(out) if out else np.zeros((0, len(columns)), np.float32)


def expand_inputs(inputs: list[str]) -> list:
    """For ``predict``: each CSV given expands to references to all its rows."""
    items = []
    for s in inputs:
        t = read_table(s)
        items += [f"{t.path}#{i}" for i in range(len(t.rows))]
    return items


def predict_items(x, columns: list[str]) -> list:
    """What a table run predicts on, as items, one a row: a CSV path (all its rows, read by the fit's
    column names, as ``rehead predict`` reads one), a DataFrame (by column names), a 2-D array (rows x
    features in the fit's column order; 1-D: one row), or a list of rows (number sequences, dicts of
    column: value, row references ``t.csv#7``, CSV paths)."""
    if isinstance(x, (str, Path)):
        x = [x]
    if hasattr(x, "columns") and hasattr(x, "iloc"):
        return frame_rows(x, columns)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return list(_matrix(x, columns))
    if not isinstance(x, (list, tuple)):
        raise DataError(f"cannot predict on a {type(x).__name__}: a table run takes a CSV path, a DataFrame with "
                        f"the fit's columns ({_some(columns)}), a 2-D array of {len(columns)} features a row, or a "
                        "list of rows")
    if x and all(isinstance(it, dict) for it in x):  # rows as {column: value}: read by name, as a DataFrame's
        import pandas as pd
        return frame_rows(pd.DataFrame(list(x)), columns)
    items = []
    for it in x:
        if isinstance(it, (str, Path)) and not _is_row_ref(str(it)):
            items += expand_inputs([str(it)])
        else:
            items.append(it)
    return items


def _is_row_ref(s: str) -> bool:
    path, _, row = s.rpartition("#")
    return bool(path) and row.isdigit()


def frame_rows(df, columns: list[str]) -> list:
    """A DataFrame's rows as feature vectors, by the fit's column names (others, the label, ignored)."""
    names = {str(c): c for c in df.columns}
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"the DataFrame lacks feature column(s) the model was trained on: {_some(missing)} "
                        f"({len(missing)} missing; its columns: {_some([str(c) for c in df.columns])}): name its "
                        "columns as the fit's table did, or pass df.to_numpy() in the fit's column order")
    return list(_matrix(df[[names[c] for c in columns]], columns))


def _matrix(x, columns: list[str]) -> np.ndarray:
    """(rows, features) float32 of an array or DataFrame; a 1-D array is one row."""
    try:
        a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    except (TypeError, ValueError):
        bad = next((str(c) for c in getattr(x, "columns", []) if not _numeric_column(x[c])), None)
        raise DataError(f"table features must be numbers: {'column ' + repr(bad) if bad else 'the array'} holds "
                        "other values; encode them as numbers") from None
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] != len(columns):
        raise DataError(f"a {'x'.join(map(str, a.shape))} array was given: the model takes rows of {len(columns)} "
                        f"features ({_some(columns)}), one row per prediction")
    return a


def _numeric_column(col) -> bool:
    try:
        np.asarray(col, dtype=np.float32)
        return True
    except (TypeError, ValueError):
        return False


# -- fitting the encoder's input standardisation ---------------------------------------------
def prepare_backbone(backbone, ds: Dataset, echo=None) -> None:
    """Before training: an encoder that has not seen data yet records the table's feature
    columns and fits its standardisation on the training rows only; a pretrained encoder
    checks that the table has the columns it was trained on, and that none is held out here."""
    cols = getattr(ds, "feature_columns", None)
    if cols is None:
        raise DataError("a tabular backbone needs a table loaded with rehead.data.tabular.load_table")
    missing = getattr(ds, "missing", "error")
    items = ds.train.items + ds.val.items
    if backbone.is_fitted():
        check_encoder_columns(backbone.data_config, ds, echo)
        cols = backbone.data_config["columns"]
        missing = backbone.data_config.get("missing", "error")
        check_values(rows_of(items, cols), cols, ds.source, missing, items)
        columns_read(ds, cols, echo, pretrained=True)
        return
    x = rows_of(items, cols)  # a non-numeric column first: its fix changes the feature count
    if len(cols) != backbone.in_features:
        raise DataError(f"{backbone.spec} takes {backbone.in_features} features but the table has {len(cols)} "
                        f"feature columns: use tabular:mlp-{len(cols)}-<width>x<depth>, or leave columns out "
                        "with --id-columns")
    check_values(x, cols, ds.source, missing, items)
    backbone.fit_scaler(rows_of(ds.train.items, cols), cols, missing)
    columns_read(ds, cols, echo, pretrained=False)


def columns_read(ds: Dataset, cols: list[str], echo=None, pretrained: bool = False) -> None:
    """What the model reads of the table, said and recorded once it is known: the feature count (a pretrained
    encoder's columns, not the table's), and a warning for the identifier-like columns among them only."""
    ds.info = {**ds.info, "features": len(cols)}  # a new dict: a caller's Dataset may share the old one
    ids = [c for c in getattr(ds, "id_like", ()) if c in cols]
    if not ids:
        return
    w = id_message(ds.source, ids, pretrained)
    ds.info["warnings"] = [*ds.info.get("warnings", []), w]  # the run's record of its data warnings
    if echo:
        echo(f"warning: {w}")


def column_hint(ds: Dataset) -> str:
    """'; if column 'sentence' holds texts, pass --text-column sentence' when a feature column of the
    table reads as sentences (words with spaces, not numbers), '; if column 'file' lists image files, pass
    --image-column file' when most of its cells name image files: a text or image CSV whose column is named
    otherwise than 'text' / 'path' is read as a table, and the fix is that option, not a table encoder."""
    from .images import IMAGE_EXTS
    try:
        table = read_table(ds.source)
    except (DataError, OSError, TypeError):
        return ""
    for c in getattr(ds, "feature_columns", ()):
        cells = [v.strip() for v in table.column(c)[:200]]
        if sum(os.path.splitext(v)[1].lower() in IMAGE_EXTS for v in cells) > len(cells) / 2:
            return (f"; if column {c!r} lists image files, pass --image-column {c} (an image CSV's column is "
                    "'path' by default)")
        if sum(" " in v and not _is_number(v) for v in cells) > len(cells) / 2:
            return f"; if column {c!r} holds texts, pass --text-column {c} (a text CSV's column is 'text' by default)"
    return ""


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def check_encoder_columns(data_config: dict, ds: Dataset, echo=None) -> None:
    """A pretrained encoder reads the columns it was pretrained on, by name. One of them being this
    fit's label, id or split column would hand the model its answer (val 1.0 on noise): refused.
    The table's feature columns it does not read are said."""
    enc = data_config.get("columns") or []
    held = set(getattr(ds, "held_columns", ()))
    leak = [c for c in enc if c in held]
    if leak:
        raise DataError(f"the encoder reads column(s) {', '.join(map(repr, leak))} as input (it was pretrained with "
                        f"them as features), but this fit holds them out as its label, id or split column: the model "
                        "would read its answer. Pretrain it again naming them (--label-column, --id-columns)")
    unread = [c for c in getattr(ds, "feature_columns", ()) if c not in enc]
    if unread and echo:
        echo(f"note: the encoder reads the {len(enc)} column(s) it was pretrained on; {len(unread)} other column(s) "
             f"of {ds.source} are not read: {', '.join(map(repr, unread[:8]))}{' ...' if len(unread) > 8 else ''}")


def check_values(x: np.ndarray, cols: list[str], where, missing: str, items: list | None = None) -> None:
    """``missing='error'``: an empty or NaN cell is an error naming the first one's file line (``items``: x's rows)."""
    if missing == "error" and np.isnan(x).any():
        rows = np.flatnonzero(np.isnan(x).any(1))
        i = min(rows, key=lambda r: _line(items[r]) or 0) if items else rows[0]  # train+val: not file order
        j = int(np.flatnonzero(np.isnan(x[i]))[0])
        at = f"line {_line(items[i])}" if items and _line(items[i]) else f"row {i + 1} of those read"
        raise DataError(f"{where}: {int(np.isnan(x).sum())} empty or NaN cell(s), first in column {cols[j]!r}, {at}: "
                        "fill them, or pass missing='mean' (--missing mean) to replace them by the training mean of "
                        "their column")


def _line(item) -> int | None:
    """The file line (header = line 1) of a table row reference; None for values given directly."""
    if not isinstance(item, str):
        return None
    path, row = row_ref(item)
    return read_table(path).rows.line[row]


# -- the pipeline interface (see rehead.data.pipeline) ---------------------------------------
unit = "row"


def sample_key(item, cache, backbone) -> str:
    v = rows_of([item], backbone.data_config["columns"])[0]
    return hashlib.sha256(v.tobytes()).hexdigest()


def batch_len(inputs, idx) -> int:
    return len(idx)


class RowDataset(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, labels):
        self.x, self.labels = torch.from_numpy(x), labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i, self.x[i], (self.labels[i] if self.labels is not None else -1)


def make_loader(backbone, items, labels, batch_size=32, workers=2, strict=False, shuffle=False,
                transform=None, generator=None, drop_last=False):
    cols = backbone.data_config.get("columns")
    if cols is None:
        raise DataError(f"{backbone.spec} has not been fitted to a table yet (no feature columns): "
                        "train it with `rehead fit TABLE` or `rehead pretrain TABLE` first")
    x = rows_of(items, cols)
    if np.isnan(x).any() and backbone.data_config.get("missing", "error") != "mean":
        i, j = np.argwhere(np.isnan(x))[0]
        if isinstance(items[i], str):  # a reference (rows_of read it); else values given directly
            path, row = row_ref(items[i])
            first = f"{Path(path).name} data row {row + 1}"
        else:
            first = f"row {i + 1} of those given"
        at = f" (line {_line(items[i])})" if isinstance(items[i], str) else ""
        raise DataError(f"{int(np.isnan(x).any(1).sum())} row(s) have empty/NaN features, first {first} "
                        f"in column {cols[j]!r}{at}: this model was fitted with --missing error and cannot fill them; "
                        "fill them, or fit again with --missing mean")
    # Rows are in memory already: worker processes would only add start-up time.
    return torch.utils.data.DataLoader(RowDataset(x, labels), batch_size=batch_size, shuffle=shuffle,
                                       num_workers=0, generator=generator, drop_last=drop_last)


def example_input(backbone) -> torch.Tensor:
    return torch.zeros(2, backbone.in_features)

