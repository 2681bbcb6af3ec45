"""`rehead pretrain` and `rehead fit-multitask`: options checked before anything is written, label
columns named (never silently read as inputs), missing labels ignored per task."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rehead.cli import app
from rehead.config import ConfigError
from rehead.data import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def iris(path, **edit):
    """scikit-learn's iris as a CSV: label = species; ``edit`` renames label or adds columns."""
    from sklearn.datasets import load_iris
    d = load_iris(as_frame=True)
    df = d.frame.drop(columns="target")
    df["label"] = d.target.map(dict(enumerate(d.target_names)))
    df["big"] = (df["sepal length (cm)"] > 5.8).map({True: "big", False: "small"})
    for k, v in edit.items():
        df = df.rename(columns={"label": v}) if k == "rename" else df.assign(**{k: v})
    df.to_csv(path, index=False)
    return str(path)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# -- pretrain --------------------------------------------------------------------------------
@pytest.mark.parametrize("opt,value", [("--depth", 0), ("--batch-size", 0), ("--width", 0), ("--lr", -1),
                                       ("--epochs", 0), ("--missing", "foo"), ("--rows", "some")])
def test_pretrain_refuses_a_bad_option_before_writing_anything(tmp_path, opt, value):
    """depth 0 crashed mid-run, batch size 0 divided by zero, width 0 saved an encoder fit refuses,
    lr -1 reached MSE 7134, epochs 0 and --missing foo were accepted."""
    p = iris(tmp_path / "iris.csv", big="1")
    r = cli("pretrain", p, "--out", tmp_path / "enc", "--width", 8, "--depth", 1, "--epochs", 1, opt, value, "-q")
    assert r.exit_code == 2 and f"error: {opt} must" in r.output, r.output
    assert not (tmp_path / "enc").exists()


def test_pretrain_names_the_label_column_it_leaves_out(tmp_path):
    from rehead.pretrain import pretrain
    said = []
    # a label column named otherwise (numeric codes) was read as an input, silently
    p = iris(tmp_path / "codes.csv", rename="species", species=[0, 1, 2] * 50, big="1")
    s = pretrain(p, tmp_path / "enc", width=8, depth=1, epochs=1, progress=False, echo=said.append)
    assert s["features"] == 6 and any("no 'label' column" in w and "--label-column" in w for w in said), said
    s = pretrain(p, tmp_path / "enc2", width=8, depth=1, epochs=1, label_column="species", progress=False,
                 echo=said.append)
    assert s["features"] == 5
    # an explicit label column that is not there is an error naming the columns, not ignored
    with pytest.raises(DataError, match=r"no column 'nope' \(columns: .*species.*\): fix --label-column"):
        pretrain(p, tmp_path / "enc3", label_column="nope", echo=said.append)
    assert not (tmp_path / "enc3").exists()


def test_pretrain_a_text_column_error_offers_the_label_column_option(tmp_path):
    p = iris(tmp_path / "iris.csv", rename="species")
    r = cli("pretrain", p, "--out", tmp_path / "enc", "--epochs", 1, "-q")
    assert r.exit_code == 2 and "no 'label' column" in r.output
    assert "column 'species' holds 'setosa'" in r.output and "--label-column species" in r.output, r.output
    # a label is named: the text column can only be left out
    r = cli("pretrain", p, "--out", tmp_path / "enc", "--label-column", "big", "--epochs", 1, "-q")
    assert "--id-columns species" in r.output and "--label-column species" not in r.output, r.output
    r = cli("pretrain", p, "--out", tmp_path / "enc", "--label-column", "species", "--id-columns", "big",
            "--width", 8, "--depth", 1, "--epochs", 1, "-q")
    assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_pretrain_split_errors_name_the_rows_option(tmp_path):
    p = iris(tmp_path / "abc.csv", split=["a", "b", "c"] * 50)
    with pytest.raises(DataError, match=r"'a', 'b', 'c'.*--rows all") as e:
        from rehead.pretrain import pretrain_rows
        pretrain_rows(p, id_columns="big")
    assert "rows='all'" not in str(e.value)
    p = iris(tmp_path / "vt.csv", split=["val", "test"] * 75)
    with pytest.raises(DataError, match=r"no row has split=train \(only val, test\).*--rows all.*test rows"):
        pretrain_rows(p, id_columns="big")
    p = iris(tmp_path / "tr.csv", split=["training", "test"] * 75)  # spelled as fit reads it
    assert len(pretrain_rows(p, id_columns="big")[0]) == 75


