"""Contract tests: every timm family rehead claims is cut by timm's own API, and agrees with timm.

For each architecture (built with ``pretrained=False``, shrunk through timm's own kwargs where the
default is large, at a small input size):

- full depth: ``backbone(x)`` equals timm's ``forward_head(forward_features(x), pre_logits=True)``;
- every cut k: ``backbone.cut(k)(x)`` (timm-pruned) equals timm's ``forward_intermediates`` output
  k-1 of the whole model, averaged over spatial positions (ViT-likes: patch tokens only); and
  ``forward_cuts`` gives every cut from one pass;
- the stages' state dict holds every weight the features use (load it into a model built from
  another seed: the same features), and nothing but the classifier is left out;
- ``rehead.fit`` (extract, 1 epoch) then ``rehead.export`` (ONNX, run by onnxruntime) on a few
  generated images, through the ``contract:`` source registered here: it builds the same untrained
  timm model from ``zoo.register_source``, so no weights need to exist anywhere.

Run with ``-m "not slow"`` to skip the larger models (Inception-v3, Xception) and the fit/export runs
of all but a few families.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rehead import zoo
from rehead.zoo.backbone import image_data_config
from tests.conftest import atol, make_images

# name: (timm model, timm kwargs, input size). Tiny variants, or timm's own size kwargs.
ARCHS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=64, depth=2), 64),
    "deit": ("deit_tiny_patch16_224", dict(img_size=64, depth=2), 64),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2), 64),
    "deit3": ("deit3_small_patch16_224", dict(img_size=64, depth=2, embed_dim=48, num_heads=2), 64),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=64, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2), 64),
    "swinv2": ("swinv2_tiny_window8_256",
               dict(img_size=64, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2), 64),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=56, depth=2), 56),
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=56, depth=2, embed_dim=48, num_heads=2), 56),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, depth=2, embed_dim=48, num_heads=2), 56),
    "beit": ("beit_base_patch16_224", dict(img_size=64, depth=2, embed_dim=48, num_heads=2), 64),
    "convnext": ("convnext_atto", {}, 64),
    "convnextv2": ("convnextv2_atto", {}, 64),
    "regnetx": ("regnetx_002", {}, 64),
    "regnety": ("regnety_002", {}, 64),
    "resnet": ("resnet10t", {}, 64),
    "resnet_d": ("test_resnet", {}, 64),
    "efficientnet": ("efficientnet_b0", {}, 64),
    "efficientnet_lite": ("tf_efficientnet_lite0", {}, 64),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 64),
    "mobilenetv4": ("mobilenetv4_conv_small_035", {}, 64),
    "ghostnet": ("ghostnet_050", {}, 64),
    "inception_v3": ("inception_v3", {}, 75),
    "xception": ("xception41", {}, 64),
    "levit": ("levit_128s", dict(img_size=64), 64),
    "levit_conv": ("levit_conv_128s", dict(img_size=64), 64),
    "efficientformer": ("efficientformer_l1", dict(depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_vit=1), 224),
    "pvt_v2": ("pvt_v2_b0", {}, 64),
    "edgenext": ("edgenext_xx_small", {}, 64),
    "fastvit": ("fastvit_t8", {}, 64),
    "densenet": ("densenet121", {}, 64),
    "nfnet": ("test_nfnet", {}, 64),
    "byobnet": ("test_byobnet", {}, 64),
    "maxvit": ("test_maxvit", {}, 160),
    "lcnet": ("lcnet_050", {}, 64),
    "legacy_xception": ("legacy_xception", {}, 64),
}
SLOW = {"inception_v3", "xception", "legacy_xception", "densenet"}  # 8-27 M parameters: seconds each on a busy CPU
FIT_FAST = {"vit", "swin", "convnext", "efficientnet_lite", "mobilenetv3", "levit"}  # fit+export outside -m slow


def _build(name: str, pretrained: bool = True):
    import timm
    arch, kw, size = ARCHS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kw)
    return model, dict(image_data_config(model.pretrained_cfg), input_size=size)


@zoo.register_source("contract", "tests only: contract:<key of ARCHS in tests/test_timm_contract.py>, "
                                 "an untrained timm model")
def _load_contract(name: str, pretrained: bool = True):
    from rehead.zoo.timm_stages import timm_backbone
    model, cfg = _build(name)
    return timm_backbone(model, f"contract:{name}", cfg)


def _params(name):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in name]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("name", _params(ARCHS))
def test_features_equal_timms_own(name):
    bb = zoo.load(f"contract:{name}")
    m = bb.model
    size = bb.data_config["input_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_full = m.forward_head(m.forward_features(x), pre_logits=True)
        inter = m.forward_intermediates(x, intermediates_only=True, **bb.plan["extra"])
        torch.testing.assert_close(bb(x), want_full, atol=1e-5, rtol=0)
        cuts = list(range(1, len(bb) + 1))
        many = bb.forward_cuts(x, cuts)
        torch.testing.assert_close(many[len(bb)], want_full, atol=1e-5, rtol=0)
        for k in cuts[:-1]:
            want = inter[k - 1].mean((2, 3))  # the same pooling at every intermediate cut
            prefix = bb.cut(k)
            assert prefix.stage_names == bb.stage_names[:k]
            # a cut holds exactly its stages' weights (what cache snapshots and run reloads assume)
            kept = tuple(f"stages.{n}." for n in prefix.stage_names)
            assert set(prefix.state_dict()) == {key for key in bb.state_dict() if key.startswith(kept)}
            torch.testing.assert_close(prefix(x), want, atol=1e-5, rtol=0)
            torch.testing.assert_close(many[k], want, atol=1e-5, rtol=0)
        # cutting leaves the whole backbone as it was
        torch.testing.assert_close(bb(x), want_full, atol=1e-5, rtol=0)
    # `rehead inspect`: one row per stage; a stage's channels are its pooled feature width
    rows = bb.describe(x[:1])
    assert [r["name"] for r in rows] == bb.stage_names
    assert all(rows[k - 1]["output_shape"][0] == many[k].shape[1] for k in cuts[:-1])
    if len(bb) > len(inter):  # a pre_logits / head_conv stage outputs the feature vector itself (not NHWC,
        assert rows[-1]["output_shape"] == tuple(many[len(bb)].shape[1:])  # tokens or the map before conv_head)
    else:
        assert rows[-1]["output_shape"][0] == many[len(bb)].shape[1]
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in bb.parameters())
    assert bb.stage_names[-1] in ("pre_logits", "head_conv") or len(bb) == len(inter)

    # The stages hold every weight the features use, and only the classifier stays out.
    head = m.get_classifier()
    heads = {id(p) for h in (head if isinstance(head, tuple) else (head,)) if isinstance(h, torch.nn.Module)
             for p in h.parameters()}
    mine = {id(p) for p in bb.parameters()}
    left = [n for n, p in m.named_parameters() if id(p) not in mine and id(p) not in heads]
    assert not left, f"weights in no stage: {left[:5]}"
    other = zoo.load(f"contract:{name}")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
        other.load_state_dict(bb.state_dict())
        torch.testing.assert_close(other(x), want_full, atol=1e-5, rtol=0)
        k = max(1, len(bb) // 2)
        mid = other.cut(k)
        mid.load_state_dict(bb.cut(k).state_dict())
        torch.testing.assert_close(mid(x), bb.cut(k)(x), atol=1e-5, rtol=0)


def _fit_params():
    return [n if n in FIT_FAST else pytest.param(n, marks=pytest.mark.slow) for n in ARCHS]


@pytest.mark.parametrize("name", _fit_params())
def test_extract_fit_and_onnx_export(name, tmp_path):
    from rehead.export import export, load_exported
    from rehead.fit import fit
    data = make_images(tmp_path / "imgs", n=4, size=40)
    # An MLP head (one AdamW epoch): a linear head would be solved, and on 8 separable images CV picks
    # the weakest L2, whose large weights turn float noise between ONNX and torch into visible logits.
    run = fit(str(data), model=f"contract:{name}", out=tmp_path / "run", strategy="extract", epochs=1,
              head="mlp", hidden=32, workers=0, batch_size=8, cache_dir=str(tmp_path / "cache"), progress=False,
              echo=lambda *_: None)
    res = export(run.dir, "onnx")
    f = load_exported(res["path"])
    size = run.model.backbone.data_config["input_size"]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = run.model.eval().cpu()(x).numpy()  # the export runs on the CPU: so does the reference
    # relative to the logits' size: untrained Inception-v3 gives logits of ~1e7
    np.testing.assert_allclose(f(x.numpy()), want, rtol=1e-5, atol=1e-4 * (1 + np.abs(want).max()))
    # the pretrained classifier is kept with the run (LeViT's: a distilled pair of heads on one feature),
    # except DeiT-distilled's, whose two heads read two tokens (refused: see below)
    heads = _build(name)[0].get_classifier()
    kept = name != "deit_distilled" and any(True for h in (heads if isinstance(heads, tuple) else (heads,))
                                           for _ in h.parameters())
    assert (run.dir / "source_head.safetensors").exists() == kept
    if name == "levit":
        from rehead.run import Run
        bb = Run(run.dir).model.backbone.eval().cpu()
        ref = _build(name)[0].eval()
        with torch.no_grad():
            torch.testing.assert_close(bb.source_head[0](bb(x)), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vit", "convnext", "efficientnet_lite", "swin"])
def test_finetune_trains_only_the_unfrozen_stages(name):
    """Stages run lazily (one timm call at pool time): frozen stages still get no gradients and keep
    their BatchNorm statistics, and the trainable ones do train."""
    from rehead.heads import make_head
    from rehead.model import TransferModel
    bb = zoo.load(f"contract:{name}")
    size = bb.data_config["input_size"]
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = bb.eval()(x)
    m = TransferModel(bb, make_head(want.shape[1], 2)).set_trainable_last(2).eval()
    with torch.no_grad():
        torch.testing.assert_close(m.features(x), want, atol=1e-5, rtol=0)
    m.train()
    frozen = [p for s in list(bb.stages.values())[:-2] for p in s.parameters()]
    trained = [p for s in list(bb.stages.values())[-2:] for p in s.parameters()]
    bns = [mod for s in list(bb.stages.values())[:-2] for mod in s.modules()
           if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    before = [b.running_mean.clone() for b in bns]
    torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 0, 1])).backward()
    assert frozen and all(p.grad is None for p in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, bns))


def test_every_cut_from_one_pass_per_batch(tmp_path, monkeypatch):
    """``extract`` at every depth calls timm once per batch (as the probe does), and its features
    are the cuts' own."""
    from rehead.data.images import ImageDataset
    from rehead.features import FeatureCache, extract
    from rehead.zoo.timm_stages import TimmBackbone
    bb = zoo.load("contract:vit")
    items = sorted(str(p) for p in make_images(tmp_path / "d", n=3).rglob("*.jpg"))
    calls = []
    orig = TimmBackbone._features
    monkeypatch.setattr(TimmBackbone, "_features", lambda self, x, c: calls.append(list(c)) or orig(self, x, c))
    cuts = list(range(1, len(bb) + 1))
    f, kept, _ = extract(bb, items, cuts, FeatureCache(tmp_path / "c"), batch_size=4, workers=0, progress=False)
    assert len(calls) == 2 and all(c == cuts for c in calls)
    x = torch.stack([ImageDataset(items, None, bb.data_config)[i][1] for i in range(len(items))])
    with torch.no_grad():
        for k in cuts:
            torch.testing.assert_close(f[k], bb.cut(k)(x), atol=atol(1e-5), rtol=0)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("name", ["vit", "eva02", "swin"])
