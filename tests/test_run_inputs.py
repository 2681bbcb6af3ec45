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
    dicts = new.to_dict("records")  # rows as {column: value}: were a raw "float() argument ... not 'dict'"
    outs = [run.predict(a) for a in (str(tmp_path / "new.csv"), [str(tmp_path / "new.csv")], new, dicts, x, list(x))]
    for out in outs:
        assert len(out) == 7 and [o["top"] for o in out] == [o["top"] for o in outs[-1]]
    assert len(run.predict(x[0])) == 1  # one row of features
    with pytest.raises(DataError, match="7x3 array .* rows of 4 features"):
        run.predict(x[:, :3])
    with pytest.raises(DataError, match="lacks feature column.*f2"):
        run.predict(new.drop(columns="f2"))
    with pytest.raises(DataError, match="cannot predict on a int.*CSV path, a DataFrame"):
        run.predict(3)
    # a misspelt option reached the private Run._views, whose TypeError named it
    with pytest.raises(TypeError, match=r"Run.predict\(\) got an unexpected .* 'topk' \(did you mean top_k\?\)"):
        run.predict(x, topk=1)
    with pytest.raises(TypeError, match=r"Run.evaluate\(\) .* 'batchsize' \(did you mean batch_size\?\)"):
        run.evaluate(x, list(df.head(7).label), batchsize=8)


# -- text, image, multilabel and regression runs: tiny models, one fit each ---------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir):
    """A text run whose CSV names its text column 'review' (not the default 'text')."""
    d = tmp_path_factory.mktemp("text")
    rows = [(f"a good film {i}", "pos") if i % 2 else (f"a bad film {i}", "neg") for i in range(24)]
    pd.DataFrame(rows, columns=["review", "label"]).to_csv(d / "t.csv", index=False)
    return rehead.fit(str(d / "t.csv"), model=f"hf:{tiny_bert_dir}", strategy="extract", out=str(d / "run"),
                      text_column="review", cache_dir=str(d / "cache"), progress=False, echo=lambda *a: None)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_spec):
    from tests.conftest import make_images
    d = tmp_path_factory.mktemp("images")
    make_images(d / "imgs", n=6)
    return rehead.fit(str(d / "imgs"), model=tiny_spec, strategy="extract", out=str(d / "run"),
                      cache_dir=str(d / "cache"), progress=False, echo=lambda *a: None)


def task_run(d, task: str, labels: list):
    rs = np.random.RandomState(0)
    df = pd.DataFrame(rs.normal(size=(len(labels), 4)), columns=[f"f{i}" for i in range(4)])
    df["label"] = labels
    df.to_csv(d / "t.csv", index=False)
    return rehead.fit(str(d / "t.csv"), model="tabular:mlp-4-16x1", task=task, out=str(d / "run"),
                      strategy="head", epochs=1, progress=False, echo=lambda *a: None), df


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    return task_run(tmp_path_factory.mktemp("ml"), "multilabel", ["a|b", "b", "a", "c|a", "b|c", "|"] * 8)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    return task_run(tmp_path_factory.mktemp("reg"), "regression", [float(i % 7) for i in range(48)])


def no_inference(monkeypatch, run):
    """Any model call fails the test: a bad input must be refused before the run does any work."""
    def ran(*a, **k):
        raise AssertionError("the model ran on bad input")
    monkeypatch.setattr(run, "_views", ran)


def test_a_text_run_predicts_one_row_per_text_of_a_series_array_frame_or_file(text_run, tmp_path, monkeypatch):
    texts = ["a good one", "a bad one", "so so"]
    want = [r["top"] for r in text_run.predict(texts)]
    (tmp_path / "new.csv").write_text("review,other\n" + "".join(f"{t},x\n" for t in texts))
    (tmp_path / "new.txt").write_text("\n".join(texts) + "\n")
    for given in (pd.Series(texts), np.array(texts), pd.DataFrame({"review": texts}), str(tmp_path / "new.csv"),
                  tmp_path / "new.txt"):  # each was one prediction for str() of the whole thing
        assert [r["top"] for r in text_run.predict(given)] == want
    assert len(text_run.predict("a plain sentence, not a file")) == 1
    no_inference(monkeypatch, text_run)
    with pytest.raises(DataError, match="cannot predict on a int.*Series.*'review' column"):
        text_run.predict(3)
    with pytest.raises(DataError, match="no 'review' column.*df\\[column\\]"):
        text_run.predict(pd.DataFrame({"text": texts}))
    with pytest.raises(DataError, match="nan at position 1, not a text"):
        text_run.predict(pd.Series(["fine", None, "x"], dtype=object).fillna(np.nan))
    with pytest.raises(DataError, match="gone.txt does not exist"):
        text_run.predict(tmp_path / "gone.txt")
    with pytest.raises(DataError, match="evaluate got a Series without labels"):  # a raw TypeError
        text_run.evaluate(pd.Series(texts))


