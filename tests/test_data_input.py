"""Hostile data inputs give a clear DataError or a named, counted skip: never a hang, a
traceback, or a silently wrong dataset (issue 12, "No silent wrong answers")."""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from rehead.data import DataError, dataset_from_split, drop_items, load_dataset, load_eval
from rehead.data import images
from tests.conftest import make_images, shared_dataset


@pytest.fixture
def no_hang():
    """Fail instead of hanging (a named pipe opened for reading blocks forever)."""
    def boom(*_):
        raise TimeoutError("data loading hung")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def text_rows(n, labels=("pos", "neg")):
    return "".join(f"sentence number {i} here,{labels[i % len(labels)]}\n" for i in range(n))


# -- 1. images: listing and decoding ------------------------------------------------------------
def test_only_regular_files_are_listed_and_the_rest_named(tmp_path, no_hang):
    root = make_images(tmp_path / "d", n=6)
    (root / "red" / "folder.jpg").mkdir()
    os.mkfifo(root / "red" / "pipe.jpg")
    os.symlink(root / "nowhere.jpg", root / "red" / "dangling.jpg")
    os.symlink(root / "blue" / "loop.jpg", root / "blue" / "loop.jpg")
    (root / "blue" / ".hidden.jpg").write_bytes(b"junk")
    (root / ".thumbnails").mkdir()
    make_images(root / "red" / ".cache", classes=("x",), n=2)
    ds = load_dataset(root, val_fraction=0.5)
    items = ds.train.items + ds.val.items
    assert len(items) == 12 and all(os.path.isfile(p) and "/." not in p for p in items)
    assert ds.classes == ["blue", "red"]  # no class from .thumbnails
    assert {os.path.basename(p) for p in ds.skipped} == {"folder.jpg", "pipe.jpg", "dangling.jpg", "loop.jpg"}
    text = " ".join(ds.info["warnings"])
    assert "4 item(s) left out" in text
    reasons = images.list_image_files(root / "red")[1] | images.list_image_files(root / "blue")[1]
    assert sorted(reasons.values()) == ["a dangling symlink", "a directory", "a looping symlink", "a named pipe"]
    with pytest.raises(images.UnreadableImage, match="pipe.jpg: it is a named pipe"):
        images.decode(str(root / "red" / "pipe.jpg"))  # predict on a pipe: an error, not a hang


def test_files_of_other_types_in_a_class_folder_are_named_not_dropped_unseen(tmp_path):
    """A folder of .jfif and extension-less photos lost them with nothing said (10 of 15 ants gone)."""
    root = make_images(tmp_path / "d", n=6)
    red = sorted((root / "red").glob("*.jpg"))
    red[0].rename(red[0].with_suffix(".jfif"))  # a JPEG under another of its extensions: read
    red[1].rename(red[1].with_suffix(""))
    red[2].rename(red[2].with_suffix(".heic"))
    ds = load_dataset(root, val_fraction=0.5)
    assert len(ds.train) + len(ds.val) == 10
    assert {os.path.basename(p) for p in ds.skipped} == {red[1].stem, red[2].stem + ".heic"}
    assert "no extension is not an image type" in " ".join(ds.info["warnings"])


def test_a_run_directory_inside_the_data_is_not_a_class_and_not_data(tmp_path):
    """`rehead fit photos/ --out photos/run` then `rehead report`: the next fit of photos/ made a
    class "run" of the report's plots, silently; a run inside a class folder added its plots there."""
    from rehead.rundir import MARKER
    root = make_images(tmp_path / "photos", n=4)
    for run in (root / "run", root / "red" / "old" / "run"):
        run.mkdir(parents=True)
        (run / MARKER).touch()
        Image.new("RGB", (8, 8)).save(run / "confusion.png")
    ds = load_dataset(root, val_fraction=0.5)
    assert ds.classes == ["blue", "red"] and len(ds.train) + len(ds.val) == 8
    said = " ".join(ds.info["warnings"])
    assert "2 item(s) left out" in said and "a rehead run directory" in said
    assert images.list_image_files(root / "red")[0] == sorted(str(f) for f in (root / "red").glob("*.jpg"))


