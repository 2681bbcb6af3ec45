"""From parts read off a source to a Dataset (training) or EvalData (scoring), the same way
for every modality; and split.json, which lets ``--resume`` rebuild exactly those splits."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from . import DataError, Dataset, EvalData, Part, Parts, Samples, refs, stratified_split
from ..config import LABEL_SEP as SEP
from ..config import VAL_FRACTION
from .csvio import (KEPT_APART, _key, drop_unlabelled, duplicate_report, multilabel_hint, names, numeric_hint,
                    once_report, overlap_report, require_distinct)

log = logging.getLogger(__name__)

# Values of a split column. Anything else is an error: a typo must not silently become val.
SPLIT_VALUES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                "test": ("test", "testing", "holdout", "independent")}
EVAL_ORDER = ("test", "val", "all")  # what `evaluate RUN DATA` scores, first found


def sorted_classes(names) -> list[str]:
    """Class names in order: by value when every name is a whole number (a WebDataset's .cls
    indices, folders 0..12: '2' before '10'), else as strings, as torchvision's ImageFolder sorts."""
    names = set(names)
    if names and all(re.fullmatch(r"[+-]?\d+", n.strip()) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def has_split_column(columns, split_column: str, where) -> bool:
    """Whether rows are split by a column. The default 'split' is optional; a column named with
    --split-column must be there: read as one unsplit table, its split would be silently lost."""
    if split_column in columns:
        return True
    if split_column != "split":
        raise DataError(f"{where} has no column {split_column!r} (--split-column); its columns: {names(columns)}: "
                        "name the column that says train / val / test, or leave --split-column out")
    return False


def split_column_parts(values: list[str], where) -> dict[str, list[int]]:
    """Row indices per split from a split column's values."""
    to_name = {v: name for name, vs in SPLIT_VALUES.items() for v in vs}
    out: dict[str, list[int]] = {}
    bad = []
    for i, v in enumerate(values):
        name = to_name.get(v.strip().lower())
        if name is None:
            bad.append(i)
        else:
            out.setdefault(name, []).append(i)
    if bad:
        seen = sorted({values[i] for i in bad})
        raise DataError(f"{where}: split value(s) {', '.join(map(repr, seen[:5]))} on {len(bad)} row(s) are not "
                        f"train, val or test (accepted: {', '.join(v for vs in SPLIT_VALUES.values() for v in vs)}): "
                        "fix them, or name another column with --split-column")
    return out


def split_where(source, name: str, values: list[str], ix: list[int]) -> str:
    """Where a split's rows come from, by the values the file holds: golub's 'independent' rows are
    its test split, said as split=independent, not as a value the file does not have."""
    raw = sorted({values[i].strip() for i in ix})
    return f"{source} (split={'/'.join(raw) if raw else name})"


# -- training data ---------------------------------------------------------------------------
def assemble(modality: str, parts: Parts, val_fraction: float, seed: int, task: str = "multiclass") -> Dataset:
    """Parts -> Dataset: unlabelled rows dropped and counted, labels checked, unreadable items
    dropped and classes recounted, val carved from train when the source has none."""
    if task != "multiclass":
        return assemble_task(modality, parts, val_fraction, seed, task)
    warnings = list(parts.warnings)
    named = {k: _labelled(p, warnings) for k, p in parts.parts.items()}
    base_name = "all" if "all" in named else "train"
    if base_name not in named:
        have = ", ".join(named) or "nothing"
        raise DataError(f"{parts.source} has no training data (found: {have}): give a train split "
                        "(train/ folder, train.csv, or split=train rows)")
    base = named[base_name]
    if not base.items:
        raise DataError(f"{base.where} has no labelled row: fill its label column (--label-column names it)")
    classes = sorted_classes(base.labels)
    hint = (numeric_hint(base.labels, base.where, parts.labels_from)
            or multilabel_hint(base.labels, base.where, parts.labels_from)) if parts.labels_from else None
    if hint:
        warnings.append(hint)
    if len(classes) < 2:
        raise DataError(f"{base.where} has a single class (a single label: {classes[0] if classes else 'none'!r}): "
                        "a classifier needs at least two classes" + (f". {hint}" if hint else ""))
    require_distinct(_keys(base), base.where)
    _report_duplicates(named, warnings, _carved(named, base_name))
    if base_name == "train":
        once = once_report(base.labels, base.where)
        if once:
            warnings.append(once)
    for k in ("val", "test"):
        if k in named:
            extra = sorted(set(named[k].labels) - set(classes))
            if extra:
                raise DataError(f"{named[k].where} has label(s) not in {base.where}: {names(extra)}: "
                                "every class must have training samples" + (f". {hint}" if hint else ""))
    named = {k: _drop_skipped(p, parts.skipped) for k, p in named.items()}
    for k in ("val", "test"):
        if k in named and not named[k].items:  # e.g. a test.csv whose labels are all empty
            warnings.append(f"{named.pop(k).where} has no labelled, readable sample: it is not used as {k}")
    skipped = list(parts.skipped)
    if skipped:
        warnings.append(_skipped_warning(parts.skipped))
    _require_each_class(classes, named[base_name], parts.skipped, hint)
    index = {c: i for i, c in enumerate(classes)}

    def samples(p: Part) -> Samples:
        return Samples(list(p.items), [index[y] for y in p.labels])
    if base_name == "all":
        readable = samples(named["all"])
        tr, va = _split_all(named["all"], val_fraction, seed, hint)  # copies of an item kept on one side
        _said_leaks(_keys(named["all"]), tr, va, named["all"].where, warnings)
        train, val, test = readable.subset(tr), readable.subset(va), None
        how = f"stratified {val_fraction:.0%} val, seed {seed}"
    else:
        train_all, test = samples(named["train"]), samples(named["test"]) if "test" in named else None
        if "val" in named:
            train, val = train_all, samples(named["val"])
            how = f"train: {named['train'].where}; val: {named['val'].where}"
            warnings += _own_val(val_fraction, named["val"])
        else:  # classes seen once stay in train (see the once_report warning)
            tr, va = _carve(train_all.labels, val_fraction, seed, named["train"].where, hint, _keys(named["train"]))
            _said_leaks(_keys(named["train"]), tr, va, named["train"].where, warnings)
            train, val = train_all.subset(tr), train_all.subset(va)
            how = f"val: stratified {val_fraction:.0%} of {named['train'].where}, seed {seed}"
        if test is not None:
            how += f"; test (scored once, never for selection): {named['test'].where}"
    for w in warnings:
        log.info(w)  # the caller says them, once (fit, probe, evaluate...)
    info = {"split": how, **parts.info}
    if warnings:
        info["warnings"] = warnings
    return Dataset(modality, classes, train, val, parts.source, skipped=skipped, info=info, test=test,
                   files=list(parts.files))


def assemble_task(modality: str, parts: Parts, val_fraction: float, seed: int, task: str) -> Dataset:
    """Parts -> Dataset for multilabel (``a|b`` cells) and regression (numbers): the same rules
    as classes for empty labels, unreadable items, duplicates and val/test, a seeded random
    (not stratified) val."""
    if parts.labels_from is None:
        raise DataError(f"{parts.source}: --task {task} needs its labels in a CSV column ("
                        + ("'a|b' for several labels" if task == "multilabel" else "a number per row")
                        + "); class folders give one class per item: use --task multiclass, or write a CSV")
    warnings = list(parts.warnings)
    named = {k: _labelled(p, warnings) for k, p in parts.parts.items()}
    if task == "multilabel":  # an empty cell is unlabelled (dropped), as for every task; "none of them" is '|'
        warnings[:] = [w + ". An item that has none of the labels is written '|'" if "with an empty label" in w
                       else w for w in warnings]
    base_name = "all" if "all" in named else "train"
    if base_name not in named or not named[base_name].items:
        raise DataError(f"{parts.source} has no labelled training row: fill its label column (--label-column names it)")
    parse = _numbers if task == "regression" else _label_sets
    values = {k: parse(p) for k, p in named.items()}
    base = named[base_name]
    require_distinct(_keys(base), base.where)
    if task == "regression":
        classes = [parts.labels_from]
        index = None
    else:
        classes = sorted_classes(c for ys in values[base_name] for c in ys)
        index = {c: i for i, c in enumerate(classes)}
        for k in ("val", "test"):
            extra = sorted({c for ys in values.get(k, []) for c in ys} - set(classes))
            if extra:
                raise DataError(f"{named[k].where} has label(s) not in {base.where}: {names(extra)}: "
                                "every label must have training samples")
    _report_duplicates(named, warnings, _carved(named, base_name))

    def samples(k: str) -> Samples:
        p, vs = named[k], values[k]
        keep = [i for i, it in enumerate(p.items) if it not in parts.skipped]
        labels = [vs[i] if index is None else sorted(index[c] for c in vs[i]) for i in keep]
        return Samples([p.items[i] for i in keep], labels)
    built = {k: samples(k) for k in named}
    for k in ("val", "test"):
        if k in built and not built[k].items:
            warnings.append(f"{named[k].where} has no labelled, readable sample: it is not used as {k}")
            built.pop(k)
    if parts.skipped:
        warnings.append(_skipped_warning(parts.skipped))
    train_all = built[base_name]
    if task == "regression":
        _require_varying(train_all.labels, base.where, parts.labels_from)
    else:
        once = _once_labels(train_all.labels, classes, base.where, carved="val" not in built)
        if once:
            warnings.append(once)
    if "val" in built:
        train, val = train_all, built["val"]
        how = f"train: {named['train'].where}; val: {named['val'].where}"
        warnings += _own_val(val_fraction, named["val"])
    else:
        keys = [k for it, k in zip(base.items, _keys(base)) if it not in parts.skipped]  # as samples() keeps
        tr, va = _random_split(len(train_all), val_fraction, seed, base.where, keys)
        if task == "multilabel":
            tr, va = _each_label_in_train(train_all.labels, tr, va, keys)
        _said_leaks(keys, tr, va, base.where, warnings)
        train, val = train_all.subset(tr), train_all.subset(va)
        if task == "regression":
            _require_varying(train.labels, base.where, parts.labels_from, carved=True)
        how = f"random {val_fraction:.0%} val (not stratified: {task}) of {base.where}, seed {seed}"
    test = built.get("test") if base_name == "train" else None
    if test is not None:
        how += f"; test (scored once, never for selection): {named['test'].where}"
    for w in warnings:
        log.info(w)  # the caller says them, once (fit, probe, evaluate...)
    info = {"split": how, **parts.info, **({"warnings": warnings} if warnings else {})}
    return Dataset(modality, classes, train, val, parts.source, skipped=list(parts.skipped), info=info, test=test,
                   files=list(parts.files), task=task)


def _require_varying(values: list[float], where, column, carved: bool = False) -> None:
    """A regression target that is one number on every training row leaves nothing to learn: the
    head would predict it, rmse 0 and r2 undefined (nan) on a val of that number, and say nothing why."""
    if len(values) < 2 or min(values) != max(values):
        return
    if carved:
        raise DataError(f"{where}: the {len(values)} training rows left after carving val all have label "
                        f"{values[0]:g} (the other values went to val): a regression needs varying training targets; "
                        "add rows, change --val-fraction or --seed, or give a val split")
    raise DataError(f"{where}: every one of its {len(values)} labels in column {column!r} is {values[0]:g}: a constant "
                    "target leaves nothing to learn (rmse 0, r2 undefined); check the label column "
                    "(--label-column names it)")


def _once_labels(label_sets: list[list[int]], classes: list[str], where, carved: bool) -> str | None:
    """Labels on a single training row, said as for classes; a carved val never takes that row."""
    counts = Counter(c for ys in label_sets for c in ys)
    once = [classes[c] for c in sorted(counts) if counts[c] == 1]
    if not once:
        return None
    kept = (": that row stays in train, so the carved val has no positive of them to score (left out of "
            "macro-F1 and mAP)") if carved else ""
    return (f"{where}: label(s) {names(once)} appear on one row only{kept}; the model can hardly learn a label "
            "from one example: add examples or merge the label")


def _each_label_in_train(label_sets: list[list[int]], tr: list[int], va: list[int], keys=None):
    """A random val may take every row of a rare label, leaving no training positive to learn it from (and a
    head that never predicts it): one val row of each such label (with its copies) goes back to train.
    Nothing moves when every label has a training row, so such splits stay exactly as before."""
    in_train = {c for i in tr for c in label_sets[i]}
    missing = sorted({c for i in va for c in label_sets[i]} - in_train)
    if not missing:
        return tr, va
    same = [_key(k) for k in keys] if keys is not None else list(range(len(label_sets)))
    back: set[int] = set()
    for c in missing:
        if c in in_train:  # brought back with an earlier label's row
            continue
        first = next(i for i in va if c in label_sets[i])
        for i in va:
            if same[i] == same[first]:
                back.add(i)
                in_train.update(label_sets[i])
    return sorted(set(tr) | back), [i for i in va if i not in back]


def _numbers(p: Part) -> list[float]:
    """A regression part's labels as floats; the first that is not a finite number is an error."""
    out = []
    for i, v in enumerate(p.labels):
        try:
            x = float(v)
        except ValueError:
            x = float("nan")
        if not np.isfinite(x):
            raise DataError(f"{p.where}: {_row_at(p, i)} has label {v!r}, not a number: --task "
                            "regression needs a numeric label column; fix the value or leave it empty to skip the row")
        out.append(x)
    return out


def _row_at(p: Part, i: int) -> str:
    """Row ``i`` of a part for messages: its CSV line (header = line 1), its position in memory, or only its
    item (a folder, a shard); never an index that skips the rows dropped before."""
    shown = _show_item(p.items[i])
    if p.lines is None:
        return f"the row of {shown}"
    if str(p.where).startswith("<"):
        return f"position {p.lines[i]} ({shown}, counting from 0)"
    return f"line {p.lines[i]} ({shown})"


def _label_sets(p: Part) -> list[list[str]]:
    """A multilabel part's cells split on '|' (blanks around names ignored)."""
    return [sorted({c.strip() for c in v.split(SEP) if c.strip()}) for v in p.labels]


def _show_item(item) -> str:
    s = str(item) if not isinstance(item, (list, tuple)) else f"values {list(item)[:3]}..."
    return s if len(s) <= 60 else s[:57] + "..."


def _random_split(n: int, val_fraction: float, seed: int, where, keys=None) -> tuple[list[int], list[int]]:
    groups = _groups(keys)
    if groups is not None:
        return _by_group(groups, lambda reps: _random_split(len(reps), val_fraction, seed, where),
                         lambda: _random_split(n, val_fraction, seed, where))
    n_val = int(round(n * val_fraction))
    if n < 2 or n_val < 1 or n_val >= n:
        raise DataError(f"cannot split {where} into train and a {val_fraction:.0%} val ({n} labelled rows): "
                        "add rows, change --val-fraction, or give a val split")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _labelled(p: Part, warnings: list[str]) -> Part:
    keep, w = drop_unlabelled(p.labels, p.where, p.items, p.lines)
    if w:
        warnings.append(w)
    return _subset(p, keep)


def _subset(p: Part, keep) -> Part:
    return Part([p.items[i] for i in keep], [p.labels[i].strip() for i in keep], p.where,
                [p.keys[i] for i in keep] if p.keys is not None else None,
                [p.lines[i] for i in keep] if p.lines is not None else None)


def _drop_skipped(p: Part, skipped: dict) -> Part:
    if not skipped:
        return p
    return _subset(p, [i for i, it in enumerate(p.items) if it not in skipped])


def _keys(p: Part) -> list:
    """What makes two rows of a part the same item: a table row's cells, else the item (text, image path)."""
    return p.keys if p.keys is not None else p.items


def _carved(named: dict[str, Part], base_name: str) -> str | None:
    """The part rehead carves val out of, or None when the data brings its own val."""
    return base_name if base_name == "all" or "val" not in named else None


def _report_duplicates(named: dict[str, Part], warnings: list[str], carved: str | None = None) -> None:
    for k, p in named.items():
        warnings += duplicate_report(_keys(p), p.labels, p.where, split=k == carved)
    if "train" in named:
        tr = named["train"]
        for k in ("val", "test"):
            if k in named:
                keys = named[k].keys if named[k].keys is not None else named[k].items
                w = overlap_report(tr.keys if tr.keys is not None else tr.items, keys, "train", k, named[k].where)
                if w:
                    warnings.append(w)


def _own_val(val_fraction: float, val: Part) -> list[str]:
    """A --val-fraction other than the default is not used when the data brings its val split: say so."""
    if val_fraction == VAL_FRACTION:
        return []
    return [f"--val-fraction {val_fraction:g} is not used: {val.where} is the data's own val split"]


def _skipped_warning(skipped: dict) -> str:
    shown = "; ".join(f"{item} ({why})" for item, why in list(skipped.items())[:3])
    return (f"{len(skipped)} item(s) left out (unreadable, not regular files or not data): {shown}"
            + (" ..." if len(skipped) > 3 else ""))


def _require_each_class(classes, base: Part, skipped: dict, hint) -> None:
    """Recount after skips: a class with no training sample left cannot be learned."""
    have = Counter(base.labels)
    gone = [c for c in classes if have[c] == 0]
    if gone:
        lost = [it for it in skipped]
        raise DataError(f"class(es) {names(gone)} in {base.where} have no readable sample left "
                        f"({len(lost)} item(s) skipped, e.g. {lost[0]}: {skipped[lost[0]]}): fix or remove those files, "
                        "or remove the class")


def _split_all(base: Part, val_fraction, seed, hint):
    counts = Counter(base.labels)
    few = sorted(c for c in counts if counts[c] < 2)
    if few:
        raise DataError(f"class(es) {names(few)} in {base.where} appear only once: a stratified "
                        "train/val split needs at least 2 samples of each class; add samples, remove those rows, "
                        "or give a separate val split" + (f". {hint}" if hint else ""))
    if _groups(_keys(base)) is not None:  # a class's copies may be one item: carved so it stays in train
        return _carve(base.labels, val_fraction, seed, base.where, hint, _keys(base))
    return stratified_split(base.labels, val_fraction, seed, base.where, hint)


def _carve(labels: list, val_fraction, seed, where, hint=None, keys=None):
    """A stratified val out of train; classes with one sample (one item) stay in train."""
    groups = _groups(keys)
    if groups is not None:
        return _by_group(groups, lambda reps: _carve([labels[i] for i in reps], val_fraction, seed, where, hint),
                         lambda: _carve(labels, val_fraction, seed, where, hint), labels)
    counts = Counter(labels)
    ok = [i for i, y in enumerate(labels) if counts[y] >= 2]
    tr, va = stratified_split([labels[i] for i in ok], val_fraction, seed, where, hint)
    alone = [i for i, y in enumerate(labels) if counts[y] < 2]
    return sorted([ok[i] for i in tr] + alone), [ok[i] for i in va]


def _groups(keys) -> list[int] | None:
    """Each row's group: the index of the first row holding the same item; None when all items differ
    (the split is then exactly what it was before groups existed: same runs, resumes and benchmarks)."""
    if keys is None:
        return None
    first: dict = {}
    groups = [first.setdefault(_key(k), i) for i, k in enumerate(keys)]
    return groups if len(first) < len(groups) else None


def _by_group(groups: list[int], split, by_rows, labels=None) -> tuple[list[int], list[int]]:
    """Group-k-fold style: ``split`` one row per item (the first, whose label stratifies), then every
    copy goes to its item's side; copies in both train and val would make val optimistic. When too
    few distinct items allow it, or it would leave a class out of val (a class that is one item,
    copied): ``by_rows``, the split as before groups (the caller says the overlap)."""
    reps = sorted(set(groups))
    try:
        _, va = split(reps)
    except DataError:
        return by_rows()
    in_val = {reps[j] for j in va}
    out = [i for i, g in enumerate(groups) if g not in in_val], [i for i, g in enumerate(groups) if g in in_val]
    if labels is not None and set(labels) - {labels[i] for i in out[1]}:  # only then can rows do better
        rows = by_rows()
        if {labels[i] for i in rows[1]} - {labels[i] for i in out[1]}:
            return rows
    return out


def _said_leaks(keys: list, tr: list[int], va: list[int], where, warnings: list[str]) -> None:
    """A val carved by rows (``_by_group``'s fallback) may hold copies of train items: said, not claimed kept apart."""
    w = overlap_report([keys[i] for i in tr], [keys[i] for i in va], "train", "val", where)
    if w:
        warnings[:] = [x.replace(KEPT_APART, "") for x in warnings]
        warnings.append(w + " (too few distinct items to carve val keeping each item's copies on one side)")


# -- evaluation data -------------------------------------------------------------------------
def choose_eval(parts: Parts) -> str:
    for k in EVAL_ORDER:
        if k in parts.parts:
            return k
    where = parts.parts["train"].where if "train" in parts.parts else parts.source
    raise DataError(f"{where} holds only training data: evaluate on held-out data (a folder with val/ or "
                    "test/, a test.csv, rows whose split is val or test, test-*.tar shards, a saved dataset's test split, or a "
                    "folder of class folders)")


def _eval_part(name: str, parts: Parts):
    p = parts.parts[name]
    keep, w = drop_unlabelled(p.labels, p.where, p.items, p.lines)
    warnings = list(parts.warnings) + ([w] if w else [])
    p2 = _drop_skipped(_subset(p, keep), parts.skipped)
    listed = {i for q in parts.parts.values() for i in q.items}
    mine = set(p.items)  # skips of this part, or of the folder listing; not of other splits' rows
    parts.skipped = {k: v for k, v in parts.skipped.items() if k in mine or k not in listed}
    if parts.skipped:
        warnings.append(_skipped_warning(parts.skipped))
    if not p2.items:
        raise DataError(f"{p.where} has no labelled, readable sample to evaluate on")
    return p2, len(p.items) - len(keep), warnings


def class_lookup(classes: list[str]) -> dict[str, int]:
    """A run's class names -> index, "1" and "1.0" one class where a name is a whole number: a run from
    before tables' whole-number floats were read as whole numbers has classes "0.0" and "1.0"."""
    index = {c: i for i, c in enumerate(classes)}
    for c, i in list(index.items()):
        whole = re.fullmatch(r"([+-]?\d+)(\.0*)?", c)
        if whole:
            for alias in (str(int(whole.group(1))), f"{int(whole.group(1))}.0"):
                index.setdefault(alias, i)
    return index


def eval_data(name: str, parts: Parts, classes: list[str], task: str = "multiclass") -> EvalData:
    p, n_unlabelled, warnings = _eval_part(name, parts)
    if task == "regression":
        where = f"{name}: {p.where}" if name != "all" else f"every labelled row/item of {p.where}"
        return EvalData(list(p.items), _numbers(p), n_unlabelled, parts.source, where, list(classes),
                        skipped=list(parts.skipped), warnings=warnings)
    sets = _label_sets(p) if task == "multilabel" else None
    own = sorted_classes(c for ys in sets for c in ys) if sets is not None else sorted_classes(p.labels)
    index = class_lookup(classes)
    unknown = [c for c in own if c not in index]
    if unknown:
        raise DataError(f"{p.where} has class(es) the run never saw: {names(unknown)} (run classes: "
                        f"{names(classes, 20)}): remove those rows, or evaluate a run trained on them")
    for w in warnings:
        log.info(w)  # the caller says them, once (fit, probe, evaluate...)
    labels = [sorted(index[c] for c in ys) for ys in sets] if sets is not None else [index[y] for y in p.labels]
    return EvalData(list(p.items), labels, n_unlabelled, parts.source,
                    f"{name}: {p.where}" if name != "all" else f"every labelled row/item of {p.where}", own,
                    skipped=list(parts.skipped), warnings=warnings)


def eval_dataset(modality: str, name: str, parts: Parts) -> Dataset:
    """The evaluation part as a Dataset's val split, with the data's own classes (the old
    ``load_dataset(eval_only=True)``)."""
    p, n_unlabelled, warnings = _eval_part(name, parts)
    classes = sorted_classes(p.labels)
    index = {c: i for i, c in enumerate(classes)}
    ds = Dataset(modality, classes, Samples([], []), Samples(list(p.items), [index[y] for y in p.labels]),
                 parts.source, skipped=list(parts.skipped),
                 info={"split": f"evaluation: {name}", "unlabelled": n_unlabelled, **parts.info,
                       **({"warnings": warnings} if warnings else {})}, files=list(parts.files))
    for k, v in parts.extra.items():
        setattr(ds, k, v)
    return ds


def drop_items(ds: Dataset, bad, why: str = "unreadable") -> list:
    bad = set(bad)
    removed = []
    for name in ("train", "val", "test"):
        s = getattr(ds, name)
        if s is None:
            continue
        keep = [i for i, it in enumerate(s.items) if it not in bad]
        removed += [s.items[i] for i in range(len(s)) if s.items[i] in bad]
        setattr(ds, name, s.subset(keep))
    ds.skipped += removed
    if ds.task == "regression":  # a number: no class can be left without samples
        return removed
    have = Counter(c for ys in ds.train.labels for c in ys) if ds.task == "multilabel" else Counter(ds.train.labels)
    gone = [c for i, c in enumerate(ds.classes) if have[i] == 0]
    if gone:
        what = "label(s)" if ds.task == "multilabel" else "class(es)"
        raise DataError(f"{what} {names(gone)} of {ds.source} have no training sample left after "
                        f"{len(removed)} {why} item(s) were skipped (e.g. {removed[0] if removed else '?'}): fix or "
                        f"remove those files, or remove the {what[:-3]}")
    return removed


# -- split.json ------------------------------------------------------------------------------
SPLIT_VERSION = 2


def to_split(ds: Dataset) -> dict:
    d = {"version": SPLIT_VERSION, "modality": ds.modality, "classes": list(ds.classes), "source": ds.source,
         "how": ds.info.get("split", "")}
    for name in ("train", "val", "test"):
        s = getattr(ds, name)
        if s is not None:
            d[name] = {"items": [_jsonable(i) for i in s.items], "labels": _json_labels(s.labels, ds.task)}
    if ds.task != "multiclass":  # split.json of a multiclass run stays as it was
        d["task"] = ds.task
    if hasattr(ds, "feature_columns"):
        d["table"] = {"feature_columns": list(ds.feature_columns), "missing": getattr(ds, "missing", "error")}
    d["fingerprint"] = fingerprint(ds)
    return d


def _json_labels(labels: list, task: str) -> list:
    if task == "regression":
        return [float(y) for y in labels]
    if task == "multilabel":
        return [[int(c) for c in ys] for ys in labels]
    return [int(y) for y in labels]


def _read_labels(labels: list, task: str, n_classes: int) -> list:
    """split.json labels back, checked against the classes (a ValueError when they do not fit)."""
    if task == "regression":
        out = [float(y) for y in labels]
        if not all(np.isfinite(out)):
            raise ValueError("a regression label is not a finite number")
        return out
    if task == "multilabel":
        out = [[int(c) for c in ys] for ys in labels]
        flat = [c for ys in out for c in ys]
    else:
        out = flat = [int(y) for y in labels]
    if any(not 0 <= y < n_classes for y in flat):
        raise ValueError("labels do not match the items and classes")
    return out


def _jsonable(item):
    if isinstance(item, (str, int, float)):
        return item
    if isinstance(item, Path):
        return str(item)
    try:
        return [float(v) for v in item]  # a row of numbers (the Python API)
    except TypeError:
        return str(item)


def fingerprint(ds: Dataset) -> dict:
    """Cheap evidence of the data's content: each CSV's sha256; for image files, each
    item's (size, mtime_ns) in split order; for references into tar shards, Arrow or Parquet
    files (``refs``), each container's (size, mtime_ns)."""
    fp: dict = {"files": {f: file_sha256(f) for f in ds.files}}
    splits = [getattr(ds, n) for n in ("train", "val", "test") if getattr(ds, n) is not None]
    containers = sorted({refs.container(i) for s in splits for i in s.items if refs.is_ref(i)})
    if containers:
        fp["containers"] = {c: _stat(c) for c in containers}
    if ds.modality == "image":
        fp["stat"] = {name: [None if refs.is_ref(i) else _stat(i) for i in getattr(ds, name).items]
                      for name in ("train", "val", "test") if getattr(ds, name) is not None}
    return fp


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat(item) -> list | None:
    try:
        st = os.stat(item)
    except (OSError, TypeError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


def from_split(d: dict, modality, classes, where, check: bool) -> Dataset:
    if not isinstance(d, dict):
        raise DataError(f"{where} is damaged (not a JSON object): start the run again with --overwrite")
    modality = d.get("modality", modality)
    classes = d.get("classes", classes)
    if modality is None or classes is None:
        raise DataError(f"{where} was written by an older rehead and lacks the modality or classes: start the run "
                        "again with --overwrite (from Python: pass modality= and classes=)")
    task = d.get("task", "multiclass")
    try:
        parts = {name: Samples(list(d[name]["items"]), _read_labels(d[name]["labels"], task, len(classes)))
                 for name in ("train", "val", "test") if name in d}
        train, val = parts["train"], parts["val"]
        if any(len(s.items) != len(s.labels) for s in parts.values()):
            raise ValueError("labels do not match the items and classes")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where} is damaged ({type(e).__name__}: {e}): start the run again with --overwrite") from None
    ds = Dataset(modality, list(classes), train, val, d.get("source", str(where)), test=parts.get("test"),
                 info={"split": f"{d.get('how') or 'as saved'} (rebuilt from {where})"},
                 files=list(d.get("fingerprint", {}).get("files", {})), task=task)
    if "table" in d:
        ds.feature_columns, ds.missing = d["table"]["feature_columns"], d["table"].get("missing", "error")
    if check and "fingerprint" in d:
        changes = _changes(d["fingerprint"], ds)
        if changes:
            stamp = any("(size/mtime)" in c for c in changes)
            raise DataError(f"the data changed since the run started ({where}): {len(changes)} change(s), e.g. "
                            f"{changes[0]}: restore the data to resume, or start a new run (--overwrite) on the new data"
                            + ("; files are compared by size and modification time, so a restored copy must keep "
                               "its times (cp -p, rsync -t)" if stamp else ""))
    return ds


def file_changes(fp: dict) -> list[str]:
    """The fingerprint's files (CSVs, tables) that are gone or modified since it was taken."""
    out = []
    for f, sha in fp.get("files", {}).items():
        if not Path(f).is_file():
            out.append(f"{f} is gone")
        elif file_sha256(f) != sha:
            out.append(f"{f} was modified")
    return out


def _changes(fp: dict, ds: Dataset) -> list[str]:
    out = file_changes(fp)
    for c, old in fp.get("containers", {}).items():
        new = _stat(c)
        if new != old:
            out.append(f"{c} is gone" if new is None else f"{c} was modified (size/mtime)")
    for name, stats in fp.get("stat", {}).items():
        items = getattr(ds, name).items if getattr(ds, name) is not None else []
        for item, old in zip(items, stats):
            if old is None and refs.is_ref(item):
                continue  # its container is checked above
            new = _stat(item)
            if new != old:
                out.append(f"{item} is gone" if new is None else f"{item} was modified (size/mtime)")
    return out
