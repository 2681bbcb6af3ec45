"""rehead ensemble: mean probabilities of several runs, or one model of their mean weights (a soup)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import rehead
from rehead.cli import app
from rehead.ensemble import make_ensemble
from rehead.run import BadRun, Run, RunExists
from rehead.runs import open_run

runner = CliRunner()


def _fit(data, out, spec, **kw):
    kw = {"strategy": "extract", "epochs": 5, **kw}
    return rehead.fit(str(data), model=spec, out=str(out), workers=0, progress=False, echo=lambda *a: None, **kw)


@pytest.fixture
def two_runs(tmp_path, image_folder, tiny_spec, one_thread):
    """Two runs of one recipe, seeds 0 and 1 (so their val splits differ), and the data."""
    a = _fit(image_folder, tmp_path / "a", tiny_spec, seed=0)
    b = _fit(image_folder, tmp_path / "b", tiny_spec, seed=1, strategy="head", epochs=2)
    return a, b


def test_ensemble_predicts_the_mean_of_its_members_probabilities_and_needs_no_originals(tmp_path, two_runs,
                                                                                       image_folder):
    a, b = two_runs
    items = sorted(str(p) for p in image_folder.rglob("*.jpg"))
    expected = (a.probs(items)[0] + b.probs(items)[0]) / 2  # each member's calibrated probabilities
    make_ensemble([a.dir, b.dir], tmp_path / "ens")
    shutil.rmtree(a.dir)  # members are copied: the ensemble stands alone
    shutil.rmtree(b.dir)
    ens = open_run(tmp_path / "ens")
    logits, kept, skipped = ens.logits(items)
    assert kept == list(range(len(items))) and skipped == []
    assert torch.allclose(logits.softmax(1), expected, atol=1e-5)
    top = ens.predict(items[:1], top_k=1)[0]["top"][0]
    assert top["prob"] == pytest.approx(float(expected[0].max()), abs=1e-5)
    labels = [ens.classes.index(p.split("/")[-2]) for p in items]
    assert ens.evaluate(items, labels)["accuracy"] == pytest.approx(
        float((expected.argmax(1) == torch.tensor(labels)).float().mean()))
    summary = json.loads((tmp_path / "ens" / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [0, 1] and summary["shared_val_split"] is False


def test_soup_is_a_run_whose_weights_are_the_members_mean(tmp_path, two_runs):
    a, b = two_runs
    make_ensemble([a.dir, b.dir], tmp_path / "soup", soup=True)
    wa, wb, ws = (load_file(str(d / "model.safetensors")) for d in (a.dir, b.dir, tmp_path / "soup"))
    assert ws.keys() == wa.keys()
    for k in ws:
        if ws[k].is_floating_point():
            assert torch.allclose(ws[k], (wa[k] + wb[k]) / 2, atol=1e-6), k
    soup = open_run(tmp_path / "soup")
    assert type(soup) is Run and soup.config["kind"] == "soup"
    head = [k for k in ws if k.startswith("head.")][0]
    assert torch.equal(soup.model.state_dict()[head], ws[head])


def test_cli_ensemble_evaluate_predict_and_clear_refusals(tmp_path, two_runs, image_folder, tiny_spec):
    a, b = two_runs
    ens = tmp_path / "ens"
    r = runner.invoke(app, ["ensemble", str(a.dir), str(b.dir), "--out", str(ens)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(ens), str(image_folder), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)  # the warning goes to stderr
    assert res["n"] == 20 and res["kind"] == "ensemble"
    # the members' training data is not a held-out set for the ensemble, though their splits differ
    assert sum(res["seen"].values()) == 20
    r = runner.invoke(app, ["evaluate", str(ens), str(image_folder)])
    assert "ensemble of 2 runs (their mean probability)" in r.output
    assert "20 of 20 samples were seen by this ensemble" in r.output
    soup = tmp_path / "soup"
    assert runner.invoke(app, ["ensemble", str(a.dir), str(b.dir), "--soup", "--out", str(soup)]).exit_code == 0
    r = runner.invoke(app, ["evaluate", str(soup), str(image_folder)])
    assert "soup of 2 runs (one model of their mean weights)" in r.output and "seen by this soup" in r.output
    img = next(image_folder.rglob("*.jpg"))
    r = runner.invoke(app, ["predict", str(ens), str(img), "-k", "1"])
    assert r.exit_code == 0 and str(img) in r.output
    # the members were split differently: no val split is unseen by both
    r = runner.invoke(app, ["evaluate", str(ens)])
    assert r.exit_code == 2 and "evaluate on held-out data" in r.output
    r = runner.invoke(app, ["export", str(ens)])
    assert r.exit_code == 2 and "--soup" in r.output
    r = runner.invoke(app, ["ensemble", str(a.dir), str(b.dir), "--out", str(ens)])
    assert r.exit_code == 2 and "--overwrite" in r.output and "--resume" not in r.output  # ensemble has none
    r = runner.invoke(app, ["ensemble", str(a.dir), "--out", str(tmp_path / "one")])
    assert r.exit_code == 2 and "at least two" in r.output


def test_members_must_agree(tmp_path, two_runs, image_folder, tiny_spec, one_thread):
    a, b = two_runs
    cut = _fit(image_folder, tmp_path / "cut", tiny_spec, cut=3)
    with pytest.raises(BadRun, match="one architecture"):
        make_ensemble([a.dir, cut.dir], tmp_path / "soup", soup=True)
    make_ensemble([a.dir, cut.dir], tmp_path / "mixed")  # a plain ensemble may mix depths
    three = tmp_path / "three"
    shutil.copytree(image_folder, three)
    shutil.copytree(three / "red", three / "green")
    other = _fit(three, tmp_path / "other", tiny_spec)
    with pytest.raises(BadRun, match="classes"):
        make_ensemble([a.dir, other.dir], tmp_path / "bad")
    with pytest.raises(BadRun, match="one of the members"):
        make_ensemble([a.dir, b.dir], a.dir, overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(RunExists):
        make_ensemble([a.dir, b.dir], tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "mine"


def test_members_with_one_split_keep_a_val_split(tmp_path, image_folder, tiny_spec, one_thread):
    a = _fit(image_folder, tmp_path / "a", tiny_spec, lr=1e-2)
    # (two extract fits that differ in lr only solve the same head: the same weights, refused as a copy)
    b = _fit(image_folder, tmp_path / "b", tiny_spec, lr=3e-3, strategy="head", epochs=2)
    ens = open_run(make_ensemble([a.dir, b.dir], tmp_path / "ens"))
    items, labels = ens.val_split()
    assert (items, labels) == a.val_split()
    assert ens.evaluate(items, labels)["n"] == len(items)


def test_a_soup_of_members_that_share_no_starting_weights_is_refused(tmp_path, one_thread):
    """Two runs of a random table encoder drawn with different seeds: one spec, one architecture, no
    shared weights (their mean scored 0.40 on iris). Same seed: a soup."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    rows = "".join(f"{','.join(f'{v:.4f}' for v in r)},{'ab'[int(r[0] > 0)]}\n" for r in x)
    (tmp_path / "t.csv").write_text("a,b,c,d,label\n" + rows)
    # (s0b trains its head by steps: an extract fit differing in lr only solves the same head, a copy)
    runs = [_fit(tmp_path / "t.csv", tmp_path / f"s{s}{v}", "tabular:mlp-4-8x1", seed=s, lr=lr, **kw)
            for s, v, lr, kw in ((0, "", 3e-3, {}), (1, "", 3e-3, {}), (0, "b", 1e-2, {"strategy": "head"}))]
    with pytest.raises(BadRun, match="which neither trained: they do not start from the same weights"):
        make_ensemble([runs[0].dir, runs[1].dir], tmp_path / "soup", soup=True)
    assert not (tmp_path / "soup").exists()
    make_ensemble([runs[0].dir, runs[2].dir], tmp_path / "soup2", soup=True)


