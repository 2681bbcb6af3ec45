"""The one training loop: its events, its refusal to go on after a non-finite loss, and the
LR finder and Guided Transfer scouts running through it."""
import numpy as np
import pytest
import torch
from torch import nn

from rehead.recipes import Phase
from rehead.train.callbacks import Callback, EVENTS, TrainingDiverged
from rehead.train.loop import IndexedTensors, TrainConfig, Trainer


def data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return IndexedTensors(x, (x[:, 0] > 0).long())


class Recorder(Callback):
    def __init__(self):
        self.seen = []

    def __getattr__(self, name):  # every event, in the order the loop fires them
        if name in EVENTS:
            return lambda tr: self.seen.append(name)
        raise AttributeError(name)

    def penalty(self, tr):
        self.seen.append("penalty")
        return 0.0


def test_events_fire_in_order(one_thread):
    rec = Recorder()
    tr = Trainer(TrainConfig(progress=False, hooks=[rec]))
    tr.fit(nn.Linear(4, 2), data(16), data(8, 1), [Phase("a", 1, 1e-2, trainable=None), Phase("b", 2, 1e-2)],
           batch_size=8)
    step = ["before_step", "after_pred", "penalty", "after_loss", "after_backward", "after_step"]
    epoch = ["before_epoch", *step, *step, "before_validate", "after_epoch"]
    assert rec.seen == ["setup", "before_phase", *epoch, "after_phase",
                        "before_phase", *epoch, *epoch, "after_phase", "after_fit"]
    assert [(r["phase"], r["epoch"]) for r in tr.history] == [("a", 1), ("b", 1), ("b", 2)]
    # what was kept is never hidden: the best epoch overall and each phase's best
    best = max(tr.history, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert tr.kept["global_epoch"] == best["global_epoch"] and tr.kept["val_acc"] == best["val_acc"]
    assert [p["phase"] for p in tr.phase_best] == ["a", "b"] and tr.phase_best[1]["epochs_run"] == 2


def test_weight_ema_is_what_val_scores_and_what_the_phase_ends_with(one_thread):
    from rehead.train.callbacks import Callback, WeightEMA

    class Raw(Callback):
        order = 60  # after the step, before anything swaps weights

        def after_step(self, tr):
            self.last = {k: v.detach().clone() for k, v in tr.net.state_dict().items()}

        def before_validate(self, tr):
            self.trained = {k: v.detach().clone() for k, v in tr.net.state_dict().items()}

    ema, raw = WeightEMA(0.9), Raw()
    model = nn.Linear(4, 2)
    tr = Trainer(TrainConfig(progress=False, select_best=False, hooks=[ema, raw]))
    tr.fit(model, data(16), data(8, 1), [Phase("b", 3, 1e-1)], batch_size=8)
    assert torch.allclose(model.weight, ema.avg["weight"])  # the phase ends averaged
    assert not torch.allclose(model.weight, raw.last["weight"])  # not with the last step's weights


def test_a_non_finite_loss_stops_with_the_phase_and_epoch(one_thread):
    d = data(16)
    d.x[11, 2] = float("nan")  # the second batch of the epoch
    with pytest.raises(TrainingDiverged, match=r"phase 'head', epoch 1, step 2: the loss is nan.*lower --lr"):
        Trainer(TrainConfig(progress=False)).fit(nn.Linear(4, 2), d, data(8, 1), [Phase("head", 3, 1e-2)],
                                                  make_loader=lambda s, shuffle, g: torch.utils.data.DataLoader(s, 8))


def test_lr_find_and_scouts_run_through_the_loop(monkeypatch, one_thread):
    from rehead import zoo
    from rehead.methods import compute_guide
    from rehead.model import TransferModel
    from rehead.train.lr_find import lr_find
    fits = []
    orig = Trainer.fit

    def spy(self, *a, **k):
        fits.append([type(c).__name__ for c in self.callbacks])
        return orig(self, *a, **k)
    monkeypatch.setattr(Trainer, "fit", spy)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    loader = torch.utils.data.DataLoader(data(32), batch_size=8, shuffle=True)
    res = lr_find(model, loader, nn.CrossEntropyLoss(), steps=30)
    assert fits == [["LRRange"]] and 5 <= len(res["lrs"]) <= 30
    assert res["lrs"] == sorted(res["lrs"])
    # the range test stops once the smoothed loss is 4x its minimum, long before the last step
    res = lr_find(model, loader, nn.CrossEntropyLoss(), steps=1000, start_lr=1e-3, end_lr=1e6)
    assert len(res["lrs"]) < 1000 and res["losses"][-1] > 4 * min(res["losses"])
    fits.clear()
    bb = zoo.load("tabular:mlp-6-8x2")
    tm = TransferModel(bb, nn.Linear(8, 2))
    x, y = torch.randn(24, 6), torch.randint(0, 2, (24,))
    ds = torch.utils.data.TensorDataset(torch.arange(24), x, y)
    compute_guide(tm, lambda idx, g: torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=4,
                                                                 shuffle=True, generator=g),
                  y.tolist(), n_scouts=3, scout_size=8, epochs=2, lr=1e-2, trainable=1)
    assert fits == [[], [], []]  # one plain run of the loop per scout


