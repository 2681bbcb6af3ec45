"""Multi-task heads: one shared backbone, one head per label column, trained together.

The loss is a weighted sum of each task's cross-entropy (a missing label, -1, is ignored
by its task). The heads' logits are concatenated so the one training loop
(``rehead.train.loop.Trainer``) runs unchanged; each head is evaluated on its own.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import zoo
from .data import DataError, pipeline
from .heads import make_head
from .precision import to_device_of
from .model import TransferModel
from .recipes import build_recipe
from .rundir import RunDir
from .run import load_weights, read_config
from .train.loop import TrainConfig, Trainer, seed_everything


class MultiHead(nn.Module):
    """A dict of heads on the same features; forward concatenates their logits."""

    def __init__(self, heads: dict[str, nn.Module]):
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, f):
        return torch.cat([h(f) for h in self.heads.values()], 1)


class MultiTaskLoss(nn.Module):
    def __init__(self, sizes: list[int], weights: list[float]):
        super().__init__()
        self.sizes, self.weights = list(sizes), list(weights)

    def per_task(self, logits, y) -> list[torch.Tensor]:
        losses = []
        for t, chunk in enumerate(logits.split(self.sizes, 1)):
            yt = y[:, t]
            # A batch where every label of this task is missing contributes 0, not NaN.
            losses.append(F.cross_entropy(chunk, yt, ignore_index=-1) if (yt >= 0).any() else chunk.sum() * 0)
        return losses

    def forward(self, logits, y):
        return sum(w * l for w, l in zip(self.weights, self.per_task(logits, y)))


class MultiTaskModel(TransferModel):
    """A TransferModel whose head is a MultiHead; ``predict_tasks`` splits the logits per task."""

    def __init__(self, backbone, heads: dict[str, nn.Module], sizes: list[int]):
        super().__init__(backbone, MultiHead(heads))
        self.tasks, self.sizes = list(heads), list(sizes)

    def task_logits(self, inputs) -> dict[str, torch.Tensor]:
        return dict(zip(self.tasks, self(inputs).split(self.sizes, 1)))


def load_tasks(path, label_columns: list[str], id_columns=None, split_column: str = "split",
               val_fraction: float = 0.2, seed: int = 0, missing: str = "error"):
    """A table with several label columns: (dataset of the first task, classes per task,
    train labels (N, T), val labels (N, T)). The other label columns are kept out of the features."""
    from .data.tabular import _as_list, load_table, read_table
    labels = _as_list(label_columns)
    if len(labels) < 2:
        raise DataError("multi-task training needs at least two label columns (--label-columns a,b)")
    ids = _as_list(id_columns)
    ds = load_table(path, label_column=labels[0], id_columns=ids + labels[1:], split_column=split_column,
                    val_fraction=val_fraction, seed=seed, missing=missing)
    table = read_table(path)
    classes, cols = [], []
    for c in labels:
        vals = [v.strip() for v in table.column(c)]
        cl = sorted({v for v in vals if v})
        if len(cl) < 2:
            raise DataError(f"label column {c!r} holds fewer than two classes")
        classes.append(cl)
        cols.append([cl.index(v) if v else -1 for v in vals])
    y_all = torch.tensor(cols, dtype=torch.long).T  # (rows, tasks)

    def rows(items):
        return [int(it.rpartition("#")[2]) for it in items]
    return ds, classes, y_all[rows(ds.train.items)], y_all[rows(ds.val.items)]


def fit_multitask(data, label_columns, model: str, out, weights: list[float] | None = None,
                  id_columns=None, split_column: str = "split", strategy: str = "full", epochs: int | None = None,
                  lr: float | None = None, unfreeze: int = 2, batch_size: int = 32, seed: int = 0,
                  val_fraction: float = 0.2, head: str = "linear", overwrite: bool = False,
                  progress: bool = True, echo=print) -> dict:
    """Train one head per label column on a shared backbone; report each head's val accuracy."""
    t0 = time.perf_counter()
    seed_everything(seed)
    ds, classes, y_tr, y_va = load_tasks(data, label_columns, id_columns, split_column, val_fraction, seed)
    ds.say_warnings(echo)
    from .data.tabular import _as_list
    tasks = _as_list(label_columns)
    weights = [1.0] * len(tasks) if weights is None else [float(w) for w in weights]
    if len(weights) != len(tasks):
        raise ValueError(f"{len(weights)} weight(s) for {len(tasks)} tasks: give one weight per label column")
    backbone = zoo.load(model)
    pipe = pipeline(backbone.modality)
    if hasattr(pipe, "prepare_backbone"):
        pipe.prepare_backbone(backbone, ds)
    in_dim = backbone(pipe.example_input(backbone)).shape[1]
    seed_everything(seed)
    sizes = [len(c) for c in classes]
    mt = MultiTaskModel(backbone, {t: make_head(in_dim, n, head) for t, n in zip(tasks, sizes)}, sizes)
    recipe = build_recipe(strategy, len(ds.train), len(backbone), epochs=epochs, lr=lr, unfreeze=unfreeze)
    if recipe.uses_cache:  # the heads train live; on a frozen backbone that is the head strategy
        recipe = build_recipe("head", len(ds.train), len(backbone), epochs=epochs, lr=lr)
    run = RunDir.create(out, overwrite=overwrite)
    # No single accuracy: the best epoch is chosen by the weighted val loss (val_acc stays 0).
    trainer = Trainer(TrainConfig(seed=seed, progress=progress, task="multitask"), run=run,
                      loss_fn=MultiTaskLoss(sizes, weights))

    def make_loader(split, shuffle, generator):
        s, y = (ds.train, y_tr) if split == "train" else (ds.val, y_va)
        return pipe.make_loader(backbone, s.items, y, batch_size=batch_size, shuffle=shuffle,
                                generator=generator)
    trainer.fit(mt, "train", "val", recipe.phases, make_loader=make_loader)
    run.save_tensors("model.safetensors", mt.state_dict())
    res = evaluate_multitask(mt, ds.val.items, y_va, classes)
    config = {"kind": "multitask", "model": model, "tasks": tasks, "classes": classes, "weights": weights,
              "head": head, "in_dim": int(in_dim), "data_config": backbone.data_config,
              "strategy": recipe.strategy, "data": str(data), "seed": seed}
    run.write_yaml("config.yaml", config)
    run.remove("checkpoint.pt", "best.safetensors")
    summary = {"tasks": res, "wall_seconds": time.perf_counter() - t0, "val_rows": len(ds.val),
               "kept": trainer.kept, "phases": trainer.phase_best}
    run.write_json("summary.json", summary)
    run.release()
    for t, r in res.items():
        echo(f"{t}: val accuracy {r['accuracy']:.4f} ({r['n']} labelled rows)")
    return summary


