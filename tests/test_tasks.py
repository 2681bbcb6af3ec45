"""Task types: regression, multilabel, class weights and label smoothing (issue 14, item 5)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import rehead
from rehead.config import ConfigError, FitConfig
from rehead.data import DataError, load_dataset

MODEL = "tabular:mlp-4-64x1"  # random (seeded) MLP: a table's features without any download


def write_table(path, x, labels, extra: dict | None = None):
    extra = extra or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"] + list(extra))
        for i, (row, y) in enumerate(zip(x, labels)):
            w.writerow([f"{v:.6f}" for v in row] + [y] + [extra[k][i] for k in extra])
    return path


def linear_target(n=240, seed=0):
    """A target far from 0 and far from unit scale: predictions in standard units would miss it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = 1000 + x @ np.array([50.0, -20.0, 10.0, 0.0]) + rng.normal(scale=2.0, size=n)
    return x, y


def fit(data, out, **kw):
    kw.setdefault("model", MODEL)
    return rehead.fit(data, out, progress=False, echo=lambda *a: None, **kw)


# -- regression ----------------------------------------------------------------------------------
def test_regression_recovers_a_linear_target_in_its_own_units(tmp_path, one_thread):
    x, y = linear_target()
    csv_path = write_table(tmp_path / "reg.csv", x, [f"{v:.4f}" for v in y])
    run = fit(csv_path, tmp_path / "run", task="regression")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["val_r2"] > 0.9 and s["val_acc"] is None and s["head_solver"]["solver"].startswith("ridge")
    assert [p["solver"] for p in run.config["phases"]] == ["ridge"]  # config.yaml said lbfgs
    items, labels = run.val_split()
    res = run.evaluate(items, labels)
    assert res["r2"] > 0.9 and res["rmse"] < 0.3 * np.std(y)
    rows = run.predict(items[:20])
    pred = np.array([r["value"] for r in rows])
    assert abs(pred.mean() - 1000) < 30  # the user's units, not the standardised target
    assert np.abs(pred - np.array(labels[:20])).mean() < 0.3 * np.std(y)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert {"val_rmse", "val_mae", "val_r2"} <= set(header.split(",")) and "val_acc" not in header


def test_regression_run_loads_back_and_evaluates_a_new_csv(tmp_path, one_thread):
    x, y = linear_target()
    fit(write_table(tmp_path / "reg.csv", x, [f"{v:.4f}" for v in y]), tmp_path / "run", task="regression")
    x2, y2 = linear_target(n=60, seed=1)
    run = rehead.Run(tmp_path / "run")
    assert run.task == "regression" and run.target["mean"] == pytest.approx(np.mean(y), rel=0.05)
    res = run.evaluate(str(write_table(tmp_path / "new.csv", x2, [f"{v:.4f}" for v in y2])))
    assert res["n"] == 60 and res["r2"] > 0.8
    assert "r2=" in repr(run) and "task='regression'" in repr(run)
    # held-out rows that all share one target: r2 is undefined, and evaluate says why it prints nan
    from typer.testing import CliRunner
    from rehead.cli import app
    same = write_table(tmp_path / "same.csv", x2[:5], ["3.0"] * 5)
    out = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(same)]).output
    assert "r2 nan" in out and "r2 is undefined: every target scored here is the same value" in out, out
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(same), "--json"])
    import json
    assert json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))["r2"] is None  # a bare NaN was
    # a prediction far beyond the training targets is flagged (a held-out photo got 461 for targets 3..30)
    assert min(y) - 1e-3 <= run.target["min"] < run.target["mean"] < run.target["max"] <= max(y) + 1e-3  # train split
    rows = run.predict([f"{tmp_path / 'new.csv'}#{i}" for i in range(3)])
    assert not any("note" in r for r in rows), rows
    run.target = {**run.target, "min": 700.0, "max": 710.0}  # as if it had trained on targets near 700
    rows = run.predict([f"{tmp_path / 'new.csv'}#{i}" for i in range(3)])
    assert all(r["note"] == "far outside the training targets (700 .. 710)" for r in rows), rows
    from rehead.tasks import far_outside
    t = {"mean": 16.0, "std": 8.0, "min": 2.6, "max": 29.8}
    assert not far_outside(29.0, t) and not far_outside(50.0, t) and far_outside(461.5, t) and far_outside(-30.0, t)


