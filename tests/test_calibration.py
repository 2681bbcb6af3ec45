"""Temperature scaling fitted on val, ECE, and flip test-time augmentation."""
import json
import shutil

import pytest
import torch

from tests.conftest import atol, make_images, split_rows


# -- the measures and the fit, on logits alone -----------------------------------------------
def _calibrated_logits(n=3000, c=5, seed=0):
    """Logits whose softmax is the true label distribution (labels are drawn from it)."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z, y


def test_temperature_of_overconfident_logits_is_above_one_and_lowers_nll_and_ece():
    from rehead.calibration import ece, fit_temperature, nll, scaled_probs
    z, y = _calibrated_logits()
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.1)  # already calibrated: nothing to undo
    over = 4.0 * z  # the same ranking, four times too sharp
    t = fit_temperature(over, y)
    assert 3.5 < t < 4.5
    before, after = scaled_probs([over]), scaled_probs([over], t)
    assert nll(after, y) < nll(before, y) - 0.2
    assert ece(after, y) < ece(before, y) / 3
    assert torch.equal(before.argmax(1), after.argmax(1))


def test_ece_matches_a_hand_computation():
    from rehead.calibration import ece, reliability
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0])  # right, wrong, right, wrong
    # 15 bins of width 1/15, (lo, hi]: 0.9 -> (13/15, 14/15]; 0.6 (= 9/15, an upper edge) and 0.55 -> (8/15, 9/15]
    # bin 13: accuracy 1/2, confidence 0.9; bin 8: accuracy 1/2, confidence 0.575
    assert ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.075, abs=1e-12)
    bins = reliability([0.9, 0.9, 0.6, 0.55, 1.0], [1, 0, 1, 0, 1])
    assert [b["n"] for b in bins] == [0] * 8 + [2, 0, 0, 0, 0, 2, 1]
    assert bins[8]["confidence"] == pytest.approx(0.575) and bins[14]["accuracy"] == 1.0


def test_no_temperature_when_val_asks_for_one_on_a_bound():
    from rehead.calibration import fit_temperature
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]] * 10)  # every val sample right: NLL falls as T -> 0
    assert fit_temperature(z, torch.tensor([0, 1] * 10)) is None


def test_the_reason_for_no_temperature_names_the_bound_it_ran_to(tmp_path):
    from rehead.calibration import calibrate
    from rehead.rundir import RunDir
    run = RunDir.create(tmp_path / "r")
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]] * 10)
    assert "separates perfectly" in calibrate(run, z, torch.tensor([0, 1] * 10))["reason"]
    wrong = calibrate(run, z * 10, torch.tensor([1, 0] * 10))  # confidently wrong on every sample: a failed model
    assert not wrong["fitted"] and "upper bound" in wrong["reason"] and "separates" not in wrong["reason"]
    flat = calibrate(run, torch.full((20, 2), 0.3), torch.tensor([1, 0] * 10))  # learned nothing: equal logits
    assert not flat["fitted"] and "same at every T" in flat["reason"] and "separates" not in flat["reason"]


def test_only_multiclass_configs_are_calibrated():
    from rehead.calibration import is_multiclass
    assert is_multiclass({"kind": "fit", "fit": {"seed": 0}})
    assert is_multiclass({"fit": {"task": "multiclass"}})
    assert not is_multiclass({"fit": {"task": "regression"}})
    assert not is_multiclass({"task": "multilabel"})


# -- a fitted image run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_spec):
    """Train / val / test of colour images; two val and one test image mislabelled, so val NLL has
    a finite optimum in T and the fit has held-out figures."""
    from rehead.fit import fit
    tmp = tmp_path_factory.mktemp("calib")
    root = make_images(tmp / "imgs", n=12)
    rows = split_rows(12, lambda i: "train" if i < 6 else "val" if i < 10 else "test")
    other = {"red": "blue", "blue": "red"}
    for j in (8, 22, 24):  # red val, blue val, blue test: labelled with the other colour
        path, lab, split = rows[j].split(",")
        rows[j] = f"{path},{other[lab]},{split}"
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    lines = []
    run = fit(str(root / "data.csv"), model=tiny_spec, out=tmp / "run", strategy="extract", workers=0,
              cache_dir=str(tmp / "cache"), progress=False, echo=lines.append)
    run.echoed = lines
    run.images = [str(p) for c in ("red", "blue") for p in sorted((root / c).glob("*.jpg"))]
    return run


def test_fit_writes_the_temperature_and_predict_uses_it_without_changing_labels(image_run):
    from rehead.run import Run
    run = Run(image_run.dir)
    saved = json.loads((run.dir / "temperature.json").read_text())
    t = saved["temperature"]
    assert saved["fitted_on"] == "val" and run.temperature == t and abs(t - 1) > 0.05
    cal = run.summary["calibration"]
    assert cal["fitted"] and cal["temperature"] == t and cal["n"] == 8
    assert cal["nll_after"] < cal["nll_before"]
    assert any(line.startswith(f"calibration: T = {t:.3f} fitted on val") for line in image_run.echoed)
    assert {"test_ece", "test_ece_uncalibrated", "test_nll"} <= set(run.summary)

    logits, kept, _ = run.logits(image_run.images)
    rows = run.predict(image_run.images, top_k=2)
    calibrated = (logits.double() / t).softmax(1)
    for r, p, q in zip(rows, calibrated, logits.softmax(1)):
        assert r["top"][0]["label"] == run.classes[int(q.argmax())]  # the label T = 1 gives
        assert r["top"][0]["prob"] == pytest.approx(float(p.max()), abs=1e-6)
        assert abs(r["top"][0]["prob"] - float(q.max())) > 1e-4  # and a different probability
    res = run.evaluate(*run.val_split())
    assert res["ece"] == pytest.approx(cal["ece_after"], abs=1e-6)
    assert res["ece_uncalibrated"] == pytest.approx(cal["ece_before"], abs=1e-6)
    assert res["nll"] == pytest.approx(cal["nll_after"], abs=1e-6)


def test_a_run_without_the_temperature_file_loads_and_predicts_as_before(image_run, tmp_path):
    from rehead.run import BadRun, Run
    old = tmp_path / "old"
    shutil.copytree(image_run.dir, old, ignore=shutil.ignore_patterns(".lock"))
    (old / "temperature.json").unlink()
    run = Run(old)
    assert run.temperature == 1.0
    logits, _, _ = run.logits(image_run.images)
    tops = [r["top"][0]["prob"] for r in run.predict(image_run.images)]
    assert tops == pytest.approx(logits.softmax(1).max(1).values.tolist(), abs=1e-6)
    res = run.evaluate(*run.val_split())
    assert res["ece"] == res["ece_uncalibrated"] and res["nll"] == res["nll_uncalibrated"]
    (old / "temperature.json").write_text('{"temperature": -2}')
    with pytest.raises(BadRun, match="temperature.json holds no positive temperature"):
        run.predict(image_run.images[:1])


def test_tta_averages_the_probabilities_of_each_image_and_its_flip(image_run):
    from PIL import Image
    from rehead.data.images import eval_transform
    from rehead.run import Run
    run = Run(image_run.dir)
    t = run.temperature
    paths = image_run.images[:6]
    tf = eval_transform(run.model.backbone.data_config)
    x = [tf(Image.open(p).convert("RGB")) for p in paths]
    plain, _, _ = run.logits(x)
    flipped, _, _ = run.logits([v.flip(-1) for v in x])
    assert (plain - flipped).abs().max() > 1e-4  # the model sees a flipped image differently
    want = ((plain.double() / t).softmax(1) + (flipped.double() / t).softmax(1)) / 2
    for items in (paths, x):  # through the loader and in memory
        got, kept, _ = run.probs(items, tta=True)
        assert kept == list(range(6))
        assert torch.allclose(got.double(), want, atol=atol(1e-5))
        no_tta, _, _ = run.probs(items)
        assert not torch.allclose(got, no_tta, atol=1e-5)
    rows = run.predict(paths, tta=True)
    assert [r["top"][0]["prob"] for r in rows] == pytest.approx(want.max(1).values.tolist(), abs=atol(1e-5))
    res = run.evaluate(*run.val_split(), tta=True)
    assert res["tta"] is True and 0 <= res["ece"] <= 1



def test_an_ensemble_averages_its_members_calibrated_flips(image_run, tmp_path):
    from safetensors.torch import load_file, save_file
    from rehead.ensemble import Ensemble, make_ensemble
    from rehead.run import Run
    twin = tmp_path / "twin"
    shutil.copytree(image_run.dir, twin, ignore=shutil.ignore_patterns(".lock"))
    w = load_file(str(twin / "model.safetensors"))  # another model: an exact copy is refused (it would count twice)
    k = next(k for k in sorted(w) if k.startswith("head.") and w[k].is_floating_point())
    w[k] = w[k] * 1.1
    save_file(w, str(twin / "model.safetensors"))
    (twin / "temperature.json").write_text(json.dumps({"temperature": 2.0}))
    ens = Ensemble(make_ensemble([image_run.dir, twin], tmp_path / "ens"))
    a, b, paths = Run(image_run.dir), Run(twin), image_run.images[:4]
    got = ens.probs(paths, tta=True)[0].log()  # compared as log-probabilities: T = 1 saturates them
    assert ens.temperature == 1.0  # the ensemble's own; each member's T applies to its logits
    want = (a.probs(paths, tta=True)[0] + b.probs(paths, tta=True)[0]) / 2
    assert torch.allclose(got, want.log(), atol=1e-4)
    raw = (a.probs(paths, tta=True, calibrated=False)[0] + b.probs(paths, tta=True, calibrated=False)[0]) / 2
    assert not torch.allclose(got, raw.log(), atol=1e-3)
    assert not torch.allclose(got, ens.probs(paths)[0].log(), atol=1e-2)  # the flips count


def test_evaluate_prints_calibration_and_the_report_has_a_reliability_diagram(image_run):
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.report import write_report
    from tests.test_report import check_self_contained
    cli = CliRunner()
    r = cli.invoke(app, ["evaluate", str(image_run.dir), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert {"accuracy", "ece", "ece_uncalibrated", "nll", "nll_uncalibrated", "temperature"} <= set(res)
    assert "probs_uncalibrated" not in res
    r = cli.invoke(app, ["evaluate", str(image_run.dir), "--tta"])
    assert r.exit_code == 0, r.output
    assert "with flip TTA" in r.output and "fitted on this val split: optimistic" in r.output
    r = cli.invoke(app, ["predict", str(image_run.dir), image_run.images[0], "--tta", "--json"])
    assert r.exit_code == 0, r.output
    html = write_report(image_run.dir, echo=lambda *_: None).read_text()
    check_self_contained(html)
    assert (image_run.dir / "reliability.png").stat().st_size > 1000
    assert "<h2>Calibration</h2>" in html and "the split T was fitted on" in html and "held-out <b>test</b>" in html


# -- text runs have no flip -----------------------------------------------------------------------
def test_tta_on_a_text_run_is_a_one_line_error(tmp_path, tiny_bert_dir):
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.fit import fit
    from rehead.run import BadRun
    from tests.test_text import sentiment_rows, write_csv
    d = tmp_path / "sent"
    d.mkdir()
    write_csv(d / "train.csv", sentiment_rows(20, 0))
    run = fit(d, model=f"hf:{tiny_bert_dir}", out=tmp_path / "run", strategy="extract", progress=False,
              echo=lambda *_: None)
    with pytest.raises(BadRun, match="--tta averages each image with its horizontal flip"):
        run.predict(["a fine film"], tta=True)
    cli = CliRunner()
    for args in (["predict", str(run.dir), "a fine film", "--tta"], ["evaluate", str(run.dir), "--tta"]):
        r = cli.invoke(app, args)
        assert r.exit_code == 2
        assert r.output.startswith("error: --tta averages each image") and r.output.count("\n") == 1, r.output
    assert cli.invoke(app, ["predict", str(run.dir), "a fine film"]).exit_code == 0


def test_the_fit_line_says_when_ece_rose():
    from rehead.calibration import summary_line
    rec = {"fitted": True, "temperature": 2.0, "n": 100, "nll_before": 1.4, "nll_after": 1.1}
    assert "ECE rose" in summary_line({**rec, "ece_before": 0.10, "ece_after": 0.20})
    assert "ECE rose" not in summary_line({**rec, "ece_before": 0.20, "ece_after": 0.10})
