"""Run: a finished run directory loaded back, to predict and evaluate.

    config.yaml        what was run (kind, model spec, cut, head, strategy, phases, data, fit options)
    labels.json        class names, index order
    split.json         the train/val(/test) items, so `evaluate` and `--resume` reuse the split
    metrics.csv        one row per epoch
    model.safetensors  prefix + head weights (the whole TransferModel)
    summary.json       final figures
    temperature.json   T fitted on val: probabilities are softmax(logits / T) (absent: T = 1)

Every file is written by ``rehead.rundir.RunDir``; this module only reads.
"""
from __future__ import annotations

import hashlib
import html
import math
import os
from pathlib import Path

import numpy as np
import torch

from .calibration import is_multiclass
from .heads import make_head
from .model import TransferModel
from .data import DataError
from .rundir import BadRun, RunExists, load_tensors, read_json, read_yaml  # noqa: F401  (BadRun, RunExists re-exported)
from .tasks import far_outside, multi_hot, multilabel_metrics, predictions, regression_metrics, task_of


def read_config(run_dir) -> dict:
    return read_yaml(Path(run_dir) / "config.yaml")


def build_model(cfg: dict, pretrained: bool = False) -> TransferModel:
    """The architecture a config describes (weights loaded separately)."""
    from . import zoo
    if str(cfg["model"]).startswith("module:"):
        raise BadRun(f"this run was fitted on an in-memory nn.Module ({cfg['model'][len('module:'):]}), whose "
                     "architecture a run directory does not hold: rehead cannot rebuild it from disk. Use the Run "
                     "that fit returned in that session; to reload later, fit with a spec rehead can rebuild "
                     "(timm:NAME, file:WEIGHTS#timm:NAME, hf:DIR, a run directory)")
    bb = zoo.load(cfg["model"], pretrained=pretrained).cut(cfg["cut"])
    if cfg.get("data_config"):  # what the run recorded wins (e.g. a table's fitted feature columns)
        bb.data_config = dict(cfg["data_config"])
    h = cfg["head"]
    head = make_head(h["in_dim"], h["out_dim"], h["kind"], h.get("hidden", 512), h.get("dropout", 0.0))
    return TransferModel(bb, head, train_frozen_bn=cfg.get("train_frozen_bn", False),
                         freeze_bn=cfg.get("freeze_bn", False), layer_decay=cfg.get("layer_decay"))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from .zoo.file import load_into
    try:
        load_into(model, load_tensors(path), str(path))
    except ValueError as e:
        if isinstance(e, BadRun):
            raise
        raise BadRun(f"{path} was saved for another architecture than its config describes: {e}") from e


