"""Image data: class folders, train/val(/test) folders, or a CSV of path,label.

Only regular files are listed: directories named like images, named pipes, sockets and
dangling or looping symlinks are skipped and named, never opened (a pipe would block the
reader forever). Names starting with '.' are skipped. How pixels are decoded is stated
exactly in :data:`DECODE`, which the export sidecar carries.
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import default_collate

from . import DataError, Dataset, Part, Parts, drop_items, refs
from .csvio import column, names, read_rows
from .splits import has_split_column, split_column_parts, split_where

log = logging.getLogger(__name__)
MODALITY = "image"
IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VAL_DIRS = ("val", "valid", "validation")
TEST_DIRS = ("test",)
# Larger images are skipped and named: decoding one takes gigabytes (PIL's own default limit).
MAX_PIXELS = int(os.environ.get("REHEAD_MAX_PIXELS", 89_478_485))
DECODE = {
    "library": "Pillow",
    "orientation": "EXIF orientation applied (PIL.ImageOps.exif_transpose)",
    "output": "8-bit RGB",
    "grayscale": "replicated to 3 channels",
    "alpha": "dropped (the colour under transparent pixels is kept, no compositing)",
    "palette": "expanded to RGB",
    "16-bit": "modes I;16* and I with values in 0..65535: value / 257, rounded (65535 -> 255)",
    "32-bit integer": "mode I with values outside 0..65535: min-max scaled to 0..255 per image",
    "float": "mode F with values in [0, 1]: value * 255, rounded; otherwise min-max scaled per image; NaN -> 0",
    "frames": "first frame only (animated GIF, multi-page TIFF)",
    "jpeg_draft": "JPEGs decode at a reduced DCT scale (PIL draft) that keeps both sides >= the resize side",
    "max_pixels": MAX_PIXELS,
    "skipped": "directories, named pipes, sockets, dangling or looping symlinks, names starting with '.'",
}


# -- listing -----------------------------------------------------------------------------------
def not_regular(path) -> str | None:
    """None for a regular file (through symlinks); else what it is, in words."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a looping symlink"
        if os.path.islink(path):
            return "a dangling symlink"
        return "missing" if e.errno == errno.ENOENT else f"not accessible ({e.strerror})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a named pipe"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    return "a device or special file"


def _entry_not_regular(e: os.DirEntry) -> str | None:
    """``not_regular`` of a listed entry; a plain file is known from the listing's type, no stat."""
    try:
        if e.is_file():
            return None
    except OSError:
        pass
    return not_regular(e.path)


def list_image_files(folder) -> tuple[list[str], dict[str, str]]:
    """(image files under ``folder``, sorted; {skipped path: why}). Subfolders are searched,
    but symlinked ones are not followed (no loops); dot-names are skipped."""
    files, skipped = [], {}
    stack = [str(folder)]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            skipped[d] = f"cannot list it ({e.strerror})"
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                why = _entry_not_regular(e)
                if why:
                    skipped[e.path] = why
                else:
                    files.append(e.path)
            elif e.is_dir(follow_symlinks=False):
                if _is_run(e.path):
                    skipped[e.path] = RUN_NOT_DATA
                else:
                    stack.append(e.path)
            elif e.is_file():  # named, not dropped unseen: a photo saved as .heic or without extension
                ext = os.path.splitext(e.name)[1]
                skipped[e.path] = (f"not read: {ext or 'no extension'} is not an image type rehead lists "
                                   f"({', '.join(sorted(IMAGE_EXTS))}): rename it with its type's extension")
    return sorted(files), skipped


TABLE_EXTS = (".csv", ".tsv", ".txt", ".parquet", ".jsonl")  # what a text or table set is written as
RUN_NOT_DATA = "a rehead run directory: its plots are not data (keep runs out of the data folder)"


def _is_run(d: str) -> bool:
    """A folder rehead wrote a run into (its marker file): never a class folder or data."""
    from ..rundir import MARKER
    return os.path.isfile(os.path.join(d, MARKER))


