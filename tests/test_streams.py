"""Streaming sources (issue 15, item 3): WebDataset tar shards, Hugging Face datasets saved on
disk, Parquet. The same labels, splits, errors and resume checks as a folder; features equal to
those of the same images as files."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rehead.data import DataError, dataset_from_split, load_dataset, load_eval, pipeline, refs, streams
from tests.conftest import make_images

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N_TRAIN, N_TEST = 7, 3  # per class: 14 labelled training images, 6 test images, and one unlabelled


def _files(root: Path) -> dict[str, list[Path]]:
    make_images(root, n=N_TRAIN + N_TEST)
    return {c: sorted((root / c).glob("*.jpg"), key=lambda p: int(p.stem.split("_")[1])) for c in ("red", "blue")}


def _samples(files):
    """(split, key, image path, label) rows: the first N_TRAIN of a class train, the rest test, and
    one unlabelled training image."""
    rows = []
    for c, fs in files.items():
        rows += [("train" if i < N_TRAIN else "test", f"{c}_{i:03d}", f, c) for i, f in enumerate(fs)]
    rows.append(("train", "nolabel_000", files["red"][0], ""))
    return rows


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def write_wds(root: Path, rows) -> Path:
    """train-000.tar (labels in .cls), train-001.tar (labels in .json), test-000.tar."""
    root.mkdir(parents=True)
    train = [r for r in rows if r[0] == "train"]
    shards = {"train-000.tar": train[::2], "train-001.tar": train[1::2], "test-000.tar": [r for r in rows if r[0] == "test"]}
    for name, rs in shards.items():
        with tarfile.open(root / name, "w") as tf:
            for _, key, f, y in rs:
                _add(tf, f"{key}.jpg", f.read_bytes())
                if name == "train-001.tar":
                    _add(tf, f"{key}.json", json.dumps({"label": y or None, "w": 3}).encode())
                else:
                    _add(tf, f"{key}.cls", y.encode())
    return root


def write_hf(root: Path, rows) -> Path:
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    names = feats["label"].names

    def part(split):
        rs = [r for r in rows if r[0] == split]
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": f.read_bytes(), "path": None} for _, _, f, _ in rs],
             "label": [names.index(y) if y else -1 for *_, y in rs]}, features=feats)
    datasets.DatasetDict({"train": part("train"), "test": part("test")}).save_to_disk(str(root))
    return root


def write_parquet(path: Path, rows) -> Path:
    t = pa.table({"image": pa.array([f.read_bytes() for _, _, f, _ in rows], pa.binary()),
                  "label": [y or None for *_, y in rows], "split": [s for s, *_ in rows]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path, row_group_size=8)  # several row groups
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("streams")
    files = _files(base / "files")
    rows = _samples(files)
    return {"files": files, "rows": rows,
            "webdataset": write_wds(base / "wds", rows),
            "hf": write_hf(base / "hf", rows),
            "parquet": write_parquet(base / "pq" / "data.parquet", rows)}


KINDS = ("webdataset", "hf", "parquet")


@pytest.mark.parametrize("kind", KINDS)
def test_sources_follow_the_label_and_split_rules(sources, kind):
    src = sources[kind]
    assert streams.kind(src) == kind
    ds = load_dataset(src, val_fraction=0.2, seed=0)
    assert ds.modality == "image" and ds.classes == ["blue", "red"]  # ClassLabel names, sorted like any source
    assert len(ds.train) + len(ds.val) == 2 * N_TRAIN and len(ds.val) == 3  # val carved from train, stratified
    assert len(ds.test) == 2 * N_TEST  # kept aside
    assert all(refs.is_ref(i) for i in ds.train.items + ds.val.items + ds.test.items)
    assert any("1 row(s) with an empty label were left out" in w for w in ds.info["warnings"])
    assert ds.summary()["format"] in ("webdataset", "hf-datasets", "parquet")
    # labels follow the bytes: each referenced image's colour is its class
    for item, y in zip(ds.train.items, ds.train.labels):
        px = np.asarray(pipeline("image").decode(item)).reshape(-1, 3).mean(0)
        assert (px[0] > px[2]) == (ds.classes[y] == "red"), item
    ev = load_eval(src, "image", ["blue", "red"])
    assert len(ev) == 2 * N_TEST and ev.split.startswith("test")


@pytest.mark.parametrize("kind", KINDS)
def test_fit_evaluate_predict_with_features_equal_to_files(sources, kind, tiny_spec, tmp_path, one_thread):
    import rehead
    from rehead import zoo
    from rehead.features import FeatureCache, extract
    src = sources[kind]
    run = rehead.fit(str(src), model=tiny_spec, out=tmp_path / "run", strategy="extract", workers=0, progress=False,
                     echo=lambda *a: None)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["test_n"] == 2 * N_TEST and s["val_acc"] is not None
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]["items"]) == 11 and len(split["val"]["items"]) == 3 and len(split["test"]["items"]) == 6
    res = run.evaluate(str(src))
    assert res["n"] == 2 * N_TEST and res["skipped"] == 0 and "seen" not in res
    # its training images as files elsewhere: seen, compared by content (it read as held out)
    import shutil
    for _, key, f, y in (r for r in sources["rows"] if r[0] == "train" and r[3]):
        (tmp_path / "as_files" / y).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "as_files" / y / f"{key}.jpg")
    res = run.evaluate(str(tmp_path / "as_files"))
    assert res["seen"] == {"train": 11, "val": 3}, res.get("seen")
    items = streams.expand_input(src, "image")
    assert len(items) == len(sources["rows"])  # every sample, the unlabelled one too
    rows = run.predict(items[:4], top_k=1)
    assert len(rows) == 4 and all("top" in r for r in rows)
    # the cache holds, for each referenced image, exactly the features of the same image as a file
    bb = zoo.load(tiny_spec)
    cache = FeatureCache()
    by_bytes = {f.read_bytes(): str(f) for fs in sources["files"].values() for f in fs}
    refs_ = split["train"]["items"] + split["val"]["items"]  # extracted (the test split is scored by the run)
    paths = [by_bytes[refs.read_bytes(r)] for r in refs_]
    pipe = pipeline("image")
    assert [pipe.sample_key(r, cache, bb) for r in refs_] == [cache.file_digest(p) for p in paths]
    k = len(bb)
    mkey = cache.model_key(bb, k)
    cached = cache.get_all(mkey, [pipe.sample_key(r, cache, bb) for r in refs_])
    assert cached is not None  # the fit put every labelled image there
    fresh, kept, _ = extract(bb, paths, [k], None, workers=0, progress=False)
    assert len(kept) == len(paths)
    torch.testing.assert_close(torch.from_numpy(cached), fresh[k], rtol=0, atol=1e-6)


def test_resume_fingerprint_notices_a_changed_shard(sources, tmp_path):
    import shutil
    src = shutil.copytree(sources["webdataset"], tmp_path / "wds")
    ds = load_dataset(src)
    d = json.loads(json.dumps(ds.to_split()))
    assert sorted(d["fingerprint"]["containers"]) == sorted(str(p) for p in src.glob("*.tar"))
    again = dataset_from_split(d)
    assert again.train.items == ds.train.items and again.test.items == ds.test.items
    shard = src / "test-000.tar"
    os.utime(shard, ns=(1, 1))
    with pytest.raises(DataError, match="test-000.tar was modified"):
        dataset_from_split(d)


@pytest.mark.parametrize("kind", KINDS)
def test_a_warm_run_reads_no_container_bytes_for_its_keys(sources, kind, tmp_path, monkeypatch):
    import shutil
    from rehead import store
    from rehead.data import images
    from rehead.features import FeatureCache
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)  # the containers were just written
    src = sources[kind]
    src = shutil.copytree(src, tmp_path / "src") if src.is_dir() else shutil.copy(src, tmp_path / "data.parquet")
    items = streams.expand_input(str(src), "image")
    first = FeatureCache(tmp_path / "c")
    keys = images.sample_keys(items, first, None)
    first.flush()  # as extraction does after its keys
    assert keys == [refs.digest(r) for r in items]
    # a new process: nothing hashed in memory; the store answers while the containers are unchanged
    monkeypatch.setattr(refs, "_DIGESTS", {})
    real = refs.digest
    monkeypatch.setattr(refs, "digest", lambda r: pytest.fail(f"read the bytes of {r}"))
    c = FeatureCache(tmp_path / "c")
    assert images.sample_keys(items, c, None) == keys
    # one container rewritten (its stamp moves): its samples are hashed again, the others are not
    changed = sorted(src.glob("*.tar"))[0] if kind == "webdataset" else \
        (sorted(src.rglob("*.arrow"))[0] if kind == "hf" else src)
    data = changed.read_bytes()
    changed.unlink()
    changed.write_bytes(data)  # the same bytes in a new inode: the same digests, found by hashing again
    hashed = []
    monkeypatch.setattr(refs, "digest", lambda r: hashed.append(r) or real(r))
    c = FeatureCache(tmp_path / "c")
    assert images.sample_keys(items, c, None) == keys
    assert hashed and {refs.container(r) for r in hashed} == {str(changed)}
    c.flush()
    # gc forgets a container's rows once it is gone, and keeps the others'
    os.remove(changed)
    res = FeatureCache(tmp_path / "c").gc()
    assert res["forgotten_files"] == len(hashed)


def test_brace_patterns_and_a_single_shard(sources):
    src = sources["webdataset"]
    ds = load_dataset(f"{src}/train-{{000..001}}.tar")
    assert len(ds.train) + len(ds.val) == 2 * N_TRAIN and ds.test is None
    assert streams.expand_braces("a-{08..10}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar"]
    assert streams.expand_braces("{x,y}-{0..1}.tar") == ["x-0.tar", "x-1.tar", "y-0.tar", "y-1.tar"]
    with pytest.raises(DataError, match=r"1 shard\(s\) of .* do not exist, e.g. .*train-002.tar"):
        load_dataset(f"{src}/train-{{000..002}}.tar")
    one = load_dataset(src / "train-000.tar", val_fraction=0.5)  # labels from .cls only
    assert len(one.train) + len(one.val) == 7


def test_missing_columns_and_labels_name_what_was_looked_for(sources, tmp_path):
    t = pa.table({"pixels": pa.array([b"x", b"y"], pa.binary()), "y": ["a", "b"]})
    pq.write_table(t, tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"no label column 'label' \(columns: pixels, y\)"):
        load_dataset(tmp_path / "t.parquet")
    pq.write_table(pa.table({"n": [1, 2], "label": ["a", "b"]}), tmp_path / "u.parquet")
    with pytest.raises(DataError, match=r"has neither an image column nor a text column 'text'"):
        load_dataset(tmp_path / "u.parquet")
    d = tmp_path / "nolabels"
    d.mkdir()
    with tarfile.open(d / "a.tar", "w") as tf:
        _add(tf, "k1.jpg", sources["files"]["red"][0].read_bytes())
        _add(tf, "k1.txt", b"caption")
    with pytest.raises(DataError, match=r"looked for a .label or .cls member and a 'label' field in .json members "
                                        r"\(member extensions found: jpg, txt\)"):
        load_dataset(d)
    assert len(streams.expand_input(d, "image")) == 1  # predict needs no labels
    # .cls holding indices in one shard and names in another: 4 classes '0', '1', 'blue', 'red' were made
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for shard, labels in (("train-000.tar", ("red", "blue")), ("train-001.tar", ("0", "1"))):
        with tarfile.open(mixed / shard, "w") as tf:
            for i, y in enumerate(labels * 3):
                _add(tf, f"k{i}.jpg", sources["files"]["red"][0].read_bytes())
                _add(tf, f"k{i}.cls", y.encode())
    with pytest.raises(DataError, match=r"by class index \(0, 1\) and others by name \(blue, red\)"):
        load_dataset(mixed)


def test_tar_members_decode_in_worker_processes(sources, tiny_spec):
    from rehead import zoo
    bb = zoo.load(tiny_spec)
    items = streams.expand_input(sources["webdataset"], "image")
    loader = pipeline("image").make_loader(bb, items, None, batch_size=8, workers=2)
    seen = [i for idx, x, _ in loader for i in idx.tolist()]
    assert sorted(seen) == list(range(len(items)))


def test_an_unreadable_member_is_named_and_skipped(sources, tmp_path, tiny_spec):
    from rehead import zoo
    from rehead.features import extract
    d = tmp_path / "bad"
    d.mkdir()
    with tarfile.open(d / "a.tar", "w") as tf:
        for c in ("red", "blue"):
            for f in sources["files"][c][:3]:
                _add(tf, f"{f.stem}.jpg", f.read_bytes())
                _add(tf, f"{f.stem}.cls", c.encode())
        _add(tf, "broken.jpg", b"\xff\xd8 not a jpeg")
        _add(tf, "broken.cls", b"red")
    ds = load_dataset(d, val_fraction=0.5)  # listing never decodes
    items = ds.train.items + ds.val.items
    assert len(items) == 7
    bb = zoo.load(tiny_spec)
    _, kept, skipped = extract(bb, items, [len(bb)], None, workers=0, progress=False)
    assert len(kept) == 6 and len(skipped) == 1 and skipped[0].endswith("a.tar::broken.jpg")
    bad = pipeline("image").unreadable(items)
    assert list(bad) == skipped and "UnidentifiedImageError" in bad[skipped[0]]


def test_text_sources_resolve_references(tmp_path):
    datasets = pytest.importorskip("datasets")
    words = {"pos": "good great superb", "neg": "bad awful dull"}
    texts = [f"a {words[y].split()[i % 3]} film number {i}" for i in range(24) for y in [("pos", "neg")[i % 2]]]
    labels = [("pos", "neg")[i % 2] for i in range(24)]
    datasets.Dataset.from_dict({"text": texts, "label": labels}).save_to_disk(str(tmp_path / "t"))
    ds = load_dataset(tmp_path / "t")
    assert ds.modality == "text" and len(ds.train) + len(ds.val) == 24
    text = pipeline("text")
    got = [text.resolve(i) for i in ds.train.items]
    assert all(t in texts for t in got) and all(refs.is_ref(i) for i in ds.train.items)
    d = tmp_path / "w"
    d.mkdir()
    with tarfile.open(d / "train-0.tar", "w") as tf:
        for i, (t, y) in enumerate(zip(texts, labels)):
            _add(tf, f"s{i}.txt", t.encode())
            _add(tf, f"s{i}.json", json.dumps({"sentiment": y}).encode())
    ds = load_dataset(d, label_column="sentiment")
    assert ds.modality == "text" and ds.classes == ["neg", "pos"]
    assert sorted(text.resolve(i) for i in ds.train.items + ds.val.items) == sorted(texts)


def test_text_fit_on_a_saved_dataset(tmp_path):
    """A text column of a save_to_disk folder: fit (word vectors), evaluate on its test split, predict."""
    datasets = pytest.importorskip("datasets")
    import rehead
    words = {"pos": ["good", "great", "superb"], "neg": ["bad", "awful", "dull"]}
    rows = [(f"a {words[y][i % 3]} film number {i}", y) for i in range(40) for y in [("pos", "neg")[i % 2]]]
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})

    def part(rs):
        return datasets.Dataset.from_dict({"text": [t for t, _ in rs], "label": [["neg", "pos"].index(y) for _, y in rs]},
                                          features=feats)
    datasets.DatasetDict({"train": part(rows[:30]), "test": part(rows[30:])}).save_to_disk(str(tmp_path / "t"))
    vec = tmp_path / "vectors.txt"
    vec.write_text("6 2\n" + "".join(f"{w} {1 if y == 'pos' else -1} 0.1\n" for y, ws in words.items() for w in ws))
    run = rehead.fit(str(tmp_path / "t"), model=f"glove:{vec}", out=tmp_path / "run", strategy="extract",
                     progress=False, echo=lambda *a: None)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["test_n"] == 10 and s["test_acc"] == 1.0
    assert run.evaluate(str(tmp_path / "t"))["n"] == 10
    items = streams.expand_input(tmp_path / "t", "text")
    assert run.predict(items[:1])[0]["top"][0]["label"] == rows[0][1]


def test_pax_and_gnu_shards_are_indexed_like_tarfile(tmp_path):
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        p = tmp_path / f"x{fmt}.tar"
        long = "y" * 90 + "/" + "z" * 90 + ".jpg" if fmt == tarfile.USTAR_FORMAT else "x" * 120 + ".jpg"
        with tarfile.open(p, "w", format=fmt) as tf:
            for name in ("a.jpg", "sub/dir/b.cls", long, "ünï.txt"):
                _add(tf, name, name.encode())
        want = {ti.name: (ti.offset_data, ti.size) for ti in tarfile.open(p) if ti.isfile()}
        assert refs.tar_index(str(p)) == want
        assert refs.read_bytes(refs.make("tar", str(p), long)) == long.encode()


def test_split_folders_and_hub_style_parquet_names(sources, tmp_path):
    import shutil
    wds = tmp_path / "wds"
    for split, pattern in (("train", "train-*.tar"), ("test", "test-*.tar")):
        (wds / split).mkdir(parents=True)
        for f in sources["webdataset"].glob(pattern):
            shutil.copy(f, wds / split / f.name.replace(split, "shard"))  # the folder names the split
    ds = load_dataset(wds)
    assert len(ds.train) + len(ds.val) == 2 * N_TRAIN and len(ds.test) == 2 * N_TEST
    t = pq.read_table(sources["parquet"])
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for split in ("train", "test"):
        pq.write_table(t.filter(pa.compute.equal(t["split"], split)).drop_columns(["split"]),
                       hub / f"{split}-00000-of-00001.parquet")
    ds = load_dataset(hub.parent)
    assert streams.kind(hub.parent) == "parquet" and len(ds.test) == 2 * N_TEST
    assert len(load_eval(hub.parent, "image", ds.classes)) == 2 * N_TEST
    (hub / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(DataError, match="holds only training data"):
        load_eval(hub.parent, "image", ds.classes)


def test_image_column_names_the_images_among_several(sources, tiny_spec, tmp_path, one_thread):
    """Two image columns, neither called image: refused until --image-column names one; a named column
    that is absent or holds no images is an error; the run reads new data through the same column."""
    import shutil
    import rehead
    from rehead.cli import expand_inputs
    rows = sources["rows"]
    t = pq.read_table(sources["parquet"])
    two = t.rename_columns(["front", "label", "split"]).append_column("back", t["image"])
    pq.write_table(two, tmp_path / "two.parquet", row_group_size=8)
    src = tmp_path / "two.parquet"
    with pytest.raises(DataError, match="several image columns.*name one with --image-column"):
        load_dataset(src)
    ds = load_dataset(src, image_column="back")
    assert all(refs.parse(i)[2][0] == "back" for i in ds.train.items + ds.test.items)
    with pytest.raises(DataError, match="no column 'side'.*--image-column"):
        load_dataset(src, image_column="side")
    with pytest.raises(DataError, match="column 'split' does not hold images"):
        load_dataset(src, image_column="split")
    run = rehead.fit(str(src), model=tiny_spec, image_column="front", out=tmp_path / "run", strategy="extract",
                     workers=0, progress=False, echo=lambda *a: None)
    assert run.data_kw()["image_column"] == "front"
    items = expand_inputs([str(src)], "image", run.data_kw())  # predict's inputs, read as the fit read its data
    assert len(items) == len(rows) and all(refs.parse(i)[2][0] == "front" for i in items)
    # a CSV whose path column has another name; tar shards whose images are .png members
    shutil.copytree(sources["files"]["red"][0].parent.parent, tmp_path / "img")
    lines = ["file,label"] + [f"img/{p.parent.name}/{p.name},{p.parent.name}" for fs in sources["files"].values()
                              for p in fs]
    (tmp_path / "data.csv").write_text("\n".join(lines))
    ds = load_dataset(tmp_path / "data.csv", image_column="file")
    assert ds.modality == "image" and len(ds.train) + len(ds.val) == 2 * (N_TRAIN + N_TEST)
    with pytest.raises(DataError, match="no column 'photo'.*--image-column"):
        load_dataset(tmp_path / "data.csv", image_column="photo")
    wds = tmp_path / "wds"
    wds.mkdir()
    with tarfile.open(wds / "train-000.tar", "w") as tf:
        for _, key, f, y in rows[:-1]:
            _add(tf, f"{key}.jpg", f.read_bytes())
            _add(tf, f"{key}.png", f.read_bytes())
            _add(tf, f"{key}.cls", y.encode())
    ds = load_dataset(wds, image_column="png")
    assert all(i.endswith(".png") for i in ds.train.items)
    with pytest.raises(DataError, match="no .webp member"):
        load_dataset(wds, image_column="webp")


def test_shuffled_parquet_batches_stay_within_a_few_row_groups(sources, tiny_spec):
    from rehead import zoo
    bb = zoo.load(tiny_spec)
    items = streams.expand_input(sources["parquet"], "image")  # 21 rows in row groups of 8
    groups = refs.row_groups(items)
    assert groups == [refs.parse(i)[2][1] // 8 for i in items]
    order = list(refs.GroupedShuffle(groups, torch.Generator().manual_seed(0), window=2))
    assert sorted(order) == list(range(len(items))) and order != sorted(order)
    assert len({groups[i] for i in order[:13]}) <= 2  # the first window: two row groups (13+ rows)
    again = list(refs.GroupedShuffle(groups, torch.Generator().manual_seed(0), window=2))
    assert again == order  # seeded
    loader = pipeline("image").make_loader(bb, items, [0] * len(items), batch_size=4, workers=0, shuffle=True,
                                           generator=torch.Generator().manual_seed(1))
    assert sorted(i for idx, _, _ in loader for i in idx.tolist()) == list(range(len(items)))
    assert refs.row_groups(streams.expand_input(sources["webdataset"], "image")) is None


def test_repeated_texts_and_train_test_overlap_are_said_for_parquet_as_for_a_csv(tmp_path):
    """A CSV warned of both; the same rows as Parquet said nothing (rows were compared by reference)."""
    texts = [f"sentence number {i} about things" for i in range(30)]
    rows = texts + texts[:3] + [f"test sentence {i}" for i in range(8)] + texts[3:5]
    pq.write_table(pa.table({"text": rows, "label": ["ab"[i % 2] for i in range(len(rows))],
                             "split": ["train"] * 33 + ["test"] * 10}), tmp_path / "x.parquet")
    said = " ".join(load_dataset(tmp_path / "x.parquet").info["warnings"])
    assert "3 repeated row(s)" in said and "2 item(s) are in both train and test" in said, said


# -- fixes: per-split class names, mixed folders, --label-column, cut shards, wrong modality, .tar.gz ------
def _labels_follow_colour(part, classes) -> bool:
    """Each referenced image's colour is its class (red or blue)."""
    decode = pipeline("image").decode
    return all((np.asarray(decode(i)).reshape(-1, 3).mean(0)[0] > 100) == (classes[y] == "red")
               for i, y in zip(part.items, part.labels))