def test_a_run_given_twice_is_refused_and_a_soup_keeps_frozen_weights_bit_for_bit(tmp_path, two_runs):
    a, b = two_runs
    with pytest.raises(BadRun, match="given twice"):  # one run twice would be two votes
        make_ensemble([a.dir, a.dir], tmp_path / "dup")
    assert not (tmp_path / "dup").exists()
    make_ensemble([a.dir, b.dir], tmp_path / "soup", soup=True)
    wa, ws = load_file(str(a.dir / "model.safetensors")), load_file(str(tmp_path / "soup" / "model.safetensors"))
    frozen = [k for k in ws if k.startswith("backbone.") and ws[k].is_floating_point()]
    assert frozen and all(torch.equal(ws[k], wa[k]) for k in frozen)  # a float mean of equal tensors rounds
    make_ensemble([tmp_path / "soup", a.dir], tmp_path / "soup2", soup=True)  # was refused: "do not start from ..."
    assert open_run(tmp_path / "soup2").config["kind"] == "soup"


def test_a_soup_of_members_on_other_splits_does_not_show_one_members_split_as_its_own(tmp_path, two_runs, tiny_spec):
    import yaml
    from rehead.report import write_report
    a, b = two_runs  # seeds 0 and 1: other val splits
    make_ensemble([a.dir, b.dir], tmp_path / "soup", soup=True)
    cfg = yaml.safe_load((tmp_path / "soup" / "config.yaml").read_text())
    assert "different train/val splits" in cfg["data_summary"]["splits"] and "seed" not in cfg["fit"]
    make_ensemble([a.dir, b.dir], tmp_path / "ens")
    html = write_report(tmp_path / "ens", echo=lambda *_: None).read_text()
    assert tiny_spec in html.split("<h2>")[0]  # the header names the members' model