def _class_folders(root: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """{class: image paths} for each class folder of ``root``, and skipped entries."""
    dirs = sorted(d for d in root.iterdir() if not d.name.startswith(".") and d.is_dir())
    runs = {str(d): RUN_NOT_DATA for d in dirs if _is_run(str(d))}  # `fit photos/ --out photos/run`: not a class
    dirs = [d for d in dirs if str(d) not in runs]
    if not dirs:
        tables = sorted(f.name for f in root.iterdir() if f.suffix.lower() in TABLE_EXTS and f.is_file())
        if tables:  # an image run or model given a text or table set (`evaluate IMAGE_RUN texts/`)
            raise DataError(f"{root} has no class folders; it holds {', '.join(tables[:3])}: text or table data, "
                            "and this reads images (a folder of class folders): give the images, or a run made "
                            "on data like these")
        raise DataError(f"{root} has no class folders: put each class's images in a folder "
                        f"named after the class (e.g. {root}/cats/*.jpg)")
    found, skipped = {}, dict(runs)
    for d in dirs:
        found[d.name], sk = list_image_files(d)
        skipped.update(sk)
    note = f" ({len(skipped)} entries that are not regular files skipped, e.g. {next(iter(skipped))})" if skipped else ""
    if all(not fs for fs in found.values()):
        raise DataError(f"no images found under {root} (looked for {', '.join(sorted(IMAGE_EXTS))}){note}")
    empty = [c for c, fs in found.items() if not fs]
    if empty:
        raise DataError(f"class folder(s) {names(empty)} in {root} contain no images: "
                        f"add images or remove the folder(s){note}")
    return found, skipped


def _folder_part(root: Path, skipped: dict) -> Part:
    found, sk = _class_folders(root)
    skipped.update(sk)
    items = [f for c in found for f in found[c]]
    return Part(items, [c for c in found for _ in found[c]], f"{root}/")


def _first_dir(path: Path, candidates) -> Path | None:
    return next((path / d for d in candidates if (path / d).is_dir()), None)


def read_parts(path: Path, eval_only: bool = False, label_column: str = "label",
               split_column: str = "split", image_column: str | None = None, **_) -> Parts:
    """Parts of an image source. A folder with train/: train, val from val/ (valid/,
    validation/), test from test/; a folder of class folders: all; a CSV: see ``_csv_parts``.
    ``eval_only`` lists only the split that evaluation scores."""
    path = Path(os.path.abspath(path))  # absolute items: split.json stays valid from any directory
    if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        raise DataError(f"{path} is a single image: training data is a folder of class folders or a CSV of "
                        "path,label; to label one image, use `rehead predict RUN IMAGE`")
    if path.is_file():
        return _csv_parts(path, label_column, split_column, image_column or "path")
    skipped: dict[str, str] = {}
    val_dir, test_dir = _first_dir(path, VAL_DIRS), _first_dir(path, TEST_DIRS)
    train_dir = path / "train" if (path / "train").is_dir() else None
    if train_dir is None and not (eval_only and (val_dir or test_dir)):
        return Parts({"all": _folder_part(path, skipped)}, str(path), skipped=skipped)
    wanted = {"train": train_dir, "val": val_dir, "test": test_dir}
    if eval_only:  # the one split evaluation scores: test, else val, else (an error later) train
        first = next(k for k in ("test", "val", "train") if wanted[k] is not None)
        wanted = {first: wanted[first]}
    parts = {k: _folder_part(d, skipped) for k, d in wanted.items() if d is not None}
    return Parts(parts, str(path), skipped=skipped)


def _csv_parts(path: Path, label_column: str, split_column: str, image_column: str = "path") -> Parts:
    """A CSV of path,label (paths relative to the CSV; the path column may be named by
    ``image_column``), with an optional split column."""
    if image_column == label_column:
        raise DataError(f"--image-column and --label-column both name {image_column!r}: the image paths and the "
                        "labels must be two columns")
    header, rows = read_rows(path)
    missing = [c for c in (image_column, label_column) if c not in header]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: an image CSV needs a path column "
                        f"(--image-column, default 'path') and a label column (--label-column; found: "
                        f"{', '.join(header)})")
    items, skipped = _listed(path, header, rows, image_column)
    labels = column(header, rows, label_column, path)
    if has_split_column(header, split_column, path):
        values = column(header, rows, split_column, path)
        idx = split_column_parts(values, path)
        parts = {k: Part([items[i] for i in ix], [labels[i] for i in ix], split_where(path, k, values, ix),
                         lines=[rows.line[i] for i in ix]) for k, ix in idx.items()}
    else:
        parts = {"all": Part(items, labels, str(path), lines=rows.line)}
    return Parts(parts, str(path), skipped=skipped, files=[str(path)], labels_from=label_column)


