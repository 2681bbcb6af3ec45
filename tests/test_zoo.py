"""Sources: packaged weights are real and mapped right; file:/timm: give clear errors."""
import pytest
import torch

from rehead import zoo
from rehead.zoo.packaged import lite0_key_to_timm, lite0_weights_path
from tests.conftest import shared_dataset


def test_lite0_mapping_covers_every_key_one_to_one():
    import timm
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = {lite0_key_to_timm(k): v for k, v in sd.items()}
    assert len(mapped) == len(sd) == len(target)
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


def test_packaged_backbone_carries_its_preprocessing():
    bb = zoo.load("packaged:efficientnet_lite0")
    assert bb.stage_names[0] == "stem" and bb.stage_names[-1] == "head_conv" and len(bb) == 9
    # TF-trained weights: inputs scaled to [-1, 1], not ImageNet mean/std.
    assert bb.data_config["mean"] == [0.5, 0.5, 0.5] and bb.data_config["std"] == [0.5, 0.5, 0.5]
    assert bb.data_config["input_size"] == 224 and bb.data_config["interpolation"] == "bicubic"
    assert bb.source_head[0].out_features == 1000


def _imagenet_top5(bb, paths, cfg=None):
    from rehead.data.images import ImageDataset
    ds = ImageDataset(paths, None, cfg or bb.data_config)
    top5 = []
    with torch.inference_mode():
        for i in range(0, len(ds), 32):
            x = torch.stack([ds[j][1] for j in range(i, min(i + 32, len(ds)))])
            logits = bb.source_head[0](bb(x))
            top5.append(logits.topk(5).indices)
    return torch.cat(top5)