def test_an_ensemble_rebuilt_over_its_own_members_is_refused_before_anything_is_deleted(tmp_path, two_runs,
                                                                                         image_folder):
    """--out the ensemble that holds its members, with --overwrite, emptied members/ before reading them."""
    a, b = two_runs
    make_ensemble([a.dir, b.dir], tmp_path / "ens")
    members = [tmp_path / "ens" / "members" / str(i) for i in (0, 1)]
    for soup in (False, True):
        with pytest.raises(BadRun, match="is one of the members, holds one or lies inside one"):
            make_ensemble(members, tmp_path / "ens", soup=soup, overwrite=True)
    item = str(next(image_folder.rglob("*.jpg")))
    assert open_run(tmp_path / "ens").predict([item])  # untouched
    # a member keeps its calibration: predicted alone it gives its run's probabilities
    if (a.dir / "temperature.json").exists():
        assert (members[0] / "temperature.json").read_bytes() == (a.dir / "temperature.json").read_bytes()
    assert Run(members[0]).predict([item])[0]["top"][0]["prob"] == pytest.approx(
        a.predict([item])[0]["top"][0]["prob"], abs=1e-6)


def _copy(src, dst, temperature=None):
    shutil.copytree(src, dst)
    if temperature is not None:
        (dst / "temperature.json").write_text(json.dumps({"temperature": temperature}))
    return dst