def test_a_run_directory_given_as_data_and_a_file_given_as_a_run_are_named(tmp_path):
    """`rehead fit RUN` said "no images found"; `rehead evaluate DATA RUN` said "DATA/config.yaml is
    unreadable (Not a directory)": both now say which argument is which."""
    from rehead.rundir import MARKER, BadRun
    from rehead.runs import open_run
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("")
    with pytest.raises(DataError, match="run is a rehead run directory, not data"):
        load_dataset(run)
    csv = write(tmp_path / "t.csv", "text,label\n" + text_rows(8))
    with pytest.raises(BadRun, match=r"t.csv is a file, not a rehead run directory: give the run directory first"):
        open_run(csv)


def test_a_val_fraction_the_data_overrides_is_said(tmp_path):
    make_images(tmp_path / "d" / "train", n=4)
    make_images(tmp_path / "d" / "val", n=2, seed=1)
    assert not load_dataset(tmp_path / "d").info.get("warnings")
    ds = load_dataset(tmp_path / "d", val_fraction=0.3)  # silently unused before
    assert len(ds.val) == 4 and "--val-fraction 0.3 is not used" in " ".join(ds.info["warnings"])


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode == "I;16"
    px = np.asarray(images.decode(str(tmp_path / "ramp16.png")))
    assert px.shape == (64, 64, 3) and px.min() == 0 and px.max() == 255
    assert abs(px.mean() - 127.5) < 1  # clipping made it ~255 (white)
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "grey16.png")
    assert np.asarray(images.decode(str(tmp_path / "grey16.png")))[0, 0, 0] == 128
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "half.tif")
    assert np.asarray(images.decode(str(tmp_path / "half.tif")))[0, 0, 0] == 128
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 100000).save(tmp_path / "wide.tif")
    px = np.asarray(images.decode(str(tmp_path / "wide.tif")))  # beyond 16 bits: min-max per image
    assert px.min() == 0 and px.max() == 255
    json.dumps(images.DECODE)  # the export sidecar carries it
    assert "exif_transpose" in images.DECODE["orientation"] and images.DECODE["max_pixels"] == images.MAX_PIXELS


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # left half red, as stored
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the stored left side becomes the top
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    px = np.asarray(images.decode(str(tmp_path / "rot.jpg")))
    assert px.shape == (40, 20, 3)
    assert px[5, 10, 0] > 200 and px[35, 10, 2] > 200  # red on top, blue below


def test_images_over_the_pixel_limit_are_skipped_and_named(tmp_path, monkeypatch):
    root = make_images(tmp_path / "d", n=5, size=8)
    Image.new("RGB", (40, 40)).save(root / "red" / "huge.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    ds = load_dataset(root, val_fraction=0.4)
    huge = str(root / "red" / "huge.png")
    assert ds.skipped == [huge] and huge not in ds.train.items + ds.val.items
    assert "over the limit of 100" in " ".join(ds.info["warnings"])
    with pytest.raises(images.UnreadableImage, match="huge.png: 40x40 = 1600 pixels is over the limit"):
        images.decode(huge)


# -- 2. recount after skips ----------------------------------------------------------------------
def test_a_class_whose_images_are_all_unreadable_stops_the_load(tmp_path):
    root = make_images(tmp_path / "d", n=5)
    for f in (root / "blue").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"'blue' .*no readable sample left.*blue_0.jpg"):
        load_dataset(root)
    (root / "red" / "red_0.jpg").write_bytes(b"")  # some unreadable: skipped, counted, named
    cut = root / "red" / "red_1.jpg"  # a download cut short: its header is fine
    cut.write_bytes(cut.read_bytes()[:-200])
    make_images(tmp_path / "d", classes=("blue",), n=5)
    ds = load_dataset(root, val_fraction=0.4)
    assert ds.skipped == [str(root / "red" / "red_0.jpg"), str(cut)]
    assert "truncated" in images.unreadable([str(cut)])[str(cut)]
    assert ds.summary()["train"] + ds.summary()["val"] == 8 and ds.summary()["skipped"] == 2
    with pytest.raises(DataError, match="red_0.jpg.*drop --strict"):
        load_dataset(root, strict=True)


