"""One training loop for every phase of every strategy, on Hugging Face Accelerate.

A phase says which stages train, at what LRs, for how many epochs, on which schedule.
The loop is model-agnostic: ``model(inputs) -> logits``; when the model is a
TransferModel the phase also sets which stages are frozen.
"""
from __future__ import annotations

import csv
import io
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..features import atomic_write_bytes
from ..heads import loss_for


@dataclass
class Phase:
    name: str
    epochs: int
    lr: float
    trainable: int = 0          # last n backbone stages that train (0: head only, -1: all)
    lr_decay: float = 1.0       # each earlier stage group this many times lower
    lr_min: float | None = None  # or: spread LRs geometrically from lr_min to lr
    schedule: str = "onecycle"  # onecycle | cosine | sgdr | constant
    warmup: float = 0.1         # fraction of steps (cosine) / of the cycle rising (onecycle: 0.25)
    sgdr_cycle: float = 1.0     # first restart cycle length, epochs
    sgdr_mult: float = 2.0      # each next cycle this many times longer
    weight_decay: float = 0.01
    on_features: bool = False   # train the head alone on cached features of the frozen prefix
    patience: int | None = None  # early stopping for this phase (else TrainConfig.patience)


SCHEDULES = ("onecycle", "cosine", "sgdr", "constant")


def lr_factor(ph: Phase, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier on each group's LR at ``step`` (0-based) of ``total``."""
    t = step / max(total, 1)
    if ph.schedule == "constant":
        return 1.0
    if ph.schedule == "onecycle":  # fastai: cosine up from lr/25 over 25%, cosine down to ~0
        up = 0.25
        if t < up:
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * t / up)) / 2
        return 1e-5 + (1 - 1e-5) * (1 + math.cos(math.pi * (t - up) / (1 - up))) / 2
    if ph.schedule == "cosine":
        w = ph.warmup
        if t < w:
            return (step + 1) / max(1, round(w * total))
        return (1 + math.cos(math.pi * (t - w) / max(1e-8, 1 - w))) / 2
    if ph.schedule == "sgdr":  # cosine annealing with warm restarts (Loshchilov & Hutter)
        e, cycle = step / steps_per_epoch, ph.sgdr_cycle
        while e >= cycle:
            e -= cycle
            cycle *= ph.sgdr_mult
        return (1 + math.cos(math.pi * e / cycle)) / 2
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {ph.schedule!r}")


@dataclass
class TrainConfig:
    seed: int = 0
    patience: int | None = None   # early stopping on val loss, epochs without improvement
    task: str = "multiclass"
    mixed_precision: str = "no"
    progress: bool = True
    select_best: bool = True  # end with the weights of the best val epoch, not the last
    checkpoints: bool = True  # write checkpoint.pt / best.safetensors for --resume
    hooks: list = field(default_factory=list)  # objects with penalty / after_backward / after_step (model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2])}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))


def _unwrap(model):
    return getattr(model, "module", model)