def test_a_copy_of_a_member_is_refused_before_anything_is_written(tmp_path, two_runs):
    """`cp -r runs/a runs/a2`: one model counted twice in the mean, silently."""
    a, b = two_runs
    a2 = _copy(a.dir, tmp_path / "a2")
    for soup in (False, True):
        with pytest.raises(BadRun, match=f"{a2} and {a.dir} hold the same weights"):
            make_ensemble([a.dir, b.dir, a2], tmp_path / "ens", soup=soup)
    assert not (tmp_path / "ens").exists()
    r = runner.invoke(app, ["ensemble", str(a.dir), str(a2), "--out", str(tmp_path / "ens")])
    assert r.exit_code == 2 and "hold the same weights" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_member_with_a_truncated_weight_file_is_refused_naming_it(tmp_path, two_runs):
    """A truncated model.safetensors was copied into the ensemble and failed only at predict."""
    a, b = two_runs
    bad = _copy(a.dir, tmp_path / "bad")
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(BadRun, match=f"cannot combine {bad}: {w} is not a readable safetensors file"):
        make_ensemble([b.dir, bad], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_members_are_averaged_at_their_own_temperatures(tmp_path, two_runs, image_folder):
    """Each member keeps its temperature.json and predicts calibrated probabilities alone: the ensemble
    averaged their uncalibrated ones."""
    a, b = two_runs
    ca, cb = _copy(a.dir, tmp_path / "ca", 2.0), _copy(b.dir, tmp_path / "cb", 0.5)
    items = sorted(str(p) for p in image_folder.rglob("*.jpg"))
    za, zb = a.logits(items)[0], b.logits(items)[0]
    calibrated = ((za / 2.0).softmax(1) + (zb / 0.5).softmax(1)) / 2
    make_ensemble([ca, cb], tmp_path / "ens")
    ens = open_run(tmp_path / "ens")
    got = ens.logits(items)[0].softmax(1)
    assert torch.allclose(got, calibrated, atol=1e-5)
    assert not torch.allclose(got, (za.softmax(1) + zb.softmax(1)) / 2, atol=1e-3)
    assert ens.predict(items[:1], top_k=1)[0]["top"][0]["prob"] == pytest.approx(float(calibrated[0].max()), abs=1e-5)
    summary = json.loads((tmp_path / "ens" / "summary.json").read_text())
    assert [m["temperature"] for m in summary["members"]] == [2.0, 0.5]
    # the command says what it averaged
    r = runner.invoke(app, ["ensemble", str(ca), str(cb), "--out", str(tmp_path / "ens2")])
    assert r.exit_code == 0 and "calibrated probabilities" in r.output and "T = 2, 0.5" in r.output, r.output
    # an ensemble written before (combine: mean probability) keeps the predictions it was built with
    cfg = tmp_path / "ens" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("mean calibrated probability", "mean probability"))
    old = open_run(tmp_path / "ens").logits(items)[0].softmax(1)
    assert torch.allclose(old, (za.softmax(1) + zb.softmax(1)) / 2, atol=1e-5)


def test_an_ensemble_or_soup_holding_a_soup_knows_what_the_soups_members_saw(tmp_path, two_runs, image_folder,
                                                                              tiny_spec):
    """A soup of members split apart has seen.json, no split.json: an ensemble or soup holding it read only
    split.json, so a score on what the inner soup's members trained on read as held out."""
    from tests.conftest import make_images
    a, b = two_runs  # seeds 0 and 1: other splits of image_folder
    c = _fit(make_images(tmp_path / "other", seed=1), tmp_path / "c", tiny_spec)  # other images (seen by content)
    make_ensemble([a.dir, b.dir], tmp_path / "ab", soup=True)
    make_ensemble([tmp_path / "ab", c.dir], tmp_path / "abc", soup=True)  # a soup of a soup
    make_ensemble([tmp_path / "abc", c.dir], tmp_path / "ens")  # an ensemble of that
    want = open_run(tmp_path / "ab").evaluate(str(image_folder))["seen"]
    assert sum(want.values()) == 20
    for d in ("abc", "ens", "ens/members/0"):  # a member of an ensemble evaluated alone warns as it did
        assert open_run(tmp_path / d).evaluate(str(image_folder)).get("seen") == want, d
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ens"), str(image_folder)])
    assert r.exit_code == 0 and "20 of 20 samples were seen by this ensemble" in r.output


@pytest.fixture
def twins(tmp_path, image_folder, tiny_spec, one_thread):
    """Two models on one split (so an ensemble of them has a val split), with temperatures 10 and 4
    (large: the tiny runs separate val all but perfectly, and T = 1 gives an NLL near 0)."""
    from safetensors.torch import save_file
    a = _fit(image_folder, tmp_path / "a", tiny_spec)
    ca, cb = _copy(a.dir, tmp_path / "ca", 10.0), _copy(a.dir, tmp_path / "cb", 4.0)
    w = load_file(str(cb / "model.safetensors"))  # another model: a copy is refused
    for k in [k for k in w if k.startswith("head.") and w[k].is_floating_point()]:
        w[k] = w[k] * 1.5
    save_file(w, str(cb / "model.safetensors"))
    return ca, cb