def test_packaged_weights_are_real_imagenet_weights():
    """The ImageNet head finds 'ant' (310) / 'bee' (309) in the top 5 for >= 90% of val photos."""
    root = shared_dataset("hymenoptera_data") / "val"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    want = torch.tensor([310 if "/ants/" in p else 309 for p in paths])
    bb = zoo.load("packaged:efficientnet_lite0").eval()
    top5 = _imagenet_top5(bb, paths)
    hit = (top5 == want[:, None]).any(1).float().mean().item()
    assert hit >= 0.90, hit
    # The right normalisation matters: ImageNet mean/std on these weights is clearly worse.
    wrong = dict(bb.data_config, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    hit_wrong = (_imagenet_top5(bb, paths[::3], wrong) == want[::3, None]).any(1).float().mean().item()
    hit_right = (top5[::3] == want[::3, None]).any(1).float().mean().item()
    assert hit_right > hit_wrong


def test_unknown_models_and_sources_say_what_exists():
    with pytest.raises(zoo.ModelNotFound, match="packaged models"):
        zoo.load("packaged:nope")
    with pytest.raises(zoo.ModelNotFound, match="sources are"):
        zoo.load("zzz:resnet18")
    with pytest.raises(zoo.ModelNotFound, match="did you mean"):
        zoo.load("timm:resnet1")
    with pytest.raises(zoo.ModelNotFound, match="not a model spec"):
        zoo.load("efficientnet_lite0")


def test_timm_offline_error_points_to_file(monkeypatch):
    import timm
    def boom(*a, **k):
        if k.get("pretrained"):
            raise OSError("network is unreachable")
        return orig(*a, **k)
    orig = timm.create_model
    monkeypatch.setattr(timm, "create_model", boom)
    with pytest.raises(zoo.ModelNotFound, match=r"file:PATH#timm:resnet18"):
        zoo.load("timm:resnet18")


def test_file_source_loads_weights_and_names_mismatched_keys(tmp_path, tiny_spec):
    from safetensors.torch import save_file
    bb = zoo.load(tiny_spec)
    assert len(bb) >= 3 and bb.data_config["input_size"] == 160
    # The same weights as a torch state_dict (.pth) load too, with weights_only=True.
    import timm
    m = timm.create_model("test_efficientnet")
    sd = m.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    zoo.load(f"file:{tmp_path / 'w.pth'}#timm:test_efficientnet")
    # Weights of another architecture: the error names the keys.
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(zoo.ModelNotFound, match=r"unexpected: foo.weight"):
        zoo.load(f"file:{tmp_path / 'bad.safetensors'}#timm:test_efficientnet")
    with pytest.raises(zoo.ModelNotFound, match="needs its architecture"):
        zoo.load(f"file:{tmp_path / 'w.pth'}")


def test_bare_names_get_a_did_you_mean():
    with pytest.raises(zoo.ModelNotFound, match=r"not a model spec: did you mean timm:resnet18\?"):
        zoo.load("resnet18")
    with pytest.raises(zoo.ModelNotFound, match=r"did you mean timm:convnext_atto.d2_in1k\?"):
        zoo.load("convnext_atto.d2_in1k")
    with pytest.raises(zoo.ModelNotFound, match=r"did you mean packaged:efficientnet_lite0\?"):
        zoo.load("efficientnet_lite0")
    with pytest.raises(zoo.ModelNotFound, match=r"did you mean timm:hf-hub:timm/resnet18.a1_in1k\?"):
        zoo.load("hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(zoo.ModelNotFound, match=r"not a model spec\. Use SOURCE:NAME"):
        zoo.load("no_such_thing_anywhere")


def test_timm_pretrained_tags_carry_their_preprocessing():
    tv = zoo.load("timm:resnet18.tv_in1k", pretrained=False)
    a1 = zoo.load("timm:resnet18.a1_in1k", pretrained=False)
    assert tv.stage_names == a1.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert (tv.data_config["interpolation"], tv.data_config["crop_pct"]) == ("bilinear", 0.875)
    assert (a1.data_config["interpolation"], a1.data_config["crop_pct"]) == ("bicubic", 0.95)
    assert tv.spec == "timm:resnet18.tv_in1k"
    with pytest.raises(zoo.ModelNotFound, match=r"tags for resnet18: .*a1_in1k.*tv_in1k"):
        zoo.load("timm:resnet18.nope_in1k")


def test_hub_ids_offline_say_how_to_use_a_local_file(monkeypatch):
    import timm

    def offline(name, *a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(zoo.ModelNotFound, match=r"file:PATH#timm:<architecture>.*timm:local-dir:FOLDER"):
        zoo.load("timm:hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(zoo.ModelNotFound, match=r"file:PATH#timm:resnet18.a1_in1k"):
        zoo.load("timm:resnet18.a1_in1k")
    with pytest.raises(zoo.ModelNotFound, match=r"file:PATH#torchvision:resnet50"):
        zoo.load("torchvision:resnet50")


def test_torchvision_weights_load_into_timms_copy_and_give_torchvisions_features(tmp_path, one_thread):
    import torchvision
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    bb = zoo.load(f"file:{tmp_path / 'r18.pth'}#torchvision:resnet18")
    assert bb.data_config["interpolation"] == "bilinear"  # torchvision's own preprocessing
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tv.fc = torch.nn.Identity()
        torch.testing.assert_close(bb(x), tv(x), atol=1e-5, rtol=0)
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        torch.testing.assert_close(bb.cut("layer2")(x), tv.layer2(tv.layer1(t)).mean((2, 3)), atol=1e-5, rtol=0)
    with pytest.raises(zoo.ModelNotFound, match="no timm equivalent.*timm has its own efficientnet_b0: timm:efficientnet_b0"):
        zoo.load("torchvision:efficientnet_b0")


def test_the_source_model_as_it_is_names_imagenet_classes():
    root = shared_dataset("hymenoptera_data") / "val"
    from rehead.data.images import ImageDataset
    bb = zoo.load("packaged:efficientnet_lite0")
    assert len(bb.source_labels) == 1000 and bb.source_labels[310] == "ant, emmet, pismire"
    paths = sorted(str(p) for p in (root / "ants").glob("*.jpg"))[:8]
    ds = ImageDataset(paths, None, bb.data_config)
    top = bb.source_predict(torch.stack([ds[i][1] for i in range(len(ds))]), top_k=5)
    assert len(top) == 8 and all(len(t) == 5 and t[0]["prob"] >= t[-1]["prob"] for t in top)
    assert sum(any(r["label"].startswith("ant,") for r in t) for t in top) >= 6
    with pytest.raises(ValueError, match="no pretrained head"):
        bb.cut(3).source_predict(torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("name,size", [("regnet_y_400mf", 64), pytest.param("densenet121", 64, marks=pytest.mark.slow),
                                       pytest.param("inception_v3", 96, marks=pytest.mark.slow)])
def test_torchvision_state_dicts_map_through_timms_checkpoint_filters(tmp_path, name, size, one_thread):
    """Names timm's copy does not share (RegNet, DenseNet) go through timm's own checkpoint filter;
    the features are torchvision's penultimate layer."""
    import torchvision
    torch.manual_seed(0)
    tv = torchvision.models.get_model(name, weights=None, **({"init_weights": False} if name == "inception_v3" else {}))
    tv.eval()
    torch.save(tv.state_dict(), tmp_path / "w.pth")
    bb = zoo.load(f"file:{tmp_path / 'w.pth'}#torchvision:{name}")
    for attr in ("fc", "classifier"):
        if hasattr(tv, attr):
            setattr(tv, attr, torch.nn.Identity())
    tv.aux_logits, tv.AuxLogits = False, None
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), tv(x), atol=1e-4, rtol=0)


def test_a_downloaded_hub_folder_loads_offline_as_timm_local_dir(tmp_path, one_thread):
    """`timm:local-dir:FOLDER` (a hub repo copied: config.json + model.safetensors) loads its weights
    with no network, and has a stamp, so a warm fit can skip building it."""
    import json
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    m = timm.create_model("resnet10t", pretrained=False).eval()
    cfg = dict(m.pretrained_cfg)
    cfg.pop("hf_hub_id", None)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 1000,
                                                      "pretrained_cfg": cfg}, default=str))
    save_file(m.state_dict(), str(tmp_path / "model.safetensors"))
    bb = zoo.load(f"timm:local-dir:{tmp_path}")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), m.forward_head(m.forward_features(x), pre_logits=True), atol=1e-6, rtol=0)
    assert zoo.weights_stamp(f"timm:local-dir:{tmp_path}") and zoo.weights_stamp("timm:resnet18") is None
