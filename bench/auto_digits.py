"""Does `auto`'s choice on a set far from ImageNet hold up on the default backbone?

scikit-learn's digits as `rehead demo` writes them (50 a class, 64x64 PNGs: 400 train / 100 val
carved by rehead) on the default image backbone (``config.DEFAULT_MODEL``). Rows, each the
command a user types, from one cold feature cache:

- ``auto``: ``rehead fit DIGITS`` (its plan and reason from config.yaml);
- ``finetune``: ``--strategy finetune`` (the last 2 stages, light augmentation);
- ``finetune4_noaug``: ``--strategy finetune --unfreeze 4 --augment none``.

Beside them, how far the images are from the source's in the network's own eyes: the mean
symmetric KL divergence between each BatchNorm layer's input statistics on 64 images and its
pretrained running statistics (per channel, Gaussian), for digits and for hymenoptera's val
photos. Informational: `auto`'s rule does not read it.

    PYTHONPATH=.:bench python bench/auto_digits.py [--rows auto] [--name auto_digits]
        -> bench/results/auto_digits.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, fit_row, machine, write  # noqa: E402

ROWS = {"auto": [], "finetune": ["--strategy", "finetune"],
        "finetune4_noaug": ["--strategy", "finetune", "--unfreeze", "4", "--augment", "none"]}


def bn_shift(model: str, folder: Path, n: int = 64) -> float:
    """Mean over BatchNorm layers and channels of the symmetric KL between the layer's input
    statistics on ``n`` images and its running statistics."""
    import torch
    from rehead import zoo
    from rehead.data.images import ImageDataset
    bb = zoo.load(model).eval()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = paths[::max(1, len(paths) // n)][:n]
    ds = ImageDataset(paths, None, bb.data_config)
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    kls = []

    def hook(m, args):
        t = args[0].float()
        mu, var = t.mean((0, 2, 3)), t.var((0, 2, 3)) + m.eps
        rm, rv = m.running_mean, m.running_var + m.eps
        kls.append(float((0.5 * ((var + (mu - rm) ** 2) / rv + (rv + (mu - rm) ** 2) / var - 2)).mean()))
    hooks = [m.register_forward_pre_hook(hook) for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        bb(x)
    for h in hooks:
        h.remove()
    return sum(kls) / len(kls)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--name", default="auto_digits")
    a = ap.parse_args()
    from rehead.config import DEFAULT_MODEL
    from rehead.demo import write_digits
    started, rows = machine(), []
    root = Path(tempfile.mkdtemp(prefix="auto-digits-"))
    digits = write_digits(root / "digits")
    env = {**os.environ, "REHEAD_CACHE": str(root / "cache")}
    for name in a.rows.split(","):
        row = fit_row(name, digits, ROWS[name], root / name, env)
        rows.append(row)
        print(json.dumps(row), flush=True)
    shift = {"digits": bn_shift(DEFAULT_MODEL, digits), "hymenoptera_val": bn_shift(DEFAULT_MODEL, HYMENOPTERA / "val")}
    write(a.name, {"model": DEFAULT_MODEL, "rows": rows, "bn_shift_sym_kl": shift},
          {"protocol": __doc__.split("\n\n")[1]}, started)


if __name__ == "__main__":
    main()
