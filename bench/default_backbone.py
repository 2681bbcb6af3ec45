"""Which packaged image backbone `rehead fit` defaults to: EfficientNet-Lite0 vs Lite2, side by side.

For each backbone, with the defaults a user types and a fresh feature cache per backbone:
- hymenoptera: `rehead fit DATA --model M` (auto) and `--strategy finetune` at seeds 0, 1, 2;
- the demo's digits (500 of scikit-learn's 8x8 digits written as images, 80/20 split): `--strategy extract`.
val picks every kept epoch and is the figure (hymenoptera has no test split: one photo is 0.65
points; digits' val is 100 images). The first fit of each backbone on each set pays its extraction
(cold); later ones read the cache.

    PYTHONPATH=.:bench python bench/default_backbone.py [--models lite0,lite2] [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import rehead  # noqa: F401  first, as the CLI does

from _common import HYMENOPTERA, machine, write  # noqa: E402


def one(data: Path, model: str, cache: Path, out: Path, **opts) -> dict:
    from rehead.fit import fit
    t0 = time.perf_counter()
    fit(str(data), model=model, out=out, cache_dir=str(cache), progress=False, echo=lambda *_: None, **opts)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    return {"data": data.name, "model": model, "options": opts, "strategy": s.get("strategy"),
            "val_acc": s["val_acc"], "kept_phase": s["kept_phase"], "kept_epoch": s["kept_epoch"],
            "phase_best": {p["phase"]: round(p["best_val_acc"], 4) for p in s["phases"]}, "wall_s": round(wall, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lite0,lite2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--name", default="default_backbone")
    a = ap.parse_args()
    from rehead.demo import write_digits
    started, rows = machine(), []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        digits = write_digits(tmp / "digits")
        for m in a.models.split(","):
            model, cache = f"packaged:efficientnet_{m}", tmp / f"cache-{m}"
            runs = [(HYMENOPTERA, f"auto-{m}", {}), (digits, f"digits-{m}", {"strategy": "extract"})]
            runs += [(HYMENOPTERA, f"ft-{m}-{s}", {"strategy": "finetune", "seed": int(s)}) for s in a.seeds.split(",")]
            for data, name, opts in runs:
                rows.append(one(data, model, cache, tmp / name, **opts))
                print(json.dumps(rows[-1]), flush=True)
                write(a.name, {"rows": rows}, {"protocol": __doc__.split("\n\n")[1]}, started)


if __name__ == "__main__":
    main()
