"""What the training loop does besides stepping: small callbacks on its events.

A callback subclasses ``Callback`` and defines any of the events in ``EVENTS`` (see
``rehead.train.loop`` for when each fires); each gets the ``Trainer`` and reads or sets its
state (``tr.model``, ``tr.opt``, ``tr.phase``, ``tr.epoch``, ``tr.loss``, ``tr.row`` ...).
``penalty(tr)`` returns a term added to the loss. Callbacks run in ``order`` (lower first).
Raising ``CancelFit`` ends training cleanly (``after_fit`` still runs).
"""
from __future__ import annotations

import json
import math

import torch

from tqdm.auto import tqdm

from .schedules import lr_factor

EVENTS = ("setup", "before_phase", "before_epoch", "before_step", "after_pred", "after_loss",
          "after_backward", "after_step", "before_validate", "after_epoch", "after_phase", "after_fit")


class CancelFit(Exception):
    """Raised by a callback to end training early (the LR range test when it is done)."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: nothing after that step can be trusted."""

    def __init__(self, phase: str, epoch: int, step: int, loss: float, lr: float):
        self.phase, self.epoch, self.step, self.loss, self.lr = phase, epoch, step, loss, lr
        first = epoch == 1 and step == 1  # before this phase's LR could do harm: usually the inputs
        super().__init__(
            f"training diverged in phase {phase!r}, epoch {epoch}, step {step}: the loss is {loss}. "
            + ("At a phase's first step this usually means NaN or infinite inputs: check the data (a corrupt cached "
               "feature file: `rehead cache clear`). " if first else "")
            + f"Try a lower --lr (this phase's top LR was {lr:.3g}), or `rehead lr-find` to pick one; "
            "with --precision fp16, try bf16")


class Callback:
    order = 50

    def __repr__(self) -> str:
        return type(self).__name__


class Schedule(Callback):
    """Sets every group's LR each step: its initial LR times the phase's schedule factor."""
    order = 0

    def before_step(self, tr):
        f = lr_factor(tr.phase, tr.epoch * tr.steps_per_epoch + tr.step, tr.total_steps, tr.steps_per_epoch)
        for g in tr.opt.param_groups:
            g["lr"] = g["initial_lr"] * f


class ClipGrad(Callback):
    def __init__(self, max_norm: float = 1.0):
        self.max_norm = max_norm

    def after_backward(self, tr):
        tr.acc.clip_grad_norm_(tr.net.parameters(), self.max_norm)


def score(row: dict) -> tuple:
    """Higher is better: val accuracy, then lower val loss; rows without an accuracy
    (regression, multilabel) by val loss alone."""
    return (row["val_acc"], -row["val_loss"]) if "val_acc" in row else (-row["val_loss"],)


def _val_figures(row: dict) -> dict:
    """The kept row's val figures: loss, accuracy, and a task's own (val_rmse, val_map ...)."""
    return {k: v for k, v in row.items() if k.startswith("val_")}


class BestWeights(Callback):
    """Remembers the weights of the best val epoch over the whole run; at the end loads them
    (``select``) and records what was kept: ``tr.kept`` and each phase's best, ``tr.phase_best``."""
    order = 10

    def __init__(self, select: bool = True):
        self.select = select

    def setup(self, tr):
        if tr.resume and tr.run is not None and tr.run.exists("best.safetensors"):
            tr.best_state = tr.run.load_tensors("best.safetensors")

    def after_epoch(self, tr):
        if "val_loss" not in tr.row:
            return
        s = score(tr.row)
        if tr.best is None or s > tuple(tr.best):
            tr.best, tr.bad = list(s), 0
            tr.best_state = {k: v.detach().cpu().clone() for k, v in tr.model.state_dict().items()}
        else:
            tr.bad += 1

    def after_fit(self, tr):
        rows = [r for r in tr.history if "val_loss" in r]
        if not rows:
            return
        if self.select and tr.best_state is not None:
            tr.model.load_state_dict(tr.best_state)
        kept = max(rows, key=score) if self.select else rows[-1]
        tr.kept = {"phase": kept["phase"], "phase_index": kept["phase_index"], "epoch": kept["epoch"],
                   "global_epoch": kept["global_epoch"], "val_acc": kept.get("val_acc"), **_val_figures(kept)}
        tr.phase_best = []
        for pi in dict.fromkeys(r["phase_index"] for r in rows):
            mine = [r for r in rows if r["phase_index"] == pi]
            b = max(mine, key=score)
            tr.phase_best.append({"phase": b["phase"], "phase_index": pi, "best_val_acc": b.get("val_acc"),
                                  "best_val_loss": b["val_loss"], "epoch": b["epoch"], "epochs_run": len(mine),
                                  # how far training itself got (a flat train loss: a phase that barely learned)
                                  "train_loss_last": mine[-1].get("train_loss"), "train_acc_last": mine[-1].get("train_acc")})