def _shard(path: Path, rows, members=lambda key, y: {"cls": y}) -> Path:
    """A tar of each row's .jpg plus ``members(key, label)`` ({extension: text})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for _, key, f, y in rows:
            _add(tf, f"{key}.jpg", f.read_bytes())
            for ext, text in members(key, y).items():
                _add(tf, f"{key}.{ext}", text.encode())
    return path


def test_each_split_maps_its_labels_with_its_own_class_names(sources, tmp_path):
    """class_encode_column per split: train names [red, blue], test [blue, red]; the test labels were
    named with train's names (every test label swapped)."""
    datasets = pytest.importorskip("datasets")
    rows = [r for r in sources["rows"] if r[3]]

    def part(split, names):
        rs = [r for r in rows if r[0] == split]
        feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        return datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for _, _, f, _ in rs],
                                           "label": [names.index(y) for *_, y in rs]}, features=feats)
    train, test = part("train", ["red", "blue"]), part("test", ["blue", "red"])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "pq").mkdir()
    train.to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    test.to_parquet(str(tmp_path / "pq" / "test-0.parquet"))
    for src in (tmp_path / "hf", tmp_path / "pq"):
        ds = load_dataset(src, val_fraction=0.2, seed=0)
        assert _labels_follow_colour(ds.test, ds.classes) and _labels_follow_colour(ds.train, ds.classes), src
        ev = load_eval(src, "image", ds.classes)
        assert ev.labels == ds.test.labels
    # names in one file, bare numbers in another: the numbers cannot be matched to names
    pq.write_table(pa.table({"image": pa.array([b"x"], pa.binary()), "label": [0]}), tmp_path / "pq" / "test-1.parquet")
    with pytest.raises(DataError, match=r"test-0.parquet names its classes \(ClassLabel\) but .*test-1.parquet "
                                        r"labels them by number only"):
        load_dataset(tmp_path / "pq")