class Run:
    """A finished run loaded back: predict and evaluate need nothing but the directory."""
    task = "multiclass"  # what ensembles and soups (subclasses with their own __init__) always are
    target = None
    _identity = None  # the run directory's marker file as loaded (None: not checked)

    def __init__(self, run_dir: str | Path, model: TransferModel | None = None, lazy: bool = False):
        """Load the run at ``run_dir``; ``model``: the run's model already in memory (``fit``
        hands over what it just saved instead of rebuilding it); ``lazy``: build it on first use."""
        self.dir = Path(run_dir).absolute()  # its files are read where it was loaded from, whatever the cwd later
        self._identity = _dir_identity(self.dir)
        self.config = read_config(self.dir)
        self.classes = read_json(self.dir / "labels.json")
        if not (isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes)):
            raise BadRun(f"{self.dir / 'labels.json'} is not a list of class names: restore it or rerun")
        n_out = (self.config.get("head") or {}).get("out_dim")
        if n_out is not None and n_out != len(self.classes):
            raise BadRun(f"{self.dir / 'labels.json'} names {len(self.classes)} classes but the model predicts "
                         f"{n_out}: restore labels.json or rerun")
        self.task = task_of(self.config)
        self.target = self.config.get("target")  # regression: the training target's mean/std
        if self.task == "regression" and not (isinstance(self.target, dict) and {"mean", "std"} <= set(self.target)):
            raise BadRun(f"{self.dir / 'config.yaml'} is a regression run without its target mean/std: "
                         "restore it or rerun")
        self._model = model.eval() if model is not None else None
        self._placed, self._handed_over = False, model is not None
        # bf16 when the head was kept from features extracted in bf16 (rehead.precision): the
        # backbone then runs as it did when those features were made
        self.inference_precision: str | None = None
        if model is None and not (self.dir / "model.safetensors").exists():
            raise BadRun(f"{self.dir} has no model.safetensors: the run did not finish "
                         f"(continue it with `rehead fit --resume {self.dir}`)")
        if not lazy:
            self.model  # noqa: B018  (load now: a bad checkpoint is an error here, not at first use)

    @property
    def model(self) -> TransferModel:
        """The run's model, built and loaded on first use (a cached fit never needs it)."""
        if self._model is None:
            from .lora import load_run
            model = load_run(self.dir, self.config)  # a LoRA run: the base from its spec + the adapters
            if model is None:
                model = build_model(self.config)
                load_weights(model, self.dir / "model.safetensors")
            source = model.backbone.source_head[0]
            if source is not None and (self.dir / "source_head.safetensors").exists():
                load_weights(source, self.dir / "source_head.safetensors")  # the pretrained head, as it was
            self._model = model.eval()
        return self._model

    @property
    def modality(self) -> str:
        return (self.config.get("data_config") or {}).get("modality") or self.model.backbone.modality

    def _check_same(self) -> None:
        """This object's model, config and classes are the directory's as loaded: a later fit with overwrite
        (or a deleted run) would otherwise mix them with the new run's temperature and summary."""
        if self._identity is not None and _dir_identity(self.dir) != self._identity:
            raise BadRun(f"{self.dir} was replaced (a later fit with overwrite) or removed since this Run was loaded: "
                         f"load it again, rehead.Run({str(self.dir)!r})")

    @property
    def summary(self) -> dict:
        self._check_same()
        p = self.dir / "summary.json"
        return read_json(p) if p.exists() else {}

    @property
    def temperature(self) -> float:
        """The temperature fitted on val at the end of the fit (temperature.json); 1.0 for a run
        without one, and for runs that are not multiclass."""
        from .calibration import is_multiclass, read_temperature
        self._check_same()
        return read_temperature(self.dir) if is_multiclass(self.config) else 1.0

    # -- inference -----------------------------------------------------------------------
    def logits(self, items: list, batch_size: int = 32, workers: int = 0, progress: bool = False):
        """Logits for items (paths, texts, table rows, PIL images or image tensors);
        returns (logits (N_kept, C), kept indices, skipped items). Raw: no temperature, no flip."""
        views, kept, skipped = self._views(items, batch_size=batch_size, workers=workers, progress=progress)
        return views[0], kept, skipped

    def probs(self, items: list, tta: bool = False, calibrated: bool = True, **kw):
        """Class probabilities softmax(logits / T), T the run's temperature (``calibrated=False``:
        T = 1); ``tta``: the mean of the image's and its horizontal flip's probabilities.
        Returns (probs (N_kept, C), kept indices, skipped items)."""
        from .calibration import scaled_probs
        views, kept, skipped = self._views(items, tta=tta, **kw)
        return scaled_probs(views, self.temperature if calibrated else 1.0).float(), kept, skipped

    def _views(self, items: list, tta: bool = False, batch_size: int = 32, workers: int = 0,
               progress: bool = False):
        """([logits] or, with ``tta``, [logits, logits of the horizontally flipped images], kept, skipped)."""
        from tqdm.auto import tqdm
        self._check_same()
        if tta:
            self.check_tta()
        items = list(items)
        stored = None if tta else self._stored_views(items, batch_size, workers, progress)
        if stored is not None:
            return stored
        batches, skipped_of = self._batches(items, batch_size, workers)
        outs = ([], []) if tta else ([],)
        kept = []
        with torch.inference_mode():
            for idx, x in tqdm(batches, disable=not progress, desc="predict", leave=False):
                if len(idx):
                    outs[0].append(self._forward(x))
                    if tta:  # images are (N, C, H, W): flipping W after the centre crop flips the crop
                        outs[1].append(self._forward(x.flip(-1)))
                    kept.extend(idx)
        views = [torch.cat(o) if o else torch.empty(0, len(self.classes)) for o in outs]
        return views, kept, skipped_of(kept)

    def _stored_views(self, items: list, batch_size: int, workers: int, progress: bool):
        """``([logits], kept, skipped)`` from the feature store, for a run whose head was trained on
        cached features (its backbone as pretrained): features are made and kept as a fit makes them,
        so a second evaluate or predict of the same data runs no backbone. None where that does not
        hold (other runs, items other than paths and texts, another feature precision than the fit's,
        a launch, the store off or unusable): the model then scores the items itself."""
        from .distributed import state
        from .features import CacheError, FeatureCache, extract
        from .precision import extraction_device, feature_precision
        fit = self.config.get("fit") or {}
        if not (items and self.summary.get("kept_on_features") and fit.get("use_cache", True)
                and self.modality in ("image", "text") and all(isinstance(i, (str, Path)) for i in items)
                and (self.inference_precision or self.summary.get("inference_precision", "fp32"))
                == feature_precision(extraction_device())
                and state().num_processes == 1):
            return None
        if self.modality == "image":
            from .data import images, refs
            if any(not refs.is_ref(str(i)) and images.not_regular(i) for i in items):
                return None  # a missing file, a folder or a pipe (never opened to key it): as the model's path says
        m = self.model
        k = len(m.backbone)
        try:
            # str: the store keys paths by their text (a pathlib.Path is no str to join)
            f, kept, _ = extract(m.backbone, [str(i) for i in items], [k], FeatureCache(fit.get("cache_dir")),
                                 batch_size=batch_size, workers=workers, progress=progress, desc="predict")
        except CacheError:
            return None
        done = set(kept)
        return [head_logits(m, f[k], len(self.classes))], kept, [items[i] for i in range(len(items)) if i not in done]

    def _forward(self, x) -> torch.Tensor:
        from .precision import autocast, device_of, extraction_device, feature_precision, to_device_of
        m = self.model
        if not self._placed:
            # Loaded from disk (on the CPU): where extraction runs, the GPU if any. Handed over by a fit:
            # where its head trained (under a launch, this process's GPU), backbone included; an extract
            # fit left its backbone on the CPU and its head on the GPU. Moved outside inference mode:
            # weights copied inside it are inference tensors, which no later training or LoRA merge can use.
            with torch.inference_mode(False):
                m.to(device_of(m.head) if self._handed_over else extraction_device())
            self._placed = True
        if self.inference_precision is None:
            self.inference_precision = self.summary.get("inference_precision", "fp32")
        device, x = device_of(m), to_device_of(m, x)
        if self.inference_precision == "bf16" and feature_precision(device) == "bf16":
            with autocast(device, "bf16"):
                f = m.features(x)
            return m.head(f.float()).float().cpu()
        return m(x).float().cpu()

    def check_tta(self) -> None:
        """Flip TTA is for images: any other run stops here, before any work."""
        if self.modality != "image":
            raise BadRun(f"--tta averages each image with its horizontal flip: {self.dir} is a {self.modality} "
                         "run, which has no flip; leave --tta out")

    def _batches(self, items: list, batch_size: int, workers: int):
        """(index list, model input) batches, and a function naming the items no batch kept."""
        # in-memory images decoded as files are, through the run's eval transform (a table's arrays are rows)
        if items and self.modality == "image" and _in_memory_images(items):
            from .data.images import UnreadableImage, eval_transform, in_memory_image
            cfg = self.model.backbone.data_config
            tf = eval_transform(cfg)
            try:
                xs = [in_memory_image(i, cfg, tf) for i in items]
            except UnreadableImage as e:
                raise DataError(f"cannot predict on {e}") from None
            batches = [(list(range(s, min(s + batch_size, len(xs)))), torch.stack(xs[s:s + batch_size]))
                       for s in range(0, len(xs), batch_size)]
        else:
            from .data import pipeline
            loader = pipeline(self.modality).make_loader(self.model.backbone, items, None, batch_size=batch_size,
                                                         workers=workers)
            batches = ((idx.tolist(), x) for idx, x, _ in loader)

        def skipped_of(kept: list) -> list:
            kept_set = set(kept)
            return [items[i] for i in range(len(items)) if i not in kept_set]
        return batches, skipped_of

    def predict(self, items, top_k: int = 3, tta: bool = False, **kw) -> list[dict]:
        """One row per item, unreadable items marked: multiclass, the top-k labels with
        (calibrated) probabilities (``top``); multilabel, every label with p >= 0.5 (``labels``) and
        each label's probability (``probs``); regression, the predicted ``value`` in the target's units."""
        _check_options("predict", kw, ("top_k", "tta"))
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise DataError(f"top_k={top_k!r}: give a whole number >= 1, the labels shown per item")
        items = self._items(items)
        if self.task != "multiclass":
            views, kept, _ = self._views(items, tta=tta, **kw)  # unread items: rows by position (_in_input_order)
            return self._predict_task(items, torch.stack(views).mean(0), kept)
        probs, kept, _ = self.probs(items, tta=tta, **kw)
        if not torch.isfinite(probs).all():
            raise BadRun(f"{self.dir}'s model gives non-finite outputs: its weights are damaged; rerun it")
        k = min(top_k, len(self.classes))
        rows = []
        for j, i in enumerate(kept):
            p, c = probs[j].topk(k)
            rows.append({"item": _name(items[i], i), "top": [{"label": self.classes[ci], "prob": float(pi)}
                                                             for pi, ci in zip(p.tolist(), c.tolist())]})
        return _in_input_order(items, kept, rows)

    def _items(self, items) -> list:
        """What ``predict`` scores, one item a row: a table run's CSV path, DataFrame or array
        (``predict_items``); a path read as ``rehead predict`` reads it (a CSV or .txt of texts, a folder or
        CSV of images); a DataFrame's text or image column; a Series or 1-D array of texts; a list."""
        if self.modality == "tabular":
            from .data.tabular import predict_items
            return predict_items(items, self._columns())
        if isinstance(items, (str, Path)):
            return self._path_items(items)
        if _is_frame(items):
            col = _item_column(self.data_kw(), self.modality)
            if col not in items.columns:
                raise DataError(f"the DataFrame has no {col!r} column (its columns: "
                                f"{', '.join(map(str, items.columns))}): name the {self.modality} column {col!r}, "
                                "or pass df[column]")
            return _checked_texts(items[col].tolist(), col) if self.modality == "text" else items[col].tolist()
        if _is_series(items):  # its values, not str() of the whole Series
            return _checked_texts(items.tolist(), "the Series") if self.modality == "text" else items.tolist()
        if self.modality == "text" and isinstance(items, np.ndarray) and items.ndim == 1:
            return _checked_texts(items.tolist(), "the array")
        if isinstance(items, (list, tuple)):
            return list(items)
        if self.modality == "image" and _in_memory_images([items]):
            return [items]  # one in-memory image
        forms = ("a text, a list, pandas Series or 1-D array of texts, a CSV / .txt file of texts"
                 if self.modality == "text" else
                 "an image path, a folder or CSV of images, a list of paths, a PIL image, array or tensor, a Series "
                 "of paths")
        raise DataError(f"cannot predict on a {type(items).__name__}: a {self.modality} run takes {forms}, or a "
                        f"DataFrame with a {_item_column(self.data_kw(), self.modality)!r} column")

    def _path_items(self, path) -> list:
        """A path as ``rehead predict`` reads it (``data.inputs.path_items``); a missing image path stays,
        named unreadable in its row, but a pathlib.Path is never a text."""
        from .data.inputs import path_items
        if isinstance(path, Path) and not os.path.lexists(path):
            raise DataError(f"{path} does not exist")
        items = path_items(str(path), self.modality, self.data_kw(), must_exist=False)
        if not items and Path(path).is_dir():
            raise DataError(f"{path} is a folder with no image files in it: give a folder of images")
        return items

    def _predict_task(self, items, out, kept) -> list[dict]:
        if not torch.isfinite(out).all():
            raise BadRun(f"{self.dir}'s model gives non-finite outputs: its weights are damaged; rerun it")
        pred = predictions(self.task, out, self.target)
        rows = []
        for j, i in enumerate(kept):
            if self.task == "regression":
                row = {"item": _name(items[i], i), "value": float(pred[j])}
                if far_outside(row["value"], self.target):
                    row["note"] = "far outside the training targets" + (
                        f" ({self.target['min']:.4g} .. {self.target['max']:.4g})" if "min" in self.target else "")
                rows.append(row)
            else:
                probs = {c: float(p) for c, p in zip(self.classes, pred[j])}
                rows.append({"item": _name(items[i], i), "labels": [c for c, p in probs.items() if p >= 0.5],
                             "probs": probs})
        return _in_input_order(items, kept, rows)

    def evaluate(self, items, labels: list | None = None, columns: dict | None = None, **kw) -> dict:
        """Metrics on ``items`` with ``labels`` (multiclass: class names, or class indices in the run's
        order; multilabel: lists of them; regression: numbers), on a pandas DataFrame (the fit's
        columns), or on a dataset at a path (``evaluate("photos/")``): its classes are mapped onto the
        run's by name; ``columns`` (``text_column``, ``image_column``, ``label_column``) where its CSV or
        DataFrame names them otherwise than the fit's data did. In a run whose class names are numbers
        a number label is the class it names, never an index (see ``_label_indices``)."""
        _check_options("evaluate", {k: v for k, v in kw.items() if k not in ("tta", "views")},
                       ("labels", "columns", "tta"))
        info = {}
        if labels is None and _is_frame(items):
            items, labels, info = self._frame_columns(items, columns)
        if labels is None:
            if not isinstance(items, (str, Path)):  # else a raw TypeError where a path was expected
                raise DataError(f"evaluate got a {type(items).__name__} without labels: give evaluate(items, labels), "
                                "a DataFrame with a label column, or the path of a labelled dataset")
            items, labels, info = self.eval_data(items, columns)
            return self._metrics(items, labels, self._seen(items, info), **kw)
        # a list as it is (a table run's rows); a DataFrame, Series, array or path read as predict reads it
        items, labels = list(items) if isinstance(items, (list, tuple)) else self._items(items), list(labels)
        if len(items) != len(labels):
            raise DataError(f"{len(items)} items but {len(labels)} labels: give one label per item")
        split = self._split_json()
        if not _recorded(split, items, labels, self.classes):  # else split.json's labels: indices already
            labels = self._label_indices(labels)
        if not _a_part_of(split, items):  # its own val/test split (evaluate RUN, a fit's test score): asked for
            info = self._seen(items, info)
        return self._metrics(items, labels, info, **kw)

    def _split_json(self) -> dict | None:
        try:
            return read_json(self.dir / "split.json") if (self.dir / "split.json").exists() else None
        except (ValueError, OSError):
            return None

    def _frame_columns(self, df, columns: dict | None) -> tuple[list, list, dict]:
        """(items, labels, info) of a DataFrame, read as the CSV path reads a file: a table run's rows
        by the fit's feature column names; rows with an empty label left out and counted."""
        kw = {**self.data_kw(), **{k: v for k, v in (columns or {}).items() if v}}
        item = _item_column(kw, self.modality)
        label = kw.get("label_column") or "label"
        missing = [c for c in ([label] if self.modality == "tabular" else [item, label]) if c not in df.columns]
        if missing:
            which = "" if self.modality == "tabular" else "'text_column' or 'image_column': ..., "
            raise DataError(f"the DataFrame has no column(s) {', '.join(map(repr, missing))} (its columns: "
                            f"{', '.join(map(str, df.columns))}): pass columns={{{which}'label_column': ...}}")
        df, part = _eval_rows(df, kw.get("split_column") or "split")
        empty = df[label].isna() | df[label].astype(str).str.strip().eq("")
        df = df[~empty]
        if self.modality == "tabular":
            from .data.tabular import frame_rows
            items = frame_rows(df, self._columns())
        else:
            items = df[item].tolist()
        labels = [y.strip() if isinstance(y, str) else y for y in df[label].tolist()]
        return items, labels, {"unlabelled": int(empty.sum()), "source": "<DataFrame>" + part}

    def _columns(self) -> list[str]:
        """A table run's feature columns, in the fit's order."""
        return list((self.config.get("data_config") or {}).get("columns")
                    or self.model.backbone.data_config.get("columns") or [])

    def _label_indices(self, labels: list) -> list:
        """Labels as the model's targets, checked before any work. Multiclass: the run's class indices,
        class names mapped by name; whole numbers are class indices, except in a run whose class names
        are numbers (1, 2, 3), where a number is the class it names, as in its CSV, and one that names
        no class is refused, never re-indexed. Multilabel: ``_label_sets``; regression: finite floats."""
        if self.task == "regression":
            return _finite_numbers(labels)
        if self.task == "multilabel":
            return self._label_sets(labels)
        index = {c: i for i, c in enumerate(self.classes)}
        numeric = any(_is_number_name(c) for c in self.classes)
        out, bad = [], []
        for y in labels:
            i = _class_index(y, index, numeric)
            (bad if i is None else out).append(y if i is None else i)
        if not bad:
            return out
        shown = f"{', '.join(self.classes[:10])}{' ...' if len(self.classes) > 10 else ''}"
        if numeric:
            raise DataError(f"{len(bad)} label(s) are not one of this run's classes ({shown}), e.g. {bad[0]!r}: its "
                            "class names are numbers, so a number label is read as the class it names, never as a "
                            "class index; give class names (for indices: [run.classes[i] for i in indices])")
        raise DataError(f"{len(bad)} label(s) are neither one of this run's classes ({shown}) nor a class index "
                        f"0..{len(self.classes) - 1}: e.g. {bad[0]!r}")

    def _label_sets(self, labels: list) -> list[list[int]]:
        """Multilabel labels as sorted class-index lists: each a list of class names or indices, or an
        'a|b' string split as its CSV's cells are; a name the run never saw is refused before any work."""
        from .data import Part
        from .data.splits import _label_sets as cell_labels
        index = {c: i for i, c in enumerate(self.classes)}
        numeric = any(_is_number_name(c) for c in self.classes)
        out, bad = [], []
        for y in labels:
            hot = _multi_hot_row(y, len(self.classes))
            if hot is not None:  # a 0/1 vector, as fit reads a Dataset's multi-hot targets
                names = hot
            elif isinstance(y, str):
                names = cell_labels(Part([y], [y], "<labels>"))[0] if y.strip() else [y]  # empty: refused; '|': none
            else:
                names = y.tolist() if isinstance(y, (np.ndarray, torch.Tensor)) else list(y) \
                    if isinstance(y, (list, tuple, set, frozenset)) else [y]
            got = [_class_index(c, index, numeric) for c in names]
            bad += [c for c, i in zip(names, got) if i is None]
            out.append(sorted({i for i in got if i is not None}))
        if bad:
            shown = f"{', '.join(self.classes[:10])}{' ...' if len(self.classes) > 10 else ''}"
            raise DataError(f"{len(bad)} label(s) name no class of this run ({shown}), e.g. {bad[0]!r}: give each "
                            "item's labels as a list of class names or indices, or as 'a|b' ('|' for none)")
        return out

    @property
    def kind(self) -> str:
        """fit, soup or ensemble."""
        return self.config.get("kind", "fit")

    def _seen(self, items, info: dict) -> dict:
        """``info`` plus how many of ``items`` this run trained on or chose with (its split.json; an
        ensemble's or soup's members split apart: seen.json, their union), and a warning when any:
        a score on them is optimistic, and it must not look like a held-out one."""
        if self.kind == "soup":  # its members' own gaps (an ensemble adds them in Ensemble._seen)
            from .ensemble import with_unrecorded
            info = with_unrecorded(self, info)
        own = (self.dir / "split.json").exists()
        p = self.dir / ("split.json" if own else "seen.json")
        if not p.exists():
            if self.kind in ("ensemble", "soup"):  # made before seen.json: nothing to count with, said
                w = (f"cannot tell whether any of these samples were seen: this {self.kind} was made before rehead "
                     "recorded what its members trained on (no seen.json); evaluate on data you know none of its "
                     "members trained on, or remake it with `rehead ensemble`")
                return {**info, "warnings": info.get("warnings", []) + [w]}
            return info
        try:
            split = read_json(p)
            seen = {k: set(split[k]["items"]) for k in ("train", "val")}
        except (KeyError, TypeError, ValueError, OSError):
            return info  # val_split() names a broken split.json; a score on new data does not need it
        # split.json names samples by path or text; in-memory images by their PNG's bytes (below)
        pngs = _png_digests(items) if self.modality == "image" and any(
            str(p).lower().endswith(".png") for ids in seen.values() for p in ids) else {}
        items = [str(it) if isinstance(it, Path) else it if isinstance(it, str) or self.modality == "tabular"
                 else pngs.get(i) for i, it in enumerate(items)]
        if self.modality == "tabular":  # rows are "file#row": compared by their cells, not their numbers
            keyed = self._seen_rows(split, seen, items, info)
            if isinstance(keyed, dict):
                return keyed  # the training table changed: said, and nothing counted
            seen, items = keyed
        if self.modality == "image":
            seen, items = _seen_by_content(seen, items)
        seen["val"] -= seen["train"]  # members split apart: a sample one trained on counts as trained on
        n = {k: sum(1 for it in items if isinstance(it, (str, tuple)) and it in ids) for k, ids in seen.items()}
        if not any(n.values()):
            return info
        one = self.kind == "fit"
        whose = "its" if one else "a member's"
        parts = ([f"{n['train']} in {whose} training split"] if n["train"] else []) + (
            [f"{n['val']} in {whose} val split, which chose {whose} kept epoch"
             + (" and temperature" if one and is_multiclass(self.config) else "")] if n["val"] else [])
        w = (f"{sum(n.values())} of {len(items)} samples were seen by this {'run' if one else self.kind}: "
             f"{'; '.join(parts)}. The score is optimistic: evaluate on data it has not seen (a test split) "
             "for a held-out figure")
        return {**info, "seen": n, "warnings": info.get("warnings", []) + [w]}

    def _seen_rows(self, split: dict, seen: dict, items: list, info: dict):
        """Table rows as their feature cells, so a training row copied into another file (or the same
        file re-sorted) is still recognised; a dict (``info`` with a warning) when the training table
        changed since the fit, which leaves nothing to compare with."""
        from .data.splits import file_changes
        from .data.tabular import row_cells
        changed = file_changes(split.get("fingerprint") or {})
        if changed:
            w = (f"cannot tell which of these rows the run trained on: its training table changed since the fit "
                 f"({changed[0]})")
            return {**info, "warnings": info.get("warnings", []) + [w]}
        cols = (self.config.get("data_config") or {}).get("columns") or []
        if all(isinstance(it, str) for it in items):
            return {k: set(row_cells(list(v), cols)) for k, v in seen.items()}, row_cells(items, cols)
        from .data.tabular import rows_of  # rows given as numbers (a DataFrame): compared by value

        def keys(rows):
            return [(r.tobytes(),) for r in rows_of(rows, cols)]
        return {k: set(keys(list(v))) for k, v in seen.items()}, keys(items)

    def eval_data(self, path, columns: dict | None = None) -> tuple[list, list[int], dict]:
        """(items, labels in the run's class order, info) of the data at ``path``: every labelled
        row of a CSV (the non-train rows when it has a split column), a folder's val/test split or
        all of it. Unlabelled rows are counted, never scored."""
        from .data import load_eval
        ev = load_eval(path, self.modality, self.classes, {**self.data_kw(), **(columns or {})}, task=self.task)
        info = {"unlabelled": ev.n_unlabelled, "source": str(path)}
        return ev.items, ev.labels, {**info, "warnings": list(ev.warnings)} if ev.warnings else info

    def data_kw(self) -> dict:
        """The fit's data options (text, image and label columns, ...): new data is read as the fit read its own."""
        fit = self.config.get("fit") or {}
        from .data import DATA_KW
        return {k: fit[k] for k in DATA_KW if k in fit} or dict((self.config.get("args") or {}).get("data_kw") or {})

    def _metrics(self, items, labels, info: dict, tta: bool = False, views: tuple | None = None, **kw) -> dict:
        """``views``: ``([logits], kept, skipped)`` already computed for ``items`` (a fit's test split
        from its cached features), else the run's model computes them."""
        from sklearn.metrics import classification_report, confusion_matrix
        from .calibration import ece, nll, scaled_probs
        views, kept, skipped = views if views is not None else self._views(items, tta=tta, **kw)
        if not kept:  # else scikit-learn's "Found empty input array"
            raise DataError(f"none of the {len(items)} samples could be read (e.g. {_name(skipped[0], 0)}): moved, "
                            "deleted or damaged since the fit? evaluate on the data where it is now (evaluate RUN DATA)"
                            if skipped else "no samples to evaluate")
        info = {**info, "skipped_items": [_name(s, i) for i, s in enumerate(skipped[:5])]} if skipped else info
        if self.task != "multiclass":  # with --tta: the mean of both views' outputs
            return self._task_metrics(items, labels, torch.stack(views).mean(0), kept, skipped, info)
        t = self.temperature
        probs, raw = scaled_probs(views, t), scaled_probs(views, 1.0)
        y = np.array([labels[i] for i in kept], dtype=np.int64)
        pred = probs.argmax(1).numpy()
        names = list(range(len(self.classes)))
        rep = classification_report(y, pred, labels=names, target_names=self.classes, output_dict=True,
                                    zero_division=0)
        return {"n": len(kept), "skipped": len(skipped), "accuracy": float((pred == y).mean()) if len(y) else 0.0,
                "ece": ece(probs, y), "ece_uncalibrated": ece(raw, y), "nll": nll(probs, y),
                "nll_uncalibrated": nll(raw, y), "temperature": t, "tta": tta,
                "per_class": {c: {m: float(rep[c][m]) for m in ("precision", "recall", "f1-score", "support")}
                              for c in self.classes},
                "confusion_matrix": confusion_matrix(y, pred, labels=names).tolist(),
                "classes": self.classes, **info,
                "predictions": pred.tolist(), "targets": y.tolist(),
                "items": [_name(items[i], i) for i in kept],
                "probs": probs.max(1).values.tolist(), "probs_uncalibrated": raw.max(1).values.tolist()}

    def _task_metrics(self, items, labels, out, kept, skipped, info) -> dict:
        """Regression: RMSE, MAE, R² in the target's units. Multilabel: per-label F1 at 0.5 and
        average precision, micro/macro F1, mAP."""
        pred = predictions(self.task, out, self.target)
        base = {"task": self.task, "n": len(kept), "skipped": len(skipped), "classes": self.classes, **info,
                "items": [_name(items[i], i) for i in kept]}
        if self.task == "regression":
            y = np.array([float(labels[i]) for i in kept])
            return {**base, **regression_metrics(y, pred), "predictions": pred.tolist(), "targets": y.tolist()}
        y = np.stack(multi_hot([labels[i] for i in kept], len(self.classes))) if kept else \
            np.zeros((0, len(self.classes)))
        return {**base, **multilabel_metrics(y, pred, self.classes),
                "predictions": [np.flatnonzero(p >= 0.5).tolist() for p in pred],
                "targets": [np.flatnonzero(t).tolist() for t in y], "probs": pred.tolist()}

    def source_agreement(self, items: list, batch_size: int = 32) -> dict:
        """Forgetting of the source task: the share of ``items`` on which the run's backbone and the
        pretrained one, both through the kept-aside pretrained head (e.g. ImageNet), agree."""
        from . import zoo
        from .data import pipeline
        from .methods import source_agreement
        tuned = self.model.backbone
        if not (self.dir / "source_head.safetensors").exists():
            note = getattr(tuned, "source_head_note", None)  # a classifier the model has but rehead does not carry
            if note:
                raise BadRun(f"{self.dir} kept no pretrained head: {note}")
            raise BadRun(f"{self.dir} kept no pretrained head ({self.config['model']} is a {self.modality} backbone "
                         "without a source task's classifier, or the run predates kept heads): source agreement "
                         "reads the backbone through its own head, e.g. an ImageNet model's")
        if len(tuned) != tuned.full_depth:
            raise BadRun(f"{self.dir} is cut at stage {len(tuned)} of {tuned.full_depth}: the pretrained head reads "
                         "the full depth, so source agreement needs a run without --cut")
        pretrained = zoo.load(self.config["model"])
        pipe = pipeline(self.modality)
        before, after = [], []
        with torch.inference_mode():
            for _, x, _ in pipe.make_loader(tuned, items, None, batch_size=batch_size, workers=0):
                if len(x):
                    before.append(pretrained.source_head[0](pretrained(x)).argmax(1))
                    after.append(tuned.source_head[0](tuned(x)).argmax(1))
        b, a = torch.cat(before), torch.cat(after)
        return {"source_agreement": source_agreement(b, a), "n": len(b)}

    def val_split(self) -> tuple[list, list[int]]:
        self._check_same()
        p = self.dir / "split.json"
        if not p.exists():  # an ensemble or soup whose members were split differently
            raise BadRun(f"{self.dir} has no val split that all of its models left unseen: evaluate on "
                         "held-out data, `rehead evaluate RUN DATA`")
        split = read_json(p)
        try:
            items, labels = split["val"]["items"], split["val"]["labels"]
        except (KeyError, TypeError):
            raise BadRun(f"{p} has no val split: restore it or rerun with --overwrite") from None
        if split.get("modality") == "tabular":  # items are rows by number ("t.csv#7"): an edited table moves them
            from .data.splits import file_changes
            changed = file_changes(split.get("fingerprint") or {})
            if changed:
                raise BadRun(f"the table changed since the fit ({changed[0]}): the run's val split names its rows "
                             "by number, so it would score other rows; restore the file, or evaluate on held-out "
                             "data: `rehead evaluate RUN DATA`")
        return items, labels

    # -- display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        try:
            s = self.summary
        except BadRun:
            return f"Run({str(self.dir)!r}: replaced or removed since loaded; load it again)"
        key = {"regression": "r2", "multilabel": "map"}.get(self.task, "acc")
        acc = f", val_{key}={s['val_' + key]:.4f}" if isinstance(s.get("val_" + key), float) else ""
        test = f", test_{key}={s['test_' + key]:.4f}" if isinstance(s.get("test_" + key), float) else ""
        acc = (f", task={self.task!r}" if self.task != "multiclass" else "") + acc
        return (f"Run({str(self.dir)!r}, kind={self.config.get('kind', 'fit')!r}, model={self.config.get('model')!r}, "
                f"strategy={self.config.get('strategy')!r}, classes={len(self.classes)}{acc}{test})")

    def _repr_html_(self) -> str:
        """A notebook cell: the summary figures and, when there is one, the report's plots."""
        try:
            s = self.summary
        except BadRun:
            return f"<pre>{html.escape(repr(self))}</pre>"
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in s.items() if not isinstance(v, (list, dict)))
        imgs = ""
        for png in REPORT_PLOTS:
            p = self.dir / png
            if p.exists():
                import base64
                imgs += f"<img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}' width=360>"
        return (f"<div><b>{html.escape(repr(self))}</b><table>{rows}</table>{imgs}"
                f"<p>plots: <code>rehead report {html.escape(str(self.dir))}</code></p></div>")