def _listed(path: Path, header, rows, image_column: str) -> tuple[list[str], dict[str, str]]:
    """The CSV's image paths made absolute (relative to the CSV), and those that are not regular
    files (named, to be skipped); a missing one is an error."""
    given = column(header, rows, image_column, path)
    items = _absolute(path, given)
    skipped, gone = {}, []
    for n, p in enumerate(items):
        why = not_regular(p) if p else "missing"
        if why == "missing":
            gone.append(n)
        elif why:
            skipped[p] = why
    if gone:
        raise DataError(f"{len(gone)} image(s) listed in {path} do not exist, e.g. line {gone[0] + 2}: "
                        f"{given[gone[0]]!r}: fix the paths (relative to the CSV's folder)")
    return items, skipped


def _absolute(path: Path, given: list[str]) -> list[str]:
    """A CSV's path cells as files, relative to the CSV's folder ('' stays ''); abspath, not resolve:
    normalises '..' without following symlinks (a looping one would raise)."""
    return [os.path.abspath(os.path.join(path.parent, p)) if p else "" for p in given]


def _image_rows(path: Path, image_column: str | None):
    """(header, rows, column) of a CSV of image paths; DataError when it cannot be read or lacks the column."""
    header, rows = read_rows(path)
    image_column = image_column or "path"
    if image_column not in header:
        raise DataError(f"{path} has no column {image_column!r} (columns: {', '.join(header)}): the run reads "
                        f"image paths from the column {image_column!r}: name the column that holds them with --image-column")
    return header, rows, image_column


def csv_images(path, image_column: str | None = None) -> list[str]:
    """For ``predict``: every image a CSV lists (its path column, relative to the CSV; no label
    needed). Rows that are not regular files stay in, for predict to name as unreadable."""
    path = Path(path)
    header, rows, image_column = _image_rows(path, image_column)
    return _listed(path, header, rows, image_column)[0]


def listed_files(path, image_column: str | None = None) -> list[str]:
    """The files an image CSV lists in its path column (``image_column``, default 'path'), as a fit and
    predict read them (relative to the CSV's folder); empty cells left out, nothing checked on disk. For
    a check that must not fail where reading the data will say why (export's: an --out that would
    replace a file the run was trained on): [] for a CSV that cannot be read or lacks the column."""
    path = Path(path)
    try:
        header, rows, image_column = _image_rows(path, image_column)
    except DataError:
        return []
    return [p for p in _absolute(path, column(header, rows, image_column, path)) if p]


# -- readability (before any run directory exists) ----------------------------------------------
_CHECKED: dict[tuple, str | None] = {}  # (path, inode, size, mtime_ns, ctime_ns) -> why unreadable, or None
# What a remembered verdict depends on besides the file: the decoder and the pixel limit.
CHECKER = f"pillow {Image.__version__}|max_pixels {MAX_PIXELS}|header+eoi v1"


def unreadable(items, memo=None) -> dict[str, str]:
    """{path: why} for images that are not regular files, exceed MAX_PIXELS, or whose header
    PIL cannot parse (open + verify: about 0.1-0.4 ms an image); a JPEG without its end
    marker (cut short) is decoded at 1/8 scale to be sure. A file is checked once per
    process while its stat (inode, size, mtime, ctime) stays the same; with ``memo`` (the
    feature store) a readable verdict is remembered across processes the same way, so a warm
    fit decodes no unchanged image. Unreadable files are checked again every time (few, and
    an error may be passing)."""
    bad = {}
    if memo is not None:
        memo.start_checks()
    try:
        for p in items:
            why = _check_one(p, memo)
            if why:
                bad[p] = why
    finally:
        if memo is not None:
            memo.flush_checks()  # what was checked before an interruption is kept
    return bad