class MixImages(Callback):
    """Mixup and/or CutMix on the training batches of live image phases (torchvision's
    ``transforms.v2.MixUp`` / ``CutMix``; with both, each batch takes one of the two at random, as
    timm's ``Mixup`` does). The loss sees the mixed soft targets (``tr.target``); the train accuracy
    still counts against the batch's own labels. A solved head fits its training photos (loss near 0),
    so the unfrozen stages get almost no gradient from clean batches: mixing keeps a signal."""

    def __init__(self, n_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
        from torchvision.transforms import v2
        mixes = ([v2.MixUp(alpha=mixup, num_classes=n_classes)] if mixup else []) + \
                ([v2.CutMix(alpha=cutmix, num_classes=n_classes)] if cutmix else [])
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def before_step(self, tr):
        if tr.on_features or not (isinstance(tr.x, torch.Tensor) and tr.x.dim() == 4) or len(tr.y) < 2:
            return
        tr.x, tr.target = self.mix(tr.x, tr.y)


class WeightEMA(Callback):
    """An exponential moving average of the weights (and BatchNorm statistics) over each live
    phase. The val pass, the best-weights choice and the phase's last epoch use the average;
    training steps on the raw weights in between. The decay warms up as in timm's ModelEmaV2
    (min(decay, (1 + n) / (10 + n))) so a short phase is not dominated by its starting weights.
    A phase resumed mid-way takes back its raw weights, its average and its step count from the
    checkpoint (``checkpoint_state``), so it goes on as it would have."""
    order = 90  # after best weights, early stopping and the checkpoint have seen the averaged epoch

    def __init__(self, decay: float = 0.99):
        self.decay, self.avg, self.raw = decay, None, None

    def before_phase(self, tr):
        self.avg = None if tr.on_features else {k: v.detach().clone() for k, v in tr.net.state_dict().items()}
        self.n = 0
        saved = ((tr.resume or {}).get("callbacks") or {}).get("WeightEMA")
        if saved and self.avg is not None and tr.phase_index == tr.resume["phase"]:
            dev = next(tr.net.parameters()).device
            self.avg = {k: v.to(dev) for k, v in saved["avg"].items()}
            self.n = saved["n"]
            if saved["raw"] is not None:  # the checkpoint's model is the average shown to val
                tr.net.load_state_dict(saved["raw"])

    def checkpoint_state(self, tr) -> dict | None:
        """What a resume needs to go on mid-phase (Checkpoint runs before after_epoch swaps the raw weights back)."""
        if self.avg is None:
            return None
        cpu = lambda d: None if d is None else {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        return {"avg": cpu(self.avg), "raw": cpu(self.raw), "n": self.n}

    def after_step(self, tr):
        if self.avg is None:
            return
        self.n += 1
        w = 1 - min(self.decay, (1 + self.n) / (10 + self.n))
        with torch.no_grad():
            for k, v in tr.net.state_dict().items():
                a = self.avg[k]
                a.lerp_(v, w) if a.is_floating_point() else a.copy_(v)

    def before_validate(self, tr):
        if self.avg is not None:
            self.raw = {k: v.detach().clone() for k, v in tr.net.state_dict().items()}
            tr.net.load_state_dict(self.avg)

    def after_epoch(self, tr):
        if self.raw is not None and not (tr.stop_phase or tr.epoch + 1 >= tr.phase.epochs):
            tr.net.load_state_dict(self.raw)  # keep training the raw weights; the phase ends averaged
        self.raw = None


class EarlyStopping(Callback):
    """Ends a phase after ``patience`` epochs without a better val score (the phase's own
    ``patience``, else the run's)."""
    order = 20

    def after_epoch(self, tr):
        if tr.patience and tr.bad >= tr.patience:
            tr.stop_phase = True


BLOWUP = 10.0  # a live epoch's mean train loss over this many times a uniform guess's (ln K) has diverged


class Blowup(Callback):
    """Ends the fit when a live multiclass epoch's mean train loss is over ``BLOWUP`` times a uniform
    guess's (ln K) and val scores below the best so far: its steps diverged at this LR (finite, so the
    loop's NaN check does not see it), and every later epoch and phase would start from broken weights.
    Measured: packaged mpnet at MiniLM's text LRs, financial_phrasebank, train loss 0.07 -> 29.99 (27 ln K)
    in the first unfrozen epoch, val 0.959 -> 0.904, then two more 9-minute epochs before it ended. Ten
    times, not twice: at a tenth of that LR the first epoch's train loss was 5.94 (5.4 ln K) with val at
    0.945, a phase that may still recover. The best epoch so far is kept (``BestWeights``) and
    ``tr.diverged`` says what happened, for the fit to say."""
    order = 95  # after the epoch is kept, checkpointed, logged and shown

    def after_epoch(self, tr):
        row = tr.row
        if tr.on_features or tr.cfg.task != "multiclass" or "val_acc" not in row or tr.best is None:
            return
        k = tr.pred.shape[-1] if getattr(tr, "pred", None) is not None and tr.pred.dim() == 2 else 0
        bad = k >= 2 and row["train_loss"] > BLOWUP * math.log(k) and score(row) < tuple(tr.best)
        if tr.acc.num_processes > 1 and not tr.cfg.local:  # every process stops, or none does
            bad = tr.acc.reduce(torch.tensor(float(bad), device=tr.acc.device), "sum").item() > 0
        if not bad:
            return
        lr = max(g["initial_lr"] for g in tr.opt.param_groups)
        tr.diverged = (f"{row['phase']} epoch {row['epoch']}: train loss {row['train_loss']:.3f}, over {BLOWUP:g}x a "
                       f"uniform guess's ({math.log(k):.3f}), val {row['val_acc']:.4f} below the best so far "
                       f"({tr.best[0]:.4f}): its steps diverged at this LR (the phase's top LR {lr:.3g}); the rest of "
                       "the fit was skipped, " + ("the best epoch so far kept" if tr.cfg.select_best else
                                                  "and --keep-last keeps this epoch") +
                       ". Try a lower --lr (a tenth), or --find-lr")
        raise CancelFit


class Checkpoint(Callback):
    """checkpoint.pt (weights, optimizer, position, RNG, history) and best.safetensors, so
    ``--resume`` after a kill ends with the same metrics. Feature epochs take milliseconds:
    they are checkpointed once, at the end of their phase."""
    order = 30

    def setup(self, tr):
        self._saved = tr.best_state

    def after_epoch(self, tr):
        if tr.run is None:
            return
        if tr.on_features and not (tr.stop_phase or tr.epoch == tr.phase.epochs - 1):
            return
        if tr.best_state is not None and tr.best_state is not self._saved:
            tr.run.save_tensors("best.safetensors", tr.best_state)
            self._saved = tr.best_state
        from .loop import rng_state
        m = tr.model
        tr.run.save_checkpoint({
            "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
            "optimizer": tr.opt.state_dict(), "phase": tr.phase_index, "epoch": tr.epoch,
            "frozen": list(getattr(m, "frozen", [])), "rng": rng_state(),
            "best": tr.best, "bad": tr.bad, "history": tr.history,
            # what the solved head's cross-validation chose (summary.json's head_solver): a resume skips that phase
            "solved": json.dumps(getattr(tr, "solved", None), default=float),
            "callbacks": {type(cb).__name__: cb.checkpoint_state(tr) for cb in tr.callbacks
                          if hasattr(cb, "checkpoint_state")}})


class MetricsCSV(Callback):
    """metrics.csv, one row per epoch, rewritten whole (atomically) each epoch: a resumed run
    drops the rows logged after its checkpoint."""
    order = 40

    def setup(self, tr):
        if tr.run is not None and tr.resume:
            tr.run.write_rows("metrics.csv", tr.history)

    def after_epoch(self, tr):
        if tr.run is not None:
            tr.run.write_rows("metrics.csv", tr.history)


class Progress(Callback):
    """An epochs bar over the run; a steps bar only where an epoch takes a while (>= 20 steps)."""
    order = 90

    def setup(self, tr):
        self.off = not tr.acc.is_local_main_process
        self.outer = tqdm(total=sum(p.epochs for p in tr.phases), initial=len(tr.history), desc="epochs",
                          unit="ep", disable=self.off)
        self.bar = None

    def before_epoch(self, tr):
        n = len(tr.loader) if hasattr(tr.loader, "__len__") else 0
        self.bar = tqdm(total=n, desc=f"{tr.phase.name} {tr.epoch + 1}/{tr.phase.epochs}", leave=False) \
            if n >= 20 and not self.off else None

    def after_step(self, tr):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{tr.running_loss:.4f}")

    def after_epoch(self, tr):
        if self.bar is not None:
            self.bar.close()
        self.outer.update(1)
        post = {"phase": tr.phase.name}
        if "val_acc" in tr.row:
            post.update(val_acc=f"{tr.row['val_acc']:.4f}", val_loss=f"{tr.row['val_loss']:.4f}")
        elif "val_loss" in tr.row:
            post.update(val_loss=f"{tr.row['val_loss']:.4f}")
        self.outer.set_postfix(**post)

    def after_fit(self, tr):
        self.outer.close()


class LRRange(Callback):
    """The LR range test (Smith 2015; fastai's lr_find): the LR rises exponentially from
    ``start_lr`` to ``end_lr`` over ``steps`` steps (groups keep their LR ratios); records the
    smoothed loss and stops once it passes ``diverge`` times its minimum, or is not finite."""
    order = 0

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, beta: float = 0.98,
                 diverge: float = 4.0):
        self.start_lr, self.steps, self.beta, self.diverge = start_lr, steps, beta, diverge
        self.mult = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
        self.lrs, self.raw, self.smooth = [], [], []
        self._avg, self._best = 0.0, math.inf

    def before_phase(self, tr):
        top = max(g["initial_lr"] for g in tr.opt.param_groups)
        self.ratios = [g["initial_lr"] / top for g in tr.opt.param_groups]

    def before_step(self, tr):
        self.lr = self.start_lr * self.mult ** len(self.lrs)
        for g, r in zip(tr.opt.param_groups, self.ratios):
            g["lr"] = self.lr * r

    def after_loss(self, tr):
        v = tr.loss.item()
        self._avg = self.beta * self._avg + (1 - self.beta) * v
        sm = self._avg / (1 - self.beta ** (len(self.lrs) + 1))
        self.lrs.append(self.lr)
        self.raw.append(v)
        self.smooth.append(sm)
        self._best = min(self._best, sm)
        if len(self.lrs) >= self.steps or not math.isfinite(sm) or sm > self.diverge * self._best:
            raise CancelFit  # before the loop's non-finite check: divergence is what we look for here


def as_trainer(model, **state):
    """A stand-in trainer for calling a method callback by hand (tests, notebooks)."""
    from types import SimpleNamespace
    return SimpleNamespace(model=model, **state)


__all__ = ["Callback", "CancelFit", "TrainingDiverged", "Schedule", "ClipGrad", "BestWeights", "EarlyStopping",
           "Checkpoint", "MetricsCSV", "Progress", "LRRange", "EVENTS"]