def test_regression_trained_by_gradient_keeps_the_lowest_val_loss_epoch(tmp_path, one_thread):
    x, y = linear_target()
    run = fit(write_table(tmp_path / "reg.csv", x, [f"{v:.4f}" for v in y]), tmp_path / "run",
              task="regression", strategy="head", head="mlp", hidden=16, epochs=6, lr=0.1, schedule="constant",
              batch_size=8)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert best is not rows[-1]  # a too-high LR: the last epoch is not the best, so keeping the best shows
    s = run.summary
    assert s["best_epoch"] == int(best["global_epoch"])
    assert s["val_loss"] == pytest.approx(float(best["val_loss"]), rel=1e-4)
    assert run.evaluate(*run.val_split())["rmse"] == pytest.approx(float(best["val_rmse"]), rel=1e-3)
    # the samples-seen warning named a temperature, which a regression run never fits
    from typer.testing import CliRunner
    from rehead.cli import app
    said = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "reg.csv")]).output
    assert "val split, which chose its kept epoch" in said and "temperature" not in said, said


def test_a_non_numeric_regression_label_stops_before_the_run_directory(tmp_path):
    x, y = linear_target(n=30)
    labels = [f"{v:.3f}" for v in y]
    labels[6] = "tall"
    bad = write_table(tmp_path / "bad.csv", x, labels)
    with pytest.raises(DataError, match=r"line 8 .*'tall', not a number"):  # the file's line: header + 7
        fit(bad, tmp_path / "run", task="regression")
    assert not (tmp_path / "run").exists()


def test_regression_drops_empty_labels_and_splits_without_stratifying(tmp_path):
    x, y = linear_target(n=50)
    labels = [f"{v:.3f}" for v in y]
    labels[3] = labels[9] = ""
    ds = load_dataset(write_table(tmp_path / "r.csv", x, labels), task="regression", val_fraction=0.2)
    assert ds.classes == ["label"] and len(ds.train) + len(ds.val) == 48 and len(ds.val) == 10
    assert all(isinstance(v, float) for v in ds.train.labels)
    assert "2 row(s) with an empty label were left out" in " ".join(ds.info["warnings"])
    assert "not stratified" in ds.info["split"]


def test_class_folders_are_a_clear_error_for_multilabel(tmp_path):
    from PIL import Image
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    with pytest.raises(DataError, match="--task multilabel needs its labels in a CSV column"):
        load_dataset(tmp_path / "imgs", task="multilabel")


