"""Issue 15, "Must show" first bullet: the sharded feature store on 50,000 synthetic JPEGs.

Generates N small JPEGs (10 class folders) once into a temp dir, then, sharing one fresh cache:

    rehead fit DATA --model benchtiny:1280 --strategy extract --cache-dir C --out RUN1   (cold: extracts)
    rehead fit DATA --model benchtiny:1280 --strategy extract --cache-dir C --out RUN2   (warm, x2)

each in a fresh process (the CLI, process start included), and reports:
- files the cache holds after the cold fit (goal < 100; the old layout made one .npy per sample
  plus one digest memo per input file: 2 N);
- warm-fit wall time, whether it built the backbone (it should not), and the part of it that is
  process start + CLI import (`rehead --help`);
- per-sample time, side by side in one process on the same features, interleaved, medians:
  `np.load` of one .npy holding them all; the store read (shards already checked at their stat:
  headers only); the store read that checks every row (as the first read after any change);
  sample keys + store read (what a warm `fit --strategy extract` does for its features); and the
  readability check of every image from the store's memo (what the warm fit's data loading does
  before that). Goal: within 1.5x of the one np.load.

Extracting 50,000 images with EfficientNet on 2 shared cores takes hours, so the backbone is a
tiny 2-stage conv net (`benchtiny:WIDTH`, registered by this file, 32x32 inputs) with
EfficientNet-Lite0's feature width (1280), so the cache holds as many bytes per sample as it would
with the real model. The store does not care what computed the rows.

    PYTHONPATH=. python bench/feature_store.py [--n 50000] [--width 1280] [--reps 5] [--name feature_store]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median, write  # noqa: E402

BENCH = Path(__file__).resolve().parent


# -- the tiny backbone, as a source the CLI can load ----------------------------------------------
def register() -> None:
    from rehead.zoo import register_source

    @register_source("benchtiny", "bench only: a 2-stage conv net on 32x32 inputs (benchtiny:WIDTH)",
                     stamp=lambda name: f"benchtiny-v1|{name}")
    def load(name: str, pretrained: bool = True):
        import torch
        from torch import nn
        from rehead.zoo.backbone import Backbone
        width = int(name)
        stages = {"stem": nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.ReLU()),  # 32x32 -> 8x8
                  "proj": nn.Sequential(nn.Conv2d(32, width, 1), nn.ReLU())}
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # fixed weights: the stamp above is their identity
            for mod in stages.values():
                for p in mod.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        cfg = {"modality": "image", "input_size": 32, "crop_pct": 1.0, "interpolation": "bilinear",
               "mean": [0.5] * 3, "std": [0.5] * 3}
        return Backbone(stages, cfg, f"benchtiny:{name}")


def cli(args: list[str], env: dict) -> float:
    """`rehead ARGS` in a fresh process that first registers benchtiny."""
    boot = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import feature_store; feature_store.register(); "
            "from rehead.cli import app; sys.argv = ['rehead'] + sys.argv[1:]; app()")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", boot, *args], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def make_images(root: Path, n: int, classes: int = 10, size: int = 32) -> float:
    """n small JPEGs in class folders whose colour is the label; returns the seconds it took."""
    from PIL import Image
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 225, (classes, 3))
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        px = np.clip(colours[c] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / f"c{c}" / f"{i:06d}.jpg", quality=85)
    return time.perf_counter() - t0


def count_files(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()]
    by = {}
    for p in files:
        top = p.relative_to(root).parts[0]
        by[top] = by.get(top, 0) + 1
    return {"total": len(files), "by_top_level": by, "bytes": sum(p.stat().st_size for p in files)}


def previous_figures() -> dict | None:
    """The figures of the results file as committed before shard marks and readability verdicts
    (issue 15, fourth session), kept beside the new ones."""
    try:
        old = json.loads(subprocess.run(["git", "-C", str(REPO), "show", "2aa1c72:bench/results/feature_store.json"],
                                        capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    return {"commit": old["machine_at_end"]["git_commit"], "command": old["command"],
            "loadavg_at_start": old["machine_at_start"]["loadavg"], "figures": old["figures"]}


# -- the warm read, in process --------------------------------------------------------------------
def warm_read_timings(cache_dir: Path, run: Path, spec: str, reps: int) -> dict:
    """What a warm extract fit does for its data and features, vs one np.load of the features."""
    import sqlite3
    from rehead import zoo
    from rehead.data import images
    from rehead.features import FeatureCache
    split = json.loads((run / "split.json").read_text())
    items = {s: split[s]["items"] for s in ("train", "val")}
    probe = FeatureCache(cache_dir)
    meta = probe.snapshot(zoo.weights_stamp(spec))
    k = len(meta["stage_names"])
    cut = meta["cuts"][str(k)]
    from rehead.precision import extraction_device, feature_precision
    mkey = probe.key(spec, cut["weights_id"], k, cut["preprocessing_id"], feature_precision(extraction_device()))
    keys = {s: probe.file_digests(items[s]) for s in items}
    whole = np.concatenate([probe.get_all(mkey, keys[s]) for s in ("train", "val")])
    one = cache_dir.parent / "all_features.npy"
    np.save(one, whole)
    n = len(whole)

    def npy():
        return np.load(one)

    def store_rows():  # the store alone: keys known, shards checked before
        c = FeatureCache(cache_dir)
        out = [c.get_all(mkey, keys[s]) for s in ("train", "val")]
        assert all(x is not None for x in out)
        return out

    def forget_marks():  # untimed: as after a change to every shard
        with sqlite3.connect(cache_dir / "index.sqlite") as db:
            db.execute("DELETE FROM shard_marks")

    def keys_and_rows():  # the warm fit's feature path: a fresh process knows no digest yet
        c = FeatureCache(cache_dir)
        out = [c.get_all(mkey, c.file_digests(items[s])) for s in ("train", "val")]
        assert all(x is not None for x in out)
        return out

    def readability():  # the warm fit's data loading: every image judged from the store's memo
        images._CHECKED.clear()
        assert not images.unreadable(items["train"] + items["val"], FeatureCache(cache_dir))

    checked = {}

    def check_first():  # untimed: a warm fit's data check, which stats every file
        images._CHECKED.clear()
        checked["cache"] = c = FeatureCache(cache_dir)
        assert not images.unreadable(items["train"] + items["val"], c)

    def keys_after_check():  # the warm fit's feature path after its data check: no second stat
        c = checked["cache"]
        out = [c.get_all(mkey, c.file_digests(items[s])) for s in ("train", "val")]
        assert all(x is not None for x in out)

    def data_and_features():  # both, as one warm fit does them: one cache, so one stat per file
        images._CHECKED.clear()
        c = FeatureCache(cache_dir)
        assert not images.unreadable(items["train"] + items["val"], c)
        out = [c.get_all(mkey, c.file_digests(items[s])) for s in ("train", "val")]
        assert all(x is not None for x in out)

    store_rows()  # the shards checked once (a warm fit may have marked them already)
    steps = (("npy_load", npy, None), ("store_read", store_rows, None),
             ("store_read_checking_every_row", store_rows, forget_marks), ("store_read_after_check", store_rows, None),
             ("keys_and_store_read", keys_and_rows, None), ("readability_check_from_memo", readability, None),
             ("keys_after_data_check_and_store_read", keys_after_check, check_first),
             ("warm_fit_data_and_features", data_and_features, None))
    t = {name: [] for name, _, _ in steps}
    load = []
    for _ in range(reps):  # interleaved: the machine's load moves under all of them alike
        for name, fn, before in steps:
            if before:
                before()
            t0 = time.perf_counter()
            fn()
            t[name].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    t["store_read"] += t.pop("store_read_after_check")  # the same measure, twice per round
    med = {name: median(v) for name, v in t.items()}
    assert np.array_equal(np.concatenate(store_rows()), npy())
    per = {name: 1e6 * v / n for name, v in med.items()}
    return {"samples": n, "feature_width": int(whole.shape[1]), "feature_bytes": int(whole.nbytes),
            "seconds_median": med, "seconds_all": t, "loadavg_1min_per_round": load,
            "per_sample_us": per, "ratio_vs_npy": {name: v / per["npy_load"] for name, v in per.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warm-runs", type=int, default=2, help="the first checks every shard once; later ones do not")
    ap.add_argument("--epochs", type=int, default=2, help="head epochs (the fit's training part)")
    ap.add_argument("--name", default="feature_store", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()
    register()
    started = machine()
    before = previous_figures()
    spec = f"benchtiny:{a.width}"
    figures = {"samples": a.n, "files_goal": "< 100", "files_old_layout_would_be": 2 * a.n, "ratio_goal": "<= 1.5"}
    extra = {
        "backbone": f"{spec}: bench-only 2-stage conv net (patchify 4x4 conv to 32 channels, 1x1 conv to "
                    f"{a.width}, ReLU, mean pool), 32x32 inputs; chosen because EfficientNet on 50,000 images "
                    "takes hours on 2 shared cores. Feature width = EfficientNet-Lite0's, so bytes per sample match.",
        "what_is_measured": "npy_load: np.load of one .npy holding the same (N, width) float32 features. "
                            "store_read: FeatureCache.get_all of the train and val keys from a fresh FeatureCache "
                            "(the index's key and checksum blobs and the shards' marks, each shard's header, the "
                            "rows read into one array; rows of a shard unchanged since they were checked are not "
                            "checked again). store_read_checking_every_row: the same after the marks are deleted "
                            "(finite + checksum per row, then the marks written), as the first read after a change. "
                            "keys_and_store_read: store_read plus every file's sample key from a fresh FeatureCache "
                            "(one stat per file, the digest memo one query per folder): a warm `fit --strategy "
                            "extract`'s feature path. readability_check_from_memo: images.unreadable of every "
                            "image with the store as memo (one stat per file, one query per folder, no decode): "
                            "the warm fit's data loading. keys_after_data_check_and_store_read: keys_and_store_read "
                            "with the FeatureCache that just ran the data check (untimed), whose stats the keys use "
                            "(no second stat), as in a warm fit. warm_fit_data_and_features: both with one FeatureCache, "
                            "as a warm fit does them: the keys use the stats the check took a moment before, so "
                            "one stat per file. All from the page cache.",
        "before": before,
    }

    def save():  # after every step: a bench cut short still leaves what it measured
        write(a.name, figures, started=started, extra=extra)

    with tempfile.TemporaryDirectory(prefix="rehead-feature-store-") as tmp:
        tmp = Path(tmp)
        data, cache = tmp / "data", tmp / "cache"
        extra["data"] = f"{a.n} JPEGs 32x32, 10 class folders, generated in {make_images(data, a.n):.0f} s (deleted)"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        common = ["--model", spec, "--strategy", "extract", "--cache-dir", str(cache), "--epochs", str(a.epochs),
                  "--workers", "2", "-q"]
        extra["commands"] = {"cold": "rehead fit DATA " + " ".join(common),
                             "warm": f"the same, {a.warm_runs} time(s) more, each into its own --out"}
        figures["cold_fit_seconds"] = cli(["fit", str(data), "--out", str(tmp / "run_cold"), *common], env)
        files = count_files(cache)
        figures.update(files_created_by_cache=files["total"], cache_bytes=files["bytes"])
        extra["cache_files"] = files
        save()
        warm = [cli(["fit", str(data), "--out", str(tmp / f"run_warm{i}"), *common], env) for i in range(a.warm_runs)]
        summaries = {n: json.loads((tmp / n / "summary.json").read_text()) for n in ("run_cold", "run_warm0")}
        figures.update(warm_fit_seconds=median(warm), warm_fit_seconds_all=warm,
                       warm_fit_built_backbone=summaries["run_warm0"].get("backbone_built", True),
                       val_acc_cold_warm=[summaries[n]["val_acc"] for n in ("run_cold", "run_warm0")])
        save()
        reads = warm_read_timings(cache, tmp / "run_cold", spec, a.reps)
        figures.update(warm_fit_feature_path_seconds=reads["seconds_median"]["keys_and_store_read"],
                       per_sample_us=reads["per_sample_us"], ratio_vs_one_npy=reads["ratio_vs_npy"])
        extra["warm_read"] = reads
        save()
        figures["process_start_and_cli_import_seconds"] = median([cli(["--help"], env) for _ in range(2)])
        extra["cache_info"] = subprocess.run([sys.executable, "-m", "rehead", "cache", "info", "--cache-dir", str(cache)],
                                             capture_output=True, text=True, cwd=REPO, env=env).stdout.strip()
        save()


if __name__ == "__main__":
    main()