# the plots `rehead report` writes into the run directory (rehead/report/html.py), in its order
REPORT_PLOTS = ("curves.png", "lr_find.png", "scatter.png", "confusion.png", "reliability.png")


def _is_frame(obj) -> bool:
    return hasattr(obj, "columns") and hasattr(obj, "iloc")


def _is_series(obj) -> bool:
    return hasattr(obj, "iloc") and hasattr(obj, "tolist") and getattr(obj, "ndim", None) == 1  # a pandas Series


def _item_column(kw: dict, modality: str) -> str:
    """The column of a DataFrame that holds the texts or image paths, as the fit's CSV named it."""
    return kw.get("text_column") or "text" if modality == "text" else kw.get("image_column") or "path"


def _checked_texts(values: list, where: str) -> list:
    """Texts, each a string: an empty cell (NaN, None) would be scored as some other text."""
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{where} holds {values[bad]!r} at position {bad}, not a text: fill or drop that row")
    return values


def _is_number_name(c: str) -> bool:
    try:
        return math.isfinite(float(c))
    except ValueError:
        return False


def _class_index(y, index: dict, numeric: bool) -> int | None:
    """The class index that label ``y`` stands for, or None. ``numeric``: the class names are numbers,
    so a number is read as the name it spells (2, 2.0 or 2.5, as a CSV cell would), never as an index."""
    if isinstance(y, str):
        if y in index or not numeric:
            return index.get(y)
        try:  # "1" for a class named "1.0" (a run whose table pandas wrote as floats) and the reverse
            y = float(y)
        except ValueError:
            return None
        if not math.isfinite(y):
            return None
    if isinstance(y, bool) or not isinstance(y, (int, float, np.integer, np.floating)):
        return None
    whole = float(y).is_integer()
    if numeric:
        names = ([str(int(y))] if whole else []) + [str(y), str(float(y))]
        return next((index[n] for n in names if n in index), None)
    return int(y) if whole and 0 <= y < len(index) else None


