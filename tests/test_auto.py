"""--strategy auto on both axes (size x similarity to the source), with a budget (issue 14, item 4)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

import rehead
from rehead.auto import (MARGIN, POOR, SMALL, WEAK_TOP, AutoGuard, budget_plan, decide, fit_budget,
                         probe_cuts)
from rehead.recipes import Phase, build_recipe
from rehead.train.callbacks import CancelFit
from tests.conftest import shared_dataset

NAMES = ["stem", "block0", "block1", "block2", "block3", "block4", "block5", "block6", "head_conv"]


def table(accs: dict, chance: float = 0.1) -> list[dict]:
    """A probe table as auto.probe_table makes it: {cut: pooled accuracy}, shallow to deep."""
    return [{"cut": k, "stage": NAMES[k - 1], "dim": 8 * k, "acc": a, "skill": (a - chance) / (1 - chance)}
            for k, a in sorted(accs.items())]


# -- the rule, on synthetic probe tables -------------------------------------------------------------
def test_the_rule_on_both_axes():
    similar = table({4: 0.60, 6: 0.80, 8: 0.90, 9: 0.93})
    far = table({4: 0.60, 6: 0.80, 8: 0.85, 9: 0.78})       # an earlier cut beats the top
    weak = table({4: 0.40, 6: 0.55, 8: 0.64, 9: 0.65})      # the top is weak, nothing earlier is better
    poor = table({4: 0.30, 6: 0.22, 8: 0.15, 9: 0.12})      # near chance everywhere (random weights)

    d = decide(similar, 200, 9, 0.1)
    assert (d["size"], d["similarity"], d["cut"], d["unfreeze"], d["strategy"]) == \
        ("small", "similar", 9, [], "extract")
    assert "features from the top" in d["reason"] and f"< {SMALL}" in d["reason"]

    d = decide(far, 200, 9, 0.1)
    assert (d["similarity"], d["cut"], d["unfreeze"]) == ("different", 8, [])
    assert "features from an earlier cut" in d["reason"] and "block6" in d["reason"]

    d = decide(weak, 200, 9, 0.1)
    assert (d["similarity"], d["cut"], d["unfreeze"]) == ("different", 9, [1, 2])
    assert "weak" in d["reason"]

    for n in (200, 5000):
        d = decide(poor, n, 9, 0.1)
        assert d["similarity"] == "poor" and d["unfreeze"][-1] == -1 and "transfers poorly" in d["reason"]
        # the best cut (block2 here) is still where it starts: half of its 4 stages, then all of them
        assert (d["cut"], d["unfreeze"]) == (4, [2, -1]) and "earlier cut, cut 4" in d["reason"]
    flat = table({4: 0.15, 6: 0.14, 8: 0.15, 9: 0.15})  # poor, no earlier cut better: the top, as before
    assert (decide(flat, 200, 9, 0.1)["cut"], decide(flat, 200, 9, 0.1)["unfreeze"]) == (9, [4, -1])

    big_similar, big_far = decide(similar, 5000, 9, 0.1), decide(far, 5000, 9, 0.1)
    assert big_similar["unfreeze"] == [1, 2] and "fine-tune the top stages" in big_similar["reason"]
    assert max(big_far["unfreeze"]) > max(big_similar["unfreeze"]) and "fine-tune more stages" in big_far["reason"]
    # large data, an earlier cut better: cut there (the stages after it fit the source), then train below it
    assert (big_far["cut"], big_far["unfreeze"]) == (8, [2, 4]) and "features from an earlier cut" in big_far["reason"]
    big_weak = decide(weak, 5000, 9, 0.1)  # nothing earlier is better: the top is kept and more of it trains
    assert (big_weak["cut"], big_weak["unfreeze"]) == (9, [2, 4]) and "fine-tune more stages" in big_weak["reason"]
    assert decide(similar, 60000, 9, 0.1)["unfreeze"] == [2, -1]


def test_an_input_that_reads_the_data_as_well_makes_it_different():
    # digits on Lite2: the top probes 0.88 (skill 0.87, "similar" by skill alone), 16x16 pixels 0.94
    top_strong = table({4: 0.72, 6: 0.85, 8: 0.84, 9: 0.88})
    pixels = {"cut": 0, "stage": "input", "what": "16x16 pixels", "acc": 0.94}
    assert decide(top_strong, 400, 9, 0.1)["similarity"] == "similar"
    d = decide(top_strong, 400, 9, 0.1, reference=pixels)  # small: extract (fine-tuning 400 digits did not pay)
    assert (d["similarity"], d["cut"], d["unfreeze"]) == ("different", 9, [])
    assert "worse than the input itself (16x16 pixels, probe 0.940" in d["reason"]
    assert decide(top_strong, 5000, 9, 0.1, reference=pixels)["unfreeze"] == [2, 4]  # large: fine-tune more
    # an input that reads worse than the source's best cut changes nothing (hymenoptera: 0.62 vs 0.97),
    # nor one within MARGIN of it (both perfect on colours)
    assert decide(top_strong, 400, 9, 0.1, reference={**pixels, "acc": 0.87})["similarity"] == "similar"
    assert decide(top_strong, 400, 9, 0.1, reference={**pixels, "acc": 0.88 + MARGIN / 2})["similarity"] == "similar"
    # poor stays poor, and an earlier cut that beats the top is still where it starts
    assert decide(table({9: 0.15}), 400, 9, 0.1, reference=pixels)["similarity"] == "poor"
    far = decide(table({6: 0.90, 9: 0.80}), 400, 9, 0.1, reference=pixels)
    assert (far["similarity"], far["cut"]) == ("different", 6) and "the input itself (16x16 pixels) probes 0.940" \
        in far["reason"]


def test_the_rule_thresholds_and_edges():
    # a margin below MARGIN is noise: the top is kept
    d = decide(table({6: 0.90 + MARGIN / 2, 9: 0.90}), 200, 9, 0.1)
    assert (d["similarity"], d["cut"]) == ("similar", 9)
    # ties go to the deeper cut
    assert decide(table({8: 0.9, 9: 0.9}), 200, 9, 0.1)["cut"] == 9
    # the thresholds are on skill, (acc - chance) / (1 - chance): 0.6 on two balanced classes is weak
    two = table({9: 0.6}, chance=0.5)
    assert two[0]["skill"] < POOR and decide(two, 200, 9, 0.5)["similarity"] == "poor"
    assert decide(table({9: 0.5 + 0.5 * (WEAK_TOP + 0.01)}, 0.5), 200, 9, 0.5)["similarity"] == "similar"
    # nothing measured (too few samples): the size rule alone, said so
    d = decide(None, 10, 9)
    assert (d["cut"], d["unfreeze"], d["similarity"]) == (9, [], "unmeasured") and "not measured" in d["reason"]
    # a cut the user fixed is kept
    d = decide(table({4: 0.9, 6: 0.5}), 200, 9, 0.1, user_cut=True)
    assert d["cut"] == 6 and "--cut" in d["reason"]
    assert probe_cuts(9) == [4, 6, 8, 9] and probe_cuts(9, 6) == [3, 4, 5, 6] and probe_cuts(1) == [1]


def test_the_budget_sets_the_epochs_from_the_measured_epoch_time():
    def plan(steps):
        return {"unfreeze": steps, "strategy": "gradual", "reason": "r"}
    p = fit_budget(plan([1, 2]), epoch_seconds=20, budget_minutes=5)
    assert p["epochs"] == 5 and p["unfreeze"] == [1, 2]           # 15 epochs fit: 5 each (the cap)
    p = fit_budget(plan([1, 2]), epoch_seconds=50, budget_minutes=5)
    assert p["epochs"] == 3                                       # 6 epochs fit: 3 each
    p = fit_budget(plan([4, -1]), epoch_seconds=200, budget_minutes=5)
    assert p["unfreeze"] == [4] and p["epochs"] == 1 and p["strategy"] == "finetune"
    assert "not unfreezing every stage" in p["reason"]
    p = fit_budget(plan([1, 2]), epoch_seconds=400, budget_minutes=5)
    assert p["unfreeze"] == [] and p["strategy"] == "extract" and "raise --budget" in p["reason"]
    assert fit_budget(plan([1, 2]), epoch_seconds=20, budget_minutes=5, epochs=2)["epochs"] == 2
    # the most-unfrozen model overruns the budget: the first step is timed alone and kept if it fits
    timed = {-1: 400.0, 4: 200.0}
    p = budget_plan(plan([4, -1]), timed.__getitem__, budget_minutes=5)
    assert p["unfreeze"] == [4] and p["epochs"] == 1 and p["epoch_seconds"] == 200 and "only the last 4" in p["reason"]
    assert budget_plan(plan([4, -1]), {-1: 700.0, 4: 400.0}.__getitem__, 5)["unfreeze"] == []


def test_a_plan_becomes_the_head_then_its_unfreezing_steps():
    plan = {"strategy": "gradual", "reason": "why", "unfreeze": [4, -1], "epochs": 3, "cut": 9}
    r = build_recipe("auto", 200, depth=9, plan=plan)
    assert r.strategy == "gradual" and r.reason == "why"
    assert [(p.name, p.trainable, p.epochs, p.on_features) for p in r.phases] == \
        [("head", 0, 60, True), ("unfreeze4", 4, 3, False), ("full", -1, 3, False)]
    r = build_recipe("auto", 200, depth=9, plan={"strategy": "extract", "reason": "why", "unfreeze": [], "cut": 8})
    assert r.uses_only_features and r.strategy == "extract"
    assert build_recipe("extract", 200, depth=9, plan=plan).strategy == "extract"  # a plan only steers auto


# -- the guard: unfreeze only while it pays, within the budget ------------------------------------------
def _tr(history, phase_index, phases):
    return SimpleNamespace(history=history, phase_index=phase_index, phases=phases, phase=phases[phase_index],
                           epoch=0)


def _row(pi, acc, seconds=10.0, loss=0.5, phase="p"):
    return {"phase": phase, "phase_index": pi, "val_acc": acc, "val_loss": loss, "seconds": seconds}


def test_the_guard_stops_unfreezing_when_val_stops_improving_and_at_the_budget():
    phases = [Phase("head", 1, 1e-3, 0, on_features=True), Phase("unfreeze1", 3, 1e-4, 1),
              Phase("unfreeze2", 3, 1e-4, 2)]
    said = []
    g = AutoGuard(budget_minutes=5, epoch_seconds=10, echo=said.append)
    g.before_phase(_tr([_row(0, 0.90, 0.1)], 1, phases))  # the first unfreezing phase always starts
    improved = [_row(0, 0.90, 0.1), _row(1, 0.88), _row(1, 0.92)]
    g.before_phase(_tr(improved, 2, phases))
    flat = [_row(0, 0.90, 0.1), _row(1, 0.88), _row(1, 0.90, loss=0.6)]
    with pytest.raises(CancelFit):
        g.before_phase(_tr(flat, 2, phases))
    assert "did not beat" in said[-1] and "unfreeze2 skipped" in said[-1]
    # budget: 5 min; 28 live epochs of 10 s spent, the next would overrun
    g = AutoGuard(budget_minutes=5, epoch_seconds=10, echo=said.append)
    spent = [_row(0, 0.9, 0.1)] + [_row(1, 0.91 + i / 1000) for i in range(28)]
    tr = _tr(spent, 1, phases)
    tr.epoch = 28
    g.before_epoch(tr)  # 280 + 10 <= 300
    tr.history = spent + [_row(1, 0.95), _row(1, 0.95)]  # 300 s spent: one more would overrun
    tr.epoch = 30
    with pytest.raises(CancelFit):
        g.before_epoch(tr)
    assert "budget" in said[-1] and g.stopped
    # the run then ends by saying the budget, not the data, stopped it while val was still rising
    from rehead.config import FitConfig
    from rehead.fit import _budget_note
    cfg = FitConfig(auto_plan={"budget_minutes": 5, "reason": "large + different -> ..."})
    phases_s = [{"phase": "head"}, {"phase": "unfreeze1"}]
    rising = {"best_epoch": 31, "epochs_run": 31, "phases": phases_s}
    assert "--strategy finetune, or a larger --budget (e.g. 15)" in _budget_note(rising, cfg, [g])
    assert _budget_note({**rising, "best_epoch": 20}, cfg, [g]) is None  # it had stopped improving
    assert _budget_note(rising, cfg, [AutoGuard(5, 10)]) is None  # not stopped by the budget
    few = FitConfig(auto_plan={"budget_minutes": 5, "reason": "...", "epochs": 1})  # the budget set 1 epoch a phase
    assert "(e.g. 15)" in _budget_note(rising, few, [AutoGuard(5, 10)])
    assert _budget_note(rising, few.replace(epochs=1), [AutoGuard(5, 10)]) is None  # the user set them


# -- through fit, on a tiny model --------------------------------------------------------------------
def _quiet_fit(data, out, spec, said, **kw):
    return rehead.fit(str(data), model=spec, out=str(out), workers=0, progress=False, echo=said.append, **kw)


def test_auto_on_a_learnable_set_extracts_and_records_its_probe_table(tmp_path, image_folder, tiny_spec, one_thread,
                                                                       monkeypatch):
    from rehead import features
    seen, real = [], features._forward
    monkeypatch.setattr(features, "_forward", lambda bb, pipe, items, todo, cuts, *a: seen.append((len(todo), cuts))
                        or real(bb, pipe, items, todo, cuts, *a))
    said = []
    _quiet_fit(image_folder, tmp_path / "r", tiny_spec, said)
    # one pass over the 20 images for every cut probed; the head's features come back from the cache
    assert seen == [(20, [3, 5, 6, 7])]
    text = "\n".join(said)
    assert "linear probe per cut" in text and "strategy auto -> extract" in text and "features from the top" in text
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    plan = cfg["fit"]["auto_plan"]
    assert plan["similarity"] == "similar" and [r["cut"] for r in plan["table"]] == [3, 5, 6, 7]
    assert cfg["cut"] == plan["cut"] == 7 and cfg["strategy"] == "extract" and "similar" in cfg["strategy_reason"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["val_acc"] >= 0.75 and summary["kept_phase"] == "head"


def _noise(root, n=20, seed=0):
    """Labels that no pixel predicts: every backbone is 'poor' here."""
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_auto_on_a_poor_fit_unfreezes_within_the_budget_and_keeps_the_best_phase(tmp_path, tiny_spec, one_thread):
    said = []
    data = _noise(tmp_path / "noise")
    _quiet_fit(data, tmp_path / "n", tiny_spec, said, budget=0.1)
    text = "\n".join(said)
    assert "transfers poorly" in text and "unfreeze" in text and "measured" in text
    cfg = yaml.safe_load((tmp_path / "n" / "config.yaml").read_text())
    plan = cfg["fit"]["auto_plan"]
    assert plan["similarity"] == "poor" and plan["unfreeze"] and plan["epoch_seconds"] > 0
    assert plan["budget_minutes"] == 0.1 and cfg["strategy"] in ("finetune", "gradual")
    summary = json.loads((tmp_path / "n" / "summary.json").read_text())
    head = summary["phases"][0]
    assert head["phase"] == "head" and summary["val_acc"] >= head["best_val_acc"]  # never below its head phase
    assert summary["kept_phase"] in [p["phase"] for p in summary["phases"]]
    live_seconds = sum(r["seconds"] for r in _metrics(tmp_path / "n") if r["phase"] != "head")
    assert live_seconds <= 0.1 * 60 + max(plan["epoch_seconds"], 3)  # the guard keeps to the budget (one epoch's slack)


class _Killed(Exception):
    pass


class _KillInTheFirstLiveEpoch:
    order = 99  # after the checkpoint is written

    def after_epoch(self, tr):
        if not tr.phase.on_features:
            raise _Killed


def test_resume_reads_the_plan_back_instead_of_measuring_again(tmp_path, tiny_spec, one_thread, monkeypatch):
    import rehead.auto
    data = _noise(tmp_path / "noise")
    with pytest.raises(_Killed):
        _quiet_fit(data, tmp_path / "n", tiny_spec, [], budget=0.1, hooks=[_KillInTheFirstLiveEpoch()])
    assert (tmp_path / "n" / "checkpoint.pt").exists() and not (tmp_path / "n" / "model.safetensors").exists()
    monkeypatch.setattr(rehead.auto, "measure_and_decide", lambda *a, **k: pytest.fail("auto measured again"))
    said = []
    rehead.fit(out=str(tmp_path / "n"), resume=True, progress=False, echo=said.append)
    cfg = yaml.safe_load((tmp_path / "n" / "config.yaml").read_text())
    summary = json.loads((tmp_path / "n" / "summary.json").read_text())
    assert summary["strategy"] == cfg["strategy"] and len(summary["phases"]) >= 2
    assert summary["val_acc"] >= summary["phases"][0]["best_val_acc"]


def _metrics(run):
    import csv
    with open(run / "metrics.csv") as f:
        return [{k: (float(v) if k == "seconds" else v) for k, v in r.items()} for r in csv.DictReader(f)]


# -- real weights: a set far from ImageNet against one close to it ---------------------------------------
def _hymenoptera(root, per_class: int):
    """The first ``per_class`` ants and bees of hymenoptera's training photos."""
    src = shared_dataset("hymenoptera_data") / "train"
    for c in ("ants", "bees"):
        (root / c).mkdir(parents=True)
        for p in sorted((src / c).iterdir())[:per_class]:
            shutil.copy(p, root / c / p.name)
    return root