def test_pretrain_and_multitask_on_an_existing_out_name_only_their_options(tmp_path):
    p = iris(tmp_path / "iris.csv")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    for cmd in (["pretrain", p, "--id-columns", "big"],
                ["fit-multitask", p, "--label-columns", "label,big", "--model", "tabular:mlp-4-8x1"]):
        r = cli(*cmd, "--out", tmp_path / "out", "--epochs", 1, "-q")
        assert r.exit_code == 2 and "--overwrite" in r.output and "--resume" not in r.output, r.output


# -- fit-multitask ---------------------------------------------------------------------------
@pytest.mark.parametrize("args,says", [
    (["--lr", -1], "--lr must be > 0"), (["--epochs", 0], "--epochs must be at least 1"),
    (["--weights", "1,-1"], "--weights must each be a number > 0"), (["--weights", "1,x"], "--weights takes"),
    (["--weights", "1"], "--weights gives 1 weight(s) for 2"),
    (["--label-columns", "label,label"], "--label-columns names 'label' more than once"),
    (["--strategy", "auto"], "--strategy must be one of head, finetune, gradual, full"),
    (["--strategy", "extract"], "--strategy must be one of head, finetune, gradual, full"),
    (["--label-columns", "label,nope"], "no column 'nope'"),
])
def test_fit_multitask_refuses_a_bad_option_before_writing_anything(tmp_path, args, says):
    p = iris(tmp_path / "iris.csv")
    base = {"--label-columns": "label,big", "--epochs": 1, **dict(zip(args[::2], args[1::2]))}
    r = cli("fit-multitask", p, "--model", "tabular:mlp-4-8x1", "--out", tmp_path / "mt",
            *[x for kv in base.items() for x in kv], "-q")
    assert r.exit_code == 2 and says in r.output, r.output
    assert "--label-column " not in r.output  # the option is --label-columns
    assert not (tmp_path / "mt").exists()


def test_fit_multitask_finetune_trains_the_backbone(tmp_path):
    """finetune and gradual became head, silently (their head phase is on cached features)."""
    from rehead.multitask import fit_multitask
    p = iris(tmp_path / "iris.csv")
    fit_multitask(p, "label,big", "tabular:mlp-4-8x2", tmp_path / "mt", strategy="finetune", epochs=1,
                  progress=False, echo=lambda *_: None)
    assert "strategy: finetune" in (tmp_path / "mt" / "config.yaml").read_text()
    assert "unfreeze2" in (tmp_path / "mt" / "metrics.csv").read_text()


def test_fit_multitask_ignores_a_missing_label_for_its_task_only(tmp_path):
    """An empty cell in the FIRST label column dropped the row for every task."""
    from rehead.multitask import fit_multitask, load_tasks
    df = pd.read_csv(iris(tmp_path / "full.csv"))
    df.loc[::10, "label"] = None  # rows 0, 10, ...: no species
    df.loc[5::10, "big"] = None  # rows 5, 15, ...: no size
    df.loc[7, ["label", "big"]] = None  # no label at all: left out
    df.to_csv(tmp_path / "gaps.csv", index=False)
    ds, classes, y_tr, y_va = load_tasks(tmp_path / "gaps.csv", "label,big")
    assert len(ds.train) + len(ds.val) == 149
    assert ((y_tr < 0).sum(0) + (y_va < 0).sum(0)).tolist() == [15, 15]
    said = " | ".join(ds.info["warnings"])
    assert "label column 'label' is empty on 15" in said and "label column 'big' is empty on 15" in said, said
    assert "1 row(s) have no label in any of --label-columns" in said
    s = fit_multitask(tmp_path / "gaps.csv", "label,big", "tabular:mlp-4-8x1", tmp_path / "mt", epochs=1,
                      progress=False, echo=lambda *_: None)
    assert s["tasks"]["big"]["n"] + (y_va[:, 1] < 0).sum() == len(ds.val)
    assert json.loads((tmp_path / "mt" / "summary.json").read_text())["val_rows"] == len(ds.val)


