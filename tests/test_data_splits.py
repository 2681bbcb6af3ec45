"""Splits rehead carves itself keep copies of an item on one side; data errors name file lines."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from rehead import zoo
from rehead.data import DataError, from_items, load_dataset
from rehead.data.tabular import load_table, prepare_backbone, row_cells
from tests.conftest import make_images, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def table_rows(n, seed=0, f=3):
    rng = np.random.default_rng(seed)
    return [[f"{v:.4f}" for v in rng.normal(size=f)] + ["ab"[i % 2]] for i in range(n)]


def keys_of(ds, name):
    s = getattr(ds, name)
    return row_cells(s.items, ds.feature_columns) if ds.modality == "tabular" else s.items


def overlap(ds):
    return set(map(tuple if ds.modality == "tabular" else str, keys_of(ds, "train"))) & set(keys_of(ds, "val"))


def test_copies_of_a_table_row_stay_on_one_side_of_the_carved_val(tmp_path):
    rows = table_rows(40)
    copies = [r[:] for r in rows[:12]]
    for r in copies[:3]:  # conflicting copies: same cells, the other label
        r[-1] = "b" if r[-1] == "a" else "a"
    p = write_csv(tmp_path / "t.csv", ["x0", "x1", "x2", "label"], rows + copies)
    for seed in range(5):
        ds = load_dataset(p, "tabular", seed=seed)
        assert not overlap(ds), seed
        assert len(ds.train) + len(ds.val) == 52 and len(ds.val) >= 8
    w = " ".join(ds.info["warnings"])
    assert "9 repeated row(s)" in w and "3 item(s) carry conflicting labels" in w
    assert w.count("kept on one side of the train/val split") == 2


def test_copies_stay_together_when_val_is_carved_from_train_and_for_every_task(tmp_path):
    texts = [f"sentence {i} about {'ab'[i % 2]}" for i in range(30)]
    d = tmp_path / "folder"
    d.mkdir()
    write_csv(d / "train.csv", ["text", "label"], [[t, "ab"[i % 2]] for i, t in enumerate(texts + texts[:10])])
    write_csv(d / "test.csv", ["text", "label"], [["held out a", "a"], ["held out b", "b"]])
    reg = write_csv(tmp_path / "reg.csv", ["text", "label"], [[t, str(i % 7)] for i, t in enumerate(texts + texts[:10])])
    ml = write_csv(tmp_path / "ml.csv", ["text", "label"], [[t, "a|b" if i % 3 else "a"]
                                                            for i, t in enumerate(texts + texts[:10])])
    for seed in range(4):
        for ds in (load_dataset(d, seed=seed), load_dataset(reg, task="regression", seed=seed),
                   load_dataset(ml, task="multilabel", seed=seed)):
            assert not overlap(ds) and len(ds.train) + len(ds.val) == 40, (ds.source, seed)
    assert "kept on one side of the train/val split" in " ".join(load_dataset(d).info["warnings"])


def test_the_same_image_path_twice_stays_on_one_side(tmp_path):
    make_images(tmp_path / "img", n=10, size=8)
    rows = [[f"img/{c}/{c}_{i}.jpg", c] for c in ("red", "blue") for i in range(10)]
    p = write_csv(tmp_path / "img.csv", ["path", "label"], rows + rows[:4] + rows[10:14])
    for seed in range(4):
        ds = load_dataset(p, seed=seed)
        assert not set(ds.train.items) & set(ds.val.items) and len(ds.train) + len(ds.val) == 28


def test_without_copies_the_split_is_exactly_the_one_before_groups(tmp_path):
    """Existing runs, resumes and benchmarks rely on it: the same rows on the same side, bit for bit."""
    rows = table_rows(50, seed=1)
    p = write_csv(tmp_path / "t.csv", ["x0", "x1", "x2", "label"], rows)
    labels = [r[-1] for r in rows]
    for seed in (0, 3):
        ds = load_dataset(p, "tabular", seed=seed, val_fraction=0.3)
        tr, va = train_test_split(list(range(50)), test_size=0.3, random_state=seed, stratify=labels)
        assert ds.val.items == [f"{p}#{i}" for i in sorted(va)] and ds.train.items == [f"{p}#{i}" for i in sorted(tr)]
        reg = from_items([f"text {i}" for i in range(50)], [str(i) for i in range(50)], "text", "<pairs>",
                         seed=seed, task="regression")
        order = np.random.default_rng(seed).permutation(50)
        assert reg.val.items == [f"text {i}" for i in sorted(order[:10].tolist())]


def test_a_given_val_holding_train_copies_is_kept_and_called_optimistic(tmp_path):
    rows = table_rows(30)
    split = ["train"] * 24 + ["val"] * 6
    body = [r + [s] for r, s in zip(rows, split)] + [r + ["val"] for r in rows[:4]]
    ds = load_dataset(write_csv(tmp_path / "t.csv", ["x0", "x1", "x2", "label", "split"], body), "tabular")
    assert len(ds.val) == 10 and len(overlap(ds)) == 4  # the user's split is not changed
    assert "4 item(s) are in both train and val" in " ".join(ds.info["warnings"])
    assert "the val score is optimistic" in " ".join(ds.info["warnings"])


def test_a_bad_regression_label_names_its_file_line(tmp_path):
    rows = [[f"text {i}", ""] for i in range(10)] + [["two\nlines", "1.5"], ["the bad one", "n/a"]]
    p = write_csv(tmp_path / "r.csv", ["text", "label"], rows + [[f"more {i}", str(i)] for i in range(10)])
    with pytest.raises(DataError, match=r"r.csv: line 14 \(the bad one\) has label 'n/a', not a number"):
        load_dataset(p, task="regression")  # header 1, ten empty labels 2-11, a two-line cell 12-13
    with pytest.raises(DataError, match=r"<pairs>: position 3 \(d, counting from 0\) has label 'x'"):
        from_items(list("abcdef"), [None, "1", "2", "x", "3", "4"], "text", "<pairs>", task="regression")


def test_a_nan_cell_names_its_file_line(tmp_path):
    rows = table_rows(20)
    rows[5][1] = ""
    p = write_csv(tmp_path / "t.csv", ["x0", "x1", "x2", "label"], rows)
    with pytest.raises(DataError, match=r"1 empty or NaN cell\(s\), first in column 'x1', line 7: fill them"):
        prepare_backbone(zoo.load("tabular:mlp-3-4x1"), load_table(p))


def test_a_non_numeric_column_is_named_before_the_feature_count(tmp_path):
    rows = [r[:-1] + [["red", "blue"][i % 2]] + r[-1:] for i, r in enumerate(table_rows(20))]
    p = write_csv(tmp_path / "t.csv", ["x0", "x1", "x2", "color", "label"], rows)
    with pytest.raises(DataError, match=r"column 'color', line 2 holds 'red', which is not a number"):
        prepare_backbone(zoo.load("tabular:mlp-3-4x1"), load_table(p))
    p = write_csv(tmp_path / "n.csv", ["x0", "x1", "x2", "x3", "label"], [r[:-1] + ["1"] + r[-1:] for r in table_rows(20)])
    with pytest.raises(DataError, match="takes 3 features but the table has 4"):  # numbers: the count is the fix
        prepare_backbone(zoo.load("tabular:mlp-3-4x1"), load_table(p))


def test_labels_that_look_like_label_sets_hint_at_task_multilabel(tmp_path):
    labels = ["positive|numbers", "negative", "|", "positive", "negative|numbers", "positive|numbers"] * 4
    p = write_csv(tmp_path / "m.csv", ["text", "label"], [[f"text {i}", y] for i, y in enumerate(labels)])
    w = " ".join(load_dataset(p, val_fraction=0.5).info["warnings"])
    assert "labels like 'positive|numbers' in column 'label' look like several labels per row: " \
           "--task multilabel reads them so" in w
    assert "4 row(s) labelled '|'" in w
    assert "warnings" not in load_dataset(p, task="multilabel", val_fraction=0.5).info


def test_a_class_that_is_one_item_copied_is_split_by_rows_and_the_overlap_said(tmp_path):
    rows = table_rows(20)
    one = [["9", "9", "9", "c"]] * 5  # class c: one item, five copies; kept apart, val would have no c
    ds = load_dataset(write_csv(tmp_path / "t.csv", ["x0", "x1", "x2", "label"], rows + one), "tabular")
    assert 2 in ds.val.labels  # val keeps every class, as before
    w = " ".join(ds.info["warnings"])
    assert "in both train and val" in w and "the val score is optimistic" in w
    assert "kept on one side of the train/val split)" not in w.replace("to carve val keeping", "")


def test_whole_number_class_names_are_in_numeric_order(tmp_path):
    """A WebDataset's .cls indices (and folders 0..11) were ordered as strings: class '10' came
    before '2' in the head, the confusion matrix and the report."""
    texts = [f"sentence number {i} about topic {i % 12}" for i in range(120)]
    ds = from_items(texts, [str(i % 12) for i in range(120)], "text", "<list>")
    assert ds.classes == [str(i) for i in range(12)]
    ds = from_items(texts, ["b10", "b2"] * 60, "text", "<list>")
    assert ds.classes == ["b10", "b2"]  # names that are not all numbers: as strings
    make_images(tmp_path / "img", classes=("1", "10", "2"), n=5, size=8)
    assert load_dataset(tmp_path / "img").classes == ["1", "2", "10"]


def test_a_split_is_named_by_the_values_the_file_holds(tmp_path):
    """golub's split=independent rows were said as "(split=test)" in split.json's how, a value the file lacks."""
    rows = [[f"text number {i} of the {'ab'[i % 2]} kind", "ab"[i % 2], ["train", "independent"][i >= 30]]
            for i in range(40)]
    ds = load_dataset(write_csv(tmp_path / "t.csv", ["text", "label", "split"], rows))
    assert "(split=independent)" in ds.info["split"] and "(split=test)" not in ds.info["split"], ds.info["split"]
    assert "(split=train)" in ds.info["split"] and len(ds.test) == 10
    table = [[f"{i % 7}.5", f"{i % 3}.25", "ab"[i % 2], ["train", "independent"][i >= 30]] for i in range(40)]
    ds = load_dataset(write_csv(tmp_path / "g.csv", ["x", "y", "label", "split"], table))  # golub's case: a table
    assert ds.modality == "tabular" and "(split=independent)" in ds.info["split"], ds.info["split"]


def test_a_carved_multilabel_val_keeps_a_training_row_of_every_label(tmp_path):
    """A random val took the only row of a label: the head never saw it and macro-F1 counted it 0, unsaid."""
    rows = [[f"text number {i}", "a|b" if i % 3 else "a"] for i in range(40)]
    rows[5][1] += "|once"
    rows[7][1] += "|twice"
    rows[8][1] += "|twice"
    rows += [rows[7][:], rows[7][:]]  # copies of a 'twice' row: moved back with it, never split
    with_test = [r + ["train"] for r in rows] + [[f"held out {i}", "a|b", "test"] for i in range(6)]
    plain = write_csv(tmp_path / "ml.csv", ["text", "label"], rows)
    split = write_csv(tmp_path / "mls.csv", ["text", "label", "split"], with_test)
    for seed in range(25):
        for p in (plain, split):
            ds = load_dataset(p, task="multilabel", seed=seed, val_fraction=0.3)
            in_train = {c for ys in ds.train.labels for c in ys}
            assert in_train == set(range(len(ds.classes))), (p, seed)
            assert len(ds.train) + len(ds.val) == 42 and not set(ds.train.items) & set(ds.val.items), (p, seed)
    w = " ".join(ds.info["warnings"])
    assert "label(s) 'once' appear on one row only: that row stays in train" in w and "'twice'" not in w


def test_a_multilabel_val_with_every_label_in_train_is_the_plain_random_split(tmp_path):
    rows = [[f"text number {i}", "a|b" if i % 3 else "a"] for i in range(40)]
    ds = load_dataset(write_csv(tmp_path / "ml.csv", ["text", "label"], rows), task="multilabel", seed=3)
    order = np.random.default_rng(3).permutation(40)
    assert ds.val.items == [f"text number {i}" for i in sorted(order[:8])]


def test_float_labels_with_a_split_column_get_the_numeric_hint(tmp_path):
    """Without a split column the hint said '--task regression'; with one, only 'not in train' was said."""
    rng = np.random.default_rng(0)
    rows = [[f"{v:.4f}" for v in rng.normal(size=3)] + [f"{rng.integers(25, 346)}.0", "test" if i % 4 == 0 else "train"]
            for i in range(120)]
    p = write_csv(tmp_path / "diab.csv", ["x0", "x1", "x2", "label", "split"], rows)
    with pytest.raises(DataError, match=r"not in .*\(split=train\).*every class must have training samples\. .*"
                                        r"distinct numbers.*use --task regression"):
        load_dataset(p, "tabular")


def test_a_constant_regression_target_is_refused_before_training(tmp_path):
    """Every label 5.0 trained and said 'val rmse 0.0000, mae 0.0000, r2 nan' with no word why."""
    rows = [[f"text number {i}", "5.0"] for i in range(30)]
    with pytest.raises(DataError, match=r"c\.csv: every one of its 30 labels in column 'label' is 5: a constant"):
        load_dataset(write_csv(tmp_path / "c.csv", ["text", "label"], rows), task="regression")
    seed = next(s for s in range(50) if np.random.default_rng(s).permutation(3)[0] == 2)  # the 7 goes to val
    p = write_csv(tmp_path / "v.csv", ["text", "label"], [["x", "5"], ["y", "5"], ["z", "7"]])
    with pytest.raises(DataError, match=r"training rows left after carving val all have label 5 .*give a val split"):
        load_dataset(p, task="regression", seed=seed, val_fraction=0.34)
    other = next(s for s in range(50) if np.random.default_rng(s).permutation(3)[0] != 2)
    ds = load_dataset(p, task="regression", seed=other, val_fraction=0.34)
    assert sorted(ds.train.labels + ds.val.labels) == [5.0, 5.0, 7.0]


def test_skipping_the_last_training_row_of_a_label_is_an_error_for_multilabel_too(tmp_path):
    from rehead.data import drop_items
    rows = [[f"text number {i}", "a|b" if i % 3 else "a"] for i in range(20)]
    rows[4][1] += "|rare"
    ds = load_dataset(write_csv(tmp_path / "ml.csv", ["text", "label"], rows), task="multilabel")
    assert drop_items(ds, ["text number 1"]) == ["text number 1"]
    with pytest.raises(DataError, match=r"label\(s\) 'rare' of .* have no training sample left after 1 unreadable"):
        drop_items(ds, ["text number 4"])
