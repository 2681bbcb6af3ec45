"""L2-SP, Guided Transfer Learning, forgetting: the hooks do what the papers say, inside fit."""
import pytest
import torch
from torch import nn

from rehead import zoo
from rehead.fit import fit
from rehead.heads import make_head
from rehead.methods import (GuidedTransfer, L2SP, compute_guide, hooks_from_config, method_hooks,
                            scout_subsets, source_agreement, source_predictions)
from rehead.model import TransferModel
from rehead.train.callbacks import as_trainer


def quiet(*_):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


def drift(run, spec):
    """||w - w_pretrained|| over the run's backbone."""
    w0 = zoo.load(spec).cut(len(run.model.backbone)).state_dict()
    return sum(((v.float().cpu() - w0[k].float()) ** 2).sum() for k, v in run.model.backbone.state_dict().items()
               if v.is_floating_point() and "running" not in k) ** 0.5


def test_l2sp_penalty_is_distance_from_pretrained_plus_l2_on_head(tiny_spec):
    bb = zoo.load(tiny_spec)
    model = TransferModel(bb, make_head(bb(torch.zeros(1, 3, 64, 64)).shape[1], 2))
    hook = L2SP(alpha=2.0, beta=0.5)
    hook.bind(model)
    head_l2 = sum((p ** 2).sum() for p in model.head.parameters())
    assert torch.allclose(hook.penalty(as_trainer(model)), 0.5 * 0.5 * head_l2)
    p = next(model.backbone.stages[bb.stage_names[-1]].parameters())
    with torch.no_grad():
        p.add_(0.1)
    expected = 0.5 * 2.0 * 0.01 * p.numel() + 0.5 * 0.5 * head_l2
    assert torch.allclose(hook.penalty(as_trainer(model)), expected, rtol=1e-4)
    model.freeze()  # frozen weights cannot move: they are not penalised
    assert torch.allclose(hook.penalty(as_trainer(model)), 0.5 * 0.5 * head_l2)


def test_l2sp_in_fit_keeps_the_backbone_near_its_pretrained_weights(tmp_path):
    from rehead.pretrain import pretrain
    from tests.test_tabular import low_rank_table
    p, _ = low_rank_table(tmp_path / "t.csv")
    pretrain(p, tmp_path / "enc", width=16, depth=2, epochs=5, label_column="a", id_columns="patient,b",
             progress=False, echo=quiet)
    kw = dict(model=str(tmp_path / "enc"), strategy="full", epochs=6, lr=1e-2, batch_size=8, progress=False,
              label_column="a", echo=quiet)
    plain = fit(p, out=tmp_path / "plain", **kw)
    l2sp = fit(p, out=tmp_path / "l2sp", hooks=method_hooks("l2sp", alpha=100.0, beta=0.01), **kw)
    spec = str(tmp_path / "enc")
    assert drift(l2sp, spec) < 0.5 * drift(plain, spec)
    assert l2sp.config["methods"] == [{"method": "l2sp", "alpha": 100.0, "beta": 0.01}]
    assert all(p["weight_decay"] == 0.0 for p in l2sp.config["phases"])  # L2-SP replaces weight decay
    assert plain.config["methods"] == [] and plain.config["phases"][0]["weight_decay"] > 0


def test_scout_subsets_are_small_seeded_and_cover_every_class():
    labels = [0] * 30 + [1] * 3
    subs = scout_subsets(labels, 4, 5, seed=1)
    assert len(subs) == 4 and all(len(s) == 5 for s in subs)
    assert all({labels[i] for i in s} == {0, 1} for s in subs)
    assert subs == scout_subsets(labels, 4, 5, seed=1) and subs != scout_subsets(labels, 4, 5, seed=2)


def _loader_over(x, y):
    data = torch.utils.data.TensorDataset(torch.arange(len(y)), x, y)

    def make_loader(idx, generator):
        return torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=4, shuffle=True,
                                           generator=generator)
    return make_loader


