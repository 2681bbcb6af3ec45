"""Multi-task heads: one shared backbone, one head per label column, trained together.

The loss is a weighted sum of each task's cross-entropy (a missing label, -1, is ignored
by its task). The heads' logits are concatenated so the one training loop
(``rehead.train.loop.Trainer``) runs unchanged; each head is evaluated on its own.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import zoo
from .config import HEADS, ConfigError
from .data import DataError, pipeline
from .data.csvio import lines
from .data.splits import assemble
from .data.tabular import MODALITY, _as_list, _some, read_parts, read_table, row_ref
from .heads import make_head
from .precision import to_device_of
from .model import TransferModel
from .recipes import build_recipe
from .run import load_weights, read_config
from .rundir import RunDir
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


# The heads train live on the backbone's output: no cached-feature extract, and no auto plan.
STRATEGIES = ("head", "finetune", "gradual", "full")


def task_names(label_columns) -> list[str]:
    tasks = _as_list(label_columns)
    if len(tasks) < 2:
        raise ConfigError(f"--label-columns needs at least two label columns (e.g. a,b), got {label_columns!r}")
    repeated = sorted({c for c in tasks if tasks.count(c) > 1})
    if repeated:
        raise ConfigError(f"--label-columns names {', '.join(map(repr, repeated))} more than once: give each column once")
    return tasks


def parse_weights(weights, n_tasks: int) -> list[float]:
    """One loss weight > 0 per task, from a list or the CLI's '1,0.5' (default: all 1)."""
    if weights is None:
        return [1.0] * n_tasks
    try:
        w = [float(v) for v in (weights.split(",") if isinstance(weights, str) else weights)]
    except (TypeError, ValueError):
        raise ConfigError(f"--weights takes comma-separated numbers (e.g. 1,0.5), got {weights!r}") from None
    if len(w) != n_tasks:
        raise ConfigError(f"--weights gives {len(w)} weight(s) for {n_tasks} label columns: give one per column")
    bad = [v for v in w if not (v > 0 and np.isfinite(v))]
    if bad:
        raise ConfigError(f"--weights must each be a number > 0 (a task's share of the loss), got {bad[0]:g}")
    return w