def test_drop_items_recounts_classes(tmp_path):
    ds = load_dataset(make_images(tmp_path / "d", n=4), val_fraction=0.5)
    reds = [p for p, y in zip(ds.train.items, ds.train.labels) if ds.classes[y] == "red"]
    assert drop_items(ds, reds[:1]) == reds[:1] and ds.skipped == reds[:1]
    with pytest.raises(DataError, match="'red' .* no training sample left"):
        drop_items(ds, reds)


def test_readability_check_is_cheap_on_hymenoptera():
    root = shared_dataset("hymenoptera_data")
    images._CHECKED.clear()
    t0 = time.perf_counter()
    ds = load_dataset(root)
    assert time.perf_counter() - t0 < 5  # ~0.05 s for 397 images on 2 busy cores
    assert (len(ds.train), len(ds.val), ds.test) == (244, 153, None) and not ds.skipped


# -- 3. labels and CSVs --------------------------------------------------------------------------
def test_empty_labels_are_dropped_with_a_count_for_every_modality(tmp_path):
    make_images(tmp_path / "img", n=4)
    rows = [f"img/{c}/{c}_{i}.jpg,{c}" for c in ("red", "blue") for i in range(4)]
    rows[1] = rows[1].rsplit(",", 1)[0] + ",  "
    img = load_dataset(write(tmp_path / "img.csv", "path,label\n" + "\n".join(rows) + "\n"), val_fraction=0.5)
    txt = load_dataset(write(tmp_path / "t.csv", "text,label\n" + text_rows(8) + "lonely,\nalso lonely, \n"),
                       val_fraction=0.5)
    tab = load_dataset(write(tmp_path / "tab.csv", "x,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(8))
                             + "9,\n"), val_fraction=0.5)
    for ds, n in ((img, 1), (txt, 2), (tab, 1)):
        assert "" not in ds.classes and len(ds.classes) == 2
        assert f"{n} row(s) with an empty label were left out" in " ".join(ds.info["warnings"])
    assert len(img.train) + len(img.val) == 7 and len(tab.train) + len(tab.val) == 8
    with pytest.raises(DataError, match="none.csv has no labelled row: fill its label column"):
        load_dataset(write(tmp_path / "none.csv", "text,label\na,\nb, \n"))


def test_in_memory_pairs_follow_the_same_label_rules():
    from rehead.data import from_items
    texts = [f"text {i}" for i in range(10)] + ["no label", "nan label"]
    ds = from_items(texts, ["a", "b"] * 5 + [None, float("nan")], "text", "<pairs>", val_fraction=0.4)
    assert ds.classes == ["a", "b"] and len(ds.train) + len(ds.val) == 10
    assert "<pairs>: 2 row(s) with an empty label were left out (position(s) 10, 11, counting from 0)" \
        in ds.info["warnings"][0]  # in memory: no file, so no "line(s)"


def test_numeric_labels_with_many_values_hint_at_task_regression(tmp_path):
    many = "".join(f"text {i} {k},{i * 1.5}\n" for i in range(25) for k in range(2))
    ds = load_dataset(write(tmp_path / "m.csv", "text,label\n" + many), val_fraction=0.5)
    assert "column 'label' are 25 distinct numbers" in " ".join(ds.info["warnings"])  # a hint, not an error, when it can train
    with pytest.raises(DataError, match="cannot split.*use --task regression"):
        load_dataset(tmp_path / "m.csv")
    once = "".join(f"text {i},{i * 1.5}\n" for i in range(30))
    with pytest.raises(DataError, match="appear only once.*use --task regression"):
        load_dataset(write(tmp_path / "o.csv", "text,label\n" + once))


