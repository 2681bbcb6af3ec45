"""The fine-tuning engine: strategies, schedules, LR finder, resume after a kill, several processes."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rehead
from rehead.recipes import Phase, auto_strategy, build_recipe
from rehead.train.schedules import lr_factor

ROOT = Path(__file__).resolve().parents[1]


def test_auto_follows_the_rule_of_thumb():
    assert auto_strategy(300)[0] == "extract"
    assert auto_strategy(5000)[0] == "finetune"
    assert auto_strategy(60000)[0] == "full"
    r = build_recipe("auto", 300, depth=9, augment=True)
    assert r.strategy == "head" and "augmentation" in r.reason


def test_strategies_are_lists_of_phases():
    ft = build_recipe("finetune", 2000, depth=9, lr=1e-3, unfreeze=2)
    assert [p.trainable for p in ft.phases] == [0, 2]
    assert ft.phases[1].lr < ft.phases[0].lr  # unfrozen stages at a much lower LR
    gr = build_recipe("gradual", 2000, depth=9, unfreeze=3)
    assert [p.trainable for p in gr.phases] == [0, 1, 2, 3]
    assert build_recipe("full", 10, depth=9).phases[0].trainable == -1
    assert build_recipe("extract", 10, depth=9).uses_cache
    with pytest.raises(ValueError, match="strategy must be one of"):
        build_recipe("magic", 10, depth=9)


def test_schedules():
    steps = 100
    one = [lr_factor(Phase("p", 1, 1.0, schedule="onecycle"), s, steps, steps) for s in range(steps)]
    assert one[0] == pytest.approx(1 / 25, rel=1e-3) and max(one) == pytest.approx(1.0, abs=1e-3)
    assert one.index(max(one)) == 25 and one[-1] < 1e-3
    cos = [lr_factor(Phase("p", 1, 1.0, schedule="cosine", warmup=0.1), s, steps, steps) for s in range(steps)]
    assert cos[0] < cos[9] and cos[10] == pytest.approx(1.0) and cos[-1] < 0.01
    # SGDR: 10 epochs of 10 steps, first cycle 1 epoch, doubling: restarts at epochs 1, 3, 7
    sg = Phase("p", 10, 1.0, schedule="sgdr", sgdr_cycle=1, sgdr_mult=2)
    f = [lr_factor(sg, s, 100, 10) for s in range(100)]
    restarts = [s for s in range(1, 100) if f[s] > f[s - 1] + 0.5]
    assert restarts == [10, 30, 70]


def _fit(data, out, spec, **kw):
    return rehead.fit(str(data), model=spec, out=str(out), workers=0, progress=False, echo=lambda *a: None, **kw)


def test_phases_train_the_unfrozen_stages_only(tmp_path, image_folder, tiny_spec):
    from rehead import zoo
    from rehead.data import load_dataset, pipeline
    from rehead.heads import make_head
    from rehead.model import TransferModel
    from rehead.train.loop import TrainConfig, Trainer
    bb = zoo.load(tiny_spec)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    model = TransferModel(bb, make_head(bb.eval()(torch.zeros(1, 3, 32, 32)).shape[1], 2))
    ds = load_dataset(image_folder)
    pipe = pipeline("image")
    def loader(split, shuffle, generator):
        s = getattr(ds, split)
        return pipe.make_loader(bb, s.items, s.labels, batch_size=8, workers=0, shuffle=shuffle, generator=generator)
    phases = [Phase("head", 1, 1e-2), Phase("unfreeze1", 1, 1e-3, trainable=1)]
    Trainer(TrainConfig(progress=False, select_best=False)).fit(model, "train", "val", phases, make_loader=loader)
    names = bb.stage_names
    changed = {k.split(".")[1] for k, v in bb.state_dict().items()
               if k.endswith("weight") and not torch.equal(before[k], v.cpu())}  # trained on the GPU if any
    assert changed == {names[-1]}


def test_finetune_and_gradual_run_their_phases(tmp_path, image_folder, tiny_spec):
    _fit(image_folder, tmp_path / "ft", tiny_spec, strategy="finetune", epochs=2, unfreeze=1, batch_size=8)
    phases = [r.split(",")[0] for r in (tmp_path / "ft" / "metrics.csv").read_text().splitlines()[1:]]
    # without augmentation the head phase trains on cached features, then the live phase
    assert set(phases[:-2]) == {"head"} and phases[-2:] == ["unfreeze1", "unfreeze1"]
    _fit(image_folder, tmp_path / "gr", tiny_spec, strategy="gradual", epochs=1, unfreeze=2, batch_size=8,
         augment="light")
    phases = [r.split(",")[0] for r in (tmp_path / "gr" / "metrics.csv").read_text().splitlines()[1:]]
    assert phases == ["head", "unfreeze1", "unfreeze2"]
    # --unfreeze 0 ran a phase "unfreeze0" training nothing, then said unfreezing did not pay; more
    # stages than the backbone has became all of them, unsaid
    with pytest.raises(ValueError, match="--unfreeze 0 unfreezes no stage"):
        _fit(image_folder, tmp_path / "u0", tiny_spec, strategy="finetune", epochs=1, unfreeze=0)
    assert not (tmp_path / "u0").exists()
    said = []
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "u20", strategy="finetune", epochs=1, unfreeze=20,
               batch_size=8, progress=False, echo=said.append)
    assert any("--unfreeze 20 > the backbone's" in s for s in said), said


def test_mixup_and_cutmix_mix_the_live_phases_images_and_labels(tmp_path, image_folder, tiny_spec):
    from rehead.config import ConfigError
    from rehead.train.callbacks import Callback

    class Spy(Callback):
        order = 99  # after the mixing callback: sees what the loss will see

        def __init__(self):
            self.seen = []

        def before_step(self, tr):
            self.seen.append((tr.on_features, tr.target.cpu().clone(), tr.y.cpu().clone()))

    spy = Spy()
    _fit(image_folder, tmp_path / "mix", tiny_spec, strategy="finetune", epochs=2, unfreeze=1, batch_size=8,
         mixup=0.4, cutmix=1.0, hooks=[spy])
    live = [(t, y) for on_features, t, y in spy.seen if not on_features]
    k = len([d for d in image_folder.iterdir() if d.is_dir()])
    assert live and all(t.dtype.is_floating_point and t.shape == (len(y), k) for t, y in live)
    assert all(torch.allclose(t.sum(1), torch.ones(len(y))) for t, y in live)  # soft labels, each a distribution
    assert any(not torch.equal(t, torch.nn.functional.one_hot(y, k).float()) for t, y in live)
    assert all(t.dtype == torch.int64 for on_features, t, _ in spy.seen if on_features)  # cached features: as they are
    with pytest.raises(ConfigError, match="--mixup and --cutmix"):
        _fit(image_folder, tmp_path / "reg", tiny_spec, strategy="finetune", task="regression", mixup=0.2)


def test_sgd_trains_the_live_phases_at_ten_times_the_lrs(tmp_path, image_folder, tiny_spec, monkeypatch):
    """--optimizer sgd: the live phases step with SGD (Nesterov momentum) at 10x the recipe's LRs, group
    by group, their gradients clipped; the head on cached features and every phase by default keep AdamW."""
    from accelerate import Accelerator
    from rehead.train.callbacks import Callback
    from rehead.train.loop import SGD_CLIP
    clipped = []
    real_clip = Accelerator.clip_grad_norm_

    def clip(self, params, max_norm, *a, **k):
        clipped.append(max_norm)
        return real_clip(self, params, max_norm, *a, **k)
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)

    class Spy(Callback):
        def __init__(self):
            self.opts = []

        def before_phase(self, tr):
            opt = getattr(tr.opt, "optimizer", tr.opt)  # accelerate's wrapper holds the torch optimizer
            self.opts.append((tr.phase.name, type(opt).__name__, [g["initial_lr"] for g in tr.opt.param_groups],
                              tr.opt.param_groups[0].get("nesterov")))

    runs = {}
    for name in ("adamw", "sgd"):
        spy = Spy()
        _fit(image_folder, tmp_path / name, tiny_spec, strategy="finetune", epochs=1, unfreeze=2, batch_size=8,
             optimizer=name, head="mlp", hooks=[spy])
        runs[name] = {phase: (kind, lrs, nesterov) for phase, kind, lrs, nesterov in spy.opts}
        runs[name]["clipped"] = len(clipped)
    assert runs["adamw"]["unfreeze2"][0] == "AdamW" and runs["sgd"]["unfreeze2"][:1] == ("SGD",)
    assert runs["sgd"]["unfreeze2"][2] is True
    assert runs["sgd"]["unfreeze2"][1] == pytest.approx([10 * lr for lr in runs["adamw"]["unfreeze2"][1]])
    assert runs["sgd"]["head"][0] == runs["adamw"]["head"][0] == "AdamW"  # an MLP head on cached features
    assert runs["adamw"]["clipped"] == 0 and runs["sgd"]["clipped"] > 0 and set(clipped) == {SGD_CLIP}
    assert yaml_optimizer(tmp_path / "sgd") == "sgd"


def yaml_optimizer(run) -> str:
    import yaml
    return yaml.safe_load((run / "config.yaml").read_text())["fit"]["optimizer"]


def test_augmentation_applies_to_training_images_only(image_folder, tiny_spec):
    from rehead import zoo
    from rehead.data import pipeline
    bb = zoo.load(tiny_spec)
    pipe = pipeline("image")
    tf = pipe.train_transform(bb, "classic")
    items = [str(next(image_folder.glob("red/*.jpg")))]
    aug = pipe.make_loader(bb, items, [0], workers=0, transform=tf)
    plain = pipe.make_loader(bb, items, [0], workers=0)
    a1, a2 = next(iter(aug))[1], next(iter(aug))[1]
    p1, p2 = next(iter(plain))[1], next(iter(plain))[1]
    assert not torch.equal(a1, a2) and torch.equal(p1, p2)


def test_lr_find_leaves_weights_and_rng_untouched(tmp_path, image_folder, tiny_spec):
    from rehead.fit import find_lr
    res = find_lr(str(image_folder), model=tiny_spec, out=tmp_path / "lrf", unfreeze=1, steps=12, workers=0,
                  batch_size=8, progress=False, echo=lambda *a: None)
    assert len(res["lrs"]) == len(res["losses"]) >= 5 and res["suggested"] > 0
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 1000
    from rehead.train.lr_find import lr_find
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.arange(16), torch.randn(16, 4), torch.randint(0, 2, (16,)))] * 3
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    lr_find(model, data, torch.nn.CrossEntropyLoss(), steps=9)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.rand(3), expected_next)


def _cli(*args, env=None):
    return [sys.executable, "-m", "rehead", *map(str, args)]


def test_resume_after_a_kill_ends_with_the_same_metrics(tmp_path, image_folder, tiny_spec):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    common = ["fit", image_folder, "--model", tiny_spec, "--strategy", "finetune", "--unfreeze", "2",
              "--epochs", "6", "--batch-size", "4", "--workers", "0", "--dropout", "0.3", "--augment", "light", "-q"]
    ref = tmp_path / "ref"
    subprocess.run(_cli(*common, "--out", ref), env=env, check=True, capture_output=True)
    run = tmp_path / "killed"
    p = subprocess.Popen(_cli(*common, "--out", run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it mid-way through the second phase
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1 + 2 + 1:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (run / "checkpoint.pt").exists() and not (run / "model.safetensors").exists()
    subprocess.run(_cli("fit", "--resume", run, "-q"), env=env, check=True, capture_output=True)
    strip = lambda path: [r.rsplit(",", 1)[0] for r in path.read_text().splitlines()]  # drop seconds
    if not torch.cuda.is_available():
        assert strip(run / "metrics.csv") == strip(ref / "metrics.csv")
    else:  # a GPU's training kernels are not bit-deterministic from run to run: the same to 1e-4
        a, b = ([r.split(",") for r in strip(path)] for path in (run / "metrics.csv", ref / "metrics.csv"))
        assert [len(r) for r in a] == [len(r) for r in b]
        for x, y in zip(sum(a, []), sum(b, [])):
            assert x == y or float(x) == pytest.approx(float(y), abs=1e-4)
    resumed, whole = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    assert resumed["val_acc"] == whole["val_acc"]
    # what the solved head's CV chose was missing from a resumed run's summary (that phase ran before the kill)
    drop = lambda solver: {k: v for k, v in solver.items() if k != "seconds"}
    assert drop(resumed["head_solver"]) == drop(whole["head_solver"]) and "C" in whole["head_solver"]


def test_two_processes_end_with_identical_weights(tmp_path, image_folder, tiny_spec):
    script = tmp_path / "ddp.py"
    script.write_text(r'''
import hashlib, sys
from accelerate import Accelerator
from rehead.fit import fit
import rehead.train.loop as loop
acc = Accelerator(cpu=True)
seen = {}
orig = loop.Trainer.fit
def spy(self, model, *a, **k):
    out = orig(self, model, *a, **k)
    seen["model"] = loop._unwrap(model)
    return out
loop.Trainer.fit = spy
fit(sys.argv[1], model=sys.argv[2], out=sys.argv[3], strategy="finetune", unfreeze=1, epochs=2,
    batch_size=4, workers=0, progress=False, accelerator=acc, echo=lambda *a: None)
h = hashlib.sha256()
for k, v in sorted(seen["model"].state_dict().items()):
    h.update(v.detach().contiguous().numpy().tobytes())
open(f"{sys.argv[3]}.rank{acc.process_index}", "w").write(f"{acc.num_processes} {h.hexdigest()}")
from rehead.distributed import close
close()  # as rehead's CLI does: a gloo group left to the interpreter's exit can abort it (SIGABRT)
''')
    # two CPU processes, on a GPU machine too (with the GPU visible it failed on a one-GPU machine)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                        str(image_folder), tiny_spec, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [Path(f"{out}.rank{i}").read_text().split() for i in (0, 1)]
    assert ranks[0][0] == ranks[1][0] == "2"
    assert ranks[0][1] == ranks[1][1]
    assert (out / "model.safetensors").exists()


def test_lr_find_with_stages_says_the_lr_finetune_needs(tmp_path, image_folder, tiny_spec):
    from rehead.fit import find_lr
    said = []
    res = find_lr(str(image_folder), model=tiny_spec, out=tmp_path / "lrf", unfreeze=1, steps=12, workers=0,
                  batch_size=8, progress=False, echo=said.append)
    note = next(s for s in said if s.startswith("note: measured with the last 1"))
    assert f"--lr {res['suggested'] * 10:.1e}" in note  # finetune's unfrozen phase runs at --lr / 10


def test_a_live_phase_that_blows_up_ends_the_fit_there_and_says_why():
    """A finite blow-up (train loss far over a uniform guess's) passed the loop's NaN check, and the phase
    ran its remaining epochs from broken weights: packaged mpnet at MiniLM's text LRs went from train loss
    0.07 to 29.99 in its first unfrozen epoch (val 0.959 -> 0.904), then spent 18 more minutes."""
    from rehead.train.loop import IndexedTensors, TrainConfig, Trainer
    torch.manual_seed(0)
    x = torch.randn(96, 8)
    data = IndexedTensors(x, (x[:, 0] > 0).long())
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    phases = [Phase("head", 10, 3e-2, trainable=None, schedule="constant"),
              Phase("live", 3, 30.0, trainable=None, schedule="constant"),
              Phase("more", 2, 30.0, trainable=None, schedule="constant")]
    tr = Trainer(TrainConfig(progress=False, checkpoints=False))
    hist = tr.fit(model, data, data, phases, batch_size=16)
    live = [r for r in hist if r["phase"] != "head"]
    assert [r["phase"] for r in live] == ["live"] and live[0]["train_loss"] > 10 * math.log(2), live
    assert tr.diverged.startswith("live epoch 1: train loss") and "Try a lower --lr" in tr.diverged
    assert tr.kept["phase"] == "head"  # the best epoch so far is what the model ends with
    # an epoch that is the best so far is never stopped, whatever its loss: a plain run is untouched
    tr = Trainer(TrainConfig(progress=False, checkpoints=False))
    tr.fit(torch.nn.Sequential(torch.nn.Linear(8, 2)), data, data,
           [Phase("head", 2, 3e-2, trainable=None), Phase("live", 2, 1e-3, trainable=None)], batch_size=16)
    assert tr.diverged is None and len(tr.history) == 4



def test_a_head_solved_to_be_fine_tuned_puts_no_huge_weight_on_a_faint_unit():
    """packaged mpnet's pooled features have near-dead units (spread 3e-7 and 4e-6 of the widest column's);
    its solved head weighed them at ~1e6 (standardised, then folded back), the first unfrozen steps moved
    them and the train loss went to 30-68 (0.04 on the head) at every LR tried: each fine-tune "diverged"
    and was stopped. On 500 PhraseBank rows, with a unit under a thousandth of the widest spread left out
    of a head that will be fine-tuned: train loss 0.14, val 0.94 -> 0.96."""
    from rehead.train.callbacks import Callback
    from rehead.train.loop import IndexedTensors, TrainConfig, Trainer

    class Net(torch.nn.Module):  # features in, so the cached features are the inputs themselves
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.head(x)

    class HeadAtUnfreeze(Callback):
        weight = None

        def before_phase(self, tr):
            if tr.phase.name == "live":
                self.weight = tr.model.head.weight.detach().clone()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = ((x[:, 0] + x[:, 5]) > 0).long()
    x[:, 5] *= 1e-5  # faint, and it carries half the label on its own
    data = IndexedTensors(x, y)
    phases = [Phase("head", 1, 0.0, on_features=True, solver="lbfgs"), Phase("live", 1, 1e-4, trainable=None)]
    seen = HeadAtUnfreeze()
    tr = Trainer(TrainConfig(progress=False, checkpoints=False, hooks=[seen]))
    tr.fit(Net(), data, data, phases, batch_size=50, features=(data, data))
    assert seen.weight is not None
    assert seen.weight.abs().max() < 1e3, seen.weight  # the faint unit has no say, not a ~1e5 weight