def _eval_rows(df, split_column: str):
    """The rows of a DataFrame that ``evaluate`` scores, as for a CSV: with a split column, its test
    rows (else val); never its training rows. (rows, a note of which part) ."""
    from .data.inputs import frame_splits
    from .data.splits import EVAL_ORDER, split_column_parts
    splits = frame_splits(df, split_column, "the DataFrame")
    if splits is None:
        return df, ""
    idx = split_column_parts(splits, "the DataFrame")
    name = next((k for k in EVAL_ORDER if idx.get(k)), None)
    if name is None:
        raise DataError(f"the DataFrame's {split_column!r} column marks every row train: evaluate on held-out rows "
                        f"(split val or test), or drop the column to score every row")
    return df.iloc[idx[name]], f" ({split_column}={name})"


def _recorded(split: dict | None, items: list, labels: list, classes: list[str]) -> bool:
    """Whether a run with numeric class names is given (items, labels) as its split.json records them
    (``val_split()``, a fit's test split): those labels are class indices, not names. Other runs read
    indices the same either way, so they are not looked up."""
    if not (split and items and any(_is_number_name(c) for c in classes)):
        return False
    rec = {}
    for k in ("train", "val", "test"):
        part = split.get(k) or {}
        rec.update((it, y) for it, y in zip(part.get("items") or [], part.get("labels") or []) if isinstance(it, str))
    return all(isinstance(it, str) and it in rec and _index_like(y) and rec[it] == y for it, y in zip(items, labels))


