"""Image data: class folders, train/val folders, or a CSV of path,label."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from PIL import Image

from . import DataError, Dataset, Samples, stratified_split

log = logging.getLogger(__name__)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VAL_DIRS = ("val", "valid", "validation", "test")


def _list_class_folders(root: Path) -> tuple[list[str], dict[str, list[Path]]]:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DataError(f"{root} has no class folders: put each class's images in a folder "
                        "named after the class (e.g. {root}/cats/*.jpg)")
    found = {d.name: sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTS) for d in dirs}
    empty = [c for c, fs in found.items() if not fs]
    if empty and all(not fs for fs in found.values()):
        raise DataError(f"no images found under {root} (looked for {', '.join(sorted(IMAGE_EXTS))})")
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {root} contain no images: "
                        "add images or remove the folder(s)")
    return list(found), found


def _check_classes(classes: list[str], where) -> None:
    if len(classes) < 2:
        raise DataError(f"{where} has a single class ({classes[0] if classes else 'none'}): "
                        "a classifier needs at least two class folders")


def _samples(found: dict[str, list[Path]], classes: list[str]) -> Samples:
    items, labels = [], []
    for i, c in enumerate(classes):
        for f in found.get(c, []):
            items.append(str(f))
            labels.append(i)
    return Samples(items, labels)


def load_images(path: Path, val_fraction: float = 0.2, seed: int = 0, eval_only: bool = False, **_) -> Dataset:
    """Find images and labels; with no val/ folder, split train by a seeded stratified split.
    ``eval_only``: data to evaluate on: its val/ folder if it has one, else all of it."""
    if eval_only and not (path / "train").is_dir() and path.is_dir():
        classes, found = _list_class_folders(path)
        return Dataset("image", classes, Samples([], []), _samples(found, classes), str(path))
    if path.is_file():
        return _load_csv(path, val_fraction, seed)
    val_dir = next((path / d for d in VAL_DIRS if (path / d).is_dir()), None)
    if (path / "train").is_dir():
        classes, found = _list_class_folders(path / "train")
        _check_classes(classes, path / "train")
        train = _samples(found, classes)
        if val_dir is not None:
            vclasses, vfound = _list_class_folders(val_dir)
            extra = set(vclasses) - set(classes)
            if extra:
                raise DataError(f"{val_dir} has classes not in train/: {', '.join(sorted(extra))}")
            return Dataset("image", classes, train, _samples(vfound, classes), str(path))
        return _split(classes, train, val_fraction, seed, str(path))
    classes, found = _list_class_folders(path)
    _check_classes(classes, path)
    return _split(classes, _samples(found, classes), val_fraction, seed, str(path))


def _split(classes, samples: Samples, val_fraction, seed, source) -> Dataset:
    counts = [samples.labels.count(i) for i in range(len(classes))]
    few = [c for c, n in zip(classes, counts) if n < 2]
    if few:
        raise DataError(f"class(es) {', '.join(few)} have fewer than 2 images: cannot split train/val")
    tr, va = stratified_split(samples.labels, val_fraction, seed)
    return Dataset("image", classes, samples.subset(tr), samples.subset(va), source,
                   info={"split": f"stratified {val_fraction:.0%} val, seed {seed}"})


def _load_csv(path: Path, val_fraction: float, seed: int) -> Dataset:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path} has no rows")
    missing = {"path", "label"} - set(rows[0])
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}: an image CSV needs "
                        f"'path,label' (found: {', '.join(rows[0])})")
    classes = sorted({r["label"] for r in rows})
    _check_classes(classes, path)
    items = [str((path.parent / r["path"]).resolve()) for r in rows]
    gone = [p for p in items if not Path(p).exists()]
    if gone:
        raise DataError(f"{len(gone)} image(s) listed in {path} do not exist, e.g. {gone[0]}")
    samples = Samples(items, [classes.index(r["label"]) for r in rows])
    if "split" in rows[0]:
        tr = [i for i, r in enumerate(rows) if r["split"] == "train"]
        va = [i for i, r in enumerate(rows) if r["split"] != "train"]
        return Dataset("image", classes, samples.subset(tr), samples.subset(va), str(path))
    return _split(classes, samples, val_fraction, seed, str(path))


# -- decoding and transforms -------------------------------------------------------
class UnreadableImage(DataError):
    pass


def decode(path: str, min_side: int | None = None) -> Image.Image:
    """Decode to RGB. With ``min_side``, JPEGs decode at a reduced scale (PIL draft mode)
    that still keeps both sides >= min_side: much cheaper than a full decode then resize."""
    try:
        with Image.open(path) as im:
            if min_side:
                im.draft("RGB", (min_side, min_side))
            return im.convert("RGB")
    except Exception as e:
        raise UnreadableImage(f"cannot read image {path}: {e}") from e


def _v2():
    # Imported on first use: torchvision's import pulls in torch._dynamo (~2 s), which a fit
    # served entirely from the feature cache never needs.
    from torchvision.transforms import v2
    return v2


def eval_transform(cfg: dict):
    v2 = _v2()
    size = cfg["input_size"]
    resize = int(round(size / cfg.get("crop_pct", 1.0)))
    return v2.Compose([
        v2.Resize(resize, interpolation=_interp(cfg), antialias=True),
        v2.CenterCrop(size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])


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
                 strict: bool = False):
        self.paths, self.labels, self.strict = paths, labels, strict
        self.transform = transform or eval_transform(cfg)
        self.min_side = resize_side(cfg)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = decode(self.paths[i], self.min_side)
        except UnreadableImage:
            if self.strict:
                raise
            return None
        x = self.transform(img)
        return i, x, (self.labels[i] if self.labels is not None else -1)


def collate_skip(batch):
    """Collate (index, tensor, label) items, dropping unreadable ones (None)."""
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, torch.empty(0, dtype=torch.long)
    idx, xs, ys = zip(*good)
    # channels_last: oneDNN's convolutions (depthwise ones above all) run ~1.5-2x faster
    # on CPU in NHWC, forward and backward; the model follows the input's format.
    x = torch.stack(xs).contiguous(memory_format=torch.channels_last)
    return torch.tensor(idx), x, torch.tensor(ys)


# -- the pipeline interface (see rehead.data.pipeline) ----------------------------------
unit = "img"


def sample_key(item: str, cache, backbone) -> str:
    return cache.file_digest(item)


def batch_len(inputs, idx) -> int:
    return len(idx)


def make_loader(backbone, items, labels, batch_size=32, workers=2, strict=False, shuffle=False,
                transform=None, generator=None, drop_last=False):
    ds = ImageDataset(items, labels, backbone.data_config, transform=transform, strict=strict)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       collate_fn=collate_skip, generator=generator, drop_last=drop_last)


def example_input(backbone) -> torch.Tensor:
    s = backbone.data_config["input_size"]
    return torch.zeros(1, 3, s, s)


AUGMENT_PRESETS = ("light", "classic")


def train_transform(backbone, preset: str):
    """Augmentation for training images only. ``classic``: the Keras ImageDataGenerator set
    (rotation, shifts, shear, zoom, horizontal flip); ``light``: random resized crop + flip."""
    cfg, v2 = backbone.data_config, _v2()
    size, interp = cfg["input_size"], _interp(cfg)
    if preset == "light":
        aug = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp, antialias=True),
               v2.RandomHorizontalFlip()]
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
    splits and return their paths; with ``strict`` the first one is an error."""
    bad = []
    for split in ("train", "val"):
        s = getattr(ds, split)
        keep = []
        for i, p in enumerate(s.items):
            try:
                with Image.open(p) as im:
                    im.verify()
                keep.append(i)
            except Exception as e:
                if strict:
                    raise UnreadableImage(f"cannot read image {p}: {e} (remove it, or drop --strict to skip it)") from e
                bad.append(p)
        setattr(ds, split, s.subset(keep))
    ds.skipped += bad
    return bad
