"""What a warm run still read from the images, and what it reads now, side by side: a warm
`rehead probe` and a warm auto `rehead fit` (the input's own pixels, auto's and probe's reference
row, and the data check from the feature store), and a warm `rehead fit` on WebDataset shards (the
members' digests from the store instead of hashing every shard's bytes).

Arms, interleaved in rounds, each a fresh process on a warm store:
- now: the store keeps the pixels, the readability verdicts and the members' digests;
- pixels decoded: the pixels' entry evicted before the run (the verdicts kept);
- before (probe): the pixels' entry evicted and the verdicts forgotten, as a probe ran before
  (fit already kept its verdicts);
- shards hashed: the members' digests forgotten, as every warm run on shards hashed them before.

    PYTHONPATH=.:bench python bench/warm_runs.py [--n 5000] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median, write  # noqa: E402
from feature_store import BENCH  # noqa: E402

HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera_data"


def rehead(args: list[str], env: dict) -> float:
    """`rehead ARGS` in a fresh process that can load benchtiny; its wall seconds."""
    boot = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import feature_store; feature_store.register(); "
            "from rehead.cli import app; sys.argv = ['rehead'] + sys.argv[1:]; app()")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", boot, *args], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def photos(root: Path, n: int, classes: int = 4) -> float:
    """n photo-sized JPEGs (500x375) in class folders: a tint per class under smooth noise."""
    from PIL import Image
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    tints = rng.integers(60, 200, (classes, 3))
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        small = np.clip(tints[c] + rng.normal(0, 50, (24, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(root / f"c{c}" / f"{i:06d}.jpg", quality=90)
    return time.perf_counter() - t0


def evict_pixels(cache: Path, forget_checks: bool = False) -> None:
    from rehead.features import FeatureCache
    from rehead.reference import pixels_key
    c = FeatureCache(cache)
    c.evict(pixels_key(c))
    if forget_checks:
        with sqlite3.connect(cache / "index.sqlite") as db:
            db.execute("DELETE FROM file_checks")


def write_shards(folder: Path, out: Path, k: int = 10) -> int:
    """The folder's images as k WebDataset shards (label in .cls); their total bytes."""
    import io
    import tarfile
    files = sorted(folder.rglob("*.jpg"))
    out.mkdir(parents=True)
    for s in range(k):
        with tarfile.open(out / f"train-{s:03d}.tar", "w") as tf:
            for f in files[s::k]:
                for name, data in ((f"{f.parent.name}_{f.stem}.jpg", f.read_bytes()),
                                   (f"{f.parent.name}_{f.stem}.cls", f.parent.name.encode())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    return sum(p.stat().st_size for p in out.glob("*.tar"))


def forget_member_digests(cache: Path) -> None:
    with sqlite3.connect(cache / "index.sqlite") as db:
        db.execute("DELETE FROM file_digests WHERE path LIKE 'tar:%'")


def cold_then_warm(args: list[str], tmp: Path, tag: str, before: dict, reps: int, env: dict) -> tuple[float, dict]:
    """`rehead ARGS` once cold (into tmp/TAG_cold), then warm in ``reps`` interleaved rounds: "now",
    and each arm of ``before`` after its preparation (which undoes what is now kept). Runs go to
    tmp/TAG0, TAG1, ... (TAG0: the first warm "now"). Returns (cold seconds, {arm: [seconds]})."""
    runs = iter(range(10 ** 6))

    def run() -> float:
        return rehead(args + ["--out", str(tmp / f"{tag}{next(runs)}")], env)
    cold = rehead(args + ["--out", str(tmp / f"{tag}_cold")], env)
    arms = {"now": lambda: None, **before}
    t = {name: [] for name in arms}
    for _ in range(reps):
        for name, prepare in arms.items():
            prepare()
            t[name].append(run())
    return cold, t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000, help="synthetic photos for the probe")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--name", default="warm_runs")
    a = ap.parse_args()
    started = machine()
    figures, extra = {}, {"what": __doc__.split("\n\n")[0]}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="rehead-warm-runs-") as tmp:
        tmp = Path(tmp)
        # 1. the default `rehead fit` (auto) on hymenoptera, Lite2
        cache = tmp / "cache_hym"
        fit = ["fit", str(HYMENOPTERA), "--cache-dir", str(cache), "-q"]
        figures["hymenoptera_cold_auto_fit_s"], t = cold_then_warm(
            fit, tmp, "hym", {"pixels_decoded": lambda: evict_pixels(cache)}, a.reps, env)
        figures["hymenoptera_warm_auto_fit_s"] = {name: median(v) for name, v in t.items()}
        extra["hymenoptera_warm_auto_fit_s_all"] = t
        plans = [yaml.safe_load((tmp / d / "config.yaml").read_text())["fit"]["auto_plan"]["reference"]
                 for d in ("hym_cold", "hym0")]
        figures["hymenoptera_reference_val_acc_cold_warm"] = [p["val_acc"] for p in plans]
        write(a.name, figures, started=started, extra=extra)
        # 2. `rehead probe` on n synthetic photos, a cheap bench backbone (the forward is not measured)
        data, cache = tmp / "photos", tmp / "cache_probe"
        extra["photos"] = f"{a.n} JPEGs 500x375, 4 tinted classes, generated in {photos(data, a.n):.0f} s (deleted)"
        probe = ["probe", str(data), "--model", "benchtiny:256", "--cache-dir", str(cache), "--workers", "2"]
        figures["probe_cold_s"], t = cold_then_warm(
            probe, tmp, "p", {"pixels_decoded": lambda: evict_pixels(cache),
                              "before": lambda: evict_pixels(cache, forget_checks=True)}, a.reps, env)
        figures["probe_warm_s"] = {name: median(v) for name, v in t.items()}
        extra["probe_warm_s_all"] = t
        res = [json.loads((tmp / d / "results.json").read_text())["input"] for d in ("p_cold", "p0")]
        figures["probe_input_val_acc_cold_warm"] = [r["val_acc"] for r in res]
        figures["probe_input_samples"] = res[0]["n_train"] + res[0]["n_val"]
        write(a.name, figures, started=started, extra=extra)
        # 3. the same photos as 10 WebDataset shards: a warm extract fit keys them without reading them
        shards, cache = tmp / "shards", tmp / "cache_shards"
        figures["shard_bytes"] = write_shards(data, shards)
        fit_shards = ["fit", str(shards), "--model", "benchtiny:256", "--strategy", "extract",
                      "--cache-dir", str(cache), "--workers", "2", "-q"]
        figures["shards_cold_fit_s"], t = cold_then_warm(
            fit_shards, tmp, "s", {"shards_hashed": lambda: forget_member_digests(cache)}, a.reps, env)
        figures["shards_warm_fit_s"] = {name: median(v) for name, v in t.items()}
        extra["shards_warm_fit_s_all"] = t
        figures["shards_val_acc_cold_warm"] = [json.loads((tmp / d / "summary.json").read_text())["val_acc"]
                                               for d in ("s_cold", "s0")]
        extra["commands"] = {"fit": "rehead " + " ".join(fit), "probe": "rehead " + " ".join(probe),
                             "fit_shards": "rehead " + " ".join(fit_shards)}
        write(a.name, figures, started=started, extra=extra)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