def test_options_are_checked_in_the_python_api_too(tmp_path):
    from rehead.multitask import fit_multitask
    from rehead.pretrain import pretrain
    with pytest.raises(ConfigError, match="--weights"):
        fit_multitask("no.csv", "a,b", "tabular:mlp-4-8x1", tmp_path / "mt", weights=[1, "x"])
    with pytest.raises(ConfigError, match="--batch-size"):
        pretrain("no.csv", tmp_path / "enc", batch_size=0)


# -- fit-multitask: what it reports -----------------------------------------------------------
def two_tasks(path):
    """The tester's table: a (sign of f0) is learnable in 3 epochs, b (3 bins of f1, 20 cells empty)
    is not; the last 50 rows are split=test."""
    import numpy as np
    r = np.random.default_rng(0)
    x = r.normal(size=(200, 10))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    df["a"] = np.where(x[:, 0] > 0, "pos", "neg")
    df["b"] = pd.cut(x[:, 1], [-9, -0.5, 0.5, 9], labels=["lo", "mid", "hi"]).astype(str)
    df.loc[r.choice(200, 20, replace=False), "b"] = ""
    df["split"] = ["train"] * 150 + ["test"] * 50
    df.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    import torch
    d = tmp_path_factory.mktemp("mt")
    data = two_tasks(d / "mt.csv")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = cli("fit-multitask", data, "--label-columns", "a,b", "--weights", "1,0.5", "--model",
                "tabular:mlp-10-64x2", "--out", d / "mt", "--epochs", 3, "-q")
    finally:
        torch.set_num_threads(n)
    assert r.exit_code == 0, r.output
    return data, d / "mt", r.output, json.loads((d / "mt" / "summary.json").read_text())


def test_fit_multitask_scores_the_test_split_once_per_task(mt_run):
    """The 50 split=test rows were never scored nor mentioned; val alone was reported."""
    _, _, out, s = mt_run
    assert s["test_rows"] == 50 and "nothing was chosen on them" in s["test_note"]
    assert [s["tasks"][t]["test_n"] for t in "ab"] == [50, 48]  # b is empty on 2 test rows
    for t in "ab":
        r = s["tasks"][t]
        assert 0 <= r["test_accuracy"] <= 1
        said = (f"{t}: val accuracy {r['accuracy']:.4f} ({r['n']} labelled rows); test accuracy "
                f"{r['test_accuracy']:.4f} ({r['test_n']} labelled rows, scored once, not used for selection)")
        assert said in out, out


def test_fit_multitask_logs_each_tasks_accuracy_never_a_fake_zero(mt_run):
    """summary.json's kept val_acc, train_acc_last and every metrics.csv row read 0: the loop has no
    single accuracy for several heads."""
    _, run, _, s = mt_run
    rows = pd.read_csv(run / "metrics.csv")
    assert "train_acc" not in rows and "val_acc" not in rows
    assert len(rows) == 3 and rows[["train_acc_a", "train_acc_b", "val_acc_a", "val_acc_b"]].gt(0).all().all()
    kept = s["kept"]
    assert kept["chosen_by"] == "lowest weighted val loss"
    assert kept["val_acc"] == pytest.approx({t: s["tasks"][t]["accuracy"] for t in "ab"})  # the kept weights, rescored
    assert s["phases"][0]["train_acc_last"] == pytest.approx({"a": rows["train_acc_a"].iloc[-1],
                                                             "b": rows["train_acc_b"].iloc[-1]}, abs=1e-5)
    assert s["phases"][0]["best_val_acc"] == kept["val_acc"]  # one phase: its best epoch is the kept one
    # report refuses the kind in one line, as before (no traceback on the new summary)
    r = cli("report", run)
    assert r.exit_code == 2 and "'multitask' run" in r.output and "Traceback" not in r.output, r.output


