"""The feature cache: a hit opens no image and runs no forward; any change recomputes."""
import os

import numpy as np
import PIL.Image
import pytest
import torch

from rehead import zoo
from rehead.features import FeatureCache, extract
from tests.conftest import make_images


def _items(root):
    return sorted(str(p) for p in root.rglob("*.jpg"))


def test_second_extract_opens_no_image_and_runs_no_forward(tmp_path, tiny_spec, monkeypatch):
    items = _items(make_images(tmp_path / "d", n=4))
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    first, kept, _ = extract(bb, items, [len(bb)], cache, workers=0, progress=False)

    def forbidden(*a, **k):
        raise AssertionError("touched on a cache hit")
    monkeypatch.setattr(PIL.Image, "open", forbidden)
    monkeypatch.setattr(type(bb), "run_stage", forbidden)
    bb2 = zoo.load(tiny_spec)  # a new process would load the backbone afresh
    again, kept2, _ = extract(bb2, items, [len(bb2)], cache, workers=0, progress=False)
    assert kept == kept2 == list(range(len(items)))
    assert torch.equal(first[len(bb)], again[len(bb)])


def test_cache_features_equal_a_direct_forward(tmp_path, tiny_spec):
    from rehead.data.images import ImageDataset, collate_skip
    from rehead.precision import extraction_device
    items = _items(make_images(tmp_path / "d", n=3))
    bb = zoo.load(tiny_spec).eval()
    f, _, _ = extract(bb, items, [2, len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    # the same device and input layout as the extraction (on a GPU: its convolutions, not the CPU's)
    dev = extraction_device()
    ds = ImageDataset(items, None, bb.data_config)
    x = collate_skip([ds[i] for i in range(len(items))])[1].to(dev)
    with torch.no_grad():
        assert torch.allclose(f[len(bb)], bb.to(dev)(x).cpu(), atol=1e-5)
        assert torch.allclose(f[2], bb.cut(2)(x).cpu(), atol=1e-5)


def test_a_change_recomputes_only_what_changed(tmp_path, tiny_spec, monkeypatch):
    root = make_images(tmp_path / "d", n=4)
    items = _items(root)
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    # one image edited -> only that one goes through the network
    PIL.Image.new("RGB", (40, 40), (0, 255, 0)).save(items[0])
    seen = []
    orig = type(bb).forward_cuts
    monkeypatch.setattr(type(bb), "forward_cuts", lambda self, x, c: seen.append(len(x)) or orig(self, x, c))
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    assert seen == [1]
    # another cut, other weights or other preprocessing: new keys, everything recomputed
    seen.clear()
    extract(bb, items, [2], cache, workers=0, progress=False)
    assert sum(seen) == len(items)
    seen.clear()
    with torch.no_grad():
        next(bb.parameters()).add_(0.1)
    bb._weights_id = None
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    assert sum(seen) == len(items)
    seen.clear()
    bb.data_config["input_size"] = 96
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    assert sum(seen) == len(items)


def _shards(root):
    return sorted((root / "features").rglob("*.npy"))


def test_interrupted_or_corrupt_entries_never_load_as_valid(tmp_path, tiny_spec):
    items = _items(make_images(tmp_path / "d", n=2))
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    files = _shards(tmp_path / "c")
    assert len(files) == 1  # every sample of one extraction in one shard
    files[0].write_bytes(files[0].read_bytes()[:200])  # a torn shard (renames make this unlikely)
    mk = cache.model_key(bb, len(bb))
    key = cache.file_digest(items[0])
    assert cache.get(mk, key) is None  # treated as a miss, recomputed
    f, kept, _ = extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    assert len(kept) == len(items) and cache.get(mk, key).shape == (f[len(bb)].shape[1],)
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def test_a_write_killed_midway_leaves_no_entry(tmp_path, tiny_spec, monkeypatch):
    import os
    items = _items(make_images(tmp_path / "d", n=1))
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    cache._ensure_root()
    real = os.replace

    def killed(src, dst):
        if str(dst).endswith(".npy"):
            raise KeyboardInterrupt  # the process dies between writing the shard's bytes and the rename
        return real(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    monkeypatch.undo()
    assert not _shards(tmp_path / "c")
    assert not list((tmp_path / "c").rglob(".tmp-*"))
    assert FeatureCache(tmp_path / "c").size()["entries"] == 0


def test_unreadable_images_are_named_skipped_and_counted(tmp_path, tiny_spec):
    root = make_images(tmp_path / "d", n=3)
    bad = root / "red" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    items = _items(root)
    bb = zoo.load(tiny_spec)
    f, kept, skipped = extract(bb, items, [len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    assert skipped == [str(bad)] and len(kept) == len(items) - 1
    from rehead.data.images import UnreadableImage
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        extract(bb, items, [len(bb)], None, workers=0, progress=False, strict=True)


def test_cache_size_and_clear(tmp_path, tiny_spec):
    items = _items(make_images(tmp_path / "d", n=2))
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    s = cache.size()
    assert s["entries"] == 4 and s["bytes"] > 0 and s["models"] == 1 and s["shards"] == 1
    assert cache.clear() == []
    assert cache.size()["entries"] == 0 and not _shards(tmp_path / "c")


# -- the sharded store: few files, resumable, checked on read -------------------------------------
def _fit(tmp_path, data, spec, name, cache_dir):
    from safetensors.numpy import load_file
    from rehead.fit import fit
    fit(str(data), model=spec, out=tmp_path / name, strategy="extract", epochs=3, workers=0, progress=False,
        echo=lambda *_: None, cache_dir=str(cache_dir))
    return load_file(str(tmp_path / name / "model.safetensors"))


def _forge_check(shard, row, values):
    """Write ``values`` into a shard's row and fix its checksum in the index, as if they had been
    stored that way: only the other checks (finite values) can catch them."""
    import sqlite3
    from rehead.store import row_checks
    x = np.load(shard)
    z = np.zeros((1, 2), dtype=np.uint64)
    delta = row_checks(z, values[None]) - row_checks(z, x[row:row + 1])  # the key's part cancels out
    x[row] = values
    np.save(shard, x)
    with sqlite3.connect(shard.parents[2] / "index.sqlite") as db:
        c = np.frombuffer(db.execute("SELECT checks FROM shards WHERE file=?", (shard.name,)).fetchone()[0],
                          dtype="<i8").copy()
        c[row] += delta[0]
        db.execute("UPDATE shards SET checks=? WHERE file=?", (c.tobytes(), shard.name))


def _data_offset(path):
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def test_many_samples_share_few_files_and_a_killed_extraction_resumes(tmp_path, tiny_spec, monkeypatch):
    items = _items(make_images(tmp_path / "d", n=12))  # 24 images
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    cache.shard_rows = 8
    orig = type(bb).forward_cuts
    seen = []

    def dies_on_third_batch(self, x, c):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(len(x))
        return orig(self, x, c)
    monkeypatch.setattr(type(bb), "forward_cuts", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        extract(bb, items, [2, len(bb)], cache, batch_size=8, workers=0, progress=False)
    assert cache.size()["entries"] == 2 * 16  # both finished batches kept, for both cuts
    seen.clear()
    monkeypatch.setattr(type(bb), "forward_cuts", lambda self, x, c: seen.append(len(x)) or orig(self, x, c))
    f, kept, _ = extract(bb, items, [2, len(bb)], cache, batch_size=8, workers=0, progress=False)
    assert seen == [8] and kept == list(range(24))  # only the unfinished batch ran again
    fresh, _, _ = extract(bb, items, [2, len(bb)], None, batch_size=8, workers=0, progress=False)
    assert all(torch.equal(f[k], fresh[k]) for k in f)
    assert len(_shards(tmp_path / "c")) == 6  # 3 shards of 8 rows per cut, not one file per sample
    assert not (tmp_path / "c" / "digests").exists()  # the digest memo lives in the index


@pytest.mark.parametrize("damage", ["flipped byte", "nan", "another sample's values", "torn shard"])
def test_a_damaged_row_is_a_miss_never_a_value(tmp_path, damage):
    cache = FeatureCache(tmp_path / "c")
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put_many("m", ["a", "b", "c"], rows)
    shard = _shards(tmp_path / "c")[0]
    raw = bytearray(shard.read_bytes())
    off = _data_offset(shard)
    if damage == "flipped byte":
        raw[off + 2] ^= 0x40
    elif damage == "nan":  # a NaN whose checksum matches: the finiteness check still catches it
        bad = rows[0].copy()
        bad[1] = np.nan
        _forge_check(shard, 0, bad)
        raw = bytearray(shard.read_bytes())
    elif damage == "another sample's values":
        raw[off:off + 16] = rows[1].tobytes()
    else:
        raw = raw[:off + 8]
    shard.write_bytes(bytes(raw))
    got, ok = FeatureCache(tmp_path / "c").read("m", ["a", "b", "c"])
    assert not ok[0] and (ok[1:].all() if damage != "torn shard" else not ok.any())
    assert FeatureCache(tmp_path / "c").get_all("m", ["a", "b", "c"]) is None
    if damage != "torn shard":
        assert np.array_equal(got[1:], rows[1:])


def test_damaged_features_are_recomputed_and_the_fit_equals_a_clean_run(tmp_path, image_folder, tiny_spec):
    clean = _fit(tmp_path, image_folder, tiny_spec, "clean", tmp_path / "c1")
    _fit(tmp_path, image_folder, tiny_spec, "first", tmp_path / "c2")
    train, val = sorted(_shards(tmp_path / "c2"), key=lambda p: -p.stat().st_size)[:2]
    nan = np.load(train)[0]  # a NaN with a matching checksum in train
    nan[0] = np.nan
    _forge_check(train, 0, nan)
    raw = bytearray(val.read_bytes())  # and the bytes of another row in val
    raw[_data_offset(val) + 8] ^= 0xFF
    val.write_bytes(bytes(raw))
    again = _fit(tmp_path, image_folder, tiny_spec, "again", tmp_path / "c2")
    # The two recomputed samples ran in a batch of their own: equal up to float noise of batch size.
    assert clean.keys() == again.keys()
    assert all(np.isfinite(again[k]).all() for k in again)
    # The backbone is the same; the head is solved to its optimum on separable features (weak L2 chosen),
    # where float noise moves the weights along flat directions: compare what it predicts, below.
    assert all(np.allclose(clean[k], again[k], rtol=0, atol=1e-6) for k in clean if not k.startswith("head."))
    import json
    summary = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("clean", "again")]
    assert summary[0]["val_acc"] == summary[1]["val_acc"] and summary[1].get("backbone_built", True)
    assert abs(summary[0]["val_loss"] - summary[1]["val_loss"]) < 1e-3


def test_digest_memo_keys_on_inode_and_ctime(tmp_path, monkeypatch):
    import os
    import time
    from rehead import store
    a = tmp_path / "a.jpg"
    a.write_bytes(b"x" * 100)
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)  # the file was just written: take its stat as settled
    cache = FeatureCache(tmp_path / "c")
    d1 = cache.file_digest(str(a))
    cache.flush()
    st = os.stat(a)
    # remembered across processes: a new cache object rereads no byte
    real = store.hashlib_sha256_file
    monkeypatch.setattr(store, "hashlib_sha256_file", lambda p: pytest.fail("rehashed an unchanged file"))
    assert FeatureCache(tmp_path / "c").file_digest(str(a)) == d1
    monkeypatch.setattr(store, "hashlib_sha256_file", real)
    # the same size and mtime, other bytes, written in place (ctime moves) or as another file (inode)
    time.sleep(0.05)  # past the file system clock's tick, so that ctime moves
    a.write_bytes(b"y" * 100)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    d2 = FeatureCache(tmp_path / "c").file_digest(str(a))
    assert d2 != d1
    b = tmp_path / "b.tmp"
    b.write_bytes(b"z" * 100)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(b, a)
    assert FeatureCache(tmp_path / "c").file_digest(str(a)) not in (d1, d2)


def _append(root, worker):
    c = FeatureCache(root)
    for s in range(5):
        keys = [f"{worker}-{s}-{r}" for r in range(4)]
        c.put_many("m", keys, np.full((4, 3), worker * 100 + s, dtype=np.float32))


def test_two_processes_append_to_one_store(tmp_path):
    import multiprocessing as mp
    FeatureCache(tmp_path / "c")._ensure_root()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append, args=(tmp_path / "c", w)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = FeatureCache(tmp_path / "c")
    keys = [f"{w}-{s}-{r}" for w in (1, 2) for s in range(5) for r in range(4)]
    x = cache.get_all("m", keys)
    assert x is not None and x[0, 0] == 100 and x[-1, 0] == 204
    assert cache.size()["shards"] == 10


def _create_at_once(root, barrier, errors):
    barrier.wait()  # every process opens the fresh cache at the same moment, as a launch's do
    try:
        FeatureCache(root).put_many("m", [f"{os.getpid()}-{r}" for r in range(4)], np.ones((4, 8), np.float32))
    except Exception as e:
        errors.put(f"{type(e).__name__}: {e}")


def test_processes_creating_one_cache_at_once_all_succeed(tmp_path):
    # CI saw "database is locked" (SQLite does not wait when switching a fresh index to WAL) and
    # "not a rehead cache" (another process's marker seen mid-write)
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(10):
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_create_at_once, args=(tmp_path / str(round_), barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4
        assert FeatureCache(tmp_path / str(round_)).size()["shards"] == 4
    assert errors.empty(), errors.get()


# -- cache safety: the marker, clear, read-only and full caches ------------------------------------
def _cli(*args):
    from typer.testing import CliRunner
    from rehead.cli import app
    return CliRunner().invoke(app, list(args))


def test_clear_deletes_only_a_marked_cache(tmp_path, tiny_spec):
    from rehead.store import MARKER, CacheError
    items = _items(make_images(tmp_path / "d", n=2))
    bb = zoo.load(tiny_spec)
    extract(bb, items, [len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    assert (tmp_path / "c" / MARKER).is_file()
    r = _cli("cache", "clear", "-y", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 0 and "cleared" in r.output and not _shards(tmp_path / "c")
    # someone's folder with features/ and snapshots/ in it: refused, nothing deleted
    mine = tmp_path / "mine"
    for sub in ("features/keep", "snapshots"):
        (mine / sub).mkdir(parents=True)
    (mine / "features" / "keep" / "x.npy").write_bytes(b"data")
    r = _cli("cache", "clear", "-y", "--cache-dir", str(mine))
    assert r.exit_code != 0 and MARKER in r.output and (mine / "features" / "keep" / "x.npy").exists()
    with pytest.raises(CacheError, match="not empty and not a rehead cache"):
        FeatureCache(mine).put("m", "k", np.zeros(3))
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a rehead cache"):
        FeatureCache(mine).put("m", "k", np.zeros(3))
    # a folder holding only a datasets/ of the user's, or another tool's CACHEDIR.TAG: never adopted or
    # cleared (`cache clear` deleted both)
    theirs = tmp_path / "theirs"
    (theirs / "datasets" / "mydata").mkdir(parents=True)
    (theirs / "datasets" / "mydata" / "labels.csv").write_text("precious")
    with pytest.raises(CacheError, match="not a rehead cache"):
        FeatureCache(theirs).put("m", "k", np.zeros(3))
    (theirs / MARKER).write_text("Signature: 8a477f597d28d172789f06886806bc55\n# another tool's cache\n")
    r = _cli("cache", "clear", "-y", "--cache-dir", str(theirs))
    assert r.exit_code != 0 and (theirs / "datasets" / "mydata" / "labels.csv").read_text() == "precious"
    # `rehead demo` writes its images under the default cache root before its first fit: adopted
    (tmp_path / "fresh" / "demo" / "digits").mkdir(parents=True)
    FeatureCache(tmp_path / "fresh").put("m", "k", np.zeros(3))
    assert (tmp_path / "fresh" / MARKER).is_file()


def test_clear_reports_what_it_could_not_delete(tmp_path, monkeypatch):
    import os
    cache = FeatureCache(tmp_path / "c")
    cache.put_many("m", ["a", "b"], np.ones((2, 3)))
    real = os.unlink

    def refuse(path, *a, **k):
        if str(path).endswith(".npy"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "unlink", refuse)
    r = _cli("cache", "clear", "-y", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 1 and "could not delete" in r.output and "cleared" not in r.output


@pytest.mark.parametrize("fault", ["disk full", "read-only index"])
def test_a_full_or_read_only_cache_stops_a_fit_with_one_clear_line(tmp_path, image_folder, tiny_spec,
                                                                    monkeypatch, fault):
    import errno
    import sqlite3
    from rehead import store
    from rehead.store import CacheError
    root = tmp_path / "c"
    if fault == "disk full":
        def full(path, rows):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        monkeypatch.setattr(store, "save_shard", full)
    else:
        FeatureCache(root).put("other", "k", np.zeros(3))  # the index exists; now open it read-only
        real = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", lambda p, **k: real(f"file:{p}?mode=ro", uri=True, **k))
        with pytest.raises(CacheError, match="--no-cache"):  # what a fit can ask before its run directory exists
            FeatureCache(root).check_writable()
    with pytest.raises(CacheError) as e:
        _fit(tmp_path, image_folder, tiny_spec, "run", root)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert str(root) in msg and "--no-cache" in msg and "--cache-dir" in msg


def test_info_and_gc_evict_the_least_recently_used_model_key(tmp_path):
    import os
    import time
    cache = FeatureCache(tmp_path / "c")
    cache.put_many("old", ["a", "b"], np.ones((2, 1000)))
    cache.put_many("new", ["a", "b"], np.ones((2, 1000)))
    cache.put_many("new", ["a"], np.full((1, 1000), 2.0))  # supersedes a row: one dead row in a live shard
    time.sleep(0.01)
    assert cache.get_all("old", ["a", "b"]) is not None  # reading "old" makes "new" the least recent
    orphan = tmp_path / "c" / "features" / "old" / "killed-writer.npy"
    orphan.write_bytes(b"x")
    os.utime(orphan, (0, 0))
    legacy = tmp_path / "c" / "features" / "old" / "ab"  # the old layout: one .npy per sample
    legacy.mkdir()
    (legacy / "ab12.npy").write_bytes(b"x")
    os.utime(legacy, (0, 0))
    r = _cli("cache", "info", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 0 and "2 model key(s), 3 shard(s), 4 sample(s)" in r.output
    per = {m["key"]: m for m in cache.size()["per_model"]}
    r = _cli("cache", "gc", "--max-size", f"{per['old']['bytes'] + 100}B", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 0 and "evicted 1 model key(s) (new)" in r.output
    assert not orphan.exists() and not legacy.exists()
    cache = FeatureCache(tmp_path / "c")
    assert cache.get_all("new", ["a"]) is None and cache.get_all("old", ["a", "b"]) is not None
    assert cache.size()["shards"] == 1 and not (tmp_path / "c" / "features" / "new").exists()


def test_gc_forgets_files_that_are_gone_or_changed(tmp_path, monkeypatch):
    import time
    from rehead import store
    from rehead.data import images
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    root = make_images(tmp_path / "d", n=3)
    files = sorted(str(p) for p in root.rglob("*.jpg"))
    cache = FeatureCache(tmp_path / "c")
    digests = cache.file_digests(files)
    cache.flush()
    assert not images.unreadable(files, cache)
    gone, changed = files[0], files[1]
    os.remove(gone)
    time.sleep(0.01)
    PIL.Image.new("RGB", (8, 8), "blue").save(changed)
    r = _cli("cache", "gc", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 0 and "forgot 2 file(s) gone or changed" in r.output, r.output
    with sqlite3_connect(tmp_path / "c") as db:
        for table in ("file_digests", "file_checks"):
            assert {p for (p,) in db.execute(f"SELECT path FROM {table}")} == set(files[2:])
    again = FeatureCache(tmp_path / "c")  # what is left still serves, and a changed file gets a new digest
    assert again.file_digests(files[1:]) == [hashlib_sha256(changed)] + digests[2:]


def hashlib_sha256(path) -> str:
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_sizes_read_as_people_write_them():
    from rehead.store import parse_size
    assert parse_size("500MB") == 500_000_000 and parse_size("1.5GiB") == 3 << 29 and parse_size("2g") == 2e9
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError, match="500MB"):
        parse_size("lots")
    r = _cli("cache", "gc", "--max-size", "-1GB")
    assert r.exit_code != 0 and "negative" in r.output


def test_an_index_of_another_layout_is_replaced_or_refused(tmp_path):
    import sqlite3
    from rehead.store import CacheError
    FeatureCache(tmp_path / "c")._ensure_root()
    with sqlite3.connect(tmp_path / "c" / "index.sqlite") as db:  # an older layout's table, version 0
        db.execute("CREATE TABLE shards(id INTEGER PRIMARY KEY, mkey TEXT)")
    cache = FeatureCache(tmp_path / "c")
    cache.put_many("m", ["a"], np.ones((1, 3)))
    assert cache.get_all("m", ["a"]).tolist() == [[1, 1, 1]]
    cache.close()
    with sqlite3.connect(tmp_path / "c" / "index.sqlite") as db:
        db.execute("PRAGMA user_version=999")
    with pytest.raises(CacheError, match="newer rehead"):
        FeatureCache(tmp_path / "c").get_all("m", ["a"])


# -- checks remembered by stat: shards verified once, readable images judged once -----------------
def test_a_checked_shard_is_trusted_until_its_stat_moves(tmp_path, monkeypatch):
    import time
    from rehead import store
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)  # the shard was just written: take its stat as settled
    keys = ["1" * 64, "2" * 64, "3" * 64]
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    FeatureCache(tmp_path / "c").put_many("m", keys, rows)
    assert np.array_equal(FeatureCache(tmp_path / "c").get_all("m", keys), rows)  # checked, then marked
    real = store.row_checks
    monkeypatch.setattr(store, "row_checks", lambda *a: pytest.fail("checked a row of an unchanged shard"))
    assert np.array_equal(FeatureCache(tmp_path / "c").get_all("m", keys), rows)
    # a key sharing the first half of another's id finds its row, but the mark is not for it: checked, refused
    monkeypatch.setattr(store, "row_checks", real)
    assert FeatureCache(tmp_path / "c").get("m", "1" * 16 + "f" * 48) is None
    # bytes flipped after the verified read: the write moves ctime, the rows are checked again
    time.sleep(0.05)  # past the file system clock's tick
    shard = _shards(tmp_path / "c")[0]
    raw = bytearray(shard.read_bytes())
    raw[_data_offset(shard) + 2] ^= 0x40
    shard.write_bytes(bytes(raw))
    got, ok = FeatureCache(tmp_path / "c").read("m", keys)
    assert ok.tolist() == [False, True, True] and np.array_equal(got[1:], rows[1:])


def test_a_corrupt_row_after_a_checked_read_is_recomputed(tmp_path, tiny_spec, monkeypatch):
    import time
    from rehead import store
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    items = _items(make_images(tmp_path / "d", n=3))
    bb = zoo.load(tiny_spec)
    first, _, _ = extract(bb, items, [len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    extract(bb, items, [len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)  # checks, marks
    with sqlite3_connect(tmp_path / "c") as db:
        assert db.execute("SELECT count(*) FROM shard_marks").fetchone()[0] == 1
    time.sleep(0.05)
    shard = _shards(tmp_path / "c")[0]
    raw = bytearray(shard.read_bytes())
    raw[_data_offset(shard) + 8] ^= 0xFF
    shard.write_bytes(bytes(raw))
    seen = []
    orig = type(bb).forward_cuts
    monkeypatch.setattr(type(bb), "forward_cuts", lambda self, x, c: seen.append(len(x)) or orig(self, x, c))
    again, kept, _ = extract(bb, items, [len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    assert seen == [1] and kept == list(range(len(items)))  # the damaged row only, recomputed
    assert torch.allclose(first[len(bb)], again[len(bb)], atol=1e-5)


def test_a_stat_younger_than_the_clock_tick_is_never_trusted(tmp_path):
    shard_rows = np.ones((2, 4), dtype=np.float32)
    cache = FeatureCache(tmp_path / "c")
    cache.put_many("m", ["a", "b"], shard_rows)
    assert cache.get_all("m", ["a", "b"]) is not None
    with sqlite3_connect(tmp_path / "c") as db:  # just written: a change in the same tick would keep its stat
        assert db.execute("SELECT count(*) FROM shard_marks").fetchone()[0] == 0
    shard = _shards(tmp_path / "c")[0]
    raw = bytearray(shard.read_bytes())
    raw[_data_offset(shard)] ^= 0x01  # at once: maybe within the same tick
    shard.write_bytes(bytes(raw))
    assert FeatureCache(tmp_path / "c").read("m", ["a", "b"])[1].tolist() == [False, True]


def test_readable_images_are_remembered_across_processes_until_they_change(tmp_path, monkeypatch):
    import os
    import time
    from rehead import store
    from rehead.data import images, load_dataset
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    root = make_images(tmp_path / "d", n=3)
    ds = load_dataset(root, memo=FeatureCache(tmp_path / "c"))
    assert not ds.skipped
    # a new process: nothing checked in memory; the store says every image is readable, none is opened
    monkeypatch.setattr(images, "_CHECKED", {})
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("decoded an unchanged image"))
    assert len(load_dataset(root, memo=FeatureCache(tmp_path / "c")).train.items) == len(ds.train.items)
    # one image corrupted in place after it was judged readable, size and mtime put back: ctime moved
    monkeypatch.setattr(PIL.Image, "open", real_open)
    monkeypatch.setattr(images, "_CHECKED", {})
    time.sleep(0.05)
    victim = root / "red" / "red_0.jpg"
    st = os.stat(victim)
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    bad = images.unreadable([str(p) for p in sorted(root.rglob("*.jpg"))], FeatureCache(tmp_path / "c"))
    assert list(bad) == [str(victim)]
    # without a settled stat nothing is remembered
    monkeypatch.setattr(store, "RACY_SECONDS", 3600.0)
    monkeypatch.setattr(images, "_CHECKED", {})
    fresh = make_images(tmp_path / "e", n=1)
    with sqlite3_connect(tmp_path / "c") as db:
        before = db.execute("SELECT count(*) FROM file_checks").fetchall()
        assert not images.unreadable([str(p) for p in fresh.rglob("*.jpg")], FeatureCache(tmp_path / "c"))
        assert db.execute("SELECT count(*) FROM file_checks").fetchall() == before


def sqlite3_connect(root):
    import contextlib
    import sqlite3
    return contextlib.closing(sqlite3.connect(root / "index.sqlite"))


def test_keys_use_the_stats_the_data_check_just_took_and_only_for_a_moment(tmp_path, monkeypatch):
    import time
    from rehead import store
    from rehead.data import images
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    root = make_images(tmp_path / "d", n=2)
    items = [str(p) for p in sorted(root.rglob("*.jpg"))]
    cache = FeatureCache(tmp_path / "c")
    before = cache.file_digests(items)
    cache.flush()
    monkeypatch.setattr(images, "_CHECKED", {})
    fit = FeatureCache(tmp_path / "c")  # one fit: checks its images, then keys them
    assert not images.unreadable(items, fit)
    time.sleep(0.05)
    PIL.Image.new("RGB", (40, 40), (0, 255, 0)).save(items[0])  # changed after the check, within the fit
    assert fit.file_digests(items) == before  # the fit keys the images as it checked them
    monkeypatch.setattr(store, "STAT_REUSE_SECONDS", 0.0)  # later (or another fit): stat'ed again
    now = fit.file_digests(items)
    assert now[0] != before[0] and now[1:] == before[1:]


def test_a_read_in_write_order_takes_the_shortcut_and_serves_the_same_rows(tmp_path, monkeypatch):
    """A run of rows in write order (a warm read) skips the key join; any other request joins. Both
    serve the same rows; a key rewritten in a newer shard is served from that shard when joined,
    and a damaged row is still refused on the shortcut."""
    from rehead import store
    import hashlib
    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)]
    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    cache = FeatureCache(tmp_path / "c")
    cache.put_many("m", keys[:3], rows[:3])
    cache.put_many("m", keys[3:], rows[3:])
    joined = []
    real_join = store.ShardIndex._join
    monkeypatch.setattr(store.ShardIndex, "_join", lambda self: joined.append(1) or real_join(self))
    got, ok = cache.read("m", keys)
    assert ok.all() and np.array_equal(got, rows) and not joined
    got, ok = cache.read("m", keys[2:5])  # a run across two shards (one split's keys)
    assert ok.all() and np.array_equal(got, rows[2:5]) and not joined
    perm = [5, 0, 3, 1, 4, 2]
    got, ok = cache.read("m", [keys[i] for i in perm])
    assert ok.all() and np.array_equal(got, rows[perm]) and joined
    cache.put_many("m", keys[:1], rows[:1] + 100)  # a newer row for the first key (values made to differ)
    joined.clear()
    got, ok = cache.read("m", keys[:1] + keys[2:])  # not a run: joined, the newest row wins
    assert joined and ok.all() and np.array_equal(got[0], rows[0] + 100)
    got, ok = cache.read("m", keys)  # a run serves its own rows, each checked (in real use: equal values)
    assert ok.all() and np.array_equal(got, rows)
    import time
    time.sleep(0.05)
    shard = sorted(_shards(tmp_path / "c"), key=lambda p: p.stat().st_mtime_ns)[0]
    raw = bytearray(shard.read_bytes())
    raw[_data_offset(shard) + 4 * 4 + 2] ^= 0x40  # keys[1]'s row
    shard.write_bytes(bytes(raw))
    joined.clear()
    got, ok = cache.read("m", keys + keys[:1])  # shards 1, 2, 3 in write order: the shortcut ...
    assert ok.tolist() == [True, False, True, True, True, True, True]  # ... the damaged row refused
    assert np.array_equal(got[2:6], rows[2:6]) and np.array_equal(got[6], rows[0] + 100)
    cache.put_many("m", keys[1:2], rows[1:2])  # its recomputation, in a newer shard
    joined.clear()
    got, ok = cache.read("m", keys)  # still a run; the damaged row's copy is found by the join
    assert joined and ok.all() and np.array_equal(got[1:], rows[1:])


def test_cache_info_names_each_model_key_even_one_cached_before_names(tmp_path, tiny_spec, image_folder, one_thread):
    import sqlite3
    from rehead.fit import fit
    c = tmp_path / "c"
    kw = dict(model=tiny_spec, strategy="extract", epochs=1, workers=0, progress=False, echo=lambda *_: None,
              cache_dir=str(c))
    fit(str(image_folder), out=tmp_path / "a", cut=2, **kw)
    stage = zoo.load(tiny_spec).stage_names[1]
    r = _cli("cache", "info", "--cache-dir", str(c))
    assert r.exit_code == 0 and f"{tiny_spec} cut 2 ({stage})" in r.output, r.output
    # an index written before the names table: still read, and named when its features are next used
    db = sqlite3.connect(str(c / "index.sqlite"))
    db.execute("DROP TABLE model_names")
    db.commit()
    db.close()
    r = _cli("cache", "info", "--cache-dir", str(c))
    assert r.exit_code == 0 and "(unnamed: cached before names)" in r.output
    fit(str(image_folder), out=tmp_path / "b", cut=2, **kw)
    r = _cli("cache", "info", "--cache-dir", str(c))
    assert f"{tiny_spec} cut 2 ({stage})" in r.output and "unnamed" not in r.output, r.output


def test_cache_info_on_a_missing_or_foreign_folder_says_so(tmp_path):
    """A typo'd --cache-dir read as an empty cache ("0 model key(s)"), and so did a folder of photos."""
    r = _cli("cache", "info", "--cache-dir", str(tmp_path / "typo"))
    assert r.exit_code == 0 and "does not exist (check --cache-dir)" in r.output and "0 model" not in r.output
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    for cmd in ("info", "gc"):
        r = _cli("cache", cmd, "--cache-dir", str(tmp_path / "photos"))
        assert r.exit_code == 0 and "is not a rehead feature cache" in r.output, r.output
    assert (tmp_path / "photos" / "cat.jpg").exists()


def test_gc_on_an_empty_cache_and_clear_without_a_terminal_say_so(tmp_path, tiny_spec):
    """`cache gc` on a cache with no index died in KeyError 'forgotten_files'; `cache clear </dev/null`
    in "error: Abort: (unexpected ...)"."""
    r = _cli("cache", "gc", "--cache-dir", str(tmp_path / "none"))
    assert r.exit_code == 0 and "does not exist (check --cache-dir)" in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = _cli("cache", "gc", "--cache-dir", str(tmp_path / "empty"))
    assert r.exit_code == 0 and "freed 0" in r.output, r.output
    items = _items(make_images(tmp_path / "d", n=2))
    bb = zoo.load(tiny_spec)
    extract(bb, items, [len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    r = _cli("cache", "clear", "--cache-dir", str(tmp_path / "c"))  # CliRunner's stdin is no terminal
    assert r.exit_code == 2 and "pass -y" in r.output and _shards(tmp_path / "c"), r.output


# -- shard files deleted by hand; a read-only cache; a resumed extraction says so ------------------
def _put(cache, mkey, keys, value):
    """put_many, returning the new shard's path."""
    before = set(_shards(cache.root))
    cache.put_many(mkey, keys, np.full((len(keys), 1000), value))
    return (set(_shards(cache.root)) - before).pop()


def test_info_and_gc_count_only_shard_files_that_exist(tmp_path):
    """After `rm -rf $REHEAD_CACHE/features`, info counted the deleted shards and gc 'freed' their bytes."""
    cache = FeatureCache(tmp_path / "c")
    _put(cache, "m", ["a", "b"], 1.0).unlink()  # deleted by hand: live rows, gone
    older = _put(cache, "m", ["c"], 1.0)
    _put(cache, "m", ["c"], 2.0).unlink()  # the newer copy gone: the older one serves again, never freed
    _put(cache, "m", ["d"], 1.0).unlink()  # superseded and gone: nothing to free
    _put(cache, "m", ["d"], 3.0)
    _put(cache, "gone", ["x"], 1.0).unlink()  # every shard of a key gone
    r = _cli("cache", "info", "--cache-dir", str(tmp_path / "c"))
    assert r.exit_code == 0 and "2 shard(s), 2 sample(s)" in r.output and "4 index entries point to missing" \
        in r.output, r.output
    assert cache.size()["missing_shards"] == 4
    res = FeatureCache(tmp_path / "c").gc()
    assert res["freed_bytes"] == 0 and res["missing_shards"] == 4 and older.exists()
    again = FeatureCache(tmp_path / "c")
    s = again.size()
    assert (s["models"], s["shards"], s["entries"], s["missing_shards"]) == (1, 2, 2, 0)
    assert again.get("m", "c")[0] == 1.0 and again.get("m", "d")[0] == 3.0 and again.get("m", "a") is None
    r = _cli("cache", "info", "--cache-dir", str(tmp_path / "c"))
    assert "1 model key(s), 2 shard(s), 2 sample(s)" in r.output and "missing" not in r.output, r.output


def test_the_store_knows_a_read_only_root(tmp_path, monkeypatch):
    from rehead import store
    cache = FeatureCache(tmp_path / "c")
    assert not cache.read_only()  # absent: created on the first write
    cache.put("m", "k", np.zeros(3))
    assert not cache.read_only()
    real = os.statvfs

    class ReadOnlyMount:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY
    monkeypatch.setattr(store.os, "statvfs", ReadOnlyMount)
    assert cache.read_only()
    monkeypatch.undo()
    monkeypatch.setattr(store.os, "access", lambda p, mode: False)  # a folder this user may not write
    assert cache.read_only()


def _read_only(monkeypatch):
    """The store sees a read-only root, and a WAL index opens there as it does on a read-only mount
    (no -shm file, none may be created): the plain open fails."""
    import sqlite3
    from rehead import store

    def no_shm(db):
        raise sqlite3.OperationalError("unable to open database file")
    monkeypatch.setattr(store, "_set_wal", no_shm)
    monkeypatch.setattr(store.ShardStore, "read_only", lambda self: True, raising=False)


def test_a_read_only_cache_is_read_and_errors_name_each_commands_options(tmp_path, monkeypatch, tiny_spec):
    """`rehead cache info` on a read-only cache failed with 'pass --no-cache', an option it lacks."""
    from rehead.store import CacheError
    root = tmp_path / "c"
    cache = FeatureCache(root)
    shard = _put(cache, "m", ["a", "b"], 1.0)
    cache.close()
    _read_only(monkeypatch)
    r = _cli("cache", "info", "--cache-dir", str(root))
    assert r.exit_code == 0 and "1 shard(s), 2 sample(s)" in r.output, r.output
    r = _cli("cache", "gc", "--cache-dir", str(root))  # nothing to delete: a read-only cache is fine
    assert r.exit_code == 0 and "freed 0.0 MB" in r.output, r.output
    shard.unlink()  # now gc must write: refused, with the options a cache command has
    r = _cli("cache", "gc", "--cache-dir", str(root))
    assert r.exit_code != 0 and "--cache-dir" in r.output and "REHEAD_CACHE" in r.output, r.output
    assert "--no-cache" not in r.output and len(r.output.strip().splitlines()) == 1
    # a fit's store: reads what is there, refuses writes up front with a fit's options
    ro = FeatureCache(root)
    assert ro.get("m", "a") is None  # read, a miss (its shard is gone)
    with pytest.raises(CacheError, match="read-only: pass --no-cache"):
        ro.check_writable()
    items = _items(make_images(tmp_path / "d", n=2))
    bb = zoo.load(tiny_spec)
    with pytest.raises(CacheError, match="read-only and lacks 4 of the 4 features needed: pass --no-cache"):
        extract(bb, items, [len(bb)], ro, workers=0, progress=False)


def test_a_resumed_extraction_says_what_the_cache_already_held(tmp_path, tiny_spec, monkeypatch, capsys):
    """After Ctrl-C, the rerun's bar counted only the rest ('extract train 0/88'), saying nothing."""
    items = _items(make_images(tmp_path / "d", n=4))  # 8 images
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    cache.shard_rows = 2
    orig = type(bb).forward_cuts
    calls = []

    def dies_on_third_batch(self, x, c):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(x))
        return orig(self, x, c)
    monkeypatch.setattr(type(bb), "forward_cuts", dies_on_third_batch)
    kw = dict(batch_size=2, workers=0, progress=True, desc="extract train")
    with pytest.raises(KeyboardInterrupt):
        extract(bb, items, [len(bb)], cache, **kw)
    assert "already in the cache" not in capsys.readouterr().out  # a cold start says nothing
    monkeypatch.setattr(type(bb), "forward_cuts", orig)
    extract(bb, items, [len(bb)], cache, **kw)
    out = capsys.readouterr().out
    assert out.count("4 of 8 train features were already in the cache (an earlier run): computing the other 4") \
        == 1, out
    extract(bb, items, [len(bb)], cache, **kw)  # fully warm: nothing to compute, nothing said
    assert "already in the cache" not in capsys.readouterr().out


def test_a_fit_the_cache_serves_whole_runs_on_a_read_only_cache(tmp_path, monkeypatch, tiny_spec):
    """A team's read-only cache was refused even when every feature a fit needs was in it; a fit that
    must write is still refused before its run directory exists."""
    import rehead
    from rehead.store import CacheError
    data, root = make_images(tmp_path / "d", n=6), tmp_path / "c"
    kw = dict(model=tiny_spec, strategy="extract", workers=0, progress=False, echo=lambda *a: None, cache_dir=str(root))
    first = rehead.fit(str(data), out=str(tmp_path / "a"), **kw)
    _read_only(monkeypatch)
    again = rehead.fit(str(data), out=str(tmp_path / "b"), **kw)
    assert again.summary["val_acc"] == first.summary["val_acc"]
    with pytest.raises(CacheError, match="read-only"):
        rehead.fit(str(data), out=str(tmp_path / "c2"), cut=2, **kw)  # features at another cut: must write
    assert not (tmp_path / "c2").exists()