# -- multilabel ------------------------------------------------------------------------------------
def multilabel_table(n=240, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    labels = []
    for r in x:
        tags = [t for t, on in (("red", r[0] > 0), ("round", r[1] > 0.3), ("big", r[2] < -0.3)) if on]
        labels.append(" | ".join(tags) if tags else "plain")
    return x, labels


def test_multilabel_csv_trains_and_predict_returns_label_sets(tmp_path, one_thread):
    x, labels = multilabel_table()
    run = fit(write_table(tmp_path / "ml.csv", x, labels), tmp_path / "run", task="multilabel")
    assert run.classes == ["big", "plain", "red", "round"]
    res = run.evaluate(*run.val_split())
    assert res["micro_f1"] > 0.8 and res["map"] > 0.85 and set(res["per_label"]) == set(run.classes)
    rows = run.predict([list(r) for r in x[:40]])
    assert all(set(r["labels"]) == {c for c, p in r["probs"].items() if p >= 0.5} for r in rows)
    right = sum(set(r["labels"]) == {t.strip() for t in y.split("|")} for r, y in zip(rows, labels[:40]))
    assert right >= 30  # exact label sets, on the training rows of a learnable rule
    again = rehead.Run(tmp_path / "run")
    assert again.task == "multilabel" and again.evaluate(*again.val_split())["map"] == pytest.approx(res["map"])
    # multi-hot vectors (what fit takes from a Dataset) were read as lists of class indices: [1,0,1,0] as
    # classes 0 and 1 (micro-F1 0.611 against 0.971 with the same labels by name, in a user's notebook)
    items = [list(r) for r in x[:40]]
    names = [[t.strip() for t in y.split("|")] for y in labels[:40]]
    hot = np.array([[float(c in n) for c in run.classes] for n in names])
    by_name = run.evaluate(items, names)["micro_f1"]
    for given in (hot, hot.tolist(), hot.astype(int).tolist(), torch.from_numpy(hot)):
        assert run.evaluate(items, given)["micro_f1"] == pytest.approx(by_name)
    from rehead.run import _multi_hot_row  # two whole numbers of a two-label run read either way: refused
    assert _multi_hot_row([1.0, 0.0], 2) == [0] and _multi_hot_row([0, 2], 3) is None
    with pytest.raises(DataError, match="either a multi-hot vector or a list of label indices"):
        _multi_hot_row([0, 1], 2)


def test_split_json_round_trips_label_sets_and_numbers(tmp_path):
    """--resume rebuilds the data from split.json: label sets and numbers come back as they were."""
    from rehead.data import dataset_from_split
    x, labels = multilabel_table(n=60)
    ds = load_dataset(write_table(tmp_path / "ml.csv", x, labels), task="multilabel")
    back = dataset_from_split(json.loads(json.dumps(ds.to_split())))
    assert back.task == "multilabel" and back.train.labels == ds.train.labels
    assert all(isinstance(ys, list) for ys in back.train.labels)
    x, y = linear_target(n=40)
    ds = load_dataset(write_table(tmp_path / "r.csv", x, [f"{v:.4f}" for v in y]), task="regression")
    back = dataset_from_split(json.loads(json.dumps(ds.to_split())))
    assert back.task == "regression" and back.val.labels == ds.val.labels and back.classes == ["label"]


def test_multilabel_empty_cells_are_unlabelled_and_the_warning_says_how_to_write_none(tmp_path):
    """An empty cell is left out as unlabelled (every task's rule); '|' is an item with none of the
    labels, kept. The warning says so: "label or delete them" alone led a user to drop 120 of 300 rows."""
    x, labels = multilabel_table(n=60)
    labels = ["|" if i % 10 == 0 else "" if i % 10 == 1 else y for i, y in enumerate(labels)]
    ds = load_dataset(write_table(tmp_path / "ml.csv", x, labels), task="multilabel")
    assert len(ds.train) + len(ds.val) == 54 and [] in ds.train.labels + ds.val.labels
    assert "6 row(s) with an empty label were left out" in " ".join(ds.info["warnings"])
    assert "An item that has none of the labels is written '|'" in " ".join(ds.info["warnings"])


def test_macro_f1_leaves_out_labels_without_a_positive_as_map_does():
    """A label with no positive in the scored data counted f1 0 in macro-F1 while mAP left it out."""
    from rehead.tasks import epoch_metrics, multilabel_metrics
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.where(y == 1, 0.9, 0.1)
    m = multilabel_metrics(y, p, ["a", "b", "once"])
    assert m["macro_f1"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["labels_scored"] == 2 and m["labels_without_positive"] == ["once"]
    assert m["per_label"]["once"]["ap"] is None and m["per_label"]["once"]["support"] == 0
    assert epoch_metrics("multilabel", torch.logit(torch.tensor(p, dtype=torch.float32)), torch.tensor(y))["macro_f1"] \
        == pytest.approx(1.0)
    p[3, 2] = 0.9  # a false positive of the absent label still costs micro-F1
    assert multilabel_metrics(y, p)["micro_f1"] < 1.0
    assert np.isnan(multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 2)))["macro_f1"])
    from rehead.tasks import macro_said  # what evaluate and the report say beside the two means
    assert macro_said(m) == "; macro f1 and mAP over the 2 label(s) with a positive here, 1 without one left out: once"
    assert macro_said(multilabel_metrics(y[:3, :2], p[:3, :2])) == ""


