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
    assert all(len(r["output_shape"]) == 3 for r in rows)


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
