"""Features in bf16 where the hardware has it: close to fp32, cached apart, and a run scores new
data with the backbone in the precision its head's features were made in."""
from __future__ import annotations

import json

import pytest
import torch

from rehead import precision


def test_env_override_and_refusal(monkeypatch):
    monkeypatch.setenv("REHEAD_FEATURE_PRECISION", "bf16")
    assert precision.feature_precision("cpu") == "bf16"
    monkeypatch.setenv("REHEAD_FEATURE_PRECISION", "half")
    with pytest.raises(ValueError, match="REHEAD_FEATURE_PRECISION must be one of"):
        precision.feature_precision("cpu")
    monkeypatch.setenv("REHEAD_FEATURE_PRECISION", "auto")
    assert precision.feature_precision("cpu") in ("bf16", "fp32")


def test_bf16_features_are_close_to_fp32_and_cached_apart(tmp_path, monkeypatch, image_folder, tiny_spec):
    from rehead import zoo
    from rehead.features import FeatureCache, extract
    items = sorted(str(p) for p in image_folder.rglob("*.jpg"))[:8]
    bb = zoo.load(tiny_spec).eval()
    cache = FeatureCache(tmp_path / "c")
    d = len(bb)
    f32 = extract(bb, items, [d], cache, workers=0, progress=False)[0][d]
    monkeypatch.setenv("REHEAD_FEATURE_PRECISION", "bf16")
    bf = extract(bb, items, [d], cache, workers=0, progress=False)[0][d]
    assert not torch.equal(bf, f32)  # computed anew, not read from the fp32 entries
    assert torch.nn.functional.cosine_similarity(bf, f32).min() > 0.99
    assert cache.model_key(bb, d, "bf16") != cache.model_key(bb, d)


def test_extract_run_scores_with_the_precision_of_its_features(tmp_path, monkeypatch, image_folder, tiny_spec):
    from rehead import Run
    from rehead.fit import fit
    monkeypatch.setenv("REHEAD_FEATURE_PRECISION", "bf16")
    fit(str(image_folder), out=tmp_path / "r", model=tiny_spec, strategy="extract", workers=0,
        progress=False, echo=lambda *a: None)
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["inference_precision"] == "bf16"
    run = Run(tmp_path / "r")
    items, labels = run.val_split()
    res = run.evaluate(items, labels)
    assert res["accuracy"] == pytest.approx(s["val_acc"])
    # the same logits as the head on bf16 features; fp32 features give (slightly) different ones
    bf = run.logits(items)[0]
    run.inference_precision = "fp32"
    assert not torch.equal(run.logits(items)[0], bf)


def test_default_workers_are_two_on_cpu_and_the_cores_on_a_gpu_machine(monkeypatch):
    # A GPU machine's extraction is bound by decoding: every core but one decodes (shared among a
    # launch's processes on the node); on a CPU the same cores run the forward: 2.
    import os
    import torch
    from rehead.config import FitConfig
    from rehead.precision import default_workers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_workers() == 2 and FitConfig().workers == 2
    assert FitConfig(workers=0).workers == 0  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 15 and FitConfig().workers == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers() == 16
