"""Extraction shared by several processes (accelerate launch, --processes N): the features, probes
and fits are those of one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images
from rehead.distributed import _free_port, strip_option

ROOT = Path(__file__).resolve().parents[1]


def _env(cache: Path) -> dict:
    """One thread per process. Without a GPU rehead asks for CPU processes itself (the README's commands);
    on a GPU machine they are asked for, as the one-process side runs on the CPU."""
    env = dict(os.environ, REHEAD_CACHE=str(cache), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return {**env, "ACCELERATE_USE_CPU": "true"} if torch.cuda.is_available() else env


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=600)
    # every process's first error line, then the tail: a launch's tail is the launcher's own traceback
    errors = [l for l in r.stderr.splitlines() if "error" in l.lower() and "Traceback" not in l][:8]
    assert r.returncode == 0, "\n".join(errors) + "\n...\n" + r.stderr[-2000:]
    return r


def _launch() -> list[str]:
    # accelerate's --cpu launch starts one process unless MPI is set up; --multi_gpu starts N (torchrun)
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "rehead"]


def _store_features(cache_dir: Path, spec: str, items: list, cut: int) -> np.ndarray:
    from rehead import zoo
    from rehead.data import pipeline
    from rehead.features import FeatureCache
    bb = zoo.load(spec)
    cache = FeatureCache(cache_dir)
    keys = [pipeline("image").sample_key(i, cache, bb) for i in items]
    x = cache.get_all(cache.model_key(bb, cut), keys)
    assert x is not None, f"not every sample is in {cache_dir} at cut {cut}"
    return x


def test_probe_under_accelerate_launch_is_one_process_bit_for_bit(tiny_spec, tmp_path, one_thread):
    from rehead.data import load_dataset
    from rehead.experiments import quiet
    from rehead.experiments.probe import probe
    from rehead.features import FeatureCache
    from rehead.reference import pixels_key
    img = make_images(tmp_path / "img", n=10)
    r = _run([*_launch(), "probe", str(img), "--model", tiny_spec, "--out", str(tmp_path / "p2"),
              "--batch-size", "4", "--no-report", "-q"], tmp_path / "c2")
    assert r.stdout.count("best depth") == 1  # the first process reports; the other stays quiet
    one = probe(img, model=tiny_spec, out=tmp_path / "p1", batch_size=4, cache_dir=tmp_path / "c1",
                progress=False, echo=quiet)
    two = json.loads((tmp_path / "p2" / "results.json").read_text())
    assert [(x["cut"], x["val_acc"], x["val_loss"]) for x in two["rows"]] == \
        [(x["cut"], x["val_acc"], x["val_loss"]) for x in one["rows"]]
    # Exact: each process takes whole batches, so every sample is computed in the same batch as in one
    # process, with the same thread count (1). With a different thread count rows differ by ~1e-8.
    ds = load_dataset(img, val_fraction=0.2, seed=0)
    items = ds.train.items + ds.val.items
    for k in [x["cut"] for x in one["rows"]]:
        assert np.array_equal(_store_features(tmp_path / "c1", tiny_spec, items, k),
                              _store_features(tmp_path / "c2", tiny_spec, items, k))
    # each process wrote its own shard of each model key; one process writes one (the main process
    # keeps the input's own pixels too, a shard per split)
    def shards(cache_dir):
        c = FeatureCache(cache_dir)
        return {("pixels" if m["key"] == pixels_key(c) else "features", m["shards"], m["samples"]) for m in c.models()}, \
            len(c.models())
    assert shards(tmp_path / "c2") == ({("features", 2, 20), ("pixels", 2, 20)}, 8)
    assert shards(tmp_path / "c1") == ({("features", 1, 20), ("pixels", 2, 20)}, 8)


def test_fit_under_accelerate_launch_matches_one_process(tiny_spec, tmp_path, one_thread):
    import rehead
    from rehead.experiments import quiet
    from rehead.features import FeatureCache
    img = make_images(tmp_path / "img", n=10)
    r = _run([*_launch(), "fit", str(img), "--model", tiny_spec, "--strategy", "extract",
              "--out", str(tmp_path / "f2"), "--batch-size", "4", "-q"], tmp_path / "c2")
    assert r.stdout.count("val accuracy") == 1
    rehead.fit(img, tmp_path / "f1", model=tiny_spec, strategy="extract", batch_size=4,
               cache_dir=str(tmp_path / "c1"), progress=False, echo=quiet)
    s1, s2 = (json.loads((tmp_path / f / "summary.json").read_text()) for f in ("f1", "f2"))
    assert s2["val_acc"] == s1["val_acc"]
    assert s2["val_loss"] == s1["val_loss"]
    w1, w2 = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("f1", "f2"))
    for name in (n for n in w1 if n.startswith("head.")):  # the head solved on the same features
        assert torch.equal(w2[name], w1[name]), name
    # 16 train samples in 4 batches: 2 per process, 2 shards; 4 val samples: one batch, one shard
    assert [m["shards"] for m in FeatureCache(tmp_path / "c2").models()] == [3]


def test_processes_option_is_not_passed_on():
    assert strip_option(["probe", "d", "--processes", "2", "-q", "--processes=3", "--processesx"],
                        "--processes") == ["probe", "d", "-q", "--processesx"]


def test_rank_without_cache_shares_rows_between_processes(tiny_spec, tmp_path, one_thread):
    # no store to meet in: each process's rows are gathered through accelerate (gather_object)
    from rehead.experiments import quiet
    from rehead.experiments.rank import rank
    img = make_images(tmp_path / "img", n=10)
    _run([sys.executable, "-m", "rehead", "rank", str(img), "--models", f"{tiny_spec},{tiny_spec}@3",
          "--out", str(tmp_path / "r2"), "--batch-size", "4", "--no-cache", "--no-report", "-q",
          "--processes", "2"], tmp_path / "c2")
    one = rank(img, [tiny_spec, f"{tiny_spec}@3"], out=tmp_path / "r1", batch_size=4, use_cache=False,
               progress=False, echo=quiet)
    two = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert [(x["model"], x["probe_val_acc"]) for x in two["rows"]] == \
        [(x["model"], x["probe_val_acc"]) for x in one["rows"]]
    # --processes gives each process cores/2 threads: on a machine with more than 2 cores, not this test's 1
    assert [x["logme"] for x in two["rows"]] == pytest.approx([x["logme"] for x in one["rows"]], rel=1e-5)
    assert not (tmp_path / "c2").exists()  # nothing went through a store