def _index_like(y) -> bool:
    """A class index, or (multilabel) a list of them."""
    whole = (int, np.integer)
    return isinstance(y, whole) or (isinstance(y, list) and all(isinstance(c, whole) for c in y))


def _finite_numbers(labels: list) -> list[float]:
    """Regression labels as floats (a number, or a string of one as in a CSV); the first that is not
    a finite number is refused before the model runs, never scored as nan or a crash."""
    out = []
    for i, y in enumerate(labels):
        try:
            x = float(y) if isinstance(y, (str, int, float, np.integer, np.floating)) and not isinstance(y, bool) \
                else math.nan
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise DataError(f"label {i} is {y!r}, not a finite number: a regression run is scored on numbers; "
                            "fix that label or drop its item")
        out.append(x)
    return out


def _a_part_of(split: dict | None, items: list) -> bool:
    """Whether ``items`` are exactly the run's val or test split: scored on purpose, not by mistake."""
    if not (split and all(isinstance(it, str) for it in items)):  # split.json names samples by path or text
        return False
    return any(items == (split.get(k) or {}).get("items") for k in ("val", "test"))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


MAX_HASHED = 200_000  # samples a run may have seen beyond which shard and table members are not hashed


def _seen_by_content(seen: dict, items: list) -> tuple[dict, list]:
    """Images compared by content where a path is not in the split: a copy of the training photos
    under another folder, or in a tar shard or Parquet file, was read as held out. Files are hashed
    only where sizes match; members of shards and tables (no cheap size) are all hashed, up to
    MAX_HASHED seen samples."""
    from .data import refs
    from .data.splits import file_sha256

    def digest(p):
        try:
            return "sha256:" + (hashlib.sha256(refs.read_bytes(p)).hexdigest() if refs.is_ref(p) else file_sha256(p))
        except Exception:  # unreadable: compared by its name only
            return None
    every = {p for ids in seen.values() for p in ids}
    if any(isinstance(it, str) and it.startswith("png:") for it in items) and len(every) <= MAX_HASHED:
        # in-memory images: a torch Dataset's were written as PNGs (data.inputs.materialise), so the same image
        # given again encodes to the same bytes
        d = {p: digest(p) for p in every if p.lower().endswith(".png")}
        seen = {k: ids | {"png:" + d[p][7:] for p in ids if d.get(p)} for k, ids in seen.items()}
    new = {it for it in items if isinstance(it, str) and it not in every}
    if any(refs.is_ref(p) for p in every | new) and len(every) <= MAX_HASHED:
        d = {p: digest(p) for p in every | new}
        seen = {k: ids | {d[p] for p in ids if d[p]} for k, ids in seen.items()}
        return seen, [d[it] or it if it in new else it for it in items]

    def size(p):
        try:
            return os.path.getsize(p)
        except (OSError, TypeError, ValueError):
            return None
    known = {k: {p: size(p) for p in ids} for k, ids in seen.items()}
    sizes = {s for d in known.values() for s in d.values() if s is not None}
    cand = {it for it in items if isinstance(it, str) and not any(it in ids for ids in seen.values())
            and size(it) in sizes}
    if not cand:
        return seen, items
    want = {size(c) for c in cand}
    digest = {p: "sha256:" + file_sha256(p) for p in cand | {p for d in known.values() for p, s in d.items() if s in want}}
    seen = {k: ids | {digest[p] for p in ids if p in digest} for k, ids in seen.items()}
    return seen, [digest[it] if it in cand else it for it in items]