def test_guide_values_are_normalised_squared_scout_changes():
    torch.manual_seed(0)
    bb = zoo.load("tabular:mlp-6-8x3")
    model = TransferModel(bb, nn.Linear(8, 2))
    x, y = torch.randn(24, 6), torch.randint(0, 2, (24,))
    guide = compute_guide(model, _loader_over(x, y), y.tolist(), n_scouts=3, scout_size=8, epochs=3,
                          lr=1e-2, trainable=1, seed=0)
    assert set(guide) == {n for n, _ in model.named_parameters()}
    for n, g in guide.items():
        assert g.shape == dict(model.named_parameters())[n].shape
        assert g.min() >= 0 and g.max() <= 1
    # Scouts trained the head and the last block only: earlier blocks get guide 0 (they may not move).
    assert all(guide[n].abs().sum() == 0 for n in guide if "block0" in n or "block1" in n)
    assert guide["head.weight"].max() == 1 and guide["backbone.stages.block2.0.weight"].max() == 1
    # The scouts started from the model and left it untouched.
    assert model.head.weight.requires_grad


def test_guided_hook_multiplies_every_gradient_by_its_guide():
    lin = nn.Linear(3, 2)
    guide = {"weight": torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]]), "bias": torch.tensor([0.5, 0.0])}
    lin(torch.randn(4, 3)).pow(2).sum().backward()
    raw = {n: p.grad.clone() for n, p in lin.named_parameters()}
    GuidedTransfer(guide=guide, guide_on="gradient").after_backward(as_trainer(lin))
    for n, p in lin.named_parameters():
        assert torch.allclose(p.grad, raw[n] * guide[n])
    with pytest.raises(ValueError, match="another model"):
        GuidedTransfer(guide={"weight": guide["weight"]}).after_backward(as_trainer(nn.Linear(3, 2)))


def _adamw_steps(hook, steps=5):
    torch.manual_seed(0)
    lin = nn.Linear(4, 1)
    w0 = lin.weight.detach().clone()
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for _ in range(steps):
        opt.zero_grad()
        ((lin(x) - y) ** 2).mean().backward()
        if hook:
            hook.after_backward(as_trainer(lin))
        opt.step()
        if hook:
            hook.after_step(as_trainer(lin))
    return lin.weight.detach() - w0


def test_under_adamw_only_guided_updates_change_the_steps():
    """Adam divides each gradient by its running RMS, so a constant factor on a gradient cancels:
    the paper's gradient rule barely changes AdamW's steps; the update rule scales them."""
    half = {"weight": torch.full((1, 4), 0.5), "bias": torch.full((1,), 0.5)}
    plain = _adamw_steps(None)
    on_grad = _adamw_steps(GuidedTransfer(guide=half, guide_on="gradient"))
    on_update = _adamw_steps(GuidedTransfer(guide=half, guide_on="update"))
    assert torch.allclose(on_grad, plain, rtol=1e-3, atol=1e-6)
    assert on_update.norm() < 0.75 * plain.norm()
    one_plain = _adamw_steps(None, steps=1)
    assert torch.allclose(_adamw_steps(GuidedTransfer(guide=half, guide_on="update"), steps=1), 0.5 * one_plain)
    zero = {"weight": torch.tensor([[0.0, 1.0, 1.0, 1.0]]), "bias": torch.ones(1)}
    moved = _adamw_steps(GuidedTransfer(guide=zero, guide_on="update"))
    assert moved[0, 0] == 0 and (moved[0, 1:] != 0).all()  # guide 0: the weight never moves


