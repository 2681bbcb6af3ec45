"""Multi-task heads: one shared backbone, one head per label column, trained together.

The loss is a weighted sum of each task's cross-entropy (a missing label, -1, is ignored
by its task). The heads' logits are concatenated so the one training loop
(``rehead.train.loop.Trainer``) runs unchanged; each head is evaluated on its own (val, and the
test rows once), and each task's accuracy is logged per epoch (``TaskAccuracy``). A run is scored
again with `rehead evaluate RUN [CSV]` or, from Python, ``evaluate_multitask_run(RUN, CSV)``.
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
from .data.splits import assemble, choose_eval
from .data.tabular import MODALITY, _as_list, _some, label_cells, read_parts, read_table, row_ref
from .heads import make_head
from .precision import to_device_of
from .model import TransferModel
from .recipes import build_recipe
from .run import load_weights, read_config
from .rundir import RunDir
from .train.callbacks import Callback
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
        self.tally = None  # TaskAccuracy's per-task [correct, labelled] over the batches this loss sees

    def count(self, logits, y) -> None:
        for t, chunk in enumerate(logits.detach().split(self.sizes, 1)):
            keep = y[:, t] >= 0
            self.tally[t][0] += int((chunk.argmax(1)[keep] == y[keep, t]).sum())
            self.tally[t][1] += int(keep.sum())

    def per_task(self, logits, y) -> list[torch.Tensor]:
        losses = []
        for t, chunk in enumerate(logits.split(self.sizes, 1)):
            yt = y[:, t]
            # A batch where every label of this task is missing contributes 0, not NaN.
            losses.append(F.cross_entropy(chunk, yt, ignore_index=-1) if (yt >= 0).any() else chunk.sum() * 0)
        return losses

    def forward(self, logits, y):
        if self.tally is not None:
            self.count(logits, y)
        return sum(w * l for w, l in zip(self.weights, self.per_task(logits, y)))


class TaskAccuracy(Callback):
    """Each task's train and val accuracy in the epoch's row (train_acc_<task>, val_acc_<task>; empty
    where the task had no labelled row), from the batches the loss already sees. They replace the
    loop's single train_acc / val_acc, which a multi-task run does not have (they read 0)."""
    order = 5  # before BestWeights (10): without val_acc the kept epoch is the lowest weighted val loss

    def __init__(self, loss: MultiTaskLoss, tasks: list[str]):
        self.loss, self.tasks = loss, tasks

    def _take(self) -> list:
        got, self.loss.tally = self.loss.tally or [], [[0, 0] for _ in self.tasks]
        return [c / n if n else None for c, n in got]

    def before_epoch(self, tr):
        self._take()

    def before_validate(self, tr):
        self.train = self._take()

    def after_epoch(self, tr):
        val = self._take() if "val_loss" in tr.row else None
        row = list(tr.row.items())
        tr.row.clear()  # rebuilt in place: tr.row is also the history's last row
        for k, v in row:
            if k in ("train_acc", "val_acc"):
                continue
            tr.row[k] = v
            if k == "train_loss":
                tr.row.update({f"train_acc_{t}": a for t, a in zip(self.tasks, self.train)})
            if k == "val_loss" and val is not None:
                tr.row.update({f"val_acc_{t}": a for t, a in zip(self.tasks, val)})

    def after_fit(self, tr):
        self.loss.tally = None


class MultiTaskModel(TransferModel):
    """A TransferModel whose head is a MultiHead; ``task_logits`` splits the logits per task.
    ``classes``: each task's class names (what evaluating on a CSV maps its labels onto)."""

    def __init__(self, backbone, heads: dict[str, nn.Module], sizes: list[int], classes=None):
        super().__init__(backbone, MultiHead(heads))
        self.tasks, self.sizes = list(heads), list(sizes)
        self.classes = [list(c) for c in classes] if classes is not None else None

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
    cells = {c: label_cells(table, c) for c in tasks}
    from .data.splits import sorted_classes
    classes = []
    for c, vals in cells.items():
        cl = sorted_classes(set(vals) - {""})
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
    y_all = task_labels(table, tasks, classes)
    # the test split's labels ride on ds (scored once after training, never for selection)
    ds.y_test = y_all[[_row(it) for it in ds.test.items]] if ds.test is not None else None
    return ds, classes, y_all[tr], y_all[va]


