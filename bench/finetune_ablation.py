"""Issue 14 item 2: which pieces of a fine-tuning recipe pay on hymenoptera, each switched on or off
against the same start (the solved linear head on cached features, then the last stages unfrozen).

Every row is one ``rehead.fit(..., strategy="finetune")`` with the listed options changed; the
feature cache is shared, so only the first row pays the extraction (wall times of later rows are
the fine-tune alone). hymenoptera has no test split: val (the tutorial's 153 photos) picks the kept
epoch and is the figure reported, as in the issue's own goal; one photo is 0.65 points.

    PYTHONPATH=.:bench python bench/finetune_ablation.py                 # every row, seed 0
    PYTHONPATH=.:bench python bench/finetune_ablation.py --rows light trivial --seeds 0 1
    PYTHONPATH=.:bench python bench/finetune_ablation.py --model packaged:efficientnet_lite2 \
        --rows defaults mix mix+epochs10 --seeds 0 1 2 --name finetune_ablation_mix

Features for the solved head are computed in fp32 here (``REHEAD_FEATURE_PRECISION=fp32`` is set
unless given), so rows compare with the first round, measured before bf16 features existed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import os

os.environ.setdefault("REHEAD_FEATURE_PRECISION", "fp32")

import rehead  # noqa: F401,E402  first, as the CLI does

from _common import HYMENOPTERA, RESULTS, machine, write  # noqa: E402

# Rows measured before pretrained BN statistics became the default say freeze_bn False explicitly,
# so that rerunning them measures what was measured.
BASE = {"strategy": "finetune", "epochs": 5, "unfreeze": 2}
ROWS = {
    "defaults": {},  # what `--strategy finetune` does now: light augmentation, pretrained BN statistics kept
    "none": {"augment": "none", "freeze_bn": False},
    "light": {"augment": "light", "freeze_bn": False},
    "trivial": {"augment": "trivial", "freeze_bn": False},
    "randaug": {"augment": "randaug", "freeze_bn": False},
    "light+ema": {"augment": "light", "ema": 0.99, "freeze_bn": False},
    "light+label_smoothing": {"augment": "light", "label_smoothing": 0.1, "freeze_bn": False},
    "light+lr3e-3": {"augment": "light", "lr": 3e-3, "freeze_bn": False},
    "light+lr3e-4": {"augment": "light", "lr": 3e-4, "freeze_bn": False},
    "light+freeze_bn": {"augment": "light", "freeze_bn": True},
    "light+unfreeze4": {"augment": "light", "unfreeze": 4, "freeze_bn": False},
    "light+epochs10": {"augment": "light", "epochs": 10, "freeze_bn": False},
    # round 2: the pieces that held the head's score, together
    "light+freeze_bn+lr3e-3": {"augment": "light", "freeze_bn": True, "lr": 3e-3},
    "light+freeze_bn+lr3e-3+epochs10": {"augment": "light", "freeze_bn": True, "lr": 3e-3, "epochs": 10},
    "none+freeze_bn+lr3e-3": {"augment": "none", "freeze_bn": True, "lr": 3e-3},
    "trivial+freeze_bn+lr3e-3+epochs10": {"augment": "trivial", "freeze_bn": True, "lr": 3e-3, "epochs": 10},
    "light+freeze_bn+l2sp": {"augment": "light", "freeze_bn": True, "method": "l2sp"},
    # round 3 (eighth session): a harder objective for the unfrozen phase, on top of the defaults
    "mix": {"mixup": 0.2, "cutmix": 1.0},
    "mix+epochs10": {"mixup": 0.2, "cutmix": 1.0, "epochs": 10},
}


def one(name: str, seed: int, tmp: Path, model: str | None = None) -> dict:
    from rehead.config import FitConfig
    from rehead.fit import fit
    opts = {**BASE, **ROWS[name], "seed": seed, **({"model": model} if model else {})}
    if not all(k in FitConfig.__dataclass_fields__ for k in opts):
        return {"row": name, "seed": seed, "skipped": "option not in this version: "
                + ", ".join(k for k in opts if k not in FitConfig.__dataclass_fields__)}
    out = tmp / f"{name}-{seed}"
    t0 = time.perf_counter()
    fit(str(HYMENOPTERA), out=out, cache_dir=str(tmp / "cache"), progress=False, echo=lambda *_: None, **opts)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    phases = {p["phase"]: round(p["best_val_acc"], 4) for p in s["phases"]}
    return {"row": name, "seed": seed, "options": opts, "val_acc": s["val_acc"], "kept_phase": s["kept_phase"],
            "kept_epoch": s["kept_epoch"], "phase_best": phases, "last_val_acc": s["last_val_acc"],
            "augment": s.get("augment"), "wall_s": round(wall, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--name", default="finetune_ablation")
    ap.add_argument("--model", default="packaged:efficientnet_lite0",
                    help="the backbone (rounds 1-2: Lite0, the default of the time)")
    a = ap.parse_args()
    started, rows = machine(), []
    prev = RESULTS / f"{a.name}.json"
    with tempfile.TemporaryDirectory() as d:
        for seed in a.seeds:
            for name in a.rows:
                rows.append(one(name, seed, Path(d), a.model))
                print(json.dumps(rows[-1]), flush=True)
                # written after every row: a long run killed half way keeps what it measured
                write(a.name, {"rows": rows}, {"protocol": __doc__.split("\n\n")[1]}, started)
    return prev


if __name__ == "__main__":
    main()