def test_class_folders_named_by_numbers_get_no_regression_hint(tmp_path):
    ds = load_dataset(make_images(tmp_path / "d", classes=[str(i) for i in range(22)], n=2, size=8), val_fraction=0.5)
    assert len(ds.classes) == 22 and "warnings" not in ds.info


def test_duplicated_and_conflicting_rows_are_reported(tmp_path):
    body = text_rows(10) + "the same words,pos\nthe same words,neg\nsentence number 0 here,pos\n"
    ds = load_dataset(write(tmp_path / "d.csv", "text,label\n" + body))
    w = " ".join(ds.info["warnings"])
    assert "1 item(s) carry conflicting labels, e.g. 'the same words' is labelled 'neg' and 'pos'" in w
    assert "1 repeated row(s)" in w
    d = tmp_path / "folder"
    write(d / "train.csv", "text,label\n" + text_rows(10))
    write(d / "test.csv", "text,label\nsentence number 3 here,neg\nfresh words,pos\n")
    assert "1 item(s) are in both train and test" in " ".join(load_dataset(d).info["warnings"])


def test_bom_is_accepted_and_latin1_is_named(tmp_path):
    ds = load_dataset(write(tmp_path / "bom.csv", "text,label\n" + text_rows(10), encoding="utf-8-sig"))
    assert ds.modality == "text" and ds.classes == ["neg", "pos"]
    tab = load_dataset(write(tmp_path / "bomtab.csv", "label,x\n" + "a,1\nb,2\n" * 4, encoding="utf-8-sig"))
    assert tab.modality == "tabular" and tab.classes == ["a", "b"]
    bad = write(tmp_path / "latin.csv", "text,label\n" + text_rows(6) + "café crème,pos\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"latin.csv is not UTF-8 text .*re-save it as UTF-8"):
        load_dataset(bad)
    lat_tab = write(tmp_path / "latin_tab.csv", "label,x\n" + "a,1\nb,2\n" * 3 + "é,3\n", encoding="latin-1")
    with pytest.raises(DataError, match="latin_tab.csv is not UTF-8"):
        load_dataset(lat_tab)


def test_csv_shape_errors_are_named_and_lines_are_file_lines(tmp_path):
    """Two columns of one name would be read as the first; an unquoted comma shifts a row's cells;
    a quoted newline makes a row span lines, so a row's index is not its line."""
    dup = write(tmp_path / "dup.csv", "text,label,label\n" + "".join(f"t{i},neutral,{'ab'[i % 2]}\n" for i in range(8)))
    with pytest.raises(DataError, match=r"dup.csv has duplicate column name\(s\) 'label': rename them"):
        load_dataset(dup)
    unq = write(tmp_path / "unq.csv", "text,label\n" + text_rows(8) + "profits rose, sales fell,neg\n")
    with pytest.raises(DataError, match=r"unq.csv: 1 row\(s\) have more cells than the header's 2 \(line\(s\) 10\)"
                                        r".*must be quoted"):
        load_dataset(unq)
    load_dataset(write(tmp_path / "trailing.csv", "text,label\n" + text_rows(8).replace("\n", ",\n")))
    nl = write(tmp_path / "nl.csv", "text,label\n" + '"two\nlines",pos\n\n' + text_rows(8) + "no label,\n")
    ds = load_dataset(nl, val_fraction=0.5)
    assert "1 row(s) with an empty label were left out (line(s) 13)" in " ".join(ds.info["warnings"])
    same = write(tmp_path / "same.csv", "text,label\n" + "".join(f"IGNORE ME,{'ab'[i % 2]}\n" for i in range(8)))
    for task in ("multiclass", "multilabel"):
        with pytest.raises(DataError, match=r"all 8 rows have the same input \('IGNORE ME'\).*--text-column"):
            load_dataset(same, task=task)
    img = write(tmp_path / "img.csv", "path,label\n" + "".join(f"{i}.jpg,a\n" for i in range(4)))
    for path, kw in ((nl, {"text_column": "label"}), (img, {"image_column": "label"})):
        with pytest.raises(DataError, match="both name 'label'"):
            load_dataset(path, **kw)


def test_a_csv_matching_no_modality_says_which_columns_it_looked_for(tmp_path):
    with pytest.raises(DataError, match="semi.csv looks separated by ';', not commas"):
        load_dataset(write(tmp_path / "semi.csv", "text;label\na;b\n"))
    p = write(tmp_path / "x.csv", "sentence,category\nhello,a\n")
    with pytest.raises(DataError, match=r"x.csv has no column 'label' \(columns: sentence, category\).*'path'.*--text-column.*--label-column"):
        load_dataset(p)


# -- 4. evaluation data --------------------------------------------------------------------------
def test_evaluate_scores_every_labelled_row_and_maps_classes(tmp_path):
    make_images(tmp_path / "img", classes=("red", "blue"), n=10)
    rows = [f"img/{c}/{c}_{i}.jpg,{c}" for c in ("red", "blue") for i in range(10)] + ["img/red/red_0.jpg,"]
    p = write(tmp_path / "all.csv", "path,label\n" + "\n".join(rows) + "\n")
    ev = load_eval(p, "image", ["blue", "green", "red"])
    assert len(ev) == 20 and ev.n_unlabelled == 1  # every row, not a random 20%
    assert sorted(set(ev.labels)) == [0, 2] and ev.labels[0] == 2  # mapped onto the run's classes
    with pytest.raises(DataError, match="class\\(es\\) the run never saw: 'red'"):
        load_eval(p, "image", ["blue", "green"])
    split = write(tmp_path / "split.csv", "path,label,split\n" + "\n".join(
        f"{r},{'train' if i % 4 else 'test'}" for i, r in enumerate(rows[:20])) + "\n")
    ev = load_eval(split, "image", ["blue", "red"])
    assert len(ev) == 5 and ev.split.startswith("test")
    tab = write(tmp_path / "t.csv", "x,label\n1,a\n2,b\n3,\n4,  \n5,b\n")
    ev = load_eval(tab, "tabular", ["a", "b"])
    assert (len(ev), ev.n_unlabelled, ev.labels) == (3, 2, [0, 1, 1])  # empty cells never become a class


def test_evaluate_a_folder_uses_its_held_out_split(tmp_path):
    root = tmp_path / "d"
    make_images(root / "train", n=4)
    with pytest.raises(DataError, match="only training data"):
        load_eval(root, "image", ["blue", "red"])
    make_images(root / "test", n=3, seed=1)
    ev = load_eval(root, "image", ["blue", "red"])
    assert len(ev) == 6 and all("/test/" in p for p in ev.items)
    d = tmp_path / "t"
    write(d / "train.csv", "text,label\n" + text_rows(10))
    write(d / "test.csv", "text,label\nfresh words,pos\nmore words,neg\nno label,\n")
    ev = load_eval(d, "text", ["neg", "pos"])
    assert ev.items == ["fresh words", "more words"] and ev.labels == [1, 0] and ev.n_unlabelled == 1
    old = load_dataset(d, eval_only=True)  # the older entry point still gives the same split
    assert old.val.items == ev.items and len(old.train) == 0


# -- 5. test data is never used for selection -------------------------------------------------
def test_text_folder_with_train_and_test_carves_val_from_train(tmp_path):
    d = tmp_path / "t"
    write(d / "train.csv", "text,label\n" + text_rows(20))
    write(d / "test.csv", "text,label\n" + "".join(f"held out {i},{'pos' if i % 2 else 'neg'}\n" for i in range(6)))
    a, b = load_dataset(d, val_fraction=0.25, seed=3), load_dataset(d, val_fraction=0.25, seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (15, 5, 6) and a.val.items == b.val.items
    assert all(t.startswith("sentence") for t in a.val.items) and all(t.startswith("held") for t in a.test.items)
    assert not set(a.val.items) & set(a.train.items)
    assert a.summary()["test"] == 6 and a.summary()["test_per_class"] == {"neg": 3, "pos": 3}


def test_an_unlabelled_test_csv_is_not_scored_but_said_so(tmp_path):
    d = tmp_path / "t"
    write(d / "train.csv", "text,label\n" + text_rows(10))
    write(d / "test.csv", "text\nkaggle style\nno labels\n")
    ds = load_dataset(d)
    assert ds.test is None and "test.csv has no 'label' column: it is not scored" in " ".join(ds.info["warnings"])
    write(d / "test.csv", "text,label\nempty labels,\nhere too, \n")
    ds = load_dataset(d)
    assert ds.test is None and "test.csv has no labelled, readable sample" in " ".join(ds.info["warnings"])


def test_image_folders_train_test_and_train_val_test(tmp_path):
    root = tmp_path / "d"
    make_images(root / "train", n=10)
    make_images(root / "test", n=3, seed=1)
    ds = load_dataset(root, val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 6)
    assert all("/train/" in p for p in ds.val.items) and all("/test/" in p for p in ds.test.items)
    make_images(root / "val", n=2, seed=2)
    ds = load_dataset(root)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 4, 6) and all("/val/" in p for p in ds.val.items)


def test_split_column_train_test_only_carves_val_and_typos_are_errors(tmp_path):
    body = "".join(f"{i},{'ab'[i % 2]},{'test' if i >= 16 else 'train'}\n" for i in range(20))
    ds = load_dataset(write(tmp_path / "t.csv", "x,label,split\n" + body), val_fraction=0.25)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 4)
    assert all(int(i.rpartition("#")[2]) >= 16 for i in ds.test.items)
    typo = write(tmp_path / "typo.csv", "x,label,split\n" + body.replace("test", "tset"))
    with pytest.raises(DataError, match="split value\\(s\\) 'tset' on 4 row\\(s\\) are not train, val or test"):
        load_dataset(typo)
    # a column named with --split-column that is not there: an error, not one unsplit table
    fold = write(tmp_path / "fold.csv", "x,label,fold\n" + body)
    assert len(load_dataset(fold, split_column="fold").test) == 4
    texts = write(tmp_path / "texts.csv", "text,label,fold\n" + "".join(f"w{i},{'ab'[i % 2]},train\n" for i in range(8)))
    for path in (fold, texts):
        with pytest.raises(DataError, match="has no column 'part' \\(--split-column\\); its columns: .*'fold'"):
            load_dataset(path, split_column="part")
    from rehead.pretrain import pretrain_rows
    with pytest.raises(DataError, match="has no column 'part'"):
        pretrain_rows(fold, split_column="part", echo=lambda *_: None)