def test_guided_fit_runs_scouts_saves_guides_and_freezes_zero_guide_weights(tmp_path, image_folder, tiny_spec):
    from safetensors.torch import load_file
    hooks = method_hooks("guided", scouts=2, scout_size=6, scout_epochs=1)
    said = []
    run = fit(image_folder, model=tiny_spec, out=tmp_path / "g", strategy="finetune", unfreeze=1, epochs=1,
              batch_size=8, workers=0, progress=False, hooks=hooks, echo=said.append)
    guide = load_file(str(tmp_path / "g" / "guide.safetensors"))
    # the scouts are said, and what they found: the share of weights the guide holds still
    assert any(line.startswith("guided: 2 scouts of 6 training samples, 1 epochs") for line in said)
    held = float((torch.cat([g.flatten() for g in guide.values()]) < 0.01).float().mean())
    assert any(f"{held:.0%} of" in line and "guide.safetensors" in line for line in said)
    assert set(guide) == {n for n, _ in run.model.named_parameters()}
    last = run.model.backbone.stage_names[-1]
    assert any(guide[n].max() > 0 for n in guide if f"stages.{last}." in n)
    assert all(guide[n].max() == 0 for n in guide if ".stages.stem." in n)  # never trained by a scout
    assert run.config["methods"][0]["method"] == "guided"
    rebuilt = hooks_from_config(run.config["methods"])
    assert isinstance(rebuilt[0], GuidedTransfer) and rebuilt[0].scouts == 2
    with pytest.raises(ValueError, match="not extract"):
        fit(image_folder, model=tiny_spec, out=tmp_path / "x", strategy="extract", workers=0, progress=False,
            hooks=method_hooks("guided"), echo=quiet)
    with pytest.raises(ValueError, match="method must be one of"):
        method_hooks("sgd")


def test_forgetting_is_measured_with_the_source_head(tiny_spec):
    bb = zoo.load(tiny_spec).eval()
    x = torch.randn(6, 3, 64, 64)
    before = source_predictions(bb, x)
    with torch.no_grad():
        assert torch.equal(before, bb.source_head[0](bb(x)).argmax(1))
    assert source_agreement(before, source_predictions(bb, x)) == 1.0
    with torch.no_grad():  # wreck the last stage: predictions change
        for p in bb.stages[bb.stage_names[-1]].parameters():
            p.mul_(-3.0)
    assert source_agreement(before, source_predictions(bb, x)) < 1.0
    with pytest.raises(ValueError, match="no source head"):
        source_predictions(zoo.load("tabular:mlp-4-4x1"), torch.zeros(2, 4))


def test_method_options_without_their_method_and_methods_with_extract_are_refused(tmp_path, image_folder, tiny_spec):
    from rehead.config import ConfigError, FitConfig
    for kw, flag in (({"alpha": 0.5}, "--alpha"), ({"scouts": 3}, "--scouts"), ({"lora_rank": 4}, "--lora-rank")):
        with pytest.raises(ConfigError, match=f"{flag} is an option of --method"):  # recorded, never applied
            FitConfig(**kw)
    assert FitConfig(method="l2sp", alpha=0.5).alpha == 0.5
    with pytest.raises(ConfigError, match="l2sp .*not extract"):  # it was recorded as applied, changing nothing
        fit(image_folder, model=tiny_spec, out=tmp_path / "x", strategy="extract", method="l2sp", workers=0,
            progress=False, echo=quiet)
    assert not (tmp_path / "x").exists()


def test_guided_scouts_as_large_as_the_training_split_are_refused_before_anything_is_written(tmp_path, image_folder,
                                                                                            tiny_spec):
    with pytest.raises(ValueError, match="--scout-size 1000 is the whole training split"):
        fit(image_folder, model=tiny_spec, out=tmp_path / "g", strategy="finetune", method="guided", scout_size=1000,
            epochs=1, workers=0, progress=False, echo=quiet)
    assert not (tmp_path / "g").exists()


def test_cli_source_agreement_with_data_is_refused_not_dropped(tmp_path, image_folder, tiny_spec):
    from typer.testing import CliRunner
    from rehead.cli import app
    fit(image_folder, model=tiny_spec, out=tmp_path / "r", strategy="extract", workers=0, progress=False, echo=quiet)
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "r"), str(image_folder), "--source-agreement",
                                 str(image_folder)])
    assert r.exit_code == 2 and "scores no DATA" in r.output and "agreement" not in r.output.split("error")[0]