def test_fit_multitask_flags_a_task_no_better_than_its_majority_baseline(mt_run):
    """b: val accuracy 0.31 vs its majority class's 0.42 went unsaid."""
    _, _, out, s = mt_run
    for t in "ab":
        r = s["tasks"][t]
        assert r["above_baseline"] == (r["accuracy"] > r["majority_baseline"])
    b = s["tasks"]["b"]
    assert s["tasks"]["a"]["above_baseline"] and not b["above_baseline"]
    said = (f"b: val accuracy {b['accuracy']:.4f} is below its majority-class baseline {b['majority_baseline']:.2f}: "
            "the head learned nothing useful for b")
    assert f"warning: {said}" in out and said in s["warnings"][0] and len(s["warnings"]) == 1, out


def test_a_multitask_run_is_scored_from_python_on_a_csv(mt_run, tmp_path):
    """evaluate_multitask(model, "mt.csv") was a TypeError (y and classes missing), though `rehead
    evaluate` sent users there; predict and export said "evaluate it with" too."""
    from rehead.multitask import evaluate_multitask, evaluate_multitask_run, load_multitask
    data, run, _, s = mt_run
    for res in (evaluate_multitask(load_multitask(run), data), evaluate_multitask_run(run, data)):
        # the table's test rows, as `rehead evaluate` picks them: the figures fit reported
        assert [res[t]["n"] for t in "ab"] == [s["tasks"][t]["test_n"] for t in "ab"]
        assert [res[t]["accuracy"] for t in "ab"] == pytest.approx([s["tasks"][t]["test_accuracy"] for t in "ab"])
    df = pd.read_csv(data)
    df.drop(columns="b").to_csv(tmp_path / "nob.csv", index=False)
    with pytest.raises(DataError, match=r"no column 'b' .*every task's label column \(a, b\)"):
        evaluate_multitask_run(run, tmp_path / "nob.csv")
    df.assign(b="huge").to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(DataError, match=r"'b' holds class\(es\) the run never saw: 'huge'"):
        evaluate_multitask_run(run, tmp_path / "new.csv")
    for cmd in (["predict", run, data], ["export", run]):
        r = cli(*cmd)
        assert r.exit_code == 2 and "rehead predict and export take single-head runs" in r.output, r.output
        assert f"rehead evaluate {run} [DATA]" in r.output and "evaluate it with" not in r.output


def test_rehead_evaluate_scores_each_head_and_counts_the_rows_it_trained_on(mt_run, tmp_path):
    """`rehead evaluate` refused a multi-task run, and evaluate_multitask_run on the training table (no
    split column) scored every row, training rows included, as if held out."""
    from rehead.multitask import evaluate_multitask_run
    data, run, _, s = mt_run
    r = cli("evaluate", run, data)
    assert r.exit_code == 0, r.output
    for t in "ab":
        assert f"{t}: accuracy {s['tasks'][t]['test_accuracy']:.4f} on {s['tasks'][t]['test_n']} labelled rows" in r.output
    assert "seen" not in r.output  # the test rows: held out
    r = cli("evaluate", run, "--json")  # no DATA: its own val rows, the figures the fit reported
    res = json.loads(r.output)["tasks"]
    assert [res[t]["accuracy"] for t in "ab"] == pytest.approx([s["tasks"][t]["accuracy"] for t in "ab"])
    pd.read_csv(data).drop(columns="split").to_csv(tmp_path / "all.csv", index=False)
    res = evaluate_multitask_run(run, tmp_path / "all.csv")
    assert res["a"]["n"] == 200 and res["a"]["seen"] == {"train": 120, "val": 30}
    assert "optimistic" in res["a"]["warning"]
    r = cli("evaluate", run, tmp_path / "all.csv")
    assert r.exit_code == 0 and "a: 150 of 200 scored rows were seen by this run" in r.output, r.output


