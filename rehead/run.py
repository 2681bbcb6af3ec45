"""Run directory: everything a run leaves, and everything needed to use it again.

    config.yaml        what was run (model spec, cut, head, strategy, phases, data)
    labels.json        class names, index order
    split.json         the train/val items, so `evaluate` can reuse the val split
    metrics.csv        one row per epoch
    model.safetensors  prefix + head weights (the whole TransferModel)
    summary.json       final figures
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from .heads import make_head
from .model import TransferModel


class RunExists(FileExistsError):
    pass


class BadRun(ValueError):
    pass


def prepare_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``out``; refuse to touch a non-empty one unless told to overwrite or resume."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise RunExists(f"run directory {out} already exists and is not empty: pass --overwrite "
                            "to replace it, --resume to continue it, or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_yaml(path: Path, obj: dict) -> None:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))


def read_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise BadRun(f"{run_dir} is not a rehead run directory (no config.yaml)")
    return yaml.safe_load(p.read_text())


def build_model(cfg: dict, pretrained: bool = False) -> TransferModel:
    """The architecture a config describes (weights loaded separately)."""
    from . import zoo
    bb = zoo.load(cfg["model"], pretrained=pretrained).cut(cfg["cut"])
    if cfg.get("data_config"):  # what the run recorded wins (e.g. a table's fitted feature columns)
        bb.data_config = dict(cfg["data_config"])
    h = cfg["head"]
    head = make_head(h["in_dim"], h["out_dim"], h["kind"], h.get("hidden", 512), h.get("dropout", 0.0))
    return TransferModel(bb, head, train_frozen_bn=cfg.get("train_frozen_bn", False),
                         freeze_bn=cfg.get("freeze_bn", False))


def save_weights(model: torch.nn.Module, path: Path) -> None:
    save_tensors(model.state_dict(), path)


def save_tensors(sd: dict, path: Path) -> None:
    from .features import atomic_write_bytes
    from safetensors.torch import save
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in sd.items()}))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from .zoo.file import load_into
    try:
        load_into(model, load_file(str(path)), str(path))
    except ValueError as e:
        raise BadRun(f"{path} was saved for another architecture than its config describes: {e}") from e


class Run:
    """A finished run loaded back: predict and evaluate need nothing but the directory."""

    def __init__(self, run_dir: str | Path, model: TransferModel | None = None, lazy: bool = False):
        """Load the run at ``run_dir``; ``model``: the run's model already in memory (``fit``
        hands over what it just saved instead of rebuilding it); ``lazy``: build it on first use."""
        self.dir = Path(run_dir)
        self.config = read_config(self.dir)
        self.classes = json.loads((self.dir / "labels.json").read_text())
        self._model = model.eval() if model is not None else None
        if model is None and not (self.dir / "model.safetensors").exists():
            raise BadRun(f"{self.dir} has no model.safetensors: the run did not finish "
                         f"(continue it with `rehead fit --resume {self.dir}`)")
        if not lazy:
            self.model  # noqa: B018  (load now: a bad checkpoint is an error here, not at first use)

    @property
    def model(self) -> TransferModel:
        """The run's model, built and loaded on first use (a cached fit never needs it)."""
        if self._model is None:
            model = build_model(self.config)
            load_weights(model, self.dir / "model.safetensors")
            self._model = model.eval()
        return self._model

    @property
    def modality(self) -> str:
        return (self.config.get("data_config") or {}).get("modality") or self.model.backbone.modality

    def logits(self, items: list, batch_size: int = 32, workers: int = 0, progress: bool = False):
        """Logits for items; returns (logits (N_kept, C), kept indices, skipped items)."""
        from tqdm.auto import tqdm
        from .data import pipeline
        pipe = pipeline(self.modality)
        loader = pipe.make_loader(self.model.backbone, items, None, batch_size=batch_size, workers=workers)
        outs, kept = [], []
        with torch.inference_mode():
            for idx, x, _ in tqdm(loader, disable=not progress, desc="predict", leave=False):
                if len(idx):
                    outs.append(self.model(x).float())
                    kept.extend(idx.tolist())
        logits = torch.cat(outs) if outs else torch.empty(0, len(self.classes))
        skipped = [items[i] for i in range(len(items)) if i not in set(kept)]
        return logits, kept, skipped

    def predict(self, items: list, top_k: int = 3, **kw) -> list[dict]:
        logits, kept, skipped = self.logits(items, **kw)
        probs = logits.softmax(1)
        k = min(top_k, len(self.classes))
        rows = []
        for j, i in enumerate(kept):
            p, c = probs[j].topk(k)
            rows.append({"item": str(items[i]), "top": [{"label": self.classes[ci], "prob": float(pi)}
                                                       for pi, ci in zip(p.tolist(), c.tolist())]})
        rows += [{"item": str(s), "error": "unreadable"} for s in skipped]
        return rows

    def evaluate(self, items: list, labels: list[int], **kw) -> dict:
        from sklearn.metrics import classification_report, confusion_matrix
        logits, kept, skipped = self.logits(items, **kw)
        y = np.array([labels[i] for i in kept])
        pred = logits.argmax(1).numpy()
        names = list(range(len(self.classes)))
        rep = classification_report(y, pred, labels=names, target_names=self.classes, output_dict=True,
                                    zero_division=0)
        return {"n": len(kept), "skipped": len(skipped), "accuracy": float((pred == y).mean()) if len(y) else 0.0,
                "per_class": {c: {m: float(rep[c][m]) for m in ("precision", "recall", "f1-score", "support")}
                              for c in self.classes},
                "confusion_matrix": confusion_matrix(y, pred, labels=names).tolist(),
                "classes": self.classes,
                "predictions": pred.tolist(), "targets": y.tolist(),
                "items": [str(items[i]) for i in kept],
                "probs": logits.softmax(1).max(1).values.tolist()}

    def val_split(self) -> tuple[list, list[int]]:
        p = self.dir / "split.json"
        if not p.exists():  # an ensemble or soup whose members were split differently
            raise BadRun(f"{self.dir} has no val split that all of its models left unseen: evaluate on "
                         "held-out data, `rehead evaluate RUN DATA`")
        split = json.loads(p.read_text())
        return split["val"]["items"], split["val"]["labels"]