# -- class weights, label smoothing ------------------------------------------------------------------
def test_balanced_class_weights_are_n_over_k_count_and_change_the_loss():
    from rehead.tasks import balanced_weights, loss_for
    labels = [0] * 8 + [1] * 2
    w = balanced_weights(labels, "multiclass", 2)
    assert w.tolist() == pytest.approx([10 / (2 * 8), 10 / (2 * 2)])
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]]), torch.tensor([1, 1, 0])
    plain, weighted = loss_for("multiclass")(logits, y), loss_for("multiclass", class_weights=w)(logits, y)
    manual = torch.nn.functional.cross_entropy(logits, y, weight=w)
    assert weighted == pytest.approx(float(manual)) and abs(float(weighted) - float(plain)) > 1e-3
    smooth = loss_for("multiclass", label_smoothing=0.2)(logits, y)
    assert abs(float(smooth) - float(plain)) > 1e-3


def test_balanced_class_weights_change_the_solved_head(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    labels = ["rare" if v > 1.0 + 0.5 * rng.normal() else "common" for v in x[:, 0]]
    data = write_table(tmp_path / "imb.csv", x, labels)
    plain = fit(data, tmp_path / "plain")
    balanced = fit(data, tmp_path / "bal", class_weight="balanced")
    w0, w1 = plain.model.head[-1].weight, balanced.model.head[-1].weight
    assert not torch.allclose(w0, w1, atol=1e-3)
    # summary.json's head_solver says which weighting the solve used
    assert (plain.summary["head_solver"]["class_weight"], balanced.summary["head_solver"]["class_weight"]) \
        == (None, "balanced")
    items, y = plain.val_split()
    rare = plain.classes.index("rare")
    recall = [np.mean([p == rare for p, t in zip(r.evaluate(items, y)["predictions"], y) if t == rare])
              for r in (plain, balanced)]
    assert recall[1] >= recall[0]  # weighing the rare class up does not lose it


def test_task_options_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="--task must be one of"):
        FitConfig(task="ranking")
    with pytest.raises(ConfigError, match="--label-smoothing must be in"):
        FitConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="not to --task regression"):
        FitConfig(task="regression", class_weight="balanced")
    old = FitConfig().to_dict()
    for k in ("task", "class_weight", "label_smoothing"):
        old.pop(k)
    assert FitConfig.from_dict(old).task == "multiclass"  # config.yaml written before tasks existed


def test_best_weights_score_does_not_assume_an_accuracy():
    from rehead.train.callbacks import score
    assert score({"val_loss": 0.2}) > score({"val_loss": 0.3})
    assert score({"val_acc": 0.9, "val_loss": 0.5}) > score({"val_acc": 0.8, "val_loss": 0.1})