def test_ensemble_calibration_is_against_the_members_raw_mean_and_names_their_temperatures(tmp_path, twins):
    """Evaluate showed "uncalibrated" equal to calibrated and T = 1.000: the members' T were applied, and the
    figure without them is the mean of the members' softmax(logits)."""
    from rehead.calibration import ece, nll
    ca, cb = twins
    ens = open_run(make_ensemble([ca, cb], tmp_path / "ens"))
    items, labels = ens.val_split()
    za, zb = Run(ca).logits(items)[0].double(), Run(cb).logits(items)[0].double()
    raw = (za.softmax(1) + zb.softmax(1)) / 2
    cal = ((za / 10).softmax(1) + (zb / 4).softmax(1)) / 2
    res = ens.evaluate(items, labels)
    assert res["nll"] == pytest.approx(nll(cal, labels), abs=1e-5)
    assert res["nll_uncalibrated"] == pytest.approx(nll(raw, labels), abs=1e-5)
    assert res["ece_uncalibrated"] == pytest.approx(ece(raw, labels), abs=1e-4)
    assert res["nll"] - res["nll_uncalibrated"] > 1e-2  # the temperatures are seen to change something
    assert res["member_temperatures"] == [10.0, 4.0] and res["temperature"] == 1.0  # the ensemble adds none
    r = runner.invoke(app, ["evaluate", str(ens.dir)])  # the val split the members' T were fitted on
    assert r.exit_code == 0 and "members' T = 10.000, 4.000 fitted on this val split: optimistic" in r.output, r.output
    assert "T = 1.000" not in r.output
    assert json.loads(runner.invoke(app, ["evaluate", str(ens.dir), "--json"]).stdout)["member_temperatures"] == [10, 4]
    soup = make_ensemble([ca, cb], tmp_path / "soup", soup=True)  # one new model: no T of its own
    r = runner.invoke(app, ["evaluate", str(soup)])
    assert r.exit_code == 0 and "T = 1.000 (none fitted for the soup)" in r.output and "optimistic" not in r.output


def test_predict_says_an_ensemble_or_a_soup_on_stderr(tmp_path, twins, image_folder):
    ca, cb = twins
    img = str(next(image_folder.rglob("*.jpg")))
    for soup, said in ((False, "ensemble of 2 runs (their mean probability)"),
                       (True, "soup of 2 runs (one model of their mean weights)")):
        out = make_ensemble([ca, cb], tmp_path / f"soup{soup}", soup=soup)
        r = runner.invoke(app, ["predict", str(out), img, "--json"])
        assert r.exit_code == 0 and said in r.stderr, r.output
        assert json.loads(r.stdout)[0]["item"] == img  # stdout stays JSON
    r = runner.invoke(app, ["predict", str(ca), img])
    assert r.exit_code == 0 and "runs (" not in r.output  # a fit is one model