def task_labels(table, tasks: list[str], classes: list[list[str]]) -> torch.Tensor:
    """(rows, tasks) class indices of every row of ``table``; -1 where a task's cell is empty."""
    out = []
    for c, cl in zip(tasks, classes):
        vals = [v.strip() for v in table.column(c)]
        if set(vals) - set(cl) - {""}:  # a run's classes as written ("0.0": a run from before label_cells)
            vals = label_cells(table, c)
        unknown = sorted(set(vals) - set(cl) - {""})
        if unknown:
            raise DataError(f"{table.path}: label column {c!r} holds class(es) the run never saw: "
                            f"{', '.join(map(repr, unknown[:5]))} (its classes: {', '.join(cl)}): remove those rows")
        index = {v: i for i, v in enumerate(cl)}
        out.append([index.get(v, -1) for v in vals])
    return torch.tensor(out, dtype=torch.long).T


def live_recipe(strategy: str, n_train: int, depth: int, epochs, lr, unfreeze: int):
    """The strategy's phases, every one trained live: the heads are not solved on cached features
    (that fallback had made finetune and gradual silently train the heads alone)."""
    recipe = build_recipe(strategy, n_train, depth, epochs=epochs, lr=lr, unfreeze=unfreeze)
    recipe.phases = [dataclasses.replace(p, on_features=False) for p in recipe.phases]
    recipe.uses_cache = False
    return recipe


TEST_NOTE = "the test rows were scored once, after training: nothing was chosen on them (val chose the epoch)"


def fit_multitask(data, label_columns, model: str, out, weights: list[float] | str | None = None,
                  id_columns=None, split_column: str = "split", strategy: str = "full", epochs: int | None = None,
                  lr: float | None = None, unfreeze: int = 2, batch_size: int = 32, seed: int = 0,
                  val_fraction: float = 0.2, head: str = "linear", overwrite: bool = False,
                  progress: bool = True, echo=print) -> dict:
    """Train one head per label column on a shared backbone; report each head's val accuracy, and its
    test accuracy where the table has split=test rows (scored once, never used for selection).
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
        pipe.prepare_backbone(backbone, ds, echo)  # says what of the table the model reads
    in_dim = backbone(pipe.example_input(backbone)).shape[1]
    seed_everything(seed)
    sizes = [len(c) for c in classes]
    mt = MultiTaskModel(backbone, {t: make_head(in_dim, n, head) for t, n in zip(tasks, sizes)}, sizes, classes)
    recipe = live_recipe(strategy, len(ds.train), len(backbone), epochs, lr, unfreeze)
    from .zoo.paths import spec_path
    run = RunDir.create(out, overwrite=overwrite, inputs=[data, spec_path(model)])  # never emptied by --overwrite
    with run.kept_if_finished():  # no --resume: an interrupted run leaves no half directory
        # No single accuracy: the kept epoch is the lowest weighted val loss; each task's accuracy is logged.
        loss = MultiTaskLoss(sizes, weights)
        trainer = Trainer(TrainConfig(seed=seed, progress=progress, task="multitask",
                                      hooks=[TaskAccuracy(loss, tasks)]), run=run, loss_fn=loss)

        def make_loader(split, shuffle, generator):
            s, y = (ds.train, y_tr) if split == "train" else (ds.val, y_va)
            return pipe.make_loader(backbone, s.items, y, batch_size=batch_size, shuffle=shuffle,
                                    generator=generator)
        trainer.fit(mt, "train", "val", recipe.phases, make_loader=make_loader)
        run.save_tensors("model.safetensors", mt.state_dict())
        res = evaluate_multitask(mt, ds.val.items, y_va, classes)
        # Scored once, after every choice was made on val: reported beside it, never selected on.
        has_test = ds.test is not None and len(ds.test)
        test = evaluate_multitask(mt, ds.test.items, ds.y_test, classes) if has_test else None
        config = {"kind": "multitask", "model": model, "tasks": tasks, "classes": classes, "weights": weights,
                  "head": head, "in_dim": int(in_dim), "data_config": backbone.data_config,
                  "strategy": recipe.strategy, "data": str(data), "seed": seed}
        run.write_yaml("config.yaml", config)
        run.write_json("split.json", ds.to_split())  # which rows it trained on and chose with: evaluate says them
        run.remove("checkpoint.pt", "best.safetensors")
        summary = {**_summary(res, test, len(ds.test) if test else 0, trainer, tasks),
                   "wall_seconds": time.perf_counter() - t0, "val_rows": len(ds.val)}
        run.write_json("summary.json", summary)
    run.release()  # after kept_if_finished's finish: the old run gone before another claim
    _report_end(echo, summary, run.path)
    return summary


def learned(r: dict) -> bool | None:
    """Whether a head beat always answering its task's commonest val class (None: no labelled val row)."""
    return None if not r["n"] else r["accuracy"] > r["majority_baseline"]


