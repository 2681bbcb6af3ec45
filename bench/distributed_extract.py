"""Issue 15, item 2: extraction split across processes under `accelerate launch`, on the CPU.

hymenoptera_data (train + val, ~400 photos), packaged EfficientNet-Lite0, every cut (one forward
pass per image), a fresh cache for every run (cold: every image decoded, hashed and extracted):

    1 process  (torch's default threads: one per core)       python bench/distributed_extract.py --child
    2 processes, 1 thread each, through accelerate's launcher:
        ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
            --num_cpu_threads_per_process 1 bench/distributed_extract.py --child
    1 process, 1 thread: the reference with the 2-process run's thread count (bit-identity check)

Runs alternate (1, 2, 1, 2, ...; --reps pairs); reported: medians of the extract call's wall time
(timed on the first process, both processes starting it together) and of the whole command (process
starts, imports, model load included), their ratios, and the largest difference between the
features each run left in its store (every sample, every cut).

    PYTHONPATH=. python bench/distributed_extract.py [--reps 2]
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
from _common import HYMENOPTERA, REPO, machine, median, write  # noqa: E402

MODEL = "packaged:efficientnet_lite0"


def _items() -> list[str]:
    from rehead.data import load_dataset
    ds = load_dataset(str(HYMENOPTERA))
    return [str(i) for i in ds.train.items + ds.val.items]


def child(out: str) -> None:
    """One run's extraction (every process of a launch runs this); the first process writes timings."""
    import torch
    from rehead import zoo
    from rehead.distributed import state
    from rehead.features import FeatureCache, extract
    st = state()
    items = _items()
    bb = zoo.load(MODEL)
    st.wait_for_everyone()  # both processes start extracting together
    t0 = time.perf_counter()
    f, kept, skipped = extract(bb, items, list(range(1, len(bb) + 1)), FeatureCache(), progress=False)
    seconds = time.perf_counter() - t0
    if st.is_main_process:
        Path(out).write_text(json.dumps({"extract_seconds": seconds, "n": len(items), "kept": len(kept),
                                         "skipped": skipped, "processes": st.num_processes,
                                         "threads_per_process": torch.get_num_threads()}))


def run(kind: str, tmp: Path, i: int) -> dict:
    cache, out = tmp / f"cache-{kind}-{i}", tmp / f"{kind}-{i}.json"
    env = dict(os.environ, REHEAD_CACHE=str(cache), PYTHONPATH=str(REPO))
    me = [str(Path(__file__).resolve()), "--child", str(out)]
    if kind == "two":
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", *me]
    else:
        if kind == "one_1thread":
            env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, *me]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{kind} run failed:\n{r.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res.update(command_seconds=wall, cache=str(cache))
    print(kind, json.dumps(res))
    return res


def features(cache_dir: str, items: list[str]) -> list[np.ndarray]:
    from rehead import zoo
    from rehead.data import pipeline
    from rehead.features import FeatureCache
    bb, cache = zoo.load(MODEL), FeatureCache(cache_dir)
    keys = [pipeline("image").sample_key(i, cache, bb) for i in items]
    return [cache.get_all(cache.model_key(bb, k), keys) for k in range(1, len(bb) + 1)]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def shards(cache_dir: str) -> list[int]:
    from rehead.features import FeatureCache
    return sorted({m["shards"] for m in FeatureCache(cache_dir).models()})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    if a.child:
        from rehead.distributed import close
        child(a.child)
        return close()  # the process group, before the interpreter's exit (see distributed.close)
    started = machine()
    tmp = Path(tempfile.mkdtemp(prefix="rehead-dist-"))
    runs = {"one": [], "two": []}
    for i in range(a.reps):
        for kind in ("one", "two"):
            runs[kind].append(run(kind, tmp, i))
    ref = run("one_1thread", tmp, 0)
    items = _items()
    f1, f2, f1t = (features(r["cache"], items) for r in (runs["one"][0], runs["two"][0], ref))
    med = {k: {m: median([r[m] for r in v]) for m in ("extract_seconds", "command_seconds")} for k, v in runs.items()}
    figures = {
        "images": ref["n"], "model": MODEL, "cuts": len(f1),
        "one_process_extract_s": med["one"]["extract_seconds"],
        "two_processes_extract_s": med["two"]["extract_seconds"],
        "extract_speedup": med["one"]["extract_seconds"] / med["two"]["extract_seconds"],
        "one_process_command_s": med["one"]["command_seconds"],
        "two_processes_command_s": med["two"]["command_seconds"],
        "command_speedup": med["one"]["command_seconds"] / med["two"]["command_seconds"],
        "max_abs_diff_two_vs_one": max_diff(f2, f1),
        "max_abs_diff_two_vs_one_1thread": max_diff(f2, f1t),
        "bit_identical_two_vs_one_1thread": all(np.array_equal(x, y) for x, y in zip(f2, f1t)),
        "one_process_1thread_extract_s": ref["extract_seconds"],
        "shards_per_model_key": {"one": shards(runs["one"][0]["cache"]), "two": shards(runs["two"][0]["cache"])},
    }
    write("distributed_extract", figures, {"runs": runs, "reference_1thread": ref,
                                           "threads": "one: torch default (one per core); two: 1 per process"},
          started=started)


if __name__ == "__main__":
    main()