def _check_one(p: str, memo=None) -> str | None:
    if refs.is_ref(p):
        return _check_ref(p)
    try:
        st = os.stat(p)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        why = not_regular(p)
        if why:
            return f"it is {why}"
        st = os.stat(p)  # it became a regular file between the two looks
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo is not None and memo.judged_readable(memo.absolute(p), stamp, CHECKER):
        return None
    key = (p, *stamp)
    if key not in _CHECKED:
        _CHECKED[key] = _check_file(p, st.st_size)
        if _CHECKED[key] is None and memo is not None:
            memo.remember_readable(memo.absolute(p), stamp, CHECKER)
    return _CHECKED[key]


def _check_file(p: str, size: int) -> str | None:
    """Open + verify the header; decode a JPEG cut short (no end marker) at 1/8 scale."""
    try:
        with _quiet_bombs(), Image.open(p) as im:
            _check_pixels(im, p)
            fmt = im.format
            im.verify()  # PNG: every chunk's CRC; other formats: the header
        if fmt == "JPEG" and not _ends_with_eoi(p, size):
            with _quiet_bombs(), Image.open(p) as im:  # cut short? decode it (1/8 scale) to be sure
                im.draft("RGB", (1, 1))
                im.load()
        return None
    except Exception as e:  # any decoder failure makes the image unusable, whatever its type
        return _why(e)


def _check_ref(ref: str) -> str | None:
    """As ``_check_one``, for a member of a tar shard or an Arrow / Parquet cell; remembered per
    container stamp."""
    try:
        key = (ref, refs.stamp(refs.container(ref)))
    except OSError as e:
        return f"its container cannot be read ({e.strerror})"
    if key not in _CHECKED:
        try:
            data = refs.read_bytes(ref)
            with _quiet_bombs(), Image.open(io.BytesIO(data)) as im:
                _check_pixels(im, ref)
                fmt = im.format
                im.verify()
            if fmt == "JPEG" and not data.endswith(b"\xff\xd9"):
                with _quiet_bombs(), Image.open(io.BytesIO(data)) as im:
                    im.draft("RGB", (1, 1))
                    im.load()
            _CHECKED[key] = None
        except Exception as e:  # noqa: BLE001 - as _check_one
            _CHECKED[key] = _why(e)
    return _CHECKED[key]


def _ends_with_eoi(p: str, size: int) -> bool:
    """A complete JPEG ends with the EOI marker; a download cut short does not."""
    if size < 2:
        return False
    with open(p, "rb") as f:
        f.seek(size - 2)
        return f.read(2) == b"\xff\xd9"


@contextlib.contextmanager
def _quiet_bombs():
    """PIL's DecompressionBombWarning is replaced by our own MAX_PIXELS check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _check_pixels(im, p) -> None:
    n = im.size[0] * im.size[1]
    if n > MAX_PIXELS:
        raise UnreadableImage(f"cannot read image {p}: {im.size[0]}x{im.size[1]} = {n} pixels is over the limit "
                              f"of {MAX_PIXELS}: downscale it (or raise REHEAD_MAX_PIXELS)")


def _why(e: Exception) -> str:
    if isinstance(e, UnreadableImage):
        return str(e).split(": ", 1)[-1]
    if isinstance(e, Image.DecompressionBombError):
        return f"over the pixel limit ({e})"
    return f"{type(e).__name__}: {e}"


# -- decoding and transforms -------------------------------------------------------
class UnreadableImage(DataError):
    pass


def decode(path: str, min_side: int | None = None) -> Image.Image:
    """Decode to 8-bit RGB as :data:`DECODE` says. With ``min_side``, JPEGs decode at a
    reduced scale (PIL draft mode) that still keeps both sides >= min_side: much cheaper
    than a full decode then resize. ``path`` may be a reference into a tar shard, an Arrow or
    a Parquet file (:mod:`rehead.data.refs`): its bytes are decoded exactly as a file's."""
    if refs.is_ref(path):
        try:
            source = io.BytesIO(refs.read_bytes(path))
        except (refs.RefError, OSError) as e:
            raise UnreadableImage(f"cannot read image {path}: {e}") from e
    else:
        why = not_regular(path)
        if why:
            raise UnreadableImage(f"cannot read image {path}: it is {why}")
        source = path
    try:
        with _quiet_bombs(), Image.open(source) as im:
            _check_pixels(im, path)
            if min_side and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))
            if im.getexif().get(ORIENTATION, 1) != 1:  # most images: no transpose, no extra copy
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except UnreadableImage:
        raise
    except Exception as e:
        raise UnreadableImage(f"cannot read image {path}: {_why(e)}") from e