def test_an_image_csv_with_numbers_trains_a_regression(tmp_path, tiny_spec, one_thread):
    """path,label with a number: the label column of any CSV modality, here images whose
    brightness is the target; the live (head) path collates float targets too."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(60):
        level = float(rng.uniform(20, 235))
        px = np.clip(level + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{level:.2f}")
    data = tmp_path / "bright.csv"
    data.write_text("path,label\n" + "\n".join(rows) + "\n")
    run = fit(data, tmp_path / "run", model=tiny_spec, task="regression", strategy="extract")
    assert run.summary["val_r2"] > 0.5
    value = run.predict([str(tmp_path / "img" / "0.png")])[0]["value"]
    assert 0 < value < 255  # brightness units
    live = fit(data, tmp_path / "live", model=tiny_spec, task="regression", strategy="head", epochs=2)
    assert np.isfinite(live.summary["val_rmse"])


def test_a_two_phase_multilabel_fit_keeps_the_phase_of_lowest_val_loss(tmp_path, one_thread):
    x, labels = multilabel_table()
    run = fit(write_table(tmp_path / "ml.csv", x, labels), tmp_path / "run", task="multilabel",
              strategy="finetune", epochs=2)
    s = run.summary
    phases = s["phases"]
    assert len(phases) == 2 and all(p["best_val_acc"] is None for p in phases)
    best = min(phases, key=lambda p: p["best_val_loss"])
    assert s["kept_phase"] == best["phase"] and s["val_loss"] == pytest.approx(best["best_val_loss"])
    assert {"val_micro_f1", "val_macro_f1", "val_map"} <= set(s)


def test_solved_regression_and_multilabel_heads_leave_faint_columns_alone_when_fine_tuning_follows():
    """MiniLM's pooled features have columns of ~1e-7 to 1e-32; a head solved on them leans on them with
    huge weights (2.3e6 and 7.2e7 measured on PhraseBank), and the first fine-tuning step then
    blew val RMSE to 704 on targets of +-1. A head to be fine-tuned is solved without them."""
    from rehead.train.task_heads import fit_multilabel_head, fit_ridge_head
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = x[:, 0] + 0.1 * rng.normal(size=80)
    x[:, 5] = 1e-10 * (y + 0.01 * rng.normal(size=80))  # faint, and it carries the target
    ml = np.stack([y > 0, x[:, 1] > 0], 1).astype(float)
    for solve, target in ((fit_ridge_head, y), (fit_multilabel_head, ml)):
        loose = solve(x, target)[0].weight.abs().max().item()
        guarded = solve(x, target, min_relative_std=1e-7)[0]
        assert loose > 1e6 and guarded.weight.abs().max().item() < 1e3, solve.__name__
        assert torch.isfinite(guarded.weight).all()


def test_an_extract_fit_reports_plain_losses_when_its_solved_head_ignores_label_smoothing(tmp_path, one_thread):
    """The note said smoothing was ignored while metrics.csv's losses included it (val 0.95 vs 0.68)."""
    import json
    x, _ = linear_target()
    data = write_table(tmp_path / "c.csv", x, ["a" if v > 0 else "b" for v in x[:, 0]])
    loss = [json.loads((r.dir / "summary.json").read_text())["phases"][0]["best_val_loss"]
            for r in (fit(data, tmp_path / "plain", strategy="extract"),
                      fit(data, tmp_path / "smooth", strategy="extract", label_smoothing=0.2))]
    assert loss[0] == pytest.approx(loss[1])


def test_whole_number_labels_written_as_floats_are_the_whole_numbers(tmp_path, one_thread):
    """A table whose int label column pandas wrote as floats (0 -> 0.0) trained classes "0.0" and "1.0":
    predict answered "1.0" for the user's class 1. Now "0" and "1"; a run from before (classes "0.0",
    "1.0") still evaluates such a table, and one with "0" / "1"."""
    import json
    x, _ = linear_target()
    data = write_table(tmp_path / "c.csv", x, ["1.0" if v > 0 else "0.0" for v in x[:, 0]])
    run = fit(data, tmp_path / "r", strategy="extract")
    assert run.classes == ["0", "1"]
    acc = run.evaluate(str(data))["accuracy"]
    (run.dir / "labels.json").write_text(json.dumps(["0.0", "1.0"]))  # as a run made before
    old = rehead.Run(run.dir)
    plain = write_table(tmp_path / "plain.csv", x, ["1" if v > 0 else "0" for v in x[:, 0]])
    assert old.evaluate(str(data))["accuracy"] == old.evaluate(str(plain))["accuracy"] == acc


def test_multilabel_targets_collate_without_pytorchs_slow_path_warning():
    """Multilabel live phases printed PyTorch's "creating a tensor from a list of numpy.ndarrays is extremely
    slow" warning once per batch, through -q: the multi-hot targets are stacked first."""
    import warnings
    from rehead.data.images import collate_skip
    batch = [(i, torch.zeros(3, 4, 4), np.array([1.0, 0.0, 1.0], dtype=np.float32)) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idx, x, y = collate_skip(batch + [None])
    assert y.shape == (3, 3) and y.dtype == torch.float32 and idx.tolist() == [0, 1, 2]
    assert collate_skip([(0, torch.zeros(3, 4, 4), 2), (1, torch.zeros(3, 4, 4), 0)])[2].tolist() == [2, 0]
