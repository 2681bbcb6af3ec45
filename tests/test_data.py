"""Image data discovery and the clear errors a user gets for bad input."""
import pytest

from rehead.data import DataError, load_dataset
from tests.conftest import make_images, shared_dataset


def test_class_folders_are_split_stratified_and_seeded(tmp_path):
    root = make_images(tmp_path / "d", classes=("red", "blue", "green"), n=10)
    a = load_dataset(root, val_fraction=0.2, seed=1)
    b = load_dataset(root, val_fraction=0.2, seed=1)
    assert a.classes == ["blue", "green", "red"]
    assert a.val.items == b.val.items and len(a.val) == 6
    assert sorted(a.val.labels) == [0, 0, 1, 1, 2, 2]
    assert not set(a.val.items) & set(a.train.items)


def test_train_val_folders_are_used_as_given():
    ds = load_dataset(shared_dataset("hymenoptera_data"))
    assert ds.classes == ["ants", "bees"] and len(ds.train) == 244 and len(ds.val) == 153


def test_csv_of_path_label(tmp_path):
    make_images(tmp_path / "img", n=6)
    rows = ["path,label"] + [f"img/{c}/{c}_{i}.jpg,{c}" for c in ("red", "blue") for i in range(6)]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    ds = load_dataset(tmp_path / "data.csv", val_fraction=0.5)
    assert len(ds.train) + len(ds.val) == 12 and ds.classes == ["blue", "red"]
    (tmp_path / "bad.csv").write_text("file,label\nx.jpg,a\n")
    with pytest.raises(DataError, match="lacks column.*path"):
        load_dataset(tmp_path / "bad.csv", modality="image")


def test_empty_class_folder_single_class_and_no_images_are_clear_errors(tmp_path):
    root = make_images(tmp_path / "d", n=4)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*contain no images"):
        load_dataset(root)
    one = make_images(tmp_path / "one", classes=("red",), n=4)
    with pytest.raises(DataError, match="single class"):
        load_dataset(one)
    (tmp_path / "none" / "a").mkdir(parents=True)
    (tmp_path / "none" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path / "none")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")


@pytest.mark.parametrize("interp,crop_pct", [("bicubic", 0.875), ("bilinear", 0.95), ("bilinear", 1.0)])
def test_fast_eval_transform_matches_torchvision(interp, crop_pct):
    # The decoding workers' resize+crop+normalise in one PIL call: the same pixels as torchvision's
    # composition (within one 8-bit level of rounding), on portrait, landscape, square and odd sizes.
    import numpy as np
    import torch
    from PIL import Image
    from rehead.data.images import EvalTransform, eval_transform
    cfg = {"input_size": 224, "crop_pct": crop_pct, "interpolation": interp, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    fast = eval_transform(cfg)
    assert isinstance(fast, EvalTransform)
    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (375, 500), (300, 300), (257, 901), (1000, 236), (225, 224)]:
        small = Image.fromarray(rng.integers(0, 255, (h // 20 + 2, w // 20 + 2, 3), dtype=np.uint8))
        im = small.resize((w, h), Image.BICUBIC)
        a, b = fast(im), fast.reference(im)
        assert a.shape == b.shape == (3, 224, 224)
        level = 1 / (255 * min(cfg["std"]))
        assert float((a - b).abs().max()) <= level * 1.01
        assert float((a - b).abs().mean()) < level * 0.01
    gray = Image.fromarray(rng.integers(0, 255, (300, 400), dtype=np.uint8))
    assert torch.equal(fast(gray), fast.reference(gray))  # anything but RGB: the reference itself
    assert not isinstance(eval_transform({**cfg, "interpolation": "nearest"}), EvalTransform)
    assert not isinstance(eval_transform({**cfg, "crop_pct": 1.2}), EvalTransform)  # the crop pads


def test_raw_crops_normalised_on_the_device_equal_the_workers_floats(tmp_path):
    # On a GPU, extraction's workers send 8-bit crops that the device normalises: the same float32
    # multiply-add, so the same values bit for bit; and the batch comes in channels_last either way.
    import numpy as np
    import torch
    from PIL import Image
    from rehead.data.images import make_loader, normalise

    class BB:
        data_config = {"input_size": 64, "crop_pct": 0.875, "interpolation": "bicubic",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(120, 90), (90, 120), (80, 80), (200, 75), (75, 75)]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    paths.append(str(tmp_path / "bad.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    for workers in (0, 1):
        (i0, f, _), = make_loader(BB, paths, None, batch_size=8, workers=workers)
        (i1, r, _), = make_loader(BB, paths, None, batch_size=8, workers=workers, raw=True)
        assert i0.tolist() == i1.tolist() == [0, 1, 2, 3, 4]  # the unreadable one skipped in both
        assert f.dtype == torch.float32 and r.dtype == torch.uint8 and r.shape == f.shape == (5, 3, 64, 64)
        assert f.is_contiguous(memory_format=torch.channels_last)
        assert r.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(normalise(r, BB.data_config), f)
        assert normalise(f, BB.data_config) is f  # floats pass as they are
    # a transform other than the eval one ignores raw: floats, as before
    (_, a, _), = make_loader(BB, paths[:2], None, batch_size=8, workers=0, raw=True,
                             transform=lambda im: torch.zeros(3, 64, 64))
    assert a.dtype == torch.float32


def test_label_sets_given_as_lists_are_read_as_label_sets():
    """(item, [labels]) pairs and a Hugging Face Sequence(ClassLabel) column were read as one label per
    whole list ("['even', 'small']", "[0, 2]"): six "labels" for three, silently."""
    import pyarrow as pa
    from rehead.data import from_items
    from rehead.data.streams import _labels
    assert _labels(pa.array([[0, 1], [2], [], None]), ["even", "loop", "small"]) == ["even|loop", "small", "|", ""]
    items = [f"t{i}" for i in range(20)]
    labels = [["even", "small"] if i % 2 else ("even",) if i % 3 else [] for i in range(20)]
    ds = from_items(items, labels, "text", "pairs", task="multilabel")
    assert ds.classes == ["even", "small"]
