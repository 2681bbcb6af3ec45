"""Issue 3: a second ``rehead fit`` with the same inputs reuses the feature cache.

Runs the ``rehead`` CLI twice in fresh subprocesses (process start included), each into
its own run directory, sharing one fresh feature cache:

    rehead fit hymenoptera_data --strategy extract --cache-dir C --out RUN1 -q   (cold: extracts)
    rehead fit hymenoptera_data --strategy extract --cache-dir C --out RUN2 -q   (warm: cache hit)

and reports wall times, their ratio (target <= 0.3), both val accuracies (must be equal),
whether the warm run built the backbone (it should not: it reads the cache's snapshot),
and where the warm run's time goes (bare ``import rehead.fit`` time, rehead's own timer).

    PYTHONPATH=. python bench/cache_fit.py [--pairs 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import HYMENOPTERA, REPO, machine, median, write


def cli(args: list[str], env) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rehead", *args], env=env, check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1, help="cold/warm pairs, each with a fresh cache")
    a = ap.parse_args()
    started = machine()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(a.pairs):
            cache, runs = Path(tmp) / f"cache{p}", [Path(tmp) / f"run{p}a", Path(tmp) / f"run{p}b"]
            env["REHEAD_CACHE"] = str(cache)
            walls = [cli(["fit", str(HYMENOPTERA), "--strategy", "extract", "--cache-dir", str(cache),
                          "--out", str(r), "-q"], env) for r in runs]
            summ = [json.loads((r / "summary.json").read_text()) for r in runs]
            t_import = cli_import(env)
            rows.append({"cold_s": walls[0], "warm_s": walls[1], "ratio": walls[1] / walls[0],
                         "val_acc": [s["val_acc"] for s in summ],
                         "extract_seconds": [s.get("extract_seconds") for s in summ],
                         "warm_built_backbone": summ[1].get("backbone_built", True),
                         "fit_wall_seconds_inside": [s.get("wall_seconds") for s in summ],
                         "python_import_rehead_fit_s": t_import})
            print(rows[-1], flush=True)
    figures = {"pairs": rows, "ratio_median": median([r["ratio"] for r in rows]),
               "meets_0_3": median([r["ratio"] for r in rows]) <= 0.3,
               "same_val_acc": all(r["val_acc"][0] == r["val_acc"][1] for r in rows)}
    write("cache_fit", figures, started=started)


def cli_import(env) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import rehead.fit"], env=env, check=True, cwd=REPO)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