# -- 6. resume: rebuild the splits, refuse changed data ---------------------------------------
def test_split_round_trips_and_detects_changed_images(tmp_path):
    root = make_images(tmp_path / "d", n=6)
    ds = load_dataset(root, val_fraction=0.5)
    d = json.loads(json.dumps(ds.to_split()))
    back = dataset_from_split(d)
    assert (back.classes, back.train, back.val, back.test) == (ds.classes, ds.train, ds.val, None)
    make_images(root / "red", classes=("new",), n=2)  # a new file is not used, and no reason to refuse
    dataset_from_split(d)
    victim = ds.val.items[0]
    Image.new("RGB", (9, 9)).save(victim, format="JPEG")
    with pytest.raises(DataError, match=f"data changed since the run started.*{os.path.basename(victim)} was modified"):
        dataset_from_split(d)
    os.remove(victim)
    with pytest.raises(DataError, match="is gone"):
        dataset_from_split(d)


def test_split_round_trips_text_and_tables_and_detects_changed_csvs(tmp_path):
    d = tmp_path / "t"
    write(d / "train.csv", "text,label\n" + text_rows(10))
    write(d / "test.csv", "text,label\nfresh,pos\nnew,neg\n")
    ds = load_dataset(d, val_fraction=0.3)
    saved = json.loads(json.dumps(ds.to_split()))
    back = dataset_from_split(saved)
    assert (back.train, back.val, back.test, back.modality) == (ds.train, ds.val, ds.test, "text")
    tab = write(tmp_path / "tab.csv", "id,x,y,label\n" + "".join(f"p{i},{i},{i * 2},{'ab'[i % 2]}\n" for i in range(10)))
    ds = load_dataset(tab, id_columns="id", val_fraction=0.4)
    back = dataset_from_split(ds.to_split())
    assert (back.train, back.val, back.feature_columns, back.missing) == (ds.train, ds.val, ["x", "y"], "error")
    write(d / "test.csv", "text,label\nfresh,pos\nnew,pos\n")
    with pytest.raises(DataError, match="data changed since the run started.*test.csv was modified"):
        dataset_from_split(saved)


