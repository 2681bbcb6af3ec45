"""Fine-tuning where frozen features are far from the ceiling: which way up is a real photo?

hymenoptera's 397 photos, each saved upright and upside down (rotated 180 degrees): a two-class task
on real photos whose answer a frozen ImageNet backbone's pooled top features barely hold (global
pooling forgets where things are). Horizontal flips keep the label (a flipped upside-down photo is
still upside down), so the default light augmentation is sound here. hymenoptera's train photos
make train/ (488 images; rehead carves its own val from them) and its val photos make test/ (306,
scored once per fit, never used to choose): the same photo never sits on both sides.

Rows, each the command a user types (``rehead fit ORIENTATION ...``) in a fresh process over one
feature cache: ``extract`` (features from the top), ``auto`` (the default), ``extract_at_cut``
(``--cut`` where auto's probe read best), ``finetune`` (``--strategy finetune``), ``finetune_find_lr``
(``--find-lr``: the LR range test on the head chooses the LR), ``finetune_sgd`` (``--optimizer sgd``),
``finetune_at_cut`` (every stage below that cut, ``--lr 1e-2``: unfrozen at 1e-3).

    PYTHONPATH=.:bench python bench/orientation.py [--rows extract,auto,finetune] [--name orientation]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, fit_rows, machine, write  # noqa: E402

ROWS = ("extract", "auto", "extract_at_cut", "finetune", "finetune_find_lr", "finetune_sgd", "finetune_at_cut")


def args_for(name: str, cut: int | None) -> list[str]:
    return {"extract": ["--strategy", "extract"], "auto": [], "extract_at_cut": ["--strategy", "extract", "--cut", str(cut)],
            "finetune": ["--strategy", "finetune"], "finetune_find_lr": ["--strategy", "finetune", "--find-lr"],
            "finetune_sgd": ["--strategy", "finetune", "--optimizer", "sgd"],
            "finetune_at_cut": ["--strategy", "finetune", "--cut", str(cut), "--unfreeze", "-1", "--lr", "1e-2"]}[name]


def write_orientation(src: Path, root: Path) -> Path:
    """train/ and test/ of upright and upside-down copies of hymenoptera's train and val photos."""
    for split, dst in (("train", "train"), ("val", "test")):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            for f in sorted(cls.iterdir()):
                im = Image.open(f).convert("RGB")
                for angle, label in ((0, "upright"), (180, "upside_down")):
                    d = root / dst / label
                    d.mkdir(parents=True, exist_ok=True)
                    im.rotate(angle).save(d / f"{cls.name}_{f.stem}.jpg", quality=92)
    return root


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--name", default="orientation")
    a = ap.parse_args()
    started = machine()
    root = Path(tempfile.mkdtemp(prefix="orientation-"))
    data = write_orientation(HYMENOPTERA, root / "orientation")
    env = {**os.environ, "REHEAD_CACHE": str(root / "cache")}
    rows = fit_rows(a.rows.split(","), args_for, data, root, env)
    write(a.name, {"train_images": 488, "test_images": 306, "rows": rows}, {"protocol": __doc__.split("\n\n")[1]},
          started)


if __name__ == "__main__":
    main()
