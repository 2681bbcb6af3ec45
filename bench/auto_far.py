"""`auto` on a large set far from ImageNet: count the dots.

1,500 generated 128 px images (seeded), four classes: 1, 2, 3 or 4 bright discs of random size,
colour and place on dark noise. rehead carves 300 for val, so 1,200 train: *large* data by the
rule. On the default backbone a linear probe reads the count far better from the middle of the
network than from its top (the later stages encode ImageNet objects, not counts), so the set is
*different* with an earlier cut that beats the top.

Rows, each the command a user types (``rehead fit DOTS ...``) from one cold feature cache:
``auto`` (the default), ``extract`` (features from the top), ``extract_at_cut`` (features at the
cut auto's probe found best, given by hand as ``--cut``); with ``--rows``, also ``auto_sgd``
(``--optimizer sgd``), ``finetune_at_cut`` and ``finetune_at_cut_sgd`` (``--strategy finetune`` at that
cut, 2 epochs, AdamW or SGD).

    PYTHONPATH=.:bench python bench/auto_far.py [--rows auto,extract,extract_at_cut] [--name auto_far]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fit_rows, machine, write  # noqa: E402


def write_dots(root: Path, per_class: int = 375, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 4):
        d = root / f"{n}_dots"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray((rng.random((128, 128, 3)) * 60).astype(np.uint8))
            draw, placed = ImageDraw.Draw(img), []
            while len(placed) < n:  # discs that neither touch nor overlap
                r = int(rng.integers(6, 14))
                x, y = (int(v) for v in rng.integers(r, 128 - r, size=2))
                if all((x - a) ** 2 + (y - b) ** 2 > (r + c + 4) ** 2 for a, b, c in placed):
                    placed.append((x, y, r))
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(180, 256, 3)))
            img.save(d / f"{i:04d}.png")
    return root


def args_for(name: str, best_cut: int | None) -> list[str]:
    return {"auto": [], "auto_sgd": ["--optimizer", "sgd"], "extract": ["--strategy", "extract"],
            "extract_at_cut": ["--strategy", "extract", "--cut", str(best_cut)],
            "finetune_at_cut": ["--strategy", "finetune", "--cut", str(best_cut), "--epochs", "2"],
            "finetune_at_cut_sgd": ["--strategy", "finetune", "--cut", str(best_cut), "--epochs", "2",
                                    "--optimizer", "sgd"]}[name]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="auto,extract,extract_at_cut")
    ap.add_argument("--name", default="auto_far")
    a = ap.parse_args()
    started = machine()
    root = Path(tempfile.mkdtemp(prefix="auto-far-"))
    dots = write_dots(root / "dots")
    env = {**os.environ, "REHEAD_CACHE": str(root / "cache")}
    rows = fit_rows(a.rows.split(","), args_for, dots, root, env)
    write(a.name, {"images": 1500, "rows": rows}, {"protocol": __doc__.split("\n\n")[1]}, started)


if __name__ == "__main__":
    main()
