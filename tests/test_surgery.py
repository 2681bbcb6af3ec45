"""Stages, cut, graft, freeze: what a user relies on when cutting a network."""
import pytest
import torch

from rehead import zoo
from rehead.heads import make_head
from rehead.model import TransferModel


@pytest.fixture
def bb(tiny_spec):
    return zoo.load(tiny_spec)


def test_cut_by_index_and_by_name_keep_the_same_prefix(bb):
    names = bb.stage_names
    by_name = bb.cut(names[2])
    by_index = bb.cut(3)
    assert by_name.stage_names == by_index.stage_names == names[:3]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(by_name(x), by_index(x))
    assert bb.cut(-1).stage_names == names[:-1]
    with pytest.raises(ValueError, match="no stage named"):
        bb.cut("nope")
    with pytest.raises(ValueError, match="between 1 and"):
        bb.cut(len(names) + 1)


def test_forward_cuts_matches_separate_cuts(bb):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        many = bb.forward_cuts(x, [1, 3, len(bb)])
        for k, f in many.items():
            assert torch.allclose(f, bb.cut(k)(x), atol=1e-6)


def test_describe_lists_shapes_and_params(bb):
    rows = bb.describe(torch.zeros(1, 3, 64, 64))
    assert [r["name"] for r in rows] == bb.stage_names
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in bb.stages.parameters())
    assert all(len(r["output_shape"]) == 3 for r in rows[:-1])  # (C, H, W) of the map each stage pools
    assert len(rows[-1]["output_shape"]) in (1, 3)  # a pre_logits / head_conv stage: the vector a head reads


def _model(bb, k=None, **kw):
    prefix = bb.cut(k or len(bb))
    dim = prefix.eval()(torch.zeros(1, 3, 32, 32)).shape[1]
    return TransferModel(prefix, make_head(dim, 3, **kw))


def test_freeze_sets_requires_grad_and_frozen_bn_stays_in_eval(bb):
    m = _model(bb).set_trainable_last(1)
    frozen_stage = list(m.backbone.stages.values())[0]
    last_stage = list(m.backbone.stages.values())[-1]
    assert not any(p.requires_grad for p in frozen_stage.parameters())
    assert all(p.requires_grad for p in last_stage.parameters())
    m.train()
    bns = [mod for mod in frozen_stage.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert last_stage.training
    before = bns[0].running_mean.clone()
    m(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, bns[0].running_mean)  # pretrained statistics untouched
    # The switch: frozen BatchNorm keeps training its statistics.
    m2 = _model(bb)
    m2.train_frozen_bn = True
    m2.set_trainable_last(1).train()
    assert any(mod.training for mod in list(m2.backbone.stages.values())[0].modules()
               if isinstance(mod, torch.nn.BatchNorm2d))


def test_frozen_prefix_stores_no_activations_and_gets_no_grads(bb):
    m = _model(bb).set_trainable_last(0)
    m.train()
    feats = m.features(torch.randn(2, 3, 32, 32))
    assert not feats.requires_grad  # the whole prefix ran without autograd
    loss = m.head(feats).sum()
    loss.backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(p.grad is not None for p in m.head.parameters())


def test_discriminative_lrs_and_no_decay_on_norms_and_biases(bb):
    m = _model(bb).set_trainable_last(2)
    groups = m.param_groups(1e-3, lr_decay=3.0, weight_decay=0.01)
    by_name = {}
    for g in groups:
        by_name.setdefault(g["name"].split(":no_decay")[0], g["lr"])
        if g["name"].endswith(":no_decay"):
            assert g["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.01 and all(p.ndim > 1 for p in g["params"])
    lrs = list(by_name.values())
    assert list(by_name)[-1] == "head" and lrs[-1] == pytest.approx(1e-3)
    assert lrs == pytest.approx([1e-3 / 9, 1e-3 / 3, 1e-3])
    spread = [g["lr"] for g in m.param_groups(1e-3, lr_min=1e-5) if not g["name"].endswith("no_decay")]
    assert spread[0] == pytest.approx(1e-5) and spread[-1] == pytest.approx(1e-3)
    # every trainable parameter is in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in m.parameters() if p.requires_grad)


def test_heads():
    assert isinstance(make_head(8, 2)[-1], torch.nn.Linear)
    mlp = make_head(8, 2, "mlp", hidden=16, dropout=0.5)
    assert [type(l).__name__ for l in mlp] == ["Linear", "ReLU", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="linear' or 'mlp"):
        make_head(8, 2, "conv")


def test_freeze_bn_keeps_pretrained_statistics_in_trainable_stages(bb):
    m = _model(bb)
    m.freeze_bn = True
    m.set_trainable_last(-1).train()
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert all(p.requires_grad for p in m.backbone.parameters())  # still trainable, only statistics kept
    before = [b.running_mean.clone() for b in bns]
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, bns))