ORIENTATION = 0x0112  # the EXIF tag
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def in_memory_image(x, cfg: dict, tf) -> torch.Tensor:
    """One in-memory image as the model's input, decoded as a file is (EXIF orientation, 16-bit and
    float modes scaled): a PIL image; a numpy array (HW or HWC); a tensor that is an image (uint8, or
    float in [0, 1], CHW); or a tensor already preprocessed (float, normalised, the model's input size),
    which is taken as given."""
    if isinstance(x, np.ndarray):
        x = array_image(x)
    if isinstance(x, torch.Tensor):
        s = cfg["input_size"]
        image = x.ndim == 3 and x.shape[0] in (1, 3) and x.numel() > 0
        if image and (x.dtype == torch.uint8 or (x.is_floating_point() and 0 <= float(x.min()) and float(x.max()) <= 1)):
            x = tensor_image(x)
        elif x.is_floating_point() and tuple(x.shape) == (3, s, s):
            return x  # the run's own preprocessing already applied
        else:
            raise UnreadableImage(f"a {x.dtype} tensor of shape {tuple(x.shape)}: give an image (uint8, or float in "
                                  f"[0, 1], CHW) or the preprocessed input (normalised, 3x{s}x{s})")
    if not isinstance(x, Image.Image):
        raise UnreadableImage(f"a {type(x).__name__}: give a path, a PIL image, a numpy array or a tensor")
    if x.getexif().get(ORIENTATION, 1) != 1:
        x = ImageOps.exif_transpose(x)
    return tf(to_rgb(x))


def array_image(a: np.ndarray) -> Image.Image:
    """A numpy image as PIL: HW, HWC or CHW (1, 3 or 4 channels); uint8, 16-bit, bool, or float in [0, 1]."""
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW, as torchvision and tensors lay images out
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or a.size == 0:
        raise UnreadableImage(f"a numpy array of shape {a.shape}: give an image, HW, HWC or CHW with 1, 3 or 4 channels")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if not (np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1):
            raise UnreadableImage(f"a {a.dtype} array with values in [{a.min():.3g}, {a.max():.3g}]: give floats in "
                                  "[0, 1] or uint8 in 0-255 (un-normalised: rehead applies the model's own)")
        a = np.rint(a * 255).astype(np.uint8)
    if a.ndim == 3 and a.dtype != np.uint8:
        raise UnreadableImage(f"a {a.dtype} array of {a.shape[-1]} channels: give uint8 (0-255) or floats in [0, 1]")
    try:
        return Image.fromarray(np.ascontiguousarray(a))
    except TypeError:
        raise UnreadableImage(f"a {a.dtype} array of shape {a.shape}: give uint8 (0-255) or floats in [0, 1]") from None