def test_moving_the_backbone_moves_what_timm_runs(name, overwrite):
    """``.to()`` (device or dtype) on the backbone reaches every tensor timm uses, including those
    held one by one (class token, position embedding, EVA's q/v biases), also when torch makes new
    parameter objects on conversion."""
    import copy
    bb = zoo.load(f"contract:{name}")
    size = bb.data_config["input_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4)).double()
    ref = copy.deepcopy(bb.model).double()
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
    old = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    try:
        bb = bb.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(old)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), want, atol=1e-9, rtol=0)
        torch.testing.assert_close(bb.cut(1)(x), ref.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
                                   .mean((2, 3)), atol=1e-9, rtol=0)


# -- what rehead cannot carry is refused, truthfully ---------------------------------------------

def test_distilled_heads_on_one_feature_are_kept_and_give_timms_own_logits():
    """LeViT and EfficientFormer average two heads that read the same pooled feature: rehead keeps both
    as the source head, and its logits are timm's."""
    import timm
    from rehead.zoo.timm_stages import timm_backbone
    torch.manual_seed(0)
    eff = timm.create_model("efficientformer_l1", pretrained=False, depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32),
                            num_vit=1)
    for bb, size in ((zoo.load("contract:levit"), 64),
                     (timm_backbone(eff, "eff", dict(image_data_config(eff.pretrained_cfg), input_size=224)), 224)):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
        assert isinstance(bb.model.get_classifier(), tuple) and bb.source_head[0] is not None
        with torch.no_grad():
            want = bb.model.eval()(x)
            torch.testing.assert_close(bb.source_head[0](bb(x)), want, atol=1e-5, rtol=1e-5)
        top = bb.source_predict(x, top_k=1)
        assert [t[0]["index"] for t in top] == want.argmax(1).tolist()