def baseline_warning(task: str, r: dict) -> str:
    if not r["n"]:
        return f"{task}: no val row has a {task!r} label: its head is unmeasured; label some of its train rows"
    how = "below" if r["accuracy"] < r["majority_baseline"] else "no better than"
    return (f"{task}: val accuracy {r['accuracy']:.4f} is {how} its majority-class baseline "
            f"{r['majority_baseline']:.2f}: the head learned nothing useful for {task} "
            "(try more --epochs, or a larger --weights share for it)")


def _per_task(row: dict, prefix: str, tasks: list[str]) -> dict:
    """{task: row[prefix_task]} (None: no labelled row that epoch)."""
    return {t: row.get(f"{prefix}_{t}") for t in tasks}


def _summary(val: dict, test: dict | None, n_test: int, trainer, tasks: list[str]) -> dict:
    """summary.json's figures: per task val (and test) accuracy, and what was kept, with each task's
    accuracies in place of the loop's single ones (None there: a multi-task run has none)."""
    out = {}
    for t, r in val.items():
        out[t] = {**r, "above_baseline": learned(r)}
        if test is not None:
            out[t].update(test_accuracy=test[t]["accuracy"], test_n=test[t]["n"])
    s = {"tasks": out}
    if test is not None:
        s.update(test_rows=n_test, test_note=TEST_NOTE)
    s["warnings"] = [baseline_warning(t, r) for t, r in val.items() if not learned(r)]
    kept = trainer.kept or {}
    s["kept"] = {**{k: v for k, v in kept.items() if v is not None and not k.startswith("val_acc")},
                 "val_acc": _per_task(kept, "val_acc", tasks), "chosen_by": "lowest weighted val loss"}
    s["phases"] = []
    for p in trainer.phase_best:
        rows = [r for r in trainer.history if r["phase_index"] == p["phase_index"]]
        best = next(r for r in rows if r["epoch"] == p["epoch"])
        s["phases"].append({**{k: v for k, v in p.items() if v is not None},
                            "best_val_acc": _per_task(best, "val_acc", tasks),
                            "train_acc_last": _per_task(rows[-1], "train_acc", tasks)})
    return s


def _acc(a) -> str:
    return "n/a" if a is None else f"{a:.4f}"


def _report_end(echo, s: dict, out) -> None:
    for t, r in s["tasks"].items():
        test = f"; test accuracy {_acc(r['test_accuracy'])} ({r['test_n']} labelled rows, scored once, " \
               "not used for selection)" if "test_n" in r else ""
        echo(f"{t}: val accuracy {_acc(r['accuracy'])} ({r['n']} labelled rows){test}")
    for w in s["warnings"]:
        echo(f"warning: {w}")
    echo(f"-> {out} (score it again: rehead evaluate {out} DATA; from Python rehead.multitask.evaluate_multitask_run)")


def eval_rows(path, tasks: list[str], classes: list[list[str]], split_column: str = "split"):
    """A CSV's rows to score, as ``rehead evaluate`` picks them (its test rows, else val, else every
    row), and their labels (rows, tasks), mapped onto the run's ``classes``."""
    table = read_table(path)
    missing = [c for c in tasks if c not in table.index]
    if missing:
        raise DataError(f"{table.path} has no column {missing[0]!r} (columns: {_some(table.header)}): "
                        f"evaluate on a table with every task's label column ({', '.join(tasks)})")
    parts = read_parts(table.path, eval_only=True, label_column=tasks[0], id_columns=tasks[1:],
                       split_column=split_column)
    items = parts.parts[choose_eval(parts)].items
    return items, task_labels(table, tasks, classes)[[_row(it) for it in items]]


