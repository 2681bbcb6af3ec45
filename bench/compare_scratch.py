"""Transfer (packaged EfficientNet-Lite0, default strategy) vs the small scratch CNN on hymenoptera,
at fractions 0.05, 0.1, 0.25, 0.5, 1.0 of the training split; both scored on the full val split."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._issue5 import HYMENOPTERA, write  # noqa: E402


def main():
    import argparse
    from rehead.experiments.compare import compare
    from rehead.report import write_report
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch-size", type=int, default=128)
    ap.add_argument("--scratch-epochs", type=int, default=15)
    ap.add_argument("--scratch-min-steps", type=int, default=30)
    ap.add_argument("--cache-dir", default=None, help="a feature cache to reuse (default: a fresh one)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    res = compare(str(HYMENOPTERA), fractions="0.05,0.1,0.25,0.5,1.0", out=tmp / "compare",
                  cache_dir=a.cache_dir or str(tmp / "cache"), scratch_size=a.scratch_size,
                  scratch_epochs=a.scratch_epochs, scratch_min_steps=a.scratch_min_steps, progress=False)
    write_report(tmp / "compare", echo=lambda *_: None)
    write("compare_scratch", {"data": str(HYMENOPTERA), "model": "packaged:efficientnet_lite0",
                              "scratch": f"4 conv blocks 32-64-128-128, dropout 0.5, dense 512, {a.scratch_size} px, "
                                         f"classic augmentation, {a.scratch_epochs} epochs (>= {a.scratch_min_steps} "
                                         "steps), AdamW 1e-3 one-cycle, batch 16",
                              "rows": res["rows"], "finding": res["finding"], "n_val": res["n_val"],
                              "scratch_params": res["scratch_params"], "total_seconds": res["total_seconds"],
                              "run_dir": str(tmp / "compare")},
          pngs={"compare_hymenoptera.png": tmp / "compare" / "compare.png"})


if __name__ == "__main__":
    main()