class Trainer:
    """Runs phases; writes metrics.csv and checkpoint.pt to ``run_dir`` when given."""

    def __init__(self, cfg: TrainConfig | None = None, run_dir: str | Path | None = None, accelerator=None):
        from accelerate import Accelerator
        self.cfg = cfg or TrainConfig()
        self.run_dir = Path(run_dir) if run_dir else None
        self.acc = accelerator or Accelerator(mixed_precision=self.cfg.mixed_precision)
        self.loss_fn = loss_for(self.cfg.task)
        self.history: list[dict] = []

    # -- checkpoints -------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path | None:
        return self.run_dir / "checkpoint.pt" if self.run_dir else None

    def _save_ckpt(self, model, opt, phase_i, epoch, best, bad):
        if not self.ckpt_path or not self.acc.is_main_process or not self.cfg.checkpoints:
            return
        m = _unwrap(model)
        state = {"model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
                 "optimizer": opt.state_dict(), "phase": phase_i, "epoch": epoch,
                 "frozen": list(getattr(m, "frozen", [])), "rng": rng_state(),
                 "best": best, "bad": bad, "history": self.history}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.ckpt_path, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        if self.ckpt_path and self.ckpt_path.exists():
            return torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        return None

    # -- the loop ------------------------------------------------------------------
    def fit(self, model, train_data, val_data, phases: list[Phase], batch_size: int = 32,
            make_loader=None, resume: dict | None = None, features=None) -> list[dict]:
        """Train ``model`` through ``phases``. ``train_data``/``val_data`` are torch Datasets
        (or anything ``make_loader(data, shuffle, generator)`` accepts). ``features``: (train, val)
        datasets of cached features, for phases ``on_features`` (``model.head`` trains on them).
        Returns the history."""
        cfg, acc = self.cfg, self.acc

        def tensor_loader(data, shuffle, generator):
            return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
        make_loader = make_loader or tensor_loader
        seed_everything(cfg.seed)
        start_phase, start_epoch, best, bad = 0, 0, None, 0
        if resume:
            _unwrap(model).load_state_dict(resume["model"])
            start_phase, start_epoch = resume["phase"], resume["epoch"] + 1
            best, bad, self.history = resume["best"], resume["bad"], list(resume["history"])
            self._rewrite_metrics()  # drop rows logged after the checkpoint we resume from
        best_state, best_dirty = None, False
        if self.run_dir and (self.run_dir / "best.safetensors").exists() and resume:
            from safetensors.torch import load_file
            best_state = load_file(str(self.run_dir / "best.safetensors"))
        val_loaders = {}
        outer = tqdm(total=sum(p.epochs for p in phases), initial=len(self.history), desc="epochs", unit="ep",
                     disable=not (cfg.progress and acc.is_local_main_process))
        for pi, ph in enumerate(phases):
            if pi < start_phase:
                continue
            base = _unwrap(model)
            on_feats = ph.on_features and features is not None
            if hasattr(base, "set_trainable_last"):
                base.set_trainable_last(0 if on_feats else ph.trainable)
            net = base.head if on_feats else base
            tr_data, va_data = features if on_feats else (train_data, val_data)
            loader_fn = tensor_loader if on_feats else make_loader
            if on_feats not in val_loaders:
                val_loaders[on_feats] = acc.prepare_data_loader(loader_fn(va_data, False, None))
            val_loader = val_loaders[on_feats]
            patience = ph.patience if ph.patience is not None else cfg.patience
            groups = (base.param_groups(ph.lr, ph.lr_decay, ph.weight_decay, ph.lr_min)
                      if hasattr(base, "param_groups") else
                      [{"params": [p for p in base.parameters() if p.requires_grad], "lr": ph.lr,
                        "weight_decay": ph.weight_decay, "name": "all"}])
            for g in groups:
                g["initial_lr"] = g["lr"]
            opt = torch.optim.AdamW(groups)
            wrapped = acc.prepare_model(net)
            opt = acc.prepare_optimizer(opt)
            resuming_here = resume is not None and pi == start_phase
            e0 = start_epoch if resuming_here else 0
            if resuming_here:
                opt.load_state_dict(resume["optimizer"])
                set_rng_state(resume["rng"])
            else:
                bad = 0
            if e0 >= ph.epochs or (patience and bad >= patience):
                continue
            steps_per_epoch = None
            for epoch in range(e0, ph.epochs):
                gen = torch.Generator().manual_seed(cfg.seed * 100003 + pi * 1009 + epoch)
                train_loader = acc.prepare_data_loader(loader_fn(tr_data, True, gen))
                steps_per_epoch = steps_per_epoch or max(1, len(train_loader))
                total = steps_per_epoch * ph.epochs
                t0 = time.perf_counter()
                tr = self._train_epoch(wrapped, opt, train_loader, ph, epoch, steps_per_epoch, total,
                                       f"{ph.name} {epoch + 1}/{ph.epochs}", base)
                va = self.evaluate(wrapped, val_loader)
                row = {"phase": ph.name, "phase_index": pi, "epoch": epoch + 1,
                       "global_epoch": len(self.history) + 1,
                       "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
                       "val_acc": va["acc"], "lr": tr["lr"], "seconds": time.perf_counter() - t0}
                self.history.append(row)
                self._log(row)
                outer.update(1)
                outer.set_postfix(phase=ph.name, val_acc=f"{va['acc']:.4f}", val_loss=f"{va['loss']:.4f}")
                score = (va["acc"], -va["loss"])
                if best is None or score > tuple(best):
                    best, bad, best_dirty = list(score), 0, True
                    best_state = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
                else:
                    bad += 1
                stop = bool(patience and bad >= patience)
                # Feature epochs take milliseconds: checkpoint them once, at the end of the phase.
                if not on_feats or stop or epoch == ph.epochs - 1:
                    if best_dirty:
                        self._save_best(best_state)
                        best_dirty = False
                    self._save_ckpt(base, opt, pi, epoch, best, bad)
                if stop:
                    break
        outer.close()
        if best_state is not None and cfg.select_best:  # best-checkpoint selection over the whole run
            _unwrap(model).load_state_dict(best_state)
        return self.history

    def _save_best(self, state):
        if self.run_dir and self.acc.is_main_process and self.cfg.checkpoints:
            from safetensors.torch import save
            atomic_write_bytes(self.run_dir / "best.safetensors",
                               save({k: v.contiguous() for k, v in state.items()}))

    def _train_epoch(self, model, opt, loader, ph, epoch, steps_per_epoch, total, desc, base=None):
        """One epoch of ``model`` (the network being stepped); hooks always see ``base``, the
        whole model, even when only its head trains on cached features."""
        base = base if base is not None else _unwrap(model)
        model.train()
        tot_loss, correct, n, lr = 0.0, 0, 0, 0.0
        # Step bars only where an epoch takes a while; tiny feature epochs get the outer bar only.
        show = self.cfg.progress and self.acc.is_local_main_process and len(loader) >= 20
        bar = tqdm(loader, desc=desc, leave=False, disable=not show)
        for step, (_, x, y) in enumerate(bar):
            if len(y) == 0:
                continue
            f = lr_factor(ph, epoch * steps_per_epoch + step, total, steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            lr = opt.param_groups[-1]["lr"]
            with self.acc.autocast():
                out = model(x)
                loss = self.loss_fn(out, y)
                for h in self.cfg.hooks:
                    if hasattr(h, "penalty"):
                        loss = loss + h.penalty(base)
            opt.zero_grad(set_to_none=True)
            self.acc.backward(loss)
            for h in self.cfg.hooks:
                if hasattr(h, "after_backward"):
                    h.after_backward(base)
            opt.step()
            for h in self.cfg.hooks:
                if hasattr(h, "after_step"):
                    h.after_step(base)
            bs = len(y)
            tot_loss += loss.item() * bs
            n += bs
            if self.cfg.task == "multiclass":
                correct += (out.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{tot_loss / n:.4f}")
        return {"loss": tot_loss / max(n, 1), "acc": correct / max(n, 1), "lr": lr}

    @torch.no_grad()
    def evaluate(self, model, loader) -> dict:
        model.eval()
        tot_loss, correct, n = 0.0, 0, 0
        for _, x, y in loader:
            if len(y) == 0:
                continue
            out = model(x)
            loss = self.loss_fn(out, y)
            out, y, loss = self.acc.gather_for_metrics((out, y, loss.reshape(1).repeat(len(y))))
            tot_loss += loss.sum().item()
            n += len(y)
            if self.cfg.task == "multiclass":
                correct += (out.argmax(1) == y).sum().item()
        return {"loss": tot_loss / max(n, 1), "acc": correct / max(n, 1)}

    def _rewrite_metrics(self):
        if self.run_dir and self.acc.is_main_process:
            (self.run_dir / "metrics.csv").unlink(missing_ok=True)
            for row in self.history:
                self._log(row)

    def _log(self, row: dict):
        if not (self.run_dir and self.acc.is_main_process):
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


class IndexedTensors(torch.utils.data.Dataset):
    """(index, features, label) triples over in-memory tensors: the extract strategy's data."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return i, self.x[i], self.y[i]