@torch.no_grad()
def evaluate_multitask(model: MultiTaskModel, data, y: torch.Tensor | None = None, classes=None,
                       batch_size: int = 64, split_column: str = "split") -> dict:
    """Each head on its own: {task: accuracy, n (its labelled rows), classes, majority_baseline}; accuracy
    and baseline None where no row has the task's label. ``data``: row items with ``y`` (rows, tasks; -1:
    no label), or a CSV path: its test rows (else val, else all), labels read with the run's classes."""
    classes = classes if classes is not None else getattr(model, "classes", None)
    if classes is None:
        raise ValueError("evaluate_multitask needs each task's classes: pass classes=, or load the model "
                         "with rehead.multitask.load_multitask(RUN_DIR)")
    if y is None:
        if not isinstance(data, (str, Path)):
            raise ValueError("evaluate_multitask(model, items) needs y, the items' labels (rows, tasks): "
                             "or give a CSV path instead of items")
        data, y = eval_rows(data, model.tasks, classes, split_column)
    pipe = pipeline(model.backbone.modality)
    model.eval()
    logits = []
    for _, x, _ in pipe.make_loader(model.backbone, data, None, batch_size=batch_size):
        logits.append(model(to_device_of(model, x)).cpu())
    logits = torch.cat(logits).split(model.sizes, 1)
    res = {}
    for t, (name, lt) in enumerate(zip(model.tasks, logits)):
        keep = y[:, t] >= 0
        n = int(keep.sum())
        res[name] = {"accuracy": float((lt.argmax(1)[keep] == y[keep, t]).float().mean()) if n else None,
                     "n": n, "classes": classes[t],
                     "majority_baseline": float(np.bincount(y[keep, t].numpy()).max() / n) if n else None}
    return res


def evaluate_multitask_run(run_dir, data=None, batch_size: int = 64, split_column: str = "split") -> dict:
    """A multi-task run scored on a CSV (its test rows, else val, else all), or without ``data`` on its
    own val rows: per task, as ``evaluate_multitask``. Rows the run trained on or chose with are counted
    in each task's ``seen``, with a warning: a score on them is optimistic."""
    model = load_multitask(run_dir)
    split = _split_record(run_dir)
    if data is None:
        if split is None:
            raise DataError(f"{run_dir} records no val rows (a run made before split.json was kept): give the table "
                            "to score, evaluate_multitask_run(RUN, CSV)")
        items = list(split["val"]["items"])
        y = task_labels(read_table(row_ref(items[0])[0]), model.tasks, model.classes)[[_row(it) for it in items]]
    else:
        items, y = eval_rows(data, model.tasks, model.classes, split_column)
    res = evaluate_multitask(model, items, y, batch_size=batch_size)
    if data is not None and split is not None:
        _count_seen(res, split, items, y, model.backbone.data_config.get("columns") or [])
    return res


def _split_record(run_dir) -> dict | None:
    """The run's split.json, after checking its table is the one it was fitted on."""
    from .data.splits import file_changes
    from .rundir import read_json
    p = Path(run_dir) / "split.json"
    if not p.exists():
        return None
    split = read_json(p)
    changed = file_changes(split.get("fingerprint") or {})
    if changed:
        raise DataError(f"the table {run_dir} was fitted on changed since ({changed[0]}): its rows cannot be told "
                        "apart from held-out ones; restore it, or score a table of new rows")
    return split


def _count_seen(res: dict, split: dict, items: list, y: torch.Tensor, columns: list[str]) -> None:
    """Per task, how many of the scored rows (compared by their feature cells) the run trained on or chose
    its epoch with, and a warning where any."""
    from .data.tabular import row_cells
    seen = {k: set(row_cells(list(split[k]["items"]), columns)) for k in ("train", "val")}
    cells = row_cells(items, columns)
    for t, (name, r) in enumerate(res.items()):
        mask = (y[:, t] >= 0).tolist()
        n = {k: sum(1 for c, m in zip(cells, mask) if m and c in ids) for k, ids in seen.items()}
        if any(n.values()):
            r["seen"] = n
            r["warning"] = (f"{name}: {n['train'] + n['val']} of {r['n']} scored rows were seen by this run "
                            f"({n['train']} trained on, {n['val']} in the val split that chose its epoch): the "
                            "score is optimistic; evaluate on rows it has not seen (split=test) for a held-out figure")


def load_multitask(run_dir) -> MultiTaskModel:
    """A multi-task run directory back as a model (eval mode), with each task's classes."""
    cfg = read_config(run_dir)
    if cfg.get("kind") != "multitask":
        raise ValueError(f"{run_dir} is not a multi-task run (its kind: {cfg.get('kind', 'fit')}): "
                         "open it with rehead.open_run")
    bb = zoo.load(cfg["model"], pretrained=False)
    bb.data_config = dict(cfg["data_config"])
    sizes = [len(c) for c in cfg["classes"]]
    heads = {t: make_head(cfg["in_dim"], n, cfg["head"]) for t, n in zip(cfg["tasks"], sizes)}
    mt = MultiTaskModel(bb, heads, sizes, cfg["classes"])
    load_weights(mt, Path(run_dir) / "model.safetensors")
    return mt.eval()
