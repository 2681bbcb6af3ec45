"""Does fine-tuning pay once a set far from ImageNet is large? scikit-learn's digits, all of them.

`rehead demo` uses 50 digits a class (400 train / 100 val: small, and there `extract` holds up,
`bench/auto_digits.py`). Here every class gives 170 of its scikit-learn digits (the rarest class
has 174), written as `rehead demo` writes them (64x64 PNGs, nearest upscaling): 130 a class make
train/ (1,300; rehead carves its val, 260, from them: 1,040 train rows, *large* by auto's rule)
and 40 a class make test/ (400, scored once per fit, never used to choose). Horizontal flips do
change a digit, so every row but ``auto`` and ``extract`` is also run with ``--augment none``
where it augments (the light default flips).

Rows, each the command a user types (``rehead fit DIGITS ...``, fresh process, one feature cache):
``auto``, ``extract``, ``finetune`` (defaults), ``finetune_noaug`` (``--augment none``),
``finetune4_noaug`` (``--unfreeze 4 --augment none``); then, since the head starts the unfrozen
phases at train loss ~0.005 (nothing left to learn from) or, flipped and cropped, at train accuracy
~0.73: ``finetune_mix`` (no flips, ``--mixup 0.2 --cutmix 1.0 --epochs 10``), ``finetune_smooth``
(no flips, ``--label-smoothing 0.1``), ``finetune_all_mix`` (every stage, mixed, 10 epochs);
the unfrozen phases run at a tenth of ``--lr`` (1e-4 by default): ``finetune_all_lr`` (every stage,
no flips, ``--lr 1e-2``: 1e-3 unfrozen).
Beside them, scikit-learn on the 8x8 pixels themselves (the same train/test digits): how far from
the ceiling the transfer is.

    PYTHONPATH=.:bench python bench/digits_large.py [--rows auto,extract] [--name digits_large]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fit_rows, machine, write  # noqa: E402

ROWS = {"auto": [], "extract": ["--strategy", "extract"], "finetune": ["--strategy", "finetune"],
        "finetune_noaug": ["--strategy", "finetune", "--augment", "none"],
        "finetune4_noaug": ["--strategy", "finetune", "--unfreeze", "4", "--augment", "none"],
        "finetune_mix": ["--strategy", "finetune", "--augment", "none", "--mixup", "0.2", "--cutmix", "1.0",
                         "--epochs", "10"],
        "finetune_smooth": ["--strategy", "finetune", "--augment", "none", "--label-smoothing", "0.1"],
        "finetune_all_mix": ["--strategy", "finetune", "--unfreeze", "-1", "--augment", "none", "--mixup", "0.2",
                             "--cutmix", "1.0", "--epochs", "10"],
        "finetune_all_lr": ["--strategy", "finetune", "--unfreeze", "-1", "--augment", "none", "--lr", "1e-2"]}


def write_digits_split(root: Path, train: int = 130, test: int = 40, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits
    from rehead.demo import digit_image
    d = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = rng.choice(np.flatnonzero(d.target == c), train + test, replace=False)
        for split, part in (("train", idx[:train]), ("test", idx[train:])):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in part:
                digit_image(d.images[i]).save(root / split / str(c) / f"{i}.png")
    return root


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--name", default="digits_large")
    a = ap.parse_args()
    started = machine()
    root = Path(tempfile.mkdtemp(prefix="digits-large-"))
    data = write_digits_split(root / "digits")
    env = {**os.environ, "REHEAD_CACHE": str(root / "cache")}
    rows = fit_rows(a.rows.split(","), lambda name, _: ROWS[name], data, root, env)
    write(a.name, {"rows": rows, "pixels_reference": pixels_reference()}, {"protocol": __doc__.split("\n\n")[1]},
          started)


def pixels_reference(train: int = 130, test: int = 40, seed: int = 0) -> dict:
    """Test accuracy of scikit-learn on the raw 8x8 pixels of the same split (C chosen by CV on train)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
    d = load_digits()
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in range(10):  # the same draws as write_digits_split
        idx = rng.choice(np.flatnonzero(d.target == c), train + test, replace=False)
        tr += list(idx[:train])
        te += list(idx[train:])
    x, y = d.data / 16, d.target
    out = {}
    for name, est, grid in (("logreg", LogisticRegression(max_iter=3000), {"C": [0.1, 0.3, 1, 3, 10, 30]}),
                            ("svc_rbf", SVC(), {"C": [1, 3, 10, 30], "gamma": ["scale", 0.01, 0.03]})):
        g = GridSearchCV(est, grid, cv=5).fit(x[tr], y[tr])
        out[name] = {"test_acc": float(g.score(x[te], y[te])), "best": g.best_params_}
    return out


if __name__ == "__main__":
    main()