def _encoder(tmp_path):
    """A tiny table and an encoder pretrained on it (the golub repro in small)."""
    from rehead.pretrain import pretrain
    from tests.test_tabular import low_rank_table
    p, _ = low_rank_table(tmp_path / "t.csv")
    pretrain(p, tmp_path / "enc", width=16, depth=2, epochs=2, label_column="a", id_columns="patient,b",
             progress=False, echo=quiet)
    return p, dict(model=str(tmp_path / "enc"), label_column="a", id_columns="patient,b", batch_size=8,
                   workers=0, progress=False)


def test_auto_with_a_backbone_method_plans_backbone_training_and_says_so(tmp_path, image_folder, tiny_spec):
    said = []  # auto alone extracts on this data (test_fit's test_auto_strategy_says_what_it_chose)
    run = fit(image_folder, model=tiny_spec, out=tmp_path / "r", method="l2sp", alpha=5.0, epochs=1, workers=0,
              progress=False, echo=said.append)
    assert run.config["strategy"] != "extract" and any(p["trainable"] != 0 for p in run.config["phases"])
    assert any(s.startswith("strategy auto -> ") and "--method l2sp needs backbone training" in s for s in said)
    assert run.config["methods"] == [{"method": "l2sp", "alpha": 5.0, "beta": 0.01}]


def test_auto_that_cannot_afford_backbone_training_refuses_a_backbone_method_before_writing(tmp_path, image_folder,
                                                                                           tiny_spec, monkeypatch):
    from rehead import auto
    from rehead.config import ConfigError
    monkeypatch.setattr(auto, "time_epoch", lambda *a, **k: 1e9)  # no unfrozen epoch fits the budget
    with pytest.raises(ConfigError, match="--method l2sp needs backbone training.*--strategy finetune"):
        fit(image_folder, model=tiny_spec, out=tmp_path / "r", method="l2sp", workers=0, progress=False, echo=quiet)
    assert not (tmp_path / "r").exists()


def test_decide_with_a_backbone_method_never_plans_extract():
    from rehead.auto import decide
    for n in (5, 200):  # similarity unmeasured; small + similar
        row = {"cut": 4, "stage": "s4", "acc": 0.99, "skill": 0.98}
        plan = decide(None if n == 5 else [row], n, 4, chance=0.5, needs_training="guided")
        assert plan["unfreeze"] and plan["strategy"] != "extract", plan
        assert "--method guided needs backbone training" in plan["reason"]
    assert decide(None, 5, 4)["strategy"] == "extract"


def test_guided_on_a_table_with_auto_trains_the_encoder_and_leaves_no_broken_run(tmp_path):
    p, kw = _encoder(tmp_path)  # was: refused after auto's probe, leaving a run --resume could never finish
    said = []
    run = fit(p, out=tmp_path / "g", method="guided", scouts=2, scout_size=6, scout_epochs=1, epochs=1,
              echo=said.append, **kw)
    assert run.config["strategy"] != "extract" and (tmp_path / "g" / "guide.safetensors").exists()
    assert any("--method guided needs backbone training" in s for s in said)


def test_a_backbone_method_where_no_backbone_weight_trains_is_refused_before_the_run_directory(tmp_path,
                                                                                            image_folder, tiny_spec):
    from rehead.config import ConfigError
    allowed = "finetune, gradual or full"  # one list, in every such refusal
    for kw in ({"strategy": "head", "method": "guided"}, {"strategy": "head", "method": "l2sp"},
               {"strategy": "extract", "hooks": method_hooks("guided")},
               {"strategy": "extract", "hooks": method_hooks("l2sp")},
               {"strategy": "auto", "task": "multilabel", "method": "l2sp"}):
        with pytest.raises(ConfigError, match=allowed):
            fit(image_folder, model=tiny_spec, out=tmp_path / "x", epochs=1, workers=0, progress=False, echo=quiet,
                **kw)
        assert not (tmp_path / "x").exists(), kw