@pytest.mark.slow
def test_auto_trains_more_on_digits_than_on_hymenoptera_and_says_why(tmp_path):
    """The default backbone (packaged EfficientNet-Lite2, ImageNet): 120 hymenoptera photos vs 1,250
    of scikit-learn's 8x8 digits (1,000 train: large). The photos probe best at the top, far above
    their pixels (similar: extract there); the digits' pixels read them better than any cut of the
    source (different: the head, then more stages). Lite0 read them as different by an earlier cut."""
    from rehead.demo import write_digits
    hym = _hymenoptera(tmp_path / "hym", 60)
    digits = write_digits(tmp_path / "digits", per_class=125)
    plans, said = {}, {}
    for name, data in (("hym", hym), ("digits", digits)):
        said[name] = []
        rehead.fit(str(data), out=str(tmp_path / f"run_{name}"), progress=False, echo=said[name].append,
                   budget=0.05)  # 3 s: the plan is made and said, then cut to extraction (no time to train)
        plans[name] = yaml.safe_load((tmp_path / f"run_{name}" / "config.yaml").read_text())["fit"]["auto_plan"]
    h, d = plans["hym"], plans["digits"]
    assert (h["similarity"], h["unfreeze"]) == ("similar", []) and h["reference"]["acc"] < h["table"][-1]["acc"]
    assert (d["size"], d["similarity"]) == ("large", "different")
    assert d["reference"]["acc"] >= max(r["acc"] for r in d["table"]) + MARGIN
    assert "fine-tune more stages: the head, then unfreeze the last 2, then the last 4" in d["reason"]
    assert "raise --budget" in d["reason"]
    assert any("worse than the input itself (16x16 pixels" in s for s in said["digits"])
    assert any("features from the top: extract" in s for s in said["hym"])