@torch.no_grad()
def evaluate_multitask(model: MultiTaskModel, items, y: torch.Tensor, classes, batch_size: int = 64) -> dict:
    """Each head on its own: accuracy over the rows that have that task's label."""
    pipe = pipeline(model.backbone.modality)
    model.eval()
    logits = []
    for _, x, _ in pipe.make_loader(model.backbone, items, None, batch_size=batch_size):
        logits.append(model(to_device_of(model, x)).cpu())
    logits = torch.cat(logits).split(model.sizes, 1)
    res = {}
    for t, (name, lt) in enumerate(zip(model.tasks, logits)):
        keep = y[:, t] >= 0
        pred = lt.argmax(1)[keep]
        res[name] = {"accuracy": float((pred == y[keep, t]).float().mean()) if keep.any() else float("nan"),
                     "n": int(keep.sum()), "classes": classes[t],
                     "majority_baseline": float(np.bincount(y[keep, t].numpy()).max() / max(int(keep.sum()), 1))}
    return res


def load_multitask(run_dir) -> MultiTaskModel:
    """A multi-task run directory back as a model (eval mode)."""
    cfg = read_config(run_dir)
    if cfg.get("kind") != "multitask":
        raise ValueError(f"{run_dir} is not a multi-task run")
    bb = zoo.load(cfg["model"], pretrained=False)
    bb.data_config = dict(cfg["data_config"])
    sizes = [len(c) for c in cfg["classes"]]
    mt = MultiTaskModel(bb, {t: make_head(cfg["in_dim"], n, cfg["head"]) for t, n in zip(cfg["tasks"], sizes)}, sizes)
    load_weights(mt, Path(run_dir) / "model.safetensors")
    return mt.eval()