def _in_input_order(items, kept, rows: list[dict]) -> list[dict]:
    """The rows of the kept items, with an error row for each unreadable one, in the order given: a
    script pairs outputs with inputs by position."""
    by_index = {int(k): r for k, r in zip(kept, rows)}
    return [by_index.get(i) or {"item": _name(item, i), "error": "unreadable"} for i, item in enumerate(items)]


def _name(item, i: int) -> str:
    return item if isinstance(item, str) else str(item) if isinstance(item, Path) else f"<{type(item).__name__} {i}>"


def head_logits(model, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """The head alone on features ``x``, in chunks, on the head's device; (N, n_out) on the CPU."""
    head = model.head.eval()
    dev = next(head.parameters()).device
    with torch.inference_mode():
        return torch.cat([head(x[s:s + 4096].to(dev).float()).float().cpu() for s in range(0, len(x), 4096)]
                         or [torch.empty(0, n_out)])


def _in_memory_images(items: list) -> bool:
    from PIL import Image
    return all(isinstance(i, (Image.Image, torch.Tensor, np.ndarray)) for i in items)



def _multi_hot_row(y, k: int) -> list[int] | None:
    """The class indices of a multi-hot row (``[1, 0, 1]``: classes 0 and 2), or None when ``y`` is not one.
    A row of k zeros and ones is multi-hot when it is an array or tensor, holds floats or bools, or k > 2 (an
    index list of k entries from {0, 1} would repeat one); two whole numbers of a two-class run are either,
    so they are refused."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    array = isinstance(y, np.ndarray)
    values = y.reshape(-1).tolist() if array else list(y) if isinstance(y, (list, tuple)) else None
    if values is None or len(values) != k or not all(
            isinstance(v, (bool, int, float, np.integer, np.floating)) and v in (0, 1) for v in values):
        return None
    if not (array or k > 2 or any(isinstance(v, (bool, float, np.floating)) for v in values)):
        raise DataError(f"label {list(y)!r} of a two-label run is either a multi-hot vector or a list of label "
                        "indices: give label names (e.g. 'a|b'), or a multi-hot array or float vector")
    return [i for i, v in enumerate(values) if v]


def _dir_identity(path: Path) -> tuple | None:
    """The run directory's marker file (written when a command claims it) as (device, inode): a later
    --overwrite writes a new one, `rehead restore` brings the old one back. None for runs without one."""
    from .rundir import MARKER
    try:
        st = (Path(path) / MARKER).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


INFERENCE_OPTIONS = ("batch_size", "workers", "progress")


def _check_options(method: str, kw: dict, named: tuple) -> None:
    """An option the method does not take is named as its own (it reached Run._views, whose TypeError named
    that private method), with the closest one it takes."""
    import difflib
    takes = (*named, *INFERENCE_OPTIONS)
    for k in kw:
        if k not in INFERENCE_OPTIONS:
            close = difflib.get_close_matches(k, takes, n=1)
            raise TypeError(f"Run.{method}() got an unexpected keyword argument {k!r}"
                            + (f" (did you mean {close[0]}?)" if close else "") + f"; it takes {', '.join(takes)}")


def _png_digests(items: list) -> dict[int, str]:
    """``{index: "png:<sha256>"}`` of the in-memory images among ``items`` (PIL images, CHW tensors), encoded
    as ``data.inputs.materialise`` writes a torch Dataset's images."""
    import io
    from PIL import Image
    from .data.images import tensor_image
    out = {}
    for i, it in enumerate(items):
        if isinstance(it, torch.Tensor) and it.dim() == 3:
            it = tensor_image(it)
        if isinstance(it, Image.Image):
            buf = io.BytesIO()
            it.convert("RGB").save(buf, "PNG")
            out[i] = "png:" + hashlib.sha256(buf.getvalue()).hexdigest()
    return out
