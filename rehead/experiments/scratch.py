"""The from-scratch baseline: a small CNN trained on the target data alone.

Four conv blocks (3x3 conv, ReLU, 2x2 max-pool; 32-64-128-128 filters) and a dense head
(dropout 0.5, 512 ReLU units), as in the classic Keras cats-vs-dogs baseline (Chollet,
"Deep Learning with Python", 5.2), with its augmentation (rotation 40, shifts 0.2, shear,
zoom 0.2, horizontal flip). Images are decoded ONCE into small uint8 tensors held in
memory; only the augmentation runs per epoch, so a sweep over data fractions costs
little more than the convolutions themselves.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.transforms import v2

from ..data.images import decode


MIN_SIZE = 48  # four (3x3 conv, 2x2 pool) blocks need at least this much image: 48 -> 1 px


def check_options(size: int, epochs: int, min_steps: int, lr: float) -> None:
    """The scratch CNN's options, refused with their flags before compare reads data or writes a file
    (a bad --scratch-size surfaced from ScratchCNN after the first transfer arm, leaving a run directory)."""
    from ..config import ConfigError
    if size < MIN_SIZE:
        raise ConfigError(f"--scratch-size must be at least {MIN_SIZE} (px: the scratch CNN's four conv+pool "
                          f"blocks shrink smaller inputs to nothing), got {size}")
    if epochs < 1:
        raise ConfigError(f"--scratch-epochs must be at least 1, got {epochs}")
    if min_steps < 0:
        raise ConfigError(f"--scratch-min-steps must be 0 or more (0: exactly --scratch-epochs), got {min_steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--scratch-lr must be a finite number > 0, got {lr}")


class ScratchCNN(nn.Module):
    def __init__(self, n_classes: int, size: int = 128, widths=(32, 64, 128, 128), hidden: int = 512,
                 dropout: float = 0.5):
        super().__init__()
        if size < MIN_SIZE:
            raise ValueError(f"the scratch CNN needs inputs of at least {MIN_SIZE} px, got {size}")
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            d = self.features(torch.zeros(1, 3, size, size)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


def decode_all(paths: list[str], size: int) -> tuple[torch.Tensor, list[int]]:
    """uint8 (N, 3, S, S) center crops at S = size / 0.875 (room for shifts and zoom); unreadable skipped."""
    side = int(round(size / 0.875))
    prep = v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(side), v2.PILToTensor()])
    out, kept = [], []
    for i, p in enumerate(paths):
        try:
            out.append(prep(decode(p, side)))
            kept.append(i)
        except Exception:  # noqa: BLE001 - an unreadable image is skipped, as everywhere in rehead
            continue
    return (torch.stack(out) if out else torch.empty(0, 3, side, side, dtype=torch.uint8)), kept


def transforms(size: int, augment: bool):
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    if not augment:
        return v2.Compose([v2.CenterCrop(size)] + norm)
    return v2.Compose([v2.RandomAffine(degrees=40, translate=(0.2, 0.2), shear=11, scale=(0.8, 1.2)),
                       v2.CenterCrop(size), v2.RandomHorizontalFlip()] + norm)


class TensorImages(torch.utils.data.Dataset):
    """(index, transformed image, label) over decoded uint8 images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return i, self.transform(self.x[i]), self.y[i]


BATCH = 16  # the scratch CNN's training batch


def scratch_epochs(n_train: int, epochs: int, min_steps: int, batch_size: int = BATCH) -> int:
    """``epochs``, raised so that training takes at least ``min_steps`` optimizer steps: a tiny
    fraction would get a handful of steps in a fixed number of epochs."""
    steps = max(1, math.ceil(n_train / batch_size))
    return max(epochs, math.ceil(min_steps / steps))


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, size: int) -> float:
    """Accuracy of ``model`` (as it is) on decoded images, with the val transform."""
    model.eval()
    dev, tf = next(model.parameters()).device, transforms(size, False)
    right = sum((model(tf(x[i:i + 64]).to(dev)).argmax(1).cpu() == y[i:i + 64]).sum().item()
                for i in range(0, len(y), 64))
    return right / max(1, len(y))


def train_scratch(x_train, y_train, x_val, y_val, n_classes: int, size: int = 128, epochs: int = 15,
                  min_steps: int = 30, lr: float = 1e-3, batch_size: int = BATCH, seed: int = 0,
                  progress: bool = False, run_dir=None, x_test=None, y_test=None) -> dict:
    """Train a ScratchCNN with augmentation. The LAST epoch is kept and reported: choosing the best
    val epoch would make its val accuracy optimistic (compare's transfer arm keeps its last too).
    With ``x_test``, that final model is scored once on the test split."""
    from ..train.loop import Phase, TrainConfig, Trainer, seed_everything
    seed_everything(seed)
    model = ScratchCNN(n_classes, size)
    ep = scratch_epochs(len(y_train), epochs, min_steps, batch_size)
    train = TensorImages(x_train, y_train, transforms(size, True))
    val = TensorImages(x_val, y_val, transforms(size, False))

    def loader(data, shuffle, generator):
        return torch.utils.data.DataLoader(data, batch_size=batch_size if shuffle else 64, shuffle=shuffle,
                                           generator=generator)
    # every epoch it was given, blown up or not: the curves transfer is compared with
    trainer = Trainer(TrainConfig(seed=seed, progress=progress, select_best=False, blowup=False), run_dir=run_dir)
    hist = trainer.fit(model, train, val, [Phase("scratch", ep, lr, schedule="onecycle", weight_decay=1e-4)],
                       make_loader=loader)
    last = hist[-1]
    out = {"val_acc": last["val_acc"], "val_loss": last["val_loss"], "kept_epoch": last["global_epoch"],
           "epochs": ep, "history": hist, "params": sum(p.numel() for p in model.parameters())}
    if x_test is not None and len(y_test):
        out["test_acc"] = accuracy(model, x_test, y_test, size)
    return out