# -- 7. in memory (rehead.fit's data=): a DataFrame, pairs, a torch Dataset, a Dataset -----------
def _fit_data(data, **options):
    """What ``rehead.fit(data, **options)`` trains on (data.inputs.as_dataset, as fit calls it)."""
    from rehead.config import FitConfig
    from rehead.data.inputs import as_dataset
    return as_dataset(data, FitConfig(**options))


def test_a_dataframe_split_column_is_honoured_as_in_its_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    from tests.conftest import split_rows
    make_images(tmp_path, n=10)
    csv = write(tmp_path / "t.csv", "\n".join(split_rows(10, lambda i: "Test" if i >= 8 else "train")) + "\n")
    df = pd.read_csv(csv).assign(path=lambda d: [str(tmp_path / p) for p in d.path])
    from_csv, from_df = _fit_data(csv, val_fraction=0.25), _fit_data(df, val_fraction=0.25)
    for name in ("train", "val", "test"):  # val carved from the train rows only; test rows kept out
        assert getattr(from_df, name) == getattr(from_csv, name), name
    assert (len(from_df.train), len(from_df.val), len(from_df.test)) == (12, 4, 4)
    assert all(int(p.rpartition("_")[2][:-4]) >= 8 for p in from_df.test.items)
    own_val = _fit_data(df.assign(split=["val" if i % 10 == 0 else s for i, s in enumerate(df.split)]), val_fraction=0.3)
    assert len(own_val.val) == 2 and any("--val-fraction 0.3 is not used" in w for w in own_val.info["warnings"])
    with pytest.raises(DataError, match="split value\\(s\\) 'tset' on 4 row\\(s\\) are not train, val or test"):
        _fit_data(df.assign(split=df.split.str.replace("Test", "tset")))
    with pytest.raises(DataError, match="has no column 'fold' \\(--split-column\\)"):
        _fit_data(df, split_column="fold")
    assert len(_fit_data(df.rename(columns={"split": "fold"}), split_column="fold").test) == 4


