"""How well auto's epoch-time estimate (``rehead.auto.time_epoch``) predicts a real epoch.

    PYTHONPATH=. python bench/epoch_estimate.py [fpb] [hym]   -> bench/results/epoch_estimate.json

For each set: the estimate for the model with its last 2 stages unfrozen (what `--budget` plans
epochs with), then a real `--strategy finetune --unfreeze 2 --epochs 1` fit of the same model,
whose unfrozen epoch's wall time (metrics.csv) is the truth. fpb: financial_phrasebank_allagree
on packaged MiniLM; hym: hymenoptera on packaged EfficientNet-Lite0. Run it on a quiet machine.
"""
from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"fpb": (SHARED / "financial_phrasebank_allagree", "packaged:minilm"),
        "hym": (SHARED / "hymenoptera_data", "packaged:efficientnet_lite0")}
UNFREEZE = 2


def estimate(data: Path, model: str) -> dict:
    from rehead import zoo
    from rehead.auto import _width, time_epoch
    from rehead.config import FitConfig
    from rehead.data import pipeline
    from rehead.data.inputs import as_dataset
    cfg = FitConfig(model=model, strategy="finetune", unfreeze=UNFREEZE)
    ds = as_dataset(str(data), cfg)
    bb = zoo.load(model)
    pipe = pipeline(bb.modality)
    if hasattr(pipe, "prepare_backbone"):
        pipe.prepare_backbone(bb, ds)
    t0 = time.perf_counter()
    sec = time_epoch(bb, len(bb), UNFREEZE, ds, cfg, _width(bb, len(bb)))
    return {"estimate_seconds": round(sec, 1), "timing_seconds": round(time.perf_counter() - t0, 1),
            "train": len(ds.train), "val": len(ds.val)}


def actual(data: Path, model: str, out: Path) -> dict:
    from rehead.fit import fit
    fit(str(data), out, model=model, strategy="finetune", unfreeze=UNFREEZE, epochs=1, progress=False,
        echo=lambda *a: None)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    live = [r for r in rows if r.get("phase") != "head"]
    return {"epoch_seconds": round(float(live[-1]["seconds"]), 1), "phase": live[-1].get("phase")}


def main(names):
    started = machine()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data, model = SETS[name]
            row = {"model": model, **estimate(data, model)}
            row.update(actual(data, model, Path(tmp) / name))
            row["estimate_over_actual"] = round(row["estimate_seconds"] / row["epoch_seconds"], 2)
            figures[name] = row
            print(name, row, flush=True)
    write("epoch_estimate", figures, started=started)


if __name__ == "__main__":
    main(sys.argv[1:] or ["fpb", "hym"])