def test_a_text_run_evaluates_a_series_or_frame_with_labels_given_apart(text_run):
    texts, labels = ["a good one", "a bad one", "so so"], ["pos", "neg", "pos"]
    want = text_run.evaluate(texts, labels)
    for given in (pd.Series(texts), np.array(texts), pd.DataFrame({"review": texts})):  # the frame: its column names
        assert text_run.evaluate(given, labels)["predictions"] == want["predictions"]


def test_an_image_run_predicts_every_image_of_a_folder_path_as_the_cli_does(image_run, tmp_path):
    red = sorted((image_run.dir.parent / "imgs" / "red").glob("*.jpg"))
    rows = image_run.predict(str(red[0].parent))  # was one row: {'error': 'unreadable'}
    assert [r["item"] for r in rows] == [str(p) for p in red] and not any("error" in r for r in rows)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        image_run.predict(tmp_path / "empty")


def test_pathlib_paths_are_items_on_a_run_kept_on_cached_features(image_run):
    red = sorted((image_run.dir.parent / "imgs" / "red").glob("*.jpg"))
    assert image_run.summary["kept_on_features"]  # the feature store's path, where a Path was a TypeError
    assert image_run.predict(red) == image_run.predict([str(p) for p in red])
    assert image_run.evaluate(red, ["red"] * len(red))["n"] == len(red)


def test_multilabel_labels_are_read_as_names_lists_or_bar_strings(multilabel_run, monkeypatch):
    run, df = multilabel_run
    rows, cells = df[["f0", "f1", "f2", "f3"]].values, df.label.tolist()
    want = run.evaluate(rows, [sorted(run.classes.index(c) for c in y.split("|") if c) for y in cells])["targets"]
    assert run.evaluate(rows, [y.split("|") if y != "|" else [] for y in cells])["targets"] == want  # an IndexError
    assert run.evaluate(rows, cells)["targets"] == want  # 'a|b' as its CSV cells are read
    assert run.evaluate(df.iloc[:12])["targets"] == want[:12]  # a DataFrame's 'a|b' cells
    no_inference(monkeypatch, run)
    with pytest.raises(DataError, match="1 label.* name no class of this run \\(a, b, c\\), e.g. 'z'"):
        run.evaluate(rows, ["a|z"] + cells[1:])


def test_regression_labels_must_be_finite_numbers_before_any_work(regression_run, monkeypatch):
    run, df = regression_run
    rows = df[["f0", "f1", "f2", "f3"]].values[:5]
    assert run.evaluate(rows, ["1.5", 2, 3.0, np.float32(4), 5])["targets"] == [1.5, 2, 3, 4, 5]
    no_inference(monkeypatch, run)
    for bad in ("a", None, float("nan"), True):  # a raw ValueError / TypeError after the model ran; nan: rmse nan
        with pytest.raises(DataError, match=f"label 2 is {bad!r}, not a finite number"):
            run.evaluate(rows, [1, 2, bad, 4, 5])


def test_top_k_below_one_is_refused_before_any_work(table_run, monkeypatch):
    run, df, _ = table_run
    no_inference(monkeypatch, run)
    for k in (0, -1):  # 0: empty rows; -1: a RuntimeError from torch.topk
        with pytest.raises(DataError, match=f"top_k={k}: give a whole number >= 1"):
            run.predict(df.head(2)[["f0", "f1", "f2", "f3"]].values, top_k=k)


def test_a_table_run_evaluates_a_frame_of_features_with_labels_given_apart(table_run):
    run, df, _ = table_run
    test = df[df.split == "test"]
    x = test[["f0", "f1", "f2", "f3"]]
    want = run.evaluate(x.values.tolist(), list(test.label))
    got = run.evaluate(x, list(test.label))  # was "4 items but 30 labels": the column names
    assert got["n"] == want["n"] == 30 and got["predictions"] == want["predictions"]


def test_repr_html_shows_the_plots_the_report_writes(table_run, tmp_path):
    import shutil
    from rehead.report import write_report
    run, _, _ = table_run
    shutil.copytree(run.dir, tmp_path / "run")
    write_report(tmp_path / "run", echo=lambda *_: None)
    assert "<img" in rehead.Run(tmp_path / "run")._repr_html_()