@pytest.mark.parametrize("data", ["shards", "parquet"])
def test_class_folders_beside_shards_or_parquet_are_refused(sources, tmp_path, data):
    d = make_images(tmp_path / "d", n=2)
    if data == "shards":
        _shard(d / "extra.tar", sources["rows"][:2])
        said = r"holds both class folders \(e.g. blue/\) and tar shards \(e.g. extra.tar\): .*move the tar shards out"
    else:
        write_parquet(d / "data" / "x.parquet", sources["rows"][:2])
        said = r"holds both class folders \(e.g. blue/\) and Parquet files \(e.g. data/x.parquet\)"
    with pytest.raises(DataError, match=said):
        load_dataset(d)
    (d / "blue").rename(tmp_path / "blue")  # one class folder left, inside train/: still class folders
    (d / "red").rename(tmp_path / "red")
    (d / "train").mkdir()
    (tmp_path / "red").rename(d / "train" / "red")
    with pytest.raises(DataError, match=r"class folders \(e.g. train/red/\)"):
        streams.kind(d)


def test_a_named_label_column_wins_over_cls(sources, tmp_path):
    """--label-column colour names the .json field; the .cls beside it (the other colour) was read instead."""
    rows = [r for r in sources["rows"] if r[0] == "train" and r[3]]
    d = tmp_path / "w"
    other = {"red": "blue", "blue": "red"}
    _shard(d / "train-000.tar", rows, lambda key, y: {"cls": other[y], "json": json.dumps({"colour": y})})
    ds = load_dataset(d, label_column="colour", val_fraction=0.2, seed=0)
    assert ds.classes == ["blue", "red"] and _labels_follow_colour(ds.train, ds.classes)
    assert not _labels_follow_colour(load_dataset(d, val_fraction=0.2).train, ds.classes)  # the default: .cls
    with pytest.raises(DataError, match=r"no .shade member and no 'shade' field in .json members .* drop "
                                        r"--label-column to read the .cls labels"):
        load_dataset(d, label_column="shade")