def test_the_mirror_check_tells_digits_from_photos(tmp_path):
    """Before live phases augment with flips, auto checks that a mirror keeps the label: the probe's
    linear model at the cut, on val images as they are and mirrored (packaged Lite0, ImageNet)."""
    from rehead import zoo
    from rehead.auto import MIRROR_DROP, mirror_check
    from rehead.data import load_dataset
    from rehead.demo import write_digits
    from rehead.features import extract
    hym = _hymenoptera(tmp_path / "hym", 50)
    bb = zoo.load("packaged:efficientnet_lite0")
    cut = len(bb)
    checks = {}
    for name, data in (("digits", write_digits(tmp_path / "digits", per_class=60)), ("hym", hym)):
        ds = load_dataset(str(data))
        f, kept, _ = extract(bb, ds.train.items, [cut], None, workers=0, progress=False)
        checks[name] = mirror_check(bb, cut, f[cut].numpy(), np.asarray(ds.train.labels)[kept], ds.val.items,
                                    ds.val.labels, len(ds.classes), C=1.0, batch_size=32)
    d, h = checks["digits"], checks["hym"]
    assert d["changes_labels"] and d["val_acc"] - d["val_acc_mirrored"] >= MIRROR_DROP, d
    assert not h["changes_labels"], h  # 0.95 -> 0.90 on 20 photos: one photo, not a loss
    assert d["n"] == 120 and h["n"] == 20


