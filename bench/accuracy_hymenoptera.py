"""Issues 3 and 4: val accuracy on hymenoptera (ants vs bees, the PyTorch tutorial's split:
train 244, val 153) with the packaged EfficientNet-Lite0, through ``rehead.fit.fit``.

Reference figures from the PyTorch transfer-learning tutorial (ResNet-18, same split):
fixed feature extractor 0.948, full fine-tune (25 epochs) 0.935.

    PYTHONPATH=. python bench/accuracy_hymenoptera.py                       # extract, then finetune
    PYTHONPATH=. python bench/accuracy_hymenoptera.py --strategies extract
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import rehead  # noqa: F401  first, as the CLI does (sets OMP_WAIT_POLICY before torch loads)

from _common import HYMENOPTERA, RESULTS, machine, write

TUTORIAL = {"extract": 0.948, "finetune": 0.935}
TARGET = {"extract": 0.92, "finetune": 0.935}


def run(strategy: str, tmp: Path, a) -> dict:
    from rehead.fit import fit
    kw = dict(strategy=strategy, out=tmp / f"run-{strategy}", cache_dir=str(tmp / "cache"), progress=False,
              seed=a.seed, echo=lambda *_: None)
    if strategy == "finetune":
        kw.update(epochs=a.epochs, unfreeze=a.unfreeze, lr=a.lr, augment=a.augment, freeze_bn=a.freeze_bn)
    t0 = time.perf_counter()
    fit(str(HYMENOPTERA), **kw)
    wall = time.perf_counter() - t0
    out = kw["out"]
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv") as f:
        hist = [{k: v for k, v in r.items()} for r in csv.DictReader(f)]
    return {"val_acc": summary["val_acc"], "best_epoch": summary["best_epoch"],
            "last_val_acc": summary["last_val_acc"], "wall_s": wall, "target": TARGET[strategy],
            "tutorial_resnet18": TUTORIAL[strategy], "meets_target": summary["val_acc"] >= TARGET[strategy],
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items() if k != "echo"},
            "phases": json.loads(json.dumps(_phases(out))), "history": hist}


def _phases(out: Path):
    import yaml
    return yaml.safe_load((out / "config.yaml").read_text())["phases"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategies", nargs="+", default=["extract", "finetune"])
    ap.add_argument("--epochs", type=int, default=None, help="finetune: epochs of the unfrozen phase")
    ap.add_argument("--unfreeze", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--augment", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--freeze-bn", action="store_true", help="keep every BatchNorm's pretrained statistics")
    ap.add_argument("--name", default="accuracy_hymenoptera")
    ap.add_argument("--key", default=None, help="store the (single) strategy's figures under this key")
    a = ap.parse_args()
    started = machine()
    figures = {}
    prev = RESULTS / f"{a.name}.json"
    if prev.exists():  # keep figures of strategies not rerun now
        figures = json.loads(prev.read_text()).get("figures", {})
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.strategies:
            key = a.key or s
            figures[key] = run(s, Path(tmp), a)
            figures[key]["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            print(key, figures[key]["val_acc"], f"{figures[key]['wall_s']:.0f}s", flush=True)
    if "extract" in figures and "finetune" in figures:
        figures["finetune_ge_extract"] = figures["finetune"]["val_acc"] >= figures["extract"]["val_acc"]
    write(a.name, figures, started=started)


if __name__ == "__main__":
    main()