def _timm_bb(arch, **kw):
    import timm
    from rehead.zoo.backbone import image_data_config
    from rehead.zoo.timm_stages import timm_backbone
    torch.manual_seed(0)
    m = timm.create_model(arch, pretrained=False, **kw)
    return timm_backbone(m, f"test:{arch}", dict(image_data_config(m.pretrained_cfg), input_size=kw["img_size"]))


def test_layer_wise_lr_decay_per_block_from_timms_group_matcher():
    from timm.optim._param_groups import param_groups_layer_decay
    bb = _timm_bb("vit_tiny_patch16_224", img_size=32, depth=4)
    m = TransferModel(bb, make_head(192, 3), layer_decay=0.5).set_trainable_last(-1)
    groups = m.param_groups(1e-3, weight_decay=0.05)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    # every trainable parameter once; the head at lr, the embeddings lowest, then each block x2
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in m.parameters() if p.requires_grad)
    assert all(lr_of[id(p)] == pytest.approx(1e-3) for p in m.head.parameters())
    vit = bb.model
    assert lr_of[id(vit.patch_embed.proj.weight)] == pytest.approx(1e-3 * 0.5 ** 5)
    for i, blk in enumerate(vit.blocks):
        assert all(lr_of[id(p)] == pytest.approx(1e-3 * 0.5 ** (4 - i)) for p in blk.parameters())
    assert lr_of[id(vit.norm.weight)] == pytest.approx(1e-3 * 0.5)  # timm: the final norm with the last block
    # the scales are timm's own (param_groups_layer_decay over group_matcher)
    for g in param_groups_layer_decay(vit, layer_decay=0.5):
        for p in g["params"]:
            if id(p) in lr_of:
                assert lr_of[id(p)] == pytest.approx(1e-3 * g["lr_scale"])
    # position embedding and class token: no weight decay (timm's no_weight_decay), like norms and biases
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd_of[id(vit.pos_embed)] == wd_of[id(vit.cls_token)] == wd_of[id(vit.blocks[0].norm1.weight)] == 0.0
    assert wd_of[id(vit.blocks[0].attn.qkv.weight)] == 0.05
    assert [g["name"] for g in groups][:2] == ["layer0", "layer0:no_decay"] and groups[-1]["name"].startswith("head")
    # frozen stages stay out; without layer_decay the per-stage groups are unchanged
    m.set_trainable_last(2)
    kept = {id(p) for g in m.param_groups(1e-3) for p in g["params"]}
    assert id(vit.blocks[0].attn.qkv.weight) not in kept and id(vit.norm.weight) in kept
    m.layer_decay = None
    assert all(g["name"].startswith(("stage:", "head")) for g in m.param_groups(1e-3))


def test_layer_wise_lr_decay_is_finer_than_stages_for_swin():
    bb = _timm_bb("swin_tiny_patch4_window7_224", img_size=32, embed_dim=24, depths=(2, 2, 2, 2),
                  num_heads=(1, 1, 1, 1), window_size=2)
    m = TransferModel(bb, make_head(192, 3)).set_trainable_last(-1)
    lrs = {g["lr"] for g in m.param_groups(1e-3, layer_decay=0.8)}
    stage_lrs = {g["lr"] for g in m.param_groups(1e-3, lr_decay=2.0)}
    assert len(lrs) > len(stage_lrs) == len(bb) + 1  # per block, not per stage
