"""Cut-depth sweep of packaged EfficientNet-Lite0 on hymenoptera, and what it costs.

Measured side by side in one run (cold feature caches each time, alternating, 2 rounds):
  A. one extraction pass at the deepest cut (what `fit --strategy extract` does cold)
  B. `rehead probe --cuts all`: features at all 9 cuts from one pass + 9 logistic-regression probes
Claim to check: B <= 1.2 x A.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._issue5 import HYMENOPTERA, write  # noqa: E402


def main(rounds: int = 2):
    from rehead import zoo
    from rehead.data import load_dataset
    from rehead.experiments.probe import probe
    from rehead.features import FeatureCache, extract
    from rehead.report import write_report
    ds = load_dataset(HYMENOPTERA)
    items = ds.train.items + ds.val.items
    model = "packaged:efficientnet_lite0"
    bb = zoo.load(model)
    depth = len(bb)
    extract(bb, items[:8], [depth], None, progress=False)  # warm-up: thread pools, allocator
    times_a, times_b, res = [], [], None
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    for r in range(rounds):
        t0 = time.perf_counter()
        extract(bb, items, [depth], FeatureCache(tmp / f"cacheA{r}"), workers=2, progress=False)
        times_a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = probe(ds, model=model, cuts="all", out=tmp / f"probe{r}", cache_dir=str(tmp / f"cacheB{r}"),
                    workers=2, progress=False, echo=lambda *_: None)
        times_b.append(time.perf_counter() - t0)
        print(f"round {r}: extract deepest {times_a[-1]:.1f}s, probe all depths {times_b[-1]:.1f}s "
              f"(extract {res['extract_seconds']:.1f}s + probes {res['probe_seconds']:.1f}s)")
    run_dir = tmp / f"probe{rounds - 1}"
    write_report(run_dir, echo=lambda *_: None)
    a, b = statistics.median(times_a), statistics.median(times_b)
    write("probe_depth", {
        "data": str(HYMENOPTERA), "model": model, "n_images": len(items), "n_train": res["n_train"], "n_val": res["n_val"],
        "sweep": [{k: r[k] for k in ("cut", "stage", "dim", "train_acc", "val_acc", "val_loss")} for r in res["rows"]],
        "best": res["best"],
        "seconds_extract_deepest": times_a, "seconds_probe_all_depths": times_b,
        "ratio_probe_over_extract_median": b / a, "ratio_per_round": [y / x for x, y in zip(times_a, times_b)],
        "claim_ratio_at_most": 1.2, "claim_holds": b / a <= 1.2, "run_dir": str(run_dir),
    }, pngs={"probe_lite0_hymenoptera.png": run_dir / "probe.png"})


if __name__ == "__main__":
    main()