def check_options(strategy: str, epochs, lr, batch_size: int, val_fraction: float, unfreeze: int, seed: int,
                  head: str) -> None:
    """Every option's range, before the table is read or OUT is made."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)} (the heads train live: no extract "
                          f"or auto), got {strategy!r}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if lr is not None and not lr > 0:
        raise ConfigError(f"--lr must be > 0, got {lr}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if unfreeze < -1:  # not a CLI option: the keyword's name
        raise ConfigError(f"unfreeze must be >= 0 (or -1: every stage), got {unfreeze}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def _row(item) -> int:
    return row_ref(item)[1]


def _stratified_by_first(parts, cells: dict[str, list[str]]) -> list[int]:
    """Label ``parts`` for the split by the first task; the rows with no label at all are taken out
    (returned). A row without the first label but with another stands in as the first task's
    commonest training class, so the split keeps it and it trains the other tasks."""
    first = next(iter(cells.values()))
    base = parts.parts.get("all") or parts.parts.get("train")
    seen = Counter(first[_row(it)] for it in (base.items if base else []) if first[_row(it)])
    if not seen:
        raise DataError(f"{parts.source}: the first of --label-columns is empty on every training row: "
                        "put a column labelled on the training rows first")
    stand_in = seen.most_common(1)[0][0]
    dropped = []
    for k, p in parts.parts.items():
        labelled = [any(c[_row(it)] for c in cells.values()) for it in p.items]
        keep = [j for j, ok in enumerate(labelled) if ok]
        dropped += [_row(it) for it, ok in zip(p.items, labelled) if not ok]
        parts.parts[k] = dataclasses.replace(
            p, items=[p.items[j] for j in keep], labels=[first[_row(p.items[j])] or stand_in for j in keep],
            keys=[p.keys[j] for j in keep] if p.keys is not None else None,
            lines=[p.lines[j] for j in keep] if p.lines is not None else None)
    return sorted(dropped)


def unlabelled_warnings(table, cells: dict[str, list[str]], rows: list[int], dropped: list[int]) -> list[str]:
    """Per column: the train/val rows it leaves empty, which only its own task ignores; and the
    rows left out for having no label in any column."""
    source = table.path
    out = [f"{source}: {len(dropped)} row(s) have no label in any of --label-columns and were left out "
           f"({lines(dropped, getattr(table.rows, 'line', None))}): label or delete them"] if dropped else []
    for c, vals in cells.items():
        n = sum(1 for i in rows if not vals[i])
        if n:
            out.append(f"{source}: label column {c!r} is empty on {n} of {len(rows)} train/val row(s): its task "
                       "ignores them; the other tasks still train and score on them")
    return out


def load_tasks(path, label_columns: list[str], id_columns=None, split_column: str = "split",
               val_fraction: float = 0.2, seed: int = 0, missing: str = "error"):
    """A table with several label columns: (dataset of the first task, classes per task,
    train labels (N, T), val labels (N, T)). The other label columns are kept out of the features.
    A missing label (-1) is ignored by its own task only; a row with no label at all is left out."""
    tasks = task_names(label_columns)
    table = read_table(path)
    ids = _as_list(id_columns)
    for c, flag in [*((c, "--label-columns") for c in tasks), *((c, "--id-columns") for c in ids)]:
        if c not in table.index:
            raise DataError(f"{table.path} has no column {c!r} (columns: {_some(table.header)}): fix {flag}")
    cells = {c: [v.strip() for v in table.column(c)] for c in tasks}
    classes = []
    for c, vals in cells.items():
        cl = sorted(set(vals) - {""})
        if len(cl) < 2:
            raise DataError(f"{table.path}: label column {c!r} holds fewer than two classes: a head needs two or more")
        classes.append(cl)
    parts = read_parts(table.path, label_column=tasks[0], id_columns=ids + tasks[1:], split_column=split_column,
                       missing=missing)
    dropped = _stratified_by_first(parts, cells)
    ds = assemble(MODALITY, parts, val_fraction, seed)
    for k, v in parts.extra.items():
        setattr(ds, k, v)
    tr, va = [_row(it) for it in ds.train.items], [_row(it) for it in ds.val.items]
    ds.info.setdefault("warnings", []).extend(unlabelled_warnings(table, cells, tr + va, dropped))
    y_all = torch.tensor([[cl.index(v) if v else -1 for v in cells[c]] for c, cl in zip(tasks, classes)],
                         dtype=torch.long).T  # (rows, tasks)
    return ds, classes, y_all[tr], y_all[va]


def live_recipe(strategy: str, n_train: int, depth: int, epochs, lr, unfreeze: int):
    """The strategy's phases, every one trained live: the heads are not solved on cached features
    (that fallback had made finetune and gradual silently train the heads alone)."""
    recipe = build_recipe(strategy, n_train, depth, epochs=epochs, lr=lr, unfreeze=unfreeze)
    recipe.phases = [dataclasses.replace(p, on_features=False) for p in recipe.phases]
    recipe.uses_cache = False
    return recipe


def fit_multitask(data, label_columns, model: str, out, weights: list[float] | str | None = None,
                  id_columns=None, split_column: str = "split", strategy: str = "full", epochs: int | None = None,
                  lr: float | None = None, unfreeze: int = 2, batch_size: int = 32, seed: int = 0,
                  val_fraction: float = 0.2, head: str = "linear", overwrite: bool = False,
                  progress: bool = True, echo=print) -> dict:
    """Train one head per label column on a shared backbone; report each head's val accuracy.
    ``weights``: one loss weight > 0 per label column, a list or '1,0.5' (default all 1)."""
    tasks = task_names(label_columns)
    weights = parse_weights(weights, len(tasks))
    check_options(strategy, epochs, lr, batch_size, val_fraction, unfreeze, seed, head)
    t0 = time.perf_counter()
    seed_everything(seed)
    ds, classes, y_tr, y_va = load_tasks(data, tasks, id_columns, split_column, val_fraction, seed)
    ds.say_warnings(echo)
    backbone = zoo.load(model)
    pipe = pipeline(backbone.modality)
    if hasattr(pipe, "prepare_backbone"):
        pipe.prepare_backbone(backbone, ds)
    in_dim = backbone(pipe.example_input(backbone)).shape[1]
    seed_everything(seed)
    sizes = [len(c) for c in classes]
    mt = MultiTaskModel(backbone, {t: make_head(in_dim, n, head) for t, n in zip(tasks, sizes)}, sizes)
    recipe = live_recipe(strategy, len(ds.train), len(backbone), epochs, lr, unfreeze)
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