def test_a_shard_cut_short_is_refused(sources, tmp_path):
    rows = [r for r in sources["rows"] if r[3]]
    whole = _shard(tmp_path / "whole" / "train-000.tar", rows)
    long = tmp_path / "long.tar"  # a pax shard (long names): read by tarfile
    with tarfile.open(long, "w", format=tarfile.PAX_FORMAT) as tf:
        for _, key, f, y in rows:
            _add(tf, f"{'k' * 120}{key}.jpg", f.read_bytes())
            _add(tf, f"{'k' * 120}{key}.cls", y.encode())
    for shard in (whole, long):
        data = shard.read_bytes()
        members = refs.tar_index(str(shard))
        last = max(off + size for off, size in members.values())
        for cut in (last - 100, last + 100, len(data) // 2):  # in the last member, in its padding, mid-way
            d = tmp_path / f"cut{cut}"
            d.mkdir()
            (d / "train-000.tar").write_bytes(data[:cut])
            with pytest.raises(DataError, match=rf"train-000.tar is cut short at byte {cut} \(no end-of-archive\): "
                                                "copy it again"):
                load_dataset(d)
    import shutil
    import subprocess
    if shutil.which("tar"):  # GNU tar's shards pass
        subprocess.run(["tar", "-cf", str(tmp_path / "gnu.tar"), "-C", str(sources["files"]["red"][0].parent), "."],
                       check=True)
        assert len(refs.tar_index(str(tmp_path / "gnu.tar"))) == N_TRAIN + N_TEST


def test_shards_of_the_other_modality_are_named(sources, tmp_path):
    d = tmp_path / "w"
    _shard(d / "test-000.tar", [r for r in sources["rows"] if r[3]])
    with pytest.raises(DataError, match=r"these shards hold images \(jpg\) but the run reads text"):
        load_eval(d, "text", ["blue", "red"])
    t = tmp_path / "t"
    t.mkdir()
    with tarfile.open(t / "test-000.tar", "w") as tf:
        _add(tf, "a.txt", b"words")
        _add(tf, "a.cls", b"red")
    with pytest.raises(DataError, match=r"these shards hold text \(txt\) but the run reads images"):
        load_eval(t, "image", ["blue", "red"])


def test_a_folder_of_compressed_shards_says_gunzip(sources, tmp_path):
    d = tmp_path / "gz"
    d.mkdir()
    with tarfile.open(d / "train-000.tar.gz", "w:gz") as tf:
        _add(tf, "a.jpg", sources["files"]["red"][0].read_bytes())
        _add(tf, "a.cls", b"red")
    for read in (load_dataset, lambda p: streams.expand_input(p, "image")):
        with pytest.raises(DataError, match=r"compressed tar shards \(e.g. train-000.tar.gz\).*\(gunzip them\)"):
            read(d)
    (d / "photo.jpg").write_bytes(sources["files"]["red"][0].read_bytes())  # images beside it: a folder of images
    assert streams.kind(d) is None