def test_a_member_with_no_record_of_its_samples_is_named_when_built_and_evaluated(tmp_path, two_runs, image_folder,
                                                                                    tiny_spec):
    """A member with neither split.json nor seen.json (a run from an older rehead, or made by hand) added
    nothing to the "seen" warning, silently: the ensemble claimed a clean evaluation it could not vouch for."""
    a, b = two_runs
    old = _copy(b.dir, tmp_path / "old")
    (old / "split.json").unlink()
    said = []
    make_ensemble([a.dir, old], tmp_path / "ens", echo=said.append)
    assert len(said) == 1 and f"member {old.resolve()} has no record of the samples it trained" in said[0], said
    assert json.loads((tmp_path / "ens" / "seen.json").read_text())["unrecorded"] == [str(old.resolve())]
    res = open_run(tmp_path / "ens").evaluate(str(image_folder))
    assert res["unrecorded"] == [f"members/1 (from {old.resolve()})"]
    assert any("members/1 (from" in w and "no record of the samples" in w for w in res["warnings"]), res["warnings"]
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ens"), str(image_folder)])
    assert r.exit_code == 0 and f"warning: member members/1 (from {old.resolve()}) has no record" in r.stderr, r.output
    # the command says it when the ensemble is made, on stderr
    r = runner.invoke(app, ["ensemble", str(a.dir), str(old), "--out", str(tmp_path / "ens2")])
    assert r.exit_code == 0 and f"warning: member {old.resolve()} has no record" in r.stderr, r.output
    # an ensemble made before this (no "unrecorded" in its seen.json) is read from its members/N
    seen = json.loads((tmp_path / "ens2" / "seen.json").read_text())
    del seen["unrecorded"]
    (tmp_path / "ens2" / "seen.json").write_text(json.dumps(seen))
    got = open_run(tmp_path / "ens2").evaluate(str(image_folder))["unrecorded"]
    assert got == [f"members/1 (from {old.resolve()})"], got
    # a soup records them too, and an ensemble holding it names them through it
    said.clear()
    make_ensemble([a.dir, old], tmp_path / "soup", soup=True, echo=said.append)
    assert len(said) == 1 and "this soup has seen" in said[0]
    c = _fit(image_folder, tmp_path / "c", tiny_spec, seed=2, strategy="head", epochs=1)
    make_ensemble([tmp_path / "soup", c.dir], tmp_path / "outer", echo=said.append)
    got = open_run(tmp_path / "outer").evaluate(str(image_folder))["unrecorded"]
    assert got == [f"{old.resolve()} (in members/0 (from {(tmp_path / 'soup').resolve()}))"], got
    # the soup evaluated alone names them too
    got = open_run(tmp_path / "soup").evaluate(str(image_folder))
    assert got["unrecorded"] == [str(old.resolve())], got.get("unrecorded")
    # a soup made before seen.json existed (neither record): said that nothing could be counted
    (tmp_path / "soup" / "seen.json").unlink()
    w = open_run(tmp_path / "soup").evaluate(str(image_folder))["warnings"]
    assert any("this soup was made before rehead recorded what its members trained on" in x for x in w), w
    # members that all kept their records: nothing said
    said.clear()
    make_ensemble([a.dir, b.dir], tmp_path / "clean", echo=said.append)
    assert said == [] and "unrecorded" not in open_run(tmp_path / "clean").evaluate(str(image_folder))


def _table(path, seed):
    import numpy as np
    x = np.random.default_rng(seed).normal(size=(60, 4))
    rows = "".join(f"{','.join(f'{v:.4f}' for v in r)},{'ab'[int(r[0] > 0)]}\n" for r in x)
    path.write_text("a,b,c,d,label\n" + rows)
    return path


def test_an_ensemble_of_table_runs_knows_which_version_of_the_table_its_members_saw(tmp_path, one_thread):
    """Table rows are named by number ("t.csv#7") and read back to compare by cells: split.json keeps the
    table's sha256, so a fit says when its table changed, but an ensemble's seen.json kept none, and rows
    read from the edited table were compared as if they were the ones trained on (here: none seen)."""
    import shutil
    t = _table(tmp_path / "t.csv", 0)
    held = shutil.copy(t, tmp_path / "held.csv")  # the very rows, in another file: recognised by their cells
    runs = [_fit(t, tmp_path / f"s{s}", "tabular:mlp-4-8x1", seed=s, strategy="head", epochs=1) for s in (0, 1)]
    said = []
    ens = open_run(make_ensemble([r.dir for r in runs], tmp_path / "ens", echo=said.append))
    assert said == []
    assert json.loads((tmp_path / "ens" / "seen.json").read_text())["fingerprint"]["files"] == \
        json.loads((runs[0].dir / "split.json").read_text())["fingerprint"]["files"]
    assert sum(ens.evaluate(str(held))["seen"].values()) == 60
    _table(t, 1)  # the training table edited: same columns, same row count, other rows
    res = ens.evaluate(str(held))
    assert "seen" not in res and any("cannot tell which of these rows" in w and f"{t} was modified" in w
                                     for w in res["warnings"]), res.get("warnings")
    # members fitted on two versions of one table: no one version is the ensemble's, said when made and evaluated
    late = _fit(t, tmp_path / "late", "tabular:mlp-4-8x1", seed=2, strategy="head", epochs=1)
    make_ensemble([runs[0].dir, late.dir], tmp_path / "mixed", echo=said.append)
    assert len(said) == 1 and f"rows of {t} by number" in said[0] and "different versions" in said[0], said
    res = open_run(tmp_path / "mixed").evaluate(str(held))
    assert "seen" not in res and any("cannot tell which of these rows" in w for w in res["warnings"])