def test_distilled_deit_is_refused_as_a_pair_of_heads_not_as_headless():
    """DeiT-distilled's two heads read two tokens; rehead's feature is their mean, so no head on it gives
    timm's logits: none is kept, and predicting with it says why (not "no pretrained head")."""
    bb = zoo.load("contract:deit_distilled")
    assert bb.source_head[0] is None
    x = torch.randn(1, 3, 64, 64)
    for b in (bb, bb.cut(len(bb))):
        with pytest.raises(ValueError, match="has a pretrained classifier.*distilled pair of heads.*does not carry"):
            b.source_predict(x)
    from rehead.methods import source_predictions  # forgetting (evaluate --source-agreement) says the same
    with pytest.raises(ValueError, match="has a pretrained classifier.*distilled pair of heads.*does not carry"):
        source_predictions(bb, x)


def test_grayscale_models_are_refused_up_front():
    import timm
    from rehead.zoo.timm_stages import timm_backbone
    model = timm.create_model("resnet10t", pretrained=False, in_chans=1)
    cfg = dict(image_data_config(model.pretrained_cfg), input_size=32)
    with pytest.raises(ValueError, match="^gray takes 1-channel input; rehead's image pipeline feeds RGB"):
        timm_backbone(model, "gray", cfg)
    del model.in_chans  # a model that does not say: read off its first convolution when 3 channels fail
    with pytest.raises(ValueError, match="^gray takes 1-channel input; rehead's image pipeline feeds RGB"):
        timm_backbone(model, "gray", cfg)


@pytest.mark.parametrize("arch,kw,size", [
    # feature_info names modules the model does not have
    ("twins_svt_small", dict(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
     64),
    # two branches side by side: a forward pass does not go through the feature points in order
    ("crossvit_tiny_240", dict(depth=((1, 1, 0), (1, 1, 0)), embed_dim=[16, 32], num_heads=[1, 1]), 240),
])
def test_families_rehead_cannot_cut_are_refused_in_user_terms(arch, kw, size):
    import timm
    from rehead.zoo.timm_stages import timm_backbone
    model = timm.create_model(arch, pretrained=False, **kw)
    with pytest.raises(ValueError, match="models cannot be cut into stages by rehead: .*Use another family, e.g. "
                                         "timm:resnet50"):
        timm_backbone(model, arch, dict(image_data_config(model.pretrained_cfg), input_size=size))