def open_run(run_dir: str | Path) -> Run:
    """A run directory for predict / evaluate / export: a fit run, a soup, or an ensemble."""
    if read_config(Path(run_dir)).get("kind") == "ensemble":
        from .ensemble import Ensemble
        return Ensemble(run_dir)
    return Run(run_dir)


def save_backbone(backbone, out_dir: Path, extra: dict | None = None) -> None:
    """Save only an encoder (a pretrained or adapted backbone) so `fit --model DIR` can reuse it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"kind": "backbone", "model": backbone.spec, "depth": len(backbone), **(extra or {})}
    write_yaml(out_dir / "config.yaml", cfg)
    save_weights(backbone, out_dir / "backbone.safetensors")


def load_backbone_from_run(run_dir: Path, pretrained: bool = True):
    """A run directory as a backbone: a saved encoder, or the (trained) prefix of a fit run."""
    from . import zoo
    cfg = read_config(run_dir)
    if cfg.get("kind") == "backbone":
        bb = zoo.load(cfg["model"], pretrained=False)
        if len(bb) != cfg["depth"]:
            bb = bb.cut(cfg["depth"])
        if cfg.get("data_config"):
            bb.data_config = dict(cfg["data_config"])
        if pretrained:
            load_weights(bb, Path(run_dir) / "backbone.safetensors")
        bb.spec = str(Path(run_dir).resolve())
        return bb
    run = Run(run_dir)
    bb = run.model.backbone
    bb.spec = str(Path(run_dir).resolve())
    return bb