# -- --find-lr under auto ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["l2sp", "lora"])  # l2sp: with --budget, the crash as it was
def test_find_lr_with_auto_a_budget_and_a_method_runs_the_range_test_and_the_fit(tmp_path, tiny_spec, one_thread,
                                                                                method):
    """The range test's own config kept --budget and --method under strategy extract, which FitConfig refuses:
    `fit --strategy auto --find-lr --budget 0.1 [--method l2sp]` crashed after auto's probe."""
    said = []
    data = _noise(tmp_path / "noise")
    run = _quiet_fit(data, tmp_path / "n", tiny_spec, said, budget=0.1, find_lr=True, method=method, epochs=1)
    assert any(s.startswith("suggested LR") for s in said), said
    cfg = yaml.safe_load((tmp_path / "n" / "config.yaml").read_text())["fit"]
    assert cfg["lr"] is not None and cfg["budget"] == 0.1 and cfg["method"] == method
    assert run.summary["val_acc"] is not None


def test_a_poor_plan_says_the_unfreezing_steps_it_runs():
    """The reason said "then unfreeze half the stages, then all of them" whatever the steps were: cut 1
    (the best of a poor table) unfreezes every stage at once."""
    d = decide(table({1: 0.30, 4: 0.20, 9: 0.12}), 200, 9, 0.1)
    assert (d["similarity"], d["cut"], d["unfreeze"]) == ("poor", 1, [-1])
    assert "the head, then unfreeze every stage (each" in d["reason"] and "half" not in d["reason"]
    d = decide(table({4: 0.15, 6: 0.14, 8: 0.15, 9: 0.15}), 200, 9, 0.1)
    assert d["unfreeze"] == [4, -1] and "the head, then unfreeze the last 4, then every stage" in d["reason"]