# -- interrupted runs, label cells as written -----------------------------------------------------
def ctrl_c_at(monkeypatch, call: int):
    """A Ctrl-C at the training loop's ``call``-th interrupt check (mid-training, files already written)."""
    from rehead.train import loop
    calls = []

    def check():
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
    monkeypatch.setattr(loop, "check_interrupt", check)


@pytest.mark.parametrize("cmd", ["pretrain", "fit-multitask"])
def test_an_interrupted_run_leaves_no_directory_and_says_to_run_it_again(tmp_path, monkeypatch, cmd):
    """Ctrl-C printed a bare 'error: interrupted' and left a half --out (fit-multitask: checkpoint.pt but no
    config.yaml; pretrain: .lock, .rehead-run, metrics.csv) that the rerun refused as existing, `fit --resume`
    as 'not a rehead run directory' and `--model` as 'not a model spec'. Neither command can resume."""
    p = iris(tmp_path / "iris.csv")
    args = {"pretrain": ["pretrain", p, "--id-columns", "big", "--width", 8, "--depth", 1],
            "fit-multitask": ["fit-multitask", p, "--label-columns", "label,big", "--model", "tabular:mlp-4-8x1"]}
    args = [*args[cmd], "--out", tmp_path / "out", "--epochs", 3, "-q"]
    with monkeypatch.context() as m:
        ctrl_c_at(m, 8)  # in the second epoch
        r = cli(*args)
    assert r.exit_code == 130 and "nothing was saved" in r.output, r.output
    assert f"rehead {cmd} cannot resume" in r.output and "run the same command again" in r.output, r.output
    assert not (tmp_path / "out").exists()
    r = cli(*args)  # the same command, no --overwrite
    assert r.exit_code == 0, r.output


def test_fit_multitask_keeps_whole_number_classes_pandas_wrote_as_floats(tmp_path):
    """An int column with an empty cell is float to pandas, so to_csv writes 0 and 1 as 0.0 and 1.0: the
    classes were "0.0" and "1.0", not the 0 and 1 the user gave. A column of other numbers stays as written."""
    from pathlib import Path
    from rehead.multitask import evaluate_multitask_run, fit_multitask
    df = pd.read_csv(iris(tmp_path / "full.csv"))
    df["code"] = (df["big"] == "big").astype(int)
    df.loc[::10, "code"] = None
    df.to_csv(tmp_path / "gaps.csv", index=False)
    assert ",1.0\n" in (tmp_path / "gaps.csv").read_text()
    s = fit_multitask(tmp_path / "gaps.csv", "label,code", "tabular:mlp-4-8x1", tmp_path / "mt", id_columns="big",
                      epochs=1, progress=False, echo=lambda *_: None)
    assert s["tasks"]["code"]["classes"] == ["0", "1"], s["tasks"]["code"]
    assert "- '1'" in (tmp_path / "mt" / "config.yaml").read_text()
    assert evaluate_multitask_run(tmp_path / "mt", tmp_path / "gaps.csv")["code"]["n"] == 135
    from rehead.data.tabular import Table, label_cells
    t = Table(Path("t.csv"), ["a", "b", "c"], [["0.5", "1.0", "07"], ["1.0", "", "1"]])
    assert (label_cells(t, "a"), label_cells(t, "b"), label_cells(t, "c")) == (["0.5", "1.0"], ["1", ""], ["07", "1"])
