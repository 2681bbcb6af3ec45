"""The feature cache: a hit opens no image and runs no forward; any change recomputes."""
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
    from rehead.data.images import ImageDataset
    items = _items(make_images(tmp_path / "d", n=3))
    bb = zoo.load(tiny_spec).eval()
    f, _, _ = extract(bb, items, [2, len(bb)], FeatureCache(tmp_path / "c"), workers=0, progress=False)
    x = torch.stack([ImageDataset(items, None, bb.data_config)[i][1] for i in range(len(items))])
    with torch.no_grad():
        assert torch.allclose(f[len(bb)], bb(x), atol=1e-5)
        assert torch.allclose(f[2], bb.cut(2)(x), atol=1e-5)


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


def test_interrupted_or_corrupt_entries_never_load_as_valid(tmp_path, tiny_spec):
    items = _items(make_images(tmp_path / "d", n=2))
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")
    extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    files = sorted((tmp_path / "c" / "features").rglob("*.npy"))
    assert len(files) == len(items)
    # a write killed half-way: only the temp file exists, never a truncated .npy
    files[0].write_bytes(files[0].read_bytes()[:20])  # simulate a torn file anyway
    mk = cache.model_key(bb, len(bb))
    assert cache.get(mk, files[0].stem) is None  # treated as a miss, recomputed
    f, kept, _ = extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    assert len(kept) == len(items) and np.load(files[0]).shape == (f[len(bb)].shape[1],)
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def test_a_write_killed_midway_leaves_no_entry(tmp_path, tiny_spec, monkeypatch):
    import os
    items = _items(make_images(tmp_path / "d", n=1))
    bb = zoo.load(tiny_spec)
    cache = FeatureCache(tmp_path / "c")

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies between writing the bytes and the rename
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        extract(bb, items, [len(bb)], cache, workers=0, progress=False)
    monkeypatch.undo()
    assert not list((tmp_path / "c").rglob("*.npy"))
    assert not list((tmp_path / "c").rglob(".tmp-*"))


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
    assert s["entries"] == 4 and s["bytes"] > 0 and s["models"] == 1
    cache.clear()
    assert cache.size()["entries"] == 0