def tensor_image(t: torch.Tensor) -> Image.Image:
    """A CHW image tensor (uint8, or float in [0, 1]) as a PIL image."""
    t = t.detach().cpu()
    t = (t.clamp(0, 1) * 255).round().byte() if t.is_floating_point() else t.byte()
    return Image.fromarray(np.ascontiguousarray(t.permute(1, 2, 0).squeeze(-1).numpy()))


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit, 32-bit and float images are scaled, not clipped (see DECODE)."""
    if im.mode not in WIDE_MODES:
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.rint(scale_to_8bit(a, im.mode)).astype(np.uint8), "L").convert("RGB")


def scale_to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        return a / 257.0
    if mode == "F" and lo >= 0 and hi <= 1:
        return a * 255.0
    return (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)


def _v2():
    # Imported on first use: torchvision's import pulls in torch._dynamo (~2 s), which a fit
    # served entirely from the feature cache never needs.
    from torchvision.transforms import v2
    return v2


def eval_transform(cfg: dict):
    """Resize the short side to ``resize_side``, centre-crop ``input_size``, normalise: timm's eval
    transform. For RGB PIL images (what ``decode`` gives) :class:`EvalTransform` does it at about
    twice the speed; anything else goes through the torchvision composition it matches."""
    v2 = _v2()
    size = cfg["input_size"]
    reference = v2.Compose([
        v2.Resize(resize_side(cfg), interpolation=_interp(cfg), antialias=True),
        v2.CenterCrop(size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])
    nearest = cfg.get("interpolation") == "nearest"  # PIL picks other pixels at a few crop edges
    return EvalTransform(cfg, reference) if resize_side(cfg) >= size and not nearest else reference


class EvalTransform:
    """The eval transform for RGB PIL images in one resize and one fused normalise: PIL resamples
    only the crop's source box (the same filter at the same scale, so the same pixels as resize
    then crop, within one 8-bit level of rounding), and (x/255 - mean)/std is one multiply-add.
    The decoding workers spent 2/3 of their time in torchvision's resize, crop and normalise."""

    def __init__(self, cfg: dict, reference):
        self.size, self.side, self.reference = cfg["input_size"], resize_side(cfg), reference
        self.filter = Image.BICUBIC if cfg.get("interpolation") == "bicubic" else Image.BILINEAR  # as _interp
        self.scale, self.shift = _scale_shift(cfg)

    def __call__(self, im, raw: bool = False):
        """A normalised float tensor; with ``raw``, the resized crop's 8-bit pixels (see ``normalise``)."""
        if not isinstance(im, Image.Image) or im.mode != "RGB":
            if not raw:
                return self.reference(im)
            im = im.convert("RGB")
        w, h = im.size
        # torchvision's sizes: short side -> side, long side truncated; the crop's offsets rounded
        nw, nh = (self.side, int(self.side * h / w)) if w <= h else (int(self.side * w / h), self.side)
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
        out = im.resize((self.size, self.size), self.filter, box=box)
        x = torch.from_numpy(np.array(out)).permute(2, 0, 1)  # (C, H, W) over HWC memory
        return x if raw else x.float().mul_(self.scale).add_(self.shift)


