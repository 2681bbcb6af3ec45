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
