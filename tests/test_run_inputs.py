"""What Run.evaluate and Run.predict take in memory: labels read by name as a CSV's are, seen samples
counted whatever the form, and a table run predicting on a path, a DataFrame or an array."""
import numpy as np
import pandas as pd
import pytest

import rehead
from rehead.data import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A table whose classes are the numbers 1, 2, 3 (as its CSV spells them), with test rows."""
    d = tmp_path_factory.mktemp("numeric")
    rs = np.random.RandomState(0)
    x = rs.normal(size=(150, 4))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    df["label"] = np.digitize(x[:, 0] + x[:, 1], [-0.7, 0.7]) + 1  # 1, 2, 3
    df["split"] = ["train"] * 120 + ["test"] * 30
    df.to_csv(d / "t.csv", index=False)
    run = rehead.fit(str(d / "t.csv"), model="tabular:mlp-4-16x1", strategy="extract", out=str(d / "run"),
                     progress=False, echo=lambda *a: None)
    return run, df, d / "t.csv"


def test_number_labels_of_a_run_with_number_classes_are_names_never_indices(table_run):
    run, df, csv = table_run
    assert run.classes == ["1", "2", "3"]
    test = df[(df.split == "test") & (df.label != 3)]  # labels 1 and 2 only: valid indices too
    want = [run.classes.index(str(y)) for y in test.label]
    rows = test[["f0", "f1", "f2", "f3"]].values.tolist()
    assert run.evaluate(rows, list(test.label))["targets"] == want  # was 1, 2 read as indices: classes '2', '3'
    assert run.evaluate(rows, list(map(str, test.label)))["targets"] == want
    assert run.evaluate(test)["targets"] == want  # a DataFrame, as its CSV is read
    with pytest.raises(DataError, match="class names are numbers.*run.classes\\[i\\]"):
        run.evaluate(rows, [0] + list(test.label)[1:])  # 0 names no class: an index, mixed in, refused
    # the run's own split.json labels are its indices: evaluate RUN and the fit's test score still hold
    items, labels = run.val_split()
    assert run.evaluate(items, labels)["targets"] == labels
    assert run.summary["test_acc"] == pytest.approx(run.evaluate(str(csv))["accuracy"])


def test_a_frame_or_items_of_the_training_rows_are_counted_as_seen(table_run):
    run, df, csv = table_run
    train = df[df.split == "train"].drop(columns="split")
    train.to_csv(csv.parent / "train_copy.csv", index=False)
    from_path = run.evaluate(str(csv.parent / "train_copy.csv"))
    rows = list(train[["f0", "f1", "f2", "f3"]].values)
    for res in (run.evaluate(train), run.evaluate(rows, list(train.label))):
        assert res["seen"] == from_path["seen"] == {"train": 96, "val": 24}
        assert any("optimistic" in w for w in res["warnings"])
    assert "seen" not in run.evaluate(df[df.split == "test"])  # held-out rows: no warning


def test_a_frame_with_a_split_column_is_scored_on_its_test_rows_as_its_csv_is(table_run):
    run, df, csv = table_run
    whole, from_path = run.evaluate(df), run.evaluate(str(csv))
    assert whole["n"] == from_path["n"] == 30 and whole["accuracy"] == from_path["accuracy"]  # was all 150 rows
    assert "seen" not in whole
    with pytest.raises(DataError, match="marks every row train"):
        run.evaluate(df[df.split == "train"])


def test_a_table_run_predicts_on_a_path_a_frame_and_an_array(table_run, tmp_path):
    run, df, _ = table_run
    new = df.head(7)[["f3", "f1", "f0", "f2", "label"]]  # other column order, a label column: read by name
    new.to_csv(tmp_path / "new.csv", index=False)
    x = df.head(7)[["f0", "f1", "f2", "f3"]].values
    outs = [run.predict(a) for a in (str(tmp_path / "new.csv"), [str(tmp_path / "new.csv")], new, x, list(x))]
    for out in outs:
        assert len(out) == 7 and [o["top"] for o in out] == [o["top"] for o in outs[-1]]
    assert len(run.predict(x[0])) == 1  # one row of features
    with pytest.raises(DataError, match="7x3 array .* rows of 4 features"):
        run.predict(x[:, :3])
    with pytest.raises(DataError, match="lacks feature column.*f2"):
        run.predict(new.drop(columns="f2"))
    with pytest.raises(DataError, match="cannot predict on a int.*CSV path, a DataFrame"):
        run.predict(3)