def normalise(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """A batch of ``raw`` 8-bit crops -> the model's input, wherever ``x`` is: the same float32
    multiply then add as ``EvalTransform``, so the same values on any device."""
    if x.dtype != torch.uint8:
        return x  # already normalised (not raw, or another transform)
    scale, shift = _scale_shift(cfg)
    return x.float().mul_(scale.to(x.device)).add_(shift.to(x.device))


def _scale_shift(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(x/255 - mean)/std as x * scale + shift, per channel, shaped (3, 1, 1)."""
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(3, 1, 1)
    return 1 / (255 * std), -torch.tensor(cfg["mean"], dtype=torch.float32).view(3, 1, 1) / std


def resize_side(cfg: dict) -> int:
    return int(round(cfg["input_size"] / cfg.get("crop_pct", 1.0)))


def _interp(cfg):
    v2 = _v2()
    return {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR,
            "nearest": v2.InterpolationMode.NEAREST}.get(cfg.get("interpolation", "bilinear"),
                                                        v2.InterpolationMode.BILINEAR)


class ImageDataset(torch.utils.data.Dataset):
    """Paths -> normalised tensors. Unreadable images give ``None`` (skipped by the collate)
    unless ``strict``."""

    def __init__(self, paths: list[str], labels: list[int] | None, cfg: dict, transform=None,
                 strict: bool = False, raw: bool = False):
        self.paths, self.labels, self.strict = paths, labels, strict
        self.transform = transform or eval_transform(cfg)
        self.min_side = resize_side(cfg)
        self.raw = raw and isinstance(self.transform, EvalTransform)  # the others give floats

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = decode(self.paths[i], self.min_side)
        except UnreadableImage:
            if self.strict:
                raise
            return None
        x = self.transform(img, raw=True) if self.raw else self.transform(img)
        return i, x, (self.labels[i] if self.labels is not None else -1)


def collate_skip(batch):
    """Collate (index, tensor, label) items, dropping unreadable ones (None)."""
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, torch.empty(0, dtype=torch.long)
    idx, xs, ys = zip(*good)
    # channels_last: oneDNN's convolutions (depthwise ones above all) run ~1.5-2x faster
    # on CPU in NHWC, forward and backward; the model follows the input's format. Stacked as
    # (N, H, W, C) by default_collate: one copy, in a loader worker straight into the shared memory
    # the batch travels in (stack, then contiguous, then sharing copied every batch three times).
    x = default_collate([x.permute(1, 2, 0) for x in xs]).permute(0, 3, 1, 2)
    # multilabel targets are multi-hot arrays: stacked first (torch.tensor of a list of arrays is slow, and warns)
    return torch.tensor(idx), x, torch.as_tensor(np.stack(ys)) if isinstance(ys[0], np.ndarray) else torch.tensor(ys)


# -- the pipeline interface (see rehead.data.pipeline) ----------------------------------
unit = "img"


def sample_key(item: str, cache, backbone) -> str:
    """sha256 of the image's bytes: a file's (remembered by the store), or a referenced member's or
    cell's (the same key for the same image stored either way)."""
    if refs.is_ref(item):
        return refs.content_key(item, cache)
    return cache.file_digest(item)


def sample_keys(items: list, cache, backbone) -> list[str]:
    """``sample_key`` of many items: files through the store's batch lookup (a stat each, one
    query per folder), references one by one."""
    if not any(refs.is_ref(i) for i in items):
        return cache.file_digests(items)
    if all(refs.is_ref(i) for i in items):
        return refs.content_keys(items, cache)
    return [sample_key(i, cache, backbone) for i in items]


def batch_len(inputs, idx) -> int:
    return len(idx)


def make_loader(backbone, items, labels, batch_size=32, workers=2, strict=False, shuffle=False,
                transform=None, generator=None, drop_last=False, raw=False):
    """Batches ``(indices, images, labels)``; with ``raw``, the eval transform's images come as
    8-bit crops for ``normalise`` on the device: a quarter of the bytes to share, pin and copy."""
    ds = ImageDataset(items, labels, backbone.data_config, transform=transform, strict=strict, raw=raw)
    sampler = None
    if shuffle:  # Parquet references: shuffled by windows of row groups, each decoded once an epoch
        groups = refs.row_groups(items)
        if groups is not None:
            sampler, shuffle = refs.GroupedShuffle(groups, generator), False
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       num_workers=workers, collate_fn=collate_skip, generator=generator,
                                       drop_last=drop_last, pin_memory=torch.cuda.is_available())


def example_input(backbone) -> torch.Tensor:
    s = backbone.data_config["input_size"]
    return torch.zeros(1, 3, s, s)


AUGMENT_PRESETS = ("light", "crop", "trivial", "randaug", "classic")


def train_transform(backbone, preset: str):
    """Augmentation for training images only. ``light``: random resized crop + flip; ``crop``: the
    crop alone (for images whose mirror is another class: digits, text);
    ``trivial`` / ``randaug``: those plus torchvision's TrivialAugmentWide / RandAugment(2, 9);
    ``classic``: the Keras ImageDataGenerator set (rotation, shifts, shear, zoom, flip)."""
    cfg, v2 = backbone.data_config, _v2()
    size, interp = cfg["input_size"], _interp(cfg)
    crop = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip()]
    if preset == "light":
        aug = crop
    elif preset == "crop":
        aug = crop[:1]
    elif preset == "trivial":
        aug = crop + [v2.TrivialAugmentWide(interpolation=interp)]
    elif preset == "randaug":
        aug = crop + [v2.RandAugment(num_ops=2, magnitude=9, interpolation=interp)]
    elif preset == "classic":
        aug = [v2.Resize(resize_side(cfg), interpolation=interp, antialias=True), v2.CenterCrop(size),
               v2.RandomAffine(degrees=40, translate=(0.2, 0.2), shear=20, scale=(0.8, 1.2), interpolation=interp),
               v2.RandomHorizontalFlip()]
    else:
        raise DataError(f"augmentation preset must be one of {', '.join(AUGMENT_PRESETS)}, got {preset!r}")
    return v2.Compose(aug + [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(cfg["mean"], cfg["std"])])


def check_items(ds: Dataset, strict: bool = False) -> list[str]:
    """Before live training: find unreadable images (header check), drop them from the
    splits, recount the classes and return their paths; with ``strict`` the first one is an
    error. (load_dataset has done this already; this catches files changed since.)"""
    items = ds.train.items + ds.val.items + (ds.test.items if ds.test is not None else [])
    bad = unreadable(items)
    if bad and strict:
        p, why = next(iter(bad.items()))
        raise UnreadableImage(f"cannot read image {p}: {why} (remove it, or drop --strict to skip it)")
    return drop_items(ds, bad) if bad else []