def test_epochs_over_the_budget_are_said_to_be_stopped_by_it():
    """--epochs 3 --budget 0.5 said "3 epoch(s) per unfreezing phase: ~1.0 of 0.5 min", as if they fit."""
    p = fit_budget({"unfreeze": [1], "strategy": "finetune", "reason": "r"}, epoch_seconds=20, budget_minutes=0.5,
                   epochs=3)
    assert p["epochs"] == 3 and "~1.0 of 0.5 min" not in p["reason"]
    assert "--epochs 3 asked: ~1.0 min (measured ~20 s an epoch), over the 0.5 min budget: the budget stops the " \
           "phases early" in p["reason"]
    p = fit_budget({"unfreeze": [1], "strategy": "finetune", "reason": "r"}, epoch_seconds=5, budget_minutes=0.5,
                   epochs=3)  # within it: said as before
    assert "3 epoch(s) per unfreezing phase: ~0.2 of 0.5 min" in p["reason"]


def test_a_lead_within_two_standard_errors_is_not_acted_on_and_is_said():
    # golub-like: 68 pooled rows, an earlier cut 0.947 vs the top's 0.895 (over MARGIN, under 2 SE = 0.074)
    few = [{**r, "n": 68} for r in table({6: 0.947, 9: 0.895})]
    d = decide(few, 38, 9, 0.1)
    assert (d["similarity"], d["cut"]) == ("similar", 9)
    assert "not told apart: cut 6" in d["reason"] and "within two standard errors (0.074) on 68 pooled" in d["reason"]
    # the same lead on 4,000 samples is a finding (2 SE = 0.010 < MARGIN: MARGIN rules)
    many = [{**r, "n": 4000} for r in few]
    d = decide(many, 3000, 9, 0.1)
    assert (d["similarity"], d["cut"]) == ("different", 6) and "margin >= 0.020" in d["reason"]
    # the input itself is held to the same rule
    pixels = {"cut": 0, "stage": "input", "what": "16x16 pixels", "acc": 0.99, "n": 68}
    d = decide(few, 38, 9, 0.1, reference=pixels)
    assert "not told apart" in d["reason"] and "the input itself (16x16 pixels) probes 0.990 vs" in d["reason"]
    assert d["similarity"] == "similar"
    assert decide(few, 38, 9, 0.1, reference={**pixels, "n": 4000})["similarity"] == "similar"  # fewer rows rule
