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