def test_image_paths_that_do_not_exist_are_refused_not_read_as_text(tmp_path):
    pd = pytest.importorskip("pandas")
    gone = [(f"/x/nope/{c}/{i}.JPG", c) for c in ("cat", "dog") for i in range(5)]
    for data in (gone, pd.DataFrame(gone, columns=["path", "label"])):
        with pytest.raises(DataError, match="^10 of 10 items look like image paths but do not exist "
                                            "\\(e.g. /x/nope/cat/0.JPG\\): fix the paths"):
            _fit_data(data)
    real = [(str(p), p.parent.name) for p in sorted(make_images(tmp_path, n=6).rglob("*.jpg"))]
    with pytest.raises(DataError, match="^1 of 13 items .* \\(e.g. /x/nope/cat/0.JPG\\)"):
        _fit_data(real + gone[:1])  # one missing image among real ones: not text either
    assert _fit_data(real).modality == "image"
    texts = [(f"a sentence, number {i}", "ab"[i % 2]) for i in range(9)] + [("see the chart in plot.png", "a")]
    assert _fit_data(texts).modality == "text"  # a text that ends in .png is still a text


def test_a_torch_dataset_of_normalised_tensors_is_refused_not_clamped(tmp_path):
    import torch
    x = torch.rand(8, 3, 8, 8) * 0.2 + torch.arange(8).remainder(2).view(8, 1, 1, 1) * 0.7
    y = torch.arange(8).remainder(2)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="outside \\[0, 1\\].*backbone's own normalisation.*drop T.Normalize"):
        _fit_data(torch.utils.data.TensorDataset((x - 0.45) / 0.225, y), cache_dir=str(cache))
    assert list((cache / "datasets").iterdir()) == []  # nothing half-written
    ds = _fit_data(torch.utils.data.TensorDataset(x, y), cache_dir=str(cache), val_fraction=0.25)
    assert ds.classes == ["0", "1"] and (len(ds.train), len(ds.val)) == (6, 2)