class Kill(Callback):
    """Stops the process-like run after a given epoch (after its checkpoint was written)."""
    order = 99

    def __init__(self, at):
        self.at = at

    def after_epoch(self, tr):
        if len(tr.history) == self.at:
            raise KeyboardInterrupt


def test_resume_from_the_checkpoint_callback_repeats_the_run_row_for_row(tmp_path, one_thread):
    from rehead.rundir import RunDir

    def model():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    phases = [Phase("a", 2, 1e-2), Phase("b", 3, 3e-3, schedule="cosine")]
    args = (data(32), data(16, 1), phases)
    ref = Trainer(TrainConfig(progress=False), run=RunDir(tmp_path / "ref"))
    ref.fit(model(), *args, batch_size=8)
    run = RunDir(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(progress=False, hooks=[Kill(3)]), run=run).fit(model(), *args, batch_size=8)
    again = Trainer(TrainConfig(progress=False), run=run)
    m = model()
    again.fit(m, *args, batch_size=8, resume=again.load_checkpoint())
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(again.history) == strip(ref.history) and len(ref.history) == 5
    assert again.kept == ref.kept and again.phase_best == ref.phase_best
    rows = lambda p: [r.rsplit(",", 1)[0] for r in (p / "metrics.csv").read_text().splitlines()]
    assert rows(run.path) == rows(tmp_path / "ref")
    last = Trainer(TrainConfig(progress=False, select_best=False))
    last.fit(model(), *args, batch_size=8)
    assert last.kept["global_epoch"] == 5  # --keep-last: the last epoch's weights, and it says so


def test_resume_under_weight_ema_repeats_the_run_row_for_row(tmp_path, one_thread):
    """The checkpoint holds the averaged weights shown to val; a phase resumed mid-way took them as its raw
    weights and restarted the average (close figures, not the same)."""
    from rehead.rundir import RunDir
    from rehead.train.callbacks import WeightEMA

    def model():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    phases = [Phase("a", 2, 1e-2), Phase("b", 4, 3e-3, schedule="cosine")]
    args = (data(32), data(16, 1), phases)
    ref = Trainer(TrainConfig(progress=False, hooks=[WeightEMA(0.9)]), run=RunDir(tmp_path / "ref"))
    ref.fit(model(), *args, batch_size=8)
    run = RunDir(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):  # killed after phase b's first epoch: mid-phase
        Trainer(TrainConfig(progress=False, hooks=[WeightEMA(0.9), Kill(3)]), run=run).fit(model(), *args,
                                                                                          batch_size=8)
    again = Trainer(TrainConfig(progress=False, hooks=[WeightEMA(0.9)]), run=run)
    again.fit(model(), *args, batch_size=8, resume=again.load_checkpoint())
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(again.history) == strip(ref.history) and len(ref.history) == 6


def test_lr_suggestion_ignores_a_ripple_on_a_flat_curve():
    """A curve flat for five decades with a small early ripple, then a real descent at 1e-2..1e-1:
    the point-to-point steepest descent picked the ripple (1.5e-7, a run that then learned nothing);
    the slope over a decade picks the descent, at most the minimum's LR / 10."""
    from rehead.train.lr_find import suggest
    lrs = list(np.logspace(-7, 1, 100))
    x = np.log10(lrs)
    losses = 0.70 - 0.04 / (1 + np.exp(-(x + 1.5) * 4)) + np.where(np.abs(x + 6.8) < 0.1, -0.012, 0.0)
    losses = list(losses + np.where(x > 0.2, (x - 0.2) * 3, 0.0))  # the blow-up
    s = suggest(lrs, losses)
    assert 1e-3 <= s["suggested"] <= 5e-2 and s["suggested"] <= s["min_loss_lr"] / 10 and not s["flat"]
    rising = list(0.7 + 0.01 * np.arange(100) / 100)
    assert suggest(lrs, rising)["flat"] and suggest(lrs, rising)["suggested"] <= lrs[0]


def test_lr_suggestion_ignores_the_recovery_from_an_early_bump():
    """A regression head's range test (measured): the smoothed loss bumps from 1.04 to 1.21 in its
    first steps and falls back to 1.03 within a decade, then really descends at 1e-2..1e-1 (to 0.77).
    The recovery is no descent (it ends above the start): 4.4e-7 was suggested."""
    from rehead.train.lr_find import suggest
    lrs = list(np.logspace(-7, 0.3, 90))
    x = np.log10(lrs)
    bump = 0.17 * np.exp(-((x + 6.5) / 0.25) ** 2)
    losses = 1.04 + bump - 0.27 / (1 + np.exp(-(x + 1.3) * 2)) + np.where(x > -0.4, (x + 0.4) * 4, 0.0)
    s = suggest(lrs, list(losses))
    assert 1e-3 <= s["suggested"] <= 5e-2, s
