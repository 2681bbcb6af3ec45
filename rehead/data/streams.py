"""Large datasets read in place: WebDataset tar shards, Hugging Face ``datasets`` saved on disk
(``save_to_disk``: Arrow, memory-mapped) and Parquet files. Listing reads only what labels and
splits need (tar headers and the small ``.cls``/``.json`` members; the label and split columns);
items are references (:mod:`rehead.data.refs`) whose bytes are read when a batch needs them.

The parts come out as any other source's: :func:`rehead.data.splits.assemble` applies the same
label rules (empty labels dropped and counted), the same split rules (val carved from train when
there is none, test kept aside) and the same errors.

- **WebDataset**: a folder of ``*.tar`` (or ``train/``, ``val/``, ``test/`` folders of them), one
  ``.tar`` file, or a brace pattern ``shards-{000..009}.tar``. Members are grouped into samples by
  key (``abc.jpg`` + ``abc.cls``: the name up to the first dot of its last path part). The item is
  the sample's image member (``.jpg``, ``.png``, ...) or, without one, its ``.txt``. The label is
  the ``.label`` or ``.cls`` member (a class index or name), else the ``label`` field of its
  ``.json``; a ``--label-column`` given names the one member extension or JSON field read. The split comes
  from shard names (``train-*.tar``, ``val-*.tar``, ``test-*.tar``) or folders.
- **Hugging Face datasets on disk**: a ``save_to_disk`` folder of a Dataset or a DatasetDict
  (its train / validation / test splits); the image column (an ``Image`` feature, a struct of
  bytes and path, or binary) or the ``--text-column``; the ``--label-column`` (each file's own
  ClassLabel names are the class names; -1 is unlabelled). No ``datasets`` import: pyarrow reads the files.
- **Parquet**: a ``.parquet`` file or a folder of them (split from file names, ``train-0000.parquet``
  as the Hub writes them, or from ``train/``-style folders); columns as for ``datasets``; an
  optional ``--split-column``. Read by row groups.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import DataError, Part, Parts
from . import refs
from .csvio import names
from .splits import SPLIT_VALUES, has_split_column, split_column_parts

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")  # preference order within a sample
TEXT_EXTS = ("txt", "text")
IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "picture", "photo")
_SPLIT_OF = {v: name for name, vs in SPLIT_VALUES.items() for v in vs}
_SPLIT_RE = re.compile(r"^([a-z]+)(?:[-_.]|$)")


def split_of(name: str) -> str | None:
    """train / val / test from a shard, file or folder name (``train-000.tar``, ``validation``,
    ``test_0.parquet``); None when the name says nothing."""
    m = _SPLIT_RE.match(name.lower())
    return _SPLIT_OF.get(m.group(1)) if m else None


# -- detection ---------------------------------------------------------------------------------------
def kind(path) -> str | None:
    """'webdataset', 'hf' or 'parquet' when ``path`` is such a source, else None (a folder of
    images, a CSV: the other readers)."""
    s = str(path)
    if _is_brace(s):
        return "webdataset"
    p = Path(s)
    try:
        is_file, is_dir = p.is_file(), p.is_dir()
    except (OSError, ValueError):  # a text too long to be a file name ("File name too long")
        return None
    if is_file:
        low = p.name.lower()
        if low.endswith(".tar"):
            return "webdataset"
        if low.endswith((".tar.gz", ".tgz")):
            raise DataError(f"{p} is a compressed tar: shards are read in place by member offset, which needs an "
                            "uncompressed .tar (gunzip it)")
        if low.endswith(".parquet"):
            return "parquet"
        if low.endswith(".arrow"):
            return "hf"
        return None
    if not is_dir:
        return None
    if (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()):
        return "hf"
    for found, k in ((_tar_files(p), "webdataset"), (_parquet_files(p), "parquet")):
        if found:
            _refuse_images(p, found[0], k)
            return k
    gz = _tar_files(p, ("*.tar.gz", "*.tgz"))
    if gz and not _images_in(p) and not _an_image(p) and not any(p.glob("*.csv")):  # its only data: say why
        raise DataError(f"{p} holds compressed tar shards (e.g. {gz[0].name}): shards are read in place by member "
                        "offset, which needs uncompressed .tar files (gunzip them)")
    return None


def _subdirs(d) -> list[str]:
    try:
        return sorted(e.path for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _an_image(d) -> str | None:
    """The name of one image file directly in ``d`` (stops at the first), else None."""
    from .images import IMAGE_EXTS
    try:
        return next((e.name for e in os.scandir(d) if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS
                     and e.is_file()), None)
    except OSError:
        return None


def _images_in(p: Path) -> str | None:
    """One class folder of ``p`` (a subfolder holding images, also inside train/, val/, test/) as
    'ants/', else None."""
    for d in _subdirs(p):
        inner = [d] + (_subdirs(d) if split_of(os.path.basename(d)) else [])
        hit = next((s for s in inner if _an_image(s)), None)
        if hit:
            return os.path.relpath(hit, p) + "/"
    return None


def _refuse_images(p: Path, example: Path, k: str) -> None:
    """Class folders beside shards or Parquet files: reading either would silently ignore the other."""
    folder = _images_in(p)
    if folder is None:
        return
    what, how = (("tar shards", "one .tar file, or a pattern like shard-{000..009}.tar") if k == "webdataset"
                 else ("Parquet files", "one .parquet file"))
    raise DataError(f"{p} holds both class folders (e.g. {folder}) and {what} (e.g. {example.relative_to(p)}): "
                    f"to read the class folders, move the {what} out; to read the {what}, move them to a folder "
                    f"of their own and give that folder (or give {how})")


def _is_brace(s: str) -> bool:
    return bool(re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", s)) and s.endswith(".tar")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}`` lists."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.group(1), r.group(2)
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        opts = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        opts = body.split(",")
    return [x for o in opts for x in expand_braces(head + o + tail)]


def _tar_files(p: Path, patterns=("*.tar",)) -> list[Path]:
    def shards(d):
        return sorted(f for g in patterns for f in d.glob(g) if f.is_file() and not f.name.startswith("."))
    top = shards(p)
    if top:
        return top
    return [f for d in sorted(p.iterdir()) if d.is_dir() and split_of(d.name) for f in shards(d)]


def _parquet_files(p: Path) -> list[Path]:
    for d in (p, p / "data"):
        if not d.is_dir():
            continue
        top = sorted(f for f in d.glob("*.parquet") if f.is_file() and not f.name.startswith("."))
        if top:
            return top
        sub = sorted(f for s in d.iterdir() if s.is_dir() and split_of(s.name) for f in s.glob("*.parquet")
                     if f.is_file() and not f.name.startswith("."))
        if sub:
            return sub
    return []


def read_parts(path, kind_: str, eval_only: bool = False, modality: str | None = None,
               text_column: str = "text", label_column: str = "label", split_column: str = "split",
               need_labels: bool = True, image_column: str | None = None, **_) -> tuple[str, Parts]:
    """(modality, parts) of a streaming source; ``modality`` (a run's, when evaluating) picks the
    item column where both an image and a text could be. ``need_labels=False`` (predict): a
    source without labels gives every item with an empty label. ``image_column``: the table column
    (or the shards' member extension) holding the images, where there are several."""
    reader = {"webdataset": _webdataset, "hf": _hf, "parquet": _parquet}[kind_]
    mod, parts = reader(path, eval_only=eval_only, modality=modality, text_column=text_column,
                        label_column=label_column, split_column=split_column, need_labels=need_labels,
                        image_column=image_column)
    parts.lazy = True
    parts.labels_from = parts.labels_from or label_column
    return mod, parts


def _grouped(files: list[tuple[str, str]], eval_only: bool) -> dict[str, list[str]]:
    """{split: files} from (file, split or None) pairs; files that name no split while others do
    are an error (which split would they be?)."""
    named = [f for f, s in files if s]
    if not named:
        return {"all": [f for f, _ in files]}
    loose = [f for f, s in files if not s]
    if loose:
        raise DataError(f"{len(loose)} file(s) name no split while others do, e.g. {loose[0]}: name each "
                        "train-*, val-* or test-* (or put them in train/, val/, test/ folders)")
    out: dict[str, list[str]] = {}
    for f, s in files:
        out.setdefault(s, []).append(f)
    if eval_only:
        first = next(k for k in ("test", "val", "train") if k in out)
        out = {first: out[first]}
    return out


# -- WebDataset ---------------------------------------------------------------------------------------
def _wds_files(path) -> tuple[str, list[tuple[str, str | None]]]:
    s = str(path)
    if _is_brace(s):
        files = [os.path.abspath(f) for f in expand_braces(s)]
        gone = [f for f in files if not os.path.isfile(f)]
        if gone:
            raise DataError(f"{len(gone)} shard(s) of {s} do not exist, e.g. {gone[0]}: fix the pattern")
        return s, [(f, split_of(os.path.basename(f))) for f in files]
    p = Path(os.path.abspath(s))
    if p.is_file():
        return str(p), [(str(p), split_of(p.name))]
    out = []
    for f in _tar_files(p):
        sp = split_of(f.parent.name) if f.parent != p else split_of(f.name)
        out.append((str(f), sp))
    return str(p), out


def _key_ext(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the name up to the first dot of its last path part."""
    d, _, base = name.rpartition("/")
    k, dot, ext = base.partition(".")
    return (f"{d}/{k}" if d else k), ext.lower() if dot else ""


def _wds_shard(shard: str, label_column: str, text_column: str, want: str | None, notes: dict,
               image_column: str | None = None):
    """(items, raw labels) of one shard, from its member index; label members are read (small)."""
    try:
        index = refs.tar_index(shard)
    except refs.RefError as e:  # a shard cut short or unreadable: before any work, not at its first batch
        raise DataError(str(e)) from None
    samples: dict[str, dict[str, str]] = {}
    for name in index:
        k, ext = _key_ext(name)
        if ext:
            samples.setdefault(k, {})[ext] = name
    items, labels = [], []
    fd = None
    try:
        fd = os.open(shard, os.O_RDONLY)

        def read(member: str) -> bytes:
            off, size = index[member]
            return os.pread(fd, size, off)
        for k, members in samples.items():
            notes["exts"].update(members)
            img = next((members[e] for e in ((image_column,) if image_column else IMAGE_EXTS) if e in members), None)
            txt = next((members[e] for e in ((text_column,) if text_column in members else ()) + TEXT_EXTS
                        if e in members), None)
            item = img if want != "text" and img else txt if want != "image" else None
            if item is None:
                notes["no_item"].append(f"{os.path.basename(shard)}::{k}")
                notes["unwanted"].add("images" if img else "text" if txt else None)  # the run reads the other kind
                continue
            notes["kinds"].add("image" if item == img else "text")
            items.append(refs.make("tar", shard, item))
            labels.append(_wds_label(members, read, label_column, shard, k, notes))
    finally:
        if fd is not None:
            os.close(fd)
    return items, labels


def _wds_label(members: dict, read, label_column: str, shard: str, key: str, notes: dict) -> str:
    # a --label-column the user named is that member or JSON field, never the .cls beside it
    fallback = ("cls", "label") if label_column == "label" else ()
    for ext in (label_column,) + fallback:
        if ext in members:
            notes["label_from"].add(f".{ext}")
            return read(members[ext]).decode("utf-8-sig", "replace").strip()
    if "json" in members:
        try:
            d = json.loads(read(members["json"]).decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{shard}: {key}.json is not valid JSON ({e}): fix or remove it") from None
        if isinstance(d, dict) and label_column in d and d[label_column] is not None:
            notes["label_from"].add(f".json[{label_column!r}]")
            v = d[label_column]
            return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()
    return ""


def _check_label_kinds(labels: list[str], source: str) -> None:
    """Class indices in some labels and names in others would make 0 and 'ants' two classes."""
    given = {y for y in labels if y}
    numbers = sorted(y for y in given if y.lstrip("-").isdigit())
    names_ = sorted(given - set(numbers))
    if numbers and names_:
        raise DataError(f"{source} labels some samples by class index ({', '.join(numbers[:5])}) and others by name "
                        f"({', '.join(names_[:5])}): they would be different classes; give one kind in every shard")


def _refuse_other_kind(source: str, notes: dict, exts: list[str], modality) -> None:
    """Samples that hold only what the run does not read (images for a text run, or text)."""
    other = notes["unwanted"] - {None}
    if modality and other:
        held = "images" if "images" in other else "text"
        found = [e for e in exts if e in (IMAGE_EXTS if held == "images" else TEXT_EXTS)]
        reads = "images" if modality == "image" else modality
        raise DataError(f"{source}: these shards hold {held} ({', '.join(found)}) but the run reads {reads}: "
                        f"give {reads} shards")


def _no_labels(source: str, label_column: str, exts: list[str]) -> None:
    """Raise: no sample has the label, saying where it was looked for."""
    if label_column != "label":  # named with --label-column: only that member or field counts
        raise DataError(f"{source} has no .{label_column} member and no {label_column!r} field in .json members "
                        f"(--label-column; member extensions found: {', '.join(exts)})"
                        + (": drop --label-column to read the .cls labels" if "cls" in exts else ""))
    raise DataError(f"{source} has no labelled sample: looked for a .{label_column} or .cls member and a "
                    f"{label_column!r} field in .json members (member extensions found: {', '.join(exts)}): "
                    "name the member extension or JSON field with --label-column")


def _webdataset(path, eval_only, modality, text_column, label_column, split_column, need_labels,
                image_column=None) -> tuple[str, Parts]:
    source, files = _wds_files(path)
    if not files:
        raise DataError(f"{path} has no .tar shards")
    groups = _grouped(files, eval_only)
    notes = {"exts": set(), "no_item": [], "kinds": set(), "label_from": set(), "unwanted": set()}
    parts, warnings = {}, []
    for split, shards in groups.items():
        items, labels = [], []
        for shard in shards:
            i, y = _wds_shard(shard, label_column, text_column, modality, notes, image_column)
            items += i
            labels += y
        where = f"{source} ({split}: {len(shards)} shard(s))" if split != "all" else source
        parts[split] = Part(items, labels, where)
    exts = sorted(notes["exts"])
    if image_column and image_column not in notes["exts"]:
        raise DataError(f"{source} has no .{image_column} member (--image-column; member extensions found: "
                        f"{', '.join(exts) or 'none'})")
    if not any(p.items for p in parts.values()):
        _refuse_other_kind(source, notes, exts, modality)
        raise DataError(f"{source} has no sample with an image ({', '.join('.' + e for e in IMAGE_EXTS)}) or text "
                        f"(.txt) member (member extensions found: {', '.join(exts) or 'none'})")
    if not notes["label_from"] and need_labels:
        _no_labels(source, label_column, exts)
    if len(notes["kinds"]) > 1:
        raise DataError(f"{source} mixes samples with images and samples with only text: give one kind per dataset")
    _check_label_kinds([y for p in parts.values() for y in p.labels], source)
    if notes["no_item"]:
        warnings.append(f"{source}: {len(notes['no_item'])} sample(s) without an image or text member were left out, "
                        f"e.g. {notes['no_item'][0]}")
    mod = notes["kinds"].pop()
    n_shards = sum(len(s) for s in groups.values())
    return mod, Parts(parts, source, warnings=warnings, labels_from=", ".join(sorted(notes["label_from"])),
                      info={"format": "webdataset", "shards": n_shards})


# -- Arrow / Parquet tables ---------------------------------------------------------------------------
def _hf_features(schema) -> dict:
    """The Hugging Face features recorded in a schema's metadata ({} when none)."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return {}
    try:
        d = json.loads(raw)
    except ValueError:
        return {}
    return (d.get("info") or {}).get("features") or d.get("features") or {}


def _choose_columns(schema, features: dict, where: str, modality, text_column, label_column, need_labels=True,
                    image_column=None):
    """(item column, modality, class names or None) of a table, or a DataError that names the
    columns it looked for."""
    import pyarrow as pa
    cols = list(schema.names)

    def is_image(name):
        f = features.get(name) or {}
        if f.get("_type") == "Image":
            return True
        t = schema.field(name).type
        return (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) or \
            pa.types.is_binary(t) or pa.types.is_large_binary(t)
    if image_column:  # named by the user: that column or an error, never another
        if image_column not in cols:
            raise DataError(f"{where} has no column {image_column!r} (--image-column; columns: {', '.join(cols)})")
        if not is_image(image_column):
            raise DataError(f"{where}'s column {image_column!r} does not hold images (a Hugging Face Image, a struct "
                            f"of bytes and path, or binary; its type: {schema.field(image_column).type})")
    images = [image_column] if image_column else [c for c in cols if c != label_column and is_image(c)]
    if label_column not in cols and need_labels:
        raise DataError(f"{where} has no label column {label_column!r} (columns: {', '.join(cols)}): name it with "
                        "--label-column")
    item = mod = None
    if images and modality != "text":
        if len(images) > 1:
            named = [c for c in IMAGE_NAMES if c in images]
            if not named:
                raise DataError(f"{where} has several image columns ({', '.join(images)}) and none is called "
                                f"{' or '.join(IMAGE_NAMES[:2])}: name one with --image-column")
            images = named[:1]
        item, mod = images[0], "image"
    elif text_column in cols and modality != "image":
        item, mod = text_column, "text"
    if item is None:
        want = {"image": "no image column", "text": f"no text column {text_column!r}"}.get(
            modality, f"neither an image column nor a text column {text_column!r}")
        raise DataError(f"{where} has {want} (looked for: a column "
                        f"of Hugging Face Image type, a struct of bytes and path, or binary; the text column "
                        f"{text_column!r}; columns: {', '.join(cols)}): name the text column with --text-column; "
                        "images in a table must be their bytes (a column of file paths: a CSV of path,label reads them)")
    return item, mod


def _class_names(schema, label_column: str) -> list[str] | None:
    """A file's own ClassLabel names: splits saved apart may list the same classes in other orders."""
    f = _hf_features(schema).get(label_column) or {}
    if isinstance(f, list) and f:  # a list of one feature: a label set's
        f = f[0]
    if isinstance(f, dict) and f.get("_type") in ("Sequence", "List", "LargeList"):  # a label set: its items' names
        f = f.get("feature") or {}
    return f.get("names") if isinstance(f, dict) and f.get("_type") == "ClassLabel" else None


def _check_named(schema, f: str, label_column: str, names_, choice: dict) -> None:
    """Integer labels without ClassLabel names in one file and with them in another cannot be matched."""
    import pyarrow as pa
    if names_ is None and not pa.types.is_integer(schema.field(label_column).type):
        return
    choice.setdefault("named" if names_ is not None else "numbered", f)
    if "named" in choice and "numbered" in choice:
        raise DataError(f"{choice['named']} names its classes (ClassLabel) but {choice['numbered']} labels them by "
                        "number only: the numbers cannot be matched to names; save every split with its ClassLabel "
                        "feature (or write the labels as names)")


def _labels(column, class_names) -> list[str]:
    """Raw label strings: ClassLabel indices to names (-1 and None: unlabelled); numbers as text."""
    out = []
    for v in column.to_pylist():
        if isinstance(v, (list, tuple)):  # a label set (Sequence(ClassLabel)): 'a|b', '|' for none of them
            out.append(label_set(_labels(_pa_array(v), class_names)))
        elif v is None:
            out.append("")
        elif class_names is not None and isinstance(v, int):
            out.append(class_names[v] if 0 <= v < len(class_names) else "")
        elif isinstance(v, float):
            out.append("" if v != v else str(int(v)) if v.is_integer() else str(v))
        else:
            out.append(str(v).strip())
    return out


def _pa_array(values):
    import pyarrow as pa
    return pa.array(values)


def label_set(names) -> str:
    """A label set (a list, tuple or set of names) as a multilabel cell: 'a|b', or '|' for none of them."""
    from .splits import SEP
    names = sorted({str(n).strip() for n in names if n is not None and str(n).strip()})
    return SEP.join(names) if names else SEP


def _table_part(scheme: str, files: list[str], read_columns, where: str, modality, text_column, label_column,
                split_column, choice: dict, need_labels: bool = True, image_column=None) -> dict[str, Part]:
    """Parts of one split stored in ``files`` (Arrow or Parquet): every row referenced, labels read.
    A split column, when present, divides the rows (like a CSV's)."""
    items, labels, splits, texts = [], [], [], []
    for f in files:
        schema, get = read_columns(f)
        if not choice:
            choice.update(zip(("item", "modality"),
                              _choose_columns(schema, _hf_features(schema), f, modality, text_column, label_column,
                                              need_labels, image_column)))
            choice["split"] = split_column != "\0" and has_split_column(schema.names, split_column, f)
            choice["labelled"] = label_column in schema.names
        elif choice["item"] not in schema.names or (choice["labelled"] and label_column not in schema.names):
            raise DataError(f"{f} lacks column {choice['item']!r} or {label_column!r} that {files[0]} has "
                            f"(columns: {', '.join(schema.names)})")
        if choice["labelled"]:
            names_ = _class_names(schema, label_column)  # this file's: labels are names from here on
            _check_named(schema, f, label_column, names_, choice)
            n, ys = get([label_column])
            labels += _labels(ys[0], names_)
        else:
            n = get([choice["item"]])[0]
            labels += [""] * n
        items += [refs.make(scheme, f, choice["item"], r) for r in range(n)]
        if choice["modality"] == "text":  # the texts are what makes two rows the same (repeats, train/test overlap)
            texts += ["" if v is None else str(v).strip() for v in get([choice["item"]])[1][0].to_pylist()]
        if choice["split"]:
            splits += ["" if v is None else str(v) for v in get([split_column])[1][0].to_pylist()]
    keys = texts or None
    if choice.get("split"):
        idx = split_column_parts(splits, where)
        return {k: Part([items[i] for i in ix], [labels[i] for i in ix], f"{where} ({split_column}={k})",
                        [keys[i] for i in ix] if keys else None) for k, ix in idx.items()}
    return {"all": Part(items, labels, where, keys)}


def _arrow_columns(f: str):
    t = refs.arrow_table(f)

    def get(cols):
        return t.num_rows, [t.column(c) for c in cols]
    return t.schema, get


def _parquet_columns(f: str):
    pf = refs.parquet_file(f)
    schema = pf.schema_arrow

    def get(cols):
        t = pf.read(columns=cols, use_threads=False)
        return t.num_rows, [t.column(c) for c in cols]
    return schema, get


def _hf_split_files(d: Path) -> list[str]:
    try:
        state = json.loads((d / "state.json").read_text())
        files = [str(d / x["filename"]) for x in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{d}/state.json is not a Hugging Face save_to_disk state ({e}): save the dataset "
                        "with Dataset.save_to_disk") from None
    gone = [f for f in files if not os.path.isfile(f)]
    if gone:
        raise DataError(f"{d} lacks its data file {gone[0]}: save the dataset again")
    return files


def _require_pyarrow(path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(f"{path} is Arrow / Parquet data, which needs pyarrow: pip install 'rehead[stream]' "
                        "(or pip install pyarrow)") from None


def _hf(path, eval_only, modality, text_column, label_column, split_column, need_labels,
        image_column=None) -> tuple[str, Parts]:
    p = Path(os.path.abspath(path))
    _require_pyarrow(p)
    warnings: list[str] = []
    if p.is_file():  # one .arrow file
        groups = {None: [str(p)]}
    elif (p / "dataset_dict.json").is_file():
        try:
            names_ = json.loads((p / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{p}/dataset_dict.json is unreadable ({e}): save the dataset again") from None
        groups, ignored = {}, []
        for n in names_:
            s = _SPLIT_OF.get(n.lower())
            if s is None or s in groups:
                ignored.append(n)
            else:
                groups[s] = _hf_split_files(p / n)
        if ignored:
            warnings.append(f"{p}: split(s) {names(ignored)} are not train, validation or test: left out")
        if not groups:
            raise DataError(f"{p} has no train, validation or test split (splits: {', '.join(names_)})")
        if eval_only:
            first = next(k for k in ("test", "val", "train") if k in groups)
            groups = {first: groups[first]}
    else:
        groups = {None: _hf_split_files(p)}
    return _tables("arrow", _arrow_columns, str(p), groups, warnings, modality, text_column, label_column,
                   split_column, "hf-datasets", need_labels, image_column)


def _parquet(path, eval_only, modality, text_column, label_column, split_column, need_labels,
             image_column=None) -> tuple[str, Parts]:
    p = Path(os.path.abspath(path))
    _require_pyarrow(p)
    if p.is_file():
        groups = {None: [str(p)]}
    else:
        files = _parquet_files(p)
        pairs = [(str(f), split_of(f.parent.name) if f.parent.name not in (p.name, "data") else split_of(f.name))
                 for f in files]
        g = _grouped(pairs, eval_only)
        groups = {(None if k == "all" else k): v for k, v in g.items()}
    return _tables("parquet", _parquet_columns, str(p), groups, [], modality, text_column, label_column,
                   split_column, "parquet", need_labels, image_column)


def _tables(scheme, read_columns, source, groups, warnings, modality, text_column, label_column, split_column,
            fmt, need_labels, image_column=None) -> tuple[str, Parts]:
    choice: dict = {}
    parts: dict[str, Part] = {}
    for split, files in groups.items():
        where = source if split is None else f"{source} ({split})"
        got = _table_part(scheme, files, read_columns, where, modality, text_column, label_column,
                          split_column if split is None else "\0", choice, need_labels, image_column)
        for k, part in got.items():
            parts[split or k] = part
    info = {"format": fmt, "files": sum(len(f) for f in groups.values()), "item_column": choice["item"]}
    return choice["modality"], Parts(parts, source, warnings=warnings, labels_from=label_column, info=info)


# -- prediction inputs ----------------------------------------------------------------------------------
def expand_input(path, modality: str | None = None, text_column: str = "text", label_column: str = "label",
                 image_column: str | None = None, **_) -> list[str] | None:
    """Every item of a streaming source, labelled or not, as references (for ``predict``); None when
    ``path`` is not a streaming source."""
    k = kind(path)
    if k is None:
        return None
    _, parts = read_parts(path, k, modality=modality, text_column=text_column, label_column=label_column,
                          need_labels=False, image_column=image_column)
    return [i for p in parts.parts.values() for i in p.items]