def test_a_torch_dataset_trains_regression_and_multilabel_tasks(tmp_path):
    """A torch Dataset was written as class folders whatever the task: `task="regression"` was refused
    with "class folders give one class per item" and a path in rehead's cache, for data with one number a
    sample. Numbers and label sets (names, or a multi-hot vector) now become a labels.csv beside the PNGs."""
    import torch
    from rehead.data.inputs import materialise
    x = torch.rand(12, 3, 8, 8)
    cache = str(tmp_path / "cache")
    reg = _fit_data(torch.utils.data.TensorDataset(x, x.mean((1, 2, 3))), cache_dir=cache, task="regression",
                    val_fraction=0.25)
    got = sorted(reg.train.labels + reg.val.labels)
    assert reg.task == "regression" and got == pytest.approx(sorted(x.mean((1, 2, 3)).tolist()), abs=1e-6)
    hot = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]).repeat(3, 1)
    ds = torch.utils.data.TensorDataset(x, hot)
    ds.classes = ["cat", "dog", "owl"]
    ml = _fit_data(ds, cache_dir=cache, task="multilabel", val_fraction=0.25)
    assert ml.classes == ["cat", "dog", "owl"] and len(ml.train) + len(ml.val) == 12
    table = (materialise(ds, cache, "multilabel")).read_text().splitlines()
    assert table[:3] == ["path,label", "train/items/0000000.png,cat|owl", "train/items/0000001.png,dog"]
    with pytest.raises(DataError, match="item 0 has label 0: --task multilabel needs a list of label names"):
        _fit_data(torch.utils.data.TensorDataset(x, torch.arange(12)), cache_dir=cache, task="multilabel")


def test_a_subset_of_an_imagefolder_keeps_its_class_names(tmp_path):
    """random_split's Subset hid ImageFolder.classes: the run's classes became '0', '1' and a later
    evaluate on the folder refused its class names."""
    import torch
    import torchvision
    folder = torchvision.datasets.ImageFolder(str(make_images(tmp_path / "imgs", n=6)))
    part, _ = torch.utils.data.random_split(folder, [10, 2], generator=torch.Generator().manual_seed(0))
    cache = str(tmp_path / "cache")
    assert _fit_data(part, cache_dir=cache, val_fraction=0.2).classes == folder.classes
    both = torch.utils.data.ConcatDataset([part, folder])
    assert _fit_data(both, cache_dir=cache, val_fraction=0.2).classes == folder.classes


def test_a_dataset_object_says_that_fits_val_fraction_and_seed_do_not_split_it(tmp_path):
    ds = load_dataset(make_images(tmp_path, n=6), val_fraction=0.5)
    assert _fit_data(ds) is ds  # the defaults: nothing to say
    got = _fit_data(ds, val_fraction=0.3, seed=3)
    said = []
    got.say_warnings(said.append)
    assert said == ["warning: --val-fraction 0.3 is not used: the Dataset given to fit is already split "
                    "(stratified 50% val, seed 0); split it with load_dataset(..., val_fraction=0.3)",
                    "warning: --seed 3 does not re-split the Dataset given to fit (it seeds training only): its "
                    "split is stratified 50% val, seed 0; split it with load_dataset(..., seed=3)"]
    assert (got.train, got.val) == (ds.train, ds.val) and "warnings" not in ds.info  # the caller's Dataset unchanged
