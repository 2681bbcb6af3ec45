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


# -- --precision: what a fit says and scores ----------------------------------------------------
@pytest.fixture
def fresh_accelerator():
    """accelerate keeps one mixed-precision setting per process: each fit here asks its own."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _table_with_splits(path, n=240):
    import csv
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    y = 1000 + x @ np.array([50.0, -20.0, 10.0, 0.0]) + rng.normal(scale=2.0, size=n)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(4)] + ["label", "split"])
        for i in range(n):
            w.writerow([f"{v:.6f}" for v in x[i]] + [f"{y[i]:.4f}", ("train", "train", "train", "val", "test")[i % 5]])
    return path


def test_a_bf16_fit_reports_the_figures_evaluate_gives(tmp_path, fresh_accelerator, one_thread):
    # The user's regression run: RMSE 2895.58 in the fit (val and test scored under bf16 autocast) vs
    # 2905.40 from `rehead evaluate` (fp32), while summary.json said inference_precision fp32.
    from rehead import Run
    from rehead.fit import fit
    fit(str(_table_with_splits(tmp_path / "reg.csv")), tmp_path / "r", model="tabular:mlp-4-64x1", task="regression",
        strategy="full", epochs=2, lr=0.01, batch_size=16, precision="bf16", progress=False, echo=lambda *a: None)
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    run = Run(tmp_path / "r")
    val = run.evaluate(*run.val_split())
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    test = run.evaluate(split["test"]["items"], split["test"]["labels"])
    for k in ("rmse", "mae", "r2"):
        assert s[f"val_{k}"] == pytest.approx(val[k], rel=1e-5), k
        assert s[f"test_{k}"] == pytest.approx(test[k], rel=1e-5), k
    assert s["inference_precision"] == "fp32" and s["training_precision"] == "bf16"
    assert s["val_in_training"]["val_rmse"] != pytest.approx(val["rmse"], rel=1e-5)  # the loop's, under bf16


def test_a_bf16_fit_fits_its_temperature_on_fp32_logits(tmp_path, fresh_accelerator, tiny_spec, one_thread):
    from rehead import Run
    from rehead.calibration import fit_temperature
    from rehead.fit import fit
    from tests.conftest import make_images, split_rows
    root = make_images(tmp_path / "imgs", n=12)
    rows = split_rows(12, lambda i: "train" if i < 6 else "val")
    rows[8], rows[22] = rows[8].replace(",red,", ",blue,"), rows[22].replace(",blue,", ",red,")  # a finite T
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    fit(str(root / "data.csv"), tmp_path / "r", model=tiny_spec, strategy="finetune", epochs=2, workers=0,
        batch_size=8, precision="bf16", progress=False, echo=lambda *a: None)
    run = Run(tmp_path / "r")
    s, (items, labels) = run.summary, run.val_split()
    logits = run.logits(items)[0]
    assert s["calibration"]["fitted"], s["calibration"].get("reason")
    assert s["calibration"]["temperature"] == pytest.approx(fit_temperature(logits.double(), torch.tensor(labels)),
                                                            rel=1e-4)
    assert s["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels))),
                                          rel=1e-5)
    assert s["val_acc"] == pytest.approx(run.evaluate(items, labels)["accuracy"])


def _said_before_training(out):
    """An echo that records each line with whether any epoch had been written when it was said."""
    lines = []
    return lines, lambda m: lines.append((m, (out / "metrics.csv").exists()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs as asked on a GPU")
def test_fp16_on_a_cpu_says_it_trains_in_fp32_before_it_does(tmp_path, fresh_accelerator, image_folder, tiny_spec,
                                                               one_thread):
    from rehead.fit import fit
    lines, echo = _said_before_training(tmp_path / "r")
    fit(str(image_folder), tmp_path / "r", model=tiny_spec, strategy="head", epochs=1, workers=0, precision="fp16",
        progress=False, echo=echo)
    said = [(m, late) for m, late in lines if "--precision fp16 needs a CUDA GPU" in m]
    assert len(said) == 1 and not said[0][1], lines  # once, before the first epoch
    assert "training in fp32" in said[0][0]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["training_precision"] == "fp32"


def test_bf16_without_bf16_arithmetic_warns_once_before_live_phases(tmp_path, fresh_accelerator, image_folder,
                                                                     tiny_spec, monkeypatch, one_thread):
    from rehead.fit import fit
    monkeypatch.setattr(precision, "_native_bf16", lambda device: False)  # a CPU without AVX512-BF16 or AMX
    warning = "--precision bf16 on a CPU without bf16 arithmetic"
    lines, echo = _said_before_training(tmp_path / "live")
    fit(str(image_folder), tmp_path / "live", model=tiny_spec, strategy="head", epochs=1, workers=0,
        precision="bf16", progress=False, echo=echo)
    said = [(m, late) for m, late in lines if warning in m]
    if torch.cuda.is_available():  # trained on the GPU: nothing to say
        assert not said
        return
    assert len(said) == 1 and not said[0][1], lines
    assert "leave --precision out" in said[0][0]
    lines, echo = _said_before_training(tmp_path / "extract")  # the head on cached features: nothing runs slow
    fit(str(image_folder), tmp_path / "extract", model=tiny_spec, strategy="extract", epochs=1, workers=0,
        precision="bf16", progress=False, echo=echo)
    assert not any(warning in m for m, _ in lines)


def test_a_resumed_fit_trains_in_the_precision_it_started_in(tmp_path, fresh_accelerator, image_folder, tiny_spec,
                                                             one_thread):
    """`fit --resume` made its accelerator before reading the run's config.yaml: a bf16 run went on in fp32."""
    from accelerate.state import AcceleratorState
    from rehead.fit import fit
    from rehead.train.callbacks import Callback

    class Stop(Callback):  # the process is interrupted after the first live epoch
        def after_epoch(self, tr):
            if not tr.on_features:
                raise KeyboardInterrupt

    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        fit(str(image_folder), out, model=tiny_spec, strategy="finetune", epochs=2, unfreeze=1, workers=0,
            batch_size=8, precision="bf16", progress=False, echo=lambda *a: None, hooks=[Stop()])
    assert (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()
    AcceleratorState._reset_state()  # a new process, as `rehead fit --resume RUN` is
    run = fit(out=out, resume=True, progress=False, echo=lambda *a: None)
    assert run.summary["training_precision"] == "bf16"


def test_fits_at_different_precisions_run_one_after_another_in_one_process(tmp_path, fresh_accelerator, image_folder,
                                                                         tiny_spec, one_thread):
    """A notebook's second fit at another --precision raised accelerate's "AcceleratorState has already been
    initialized and cannot be changed, restart your runtime" (a raw ValueError)."""
    from rehead.fit import fit
    for i, p in enumerate(("bf16", "no", "bf16")):
        run = fit(str(image_folder), tmp_path / str(i), model=tiny_spec, strategy="head", epochs=1, workers=0,
                  precision=p, progress=False, echo=lambda *a: None)
        assert run.summary["training_precision"] == ("fp32" if p == "no" else p)


def test_a_precision_typo_is_refused_before_accelerate_and_the_next_fit_runs(tmp_path, fresh_accelerator, image_folder,
                                                                          tiny_spec, one_thread):
    """fit asked accelerate for the precision before checking it: "bfloat16" got accelerate's raw ValueError
    (listing fp8, which rehead does not take), "fp8" a half-made AcceleratorState, and every later fit in the
    process failed ("'AcceleratorState' object has no attribute '_mixed_precision'") until a restart."""
    from rehead.config import ConfigError
    from rehead.distributed import accelerator
    from rehead.fit import fit
    kw = dict(model=tiny_spec, strategy="head", epochs=1, workers=0, progress=False, echo=lambda *a: None)
    for p in ("bfloat16", "fp8"):
        with pytest.raises(ConfigError, match=f"--precision must be one of no, fp16, bf16, got '{p}'"):
            fit(str(image_folder), tmp_path / p, precision=p, **kw)
        assert not (tmp_path / p).exists()
    with pytest.raises(ValueError):  # accelerate itself refuses fp8 here (no transformer_engine), half-way
        accelerator("fp8")
    assert fit(str(image_folder), tmp_path / "after", **kw).summary["training_precision"] == "fp32"
