"""Export a trained run (prefix + head, eval mode) as ONNX or TorchScript, with a JSON sidecar.

The sidecar says everything a deployment needs that the graph does not hold: how to turn
an image into the input tensor (decode, JPEG draft, resize and crop, scale, normalise: the exact
Pillow calls ``predict`` makes), a table's raw columns into it (which, in what order), the input
and output names and shapes, the label map, and the precision the run's features were computed in
(a bf16 run's ``predict`` may differ slightly from the fp32 graph).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".torchscript", ".ts")}  # what load_exported tells apart
OPSET = 17  # the default
# The lowest opset a rehead model exports at (found by exporting them): EfficientNet's "same" padding
# (a Pad of computed size) needs 11; a transformer's scaled_dot_product_attention needs 14.
MIN_OPSET = {"text": 14}
MIN_OPSET_OTHER = 11


def opset_range(modality: str | None) -> tuple[int, int]:
    """(lowest, highest) ONNX opset an export of this modality can take."""
    from torch.onnx import _constants  # torch states its highest opset nowhere public
    return MIN_OPSET.get(modality, MIN_OPSET_OTHER), getattr(_constants, "ONNX_MAX_OPSET", 20)


def check_options(fmt: str, out, opset: int | None, modality: str | None = None) -> int | None:
    """Refuse options that do not fit, before anything is loaded or written; the opset to use
    (None for TorchScript, which has none)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out and not _is_folder(out) and Path(out).suffix not in SUFFIXES[fmt]:
        kind = {"onnx": "an ONNX", "torchscript": "a TorchScript"}[fmt]
        raise ValueError(f"--out {out}: {kind} export is a {' or '.join(SUFFIXES[fmt])} file: name it "
                         f"{Path(out).with_suffix(FORMATS[fmt]).name}, or give a folder (trailing slash) to hold it")
    if fmt != "onnx":
        if opset is not None:
            raise ValueError("--opset sets the ONNX opset, which a TorchScript export does not have: leave --opset out")
        return None
    lo, hi = opset_range(modality)
    opset = OPSET if opset is None else opset
    if not lo <= opset <= hi:
        raise ValueError(f"--opset {opset} is out of range: an ONNX export of {'an' if modality == 'image' else 'a'} "
                         f"{modality or 'rehead'} run takes --opset {lo} to {hi} (default {OPSET})")
    return opset


def _is_folder(out) -> bool:
    """An existing folder, a trailing slash, or a name without extension: the model goes inside it."""
    return Path(out).is_dir() or str(out).endswith(("/", os.sep)) or not Path(out).suffix


def preprocessing_steps(cfg: dict) -> list[dict]:
    """How ``predict`` turns a file into the input (rehead.data.images: ``decode``, then the eval
    transform), step by step: following them with Pillow and numpy gives predict's input."""
    from .data.images import resize_side
    size, side = int(cfg["input_size"]), resize_side(cfg)
    interp = cfg.get("interpolation", "bilinear")
    interp = interp if interp in ("bicubic", "nearest") else "bilinear"  # as images.EvalTransform / _interp
    return [*_decode_steps(side), *_resize_steps(size, side, interp),
            {"op": "to_float", "dtype": "float32", "divide_by": 255, "layout": "CHW",
             "call": "x = np.asarray(im, np.float32).transpose(2, 0, 1) / 255"},
            {"op": "normalize", "mean": cfg["mean"], "std": cfg["std"], "call": "x = (x - mean) / std, per channel"}]


def _decode_steps(side: int) -> list[dict]:
    return [{"op": "decode", "library": "Pillow", "call": "im = PIL.Image.open(path)"},
            # the draft changes the pixels (libjpeg's DCT scaling, not a resize): a consumer must do it too
            {"op": "jpeg_draft", "when": "JPEG files only, before the pixels are read", "size": [side, side],
             "call": f"im.draft('RGB', ({side}, {side}))",
             "effect": f"libjpeg decodes at 1/s scale, s the largest of 8, 4, 2, 1 with s <= min(width // {side}, "
                       f"height // {side}): ceil(width / s) x ceil(height / s) pixels"},
            {"op": "exif_transpose", "call": "im = PIL.ImageOps.exif_transpose(im)"},
            {"op": "to_rgb", "mode": "RGB", "call": "im = im.convert('RGB')",
             "note": "16-bit, 32-bit and float images are scaled to 8 bits first, as the sidecar's decode says"}]


def _resize_steps(size: int, side: int, interp: str) -> list[dict]:
    """The resize and crop as rehead computes them: torchvision's sizes, Pillow's filter on the PIL image."""
    geometry = (f"w, h = im.size; nw, nh = ({side}, int({side} * h / w)) if w <= h else (int({side} * w / h), "
                f"{side}); left, top = round((nw - {size}) / 2), round((nh - {size}) / 2)")
    rounding = "int() truncates the long side; round() is Python's: halves to even (4.5 -> 4)"
    filt = f"PIL.Image.{interp.upper()}"
    if side >= size and interp != "nearest":  # images.EvalTransform: one resample of the crop's source box
        return [{"op": "resize_center_crop", "resize_shorter_side": side, "size": [size, size], "library": "Pillow",
                 "interpolation": interp, "geometry": geometry, "rounding": rounding,
                 "call": f"sx, sy = w / nw, h / nh; im = im.resize(({size}, {size}), {filt}, box=(left * sx, "
                         f"top * sy, (left + {size}) * sx, (top + {size}) * sy))",
                 "equivalent": f"im.resize((nw, nh), {filt}).crop((left, top, left + {size}, top + {size})): "
                               "the same pixels within one 8-bit level"}]
    return [{"op": "resize_shorter_side", "size": side, "library": "Pillow", "interpolation": interp,
             "geometry": geometry, "rounding": rounding, "call": f"im = im.resize((nw, nh), {filt})"},
            {"op": "center_crop", "size": [size, size],
             "call": f"im = im.crop((left, top, left + {size}, top + {size}))",
             "note": "a side shorter than the crop is first zero-padded, (size - n) // 2 before, the rest after "
                     "(torchvision's CenterCrop)"}]


def export(run_dir, fmt: str = "onnx", out=None, overwrite: bool = False, opset: int | None = None) -> dict:
    """Write the run's model to ``out`` (default RUN/export/model.onnx|.pt) and ``<out>.json``;
    ``opset``: ONNX only (default 17)."""
    from .data import pipeline
    from .rundir import RunExists, missing_folders, read_yaml
    from .runs import open_run
    config = read_yaml(Path(run_dir) / "config.yaml")
    modality = (config.get("data_config") or {}).get("modality")
    opset = check_options(fmt, out, opset, modality)
    given = out
    if out and _is_folder(out):
        out = Path(out) / f"model{FORMATS[fmt]}"
    out = Path(out) if out else Path(run_dir) / "export" / f"model{FORMATS[fmt]}"
    check_outside_data(out, given, config, run_dir)
    run = open_run(run_dir)
    from .lora import merge
    model = merge(run.model).eval()  # LoRA adapters folded into the base weights (peft's merge_and_unload)
    example = pipeline(run.modality).example_input(model.backbone)
    text = not isinstance(example, torch.Tensor)  # tokenized inputs
    tokenizer = getattr(model.backbone, "tokenizer", None)
    if text and not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"export of a text run needs a Hugging Face tokenizer to ship beside the graph; "
                         f"{run.config['model']} has none: use `rehead predict` or load the run in Python")
    sidecar, tok_dir = _beside(out)
    written = (out, sidecar) + ((tok_dir,) if text else ())
    left = leftover_note(out)  # an export killed part way
    if left and not overwrite:
        raise RunExists(f"{left}. Or pass --overwrite to replace it all with this export, or choose another --out")
    for p in written:
        if p.exists() and not overwrite:
            raise RunExists(f"{p} exists: pass --overwrite to replace it, or choose another --out")
    if left:
        print(f"note: {left}. This --overwrite replaces it all with a whole export", file=sys.stderr, flush=True)
    for p in model.parameters():
        p.requires_grad_(False)
    made = missing_folders(out.parent)  # an export stopped part way removes them, and only them
    new = [p for p in written if not p.exists() and not _aside(p).exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        meta = _write_files(run, model, example, text, tokenizer, fmt, out, sidecar, tok_dir, opset)
    except BaseException:  # Ctrl-C, SIGTERM, an error: no half export, no folder it made left behind
        _remove_unfinished(out, tok_dir if text else None, new, made)
        raise
    return {**meta, "path": str(out), "sidecar": str(sidecar)}


def _write_files(run, model, example, text: bool, tokenizer, fmt: str, out: Path, sidecar: Path, tok_dir: Path,
                 opset: int | None) -> dict:
    """Write the graph, the tokenizer (text runs) and the sidecar under temporary names, then rename them
    into place (_install); return the sidecar's content. Until the renames an existing export is untouched."""
    tok_files = _stage_tokenizer(tokenizer, tok_dir, sidecar) if text else None  # refused before the graph is written
    inputs = ([{"name": n, "shape": ["batch", "tokens"], "dtype": "int64"} for n in TEXT_INPUTS] if text else
              {"name": "input", "shape": ["batch", *example.shape[1:]], "dtype": "float32"})
    meta = {"format": fmt, "file": out.name, "run": str(run.dir.resolve()), "model": run.config["model"],
            "cut": run.config["cut"], "modality": run.modality, "input": inputs,
            "output": {"name": "logits", "shape": ["batch", len(run.classes)], "meaning": _meaning(run)},
            "labels": {str(i): c for i, c in enumerate(run.classes)},
            "data_config": model.backbone.data_config, "precision": precision_record(run),
            "torch": torch.__version__}
    task = getattr(run, "task", "multiclass")
    if task != "multiclass":
        meta["task"] = task
    if task == "regression":
        meta["target"] = run.target
    if task == "multiclass":  # rehead predict's probabilities are calibrated: a deployment needs T to match them
        meta["temperature"] = float(run.temperature)
    if run.modality == "image":
        from .data.images import DECODE
        meta["preprocessing"] = preprocessing_steps(model.backbone.data_config)
        meta["decode"] = DECODE  # exactly how rehead turns a file into RGB pixels
    if run.modality == "tabular":  # which raw columns, in what order, and what happens to them
        meta["preprocessing"] = table_steps(model.backbone.data_config)
    if text:  # everything a deployment needs to turn a text into the two inputs
        cfg = model.backbone.data_config
        meta["tokenizer"] = {"dir": tok_dir.name, "max_length": cfg["max_length"], "padding": True,
                             "truncation": True, "how": f"AutoTokenizer.from_pretrained(dir)(texts, padding=True, "
                                                        f"truncation=True, max_length={cfg['max_length']})",
                             "files": tok_files}  # what a later --overwrite may replace
    if fmt == "onnx":
        meta["opset"] = opset
    _write_graph(model, None if text else example, fmt, out, opset)
    _staged(sidecar).write_bytes(json.dumps(meta, indent=1).encode())
    _install(out, sidecar, tok_dir if text else None)
    return meta


def _install(out: Path, sidecar: Path, tok_dir: Path | None) -> None:
    """Rename the staged graph, tokenizer and sidecar into place. Each rename is atomic, the set is not, so
    an export stopped between two of them (Ctrl-C, SIGTERM, a kill, a crash) must leave one whole export:
    the files it replaces are first renamed aside (``_aside``), the old sidecar first, and deleted only once
    the new sidecar, renamed last, is in place. At every instant the old export is whole on disk (in place or
    aside) or the new one is in place; the names in place never pair a graph with another export's sidecar
    (at worst a graph without one, which a deployment cannot miss). A stop with Python still running (an
    error, a Ctrl-C outside the CLI) puts the old export back; a kill leaves the asides, which the next
    export to ``out`` says (``leftover_note``). Under the CLI a Ctrl-C or SIGTERM waits for the renames to
    end (``interrupts.deferred``)."""
    from . import interrupts
    parts = [out] + ([tok_dir] if tok_dir is not None else [])
    with interrupts.deferred():
        if sidecar.exists():  # the export in place is whole: asides are what a killed one left of an older one
            _drop_asides(out)
        try:
            for p in (sidecar, *parts):  # an aside already there is kept: the last whole export, a kill left it
                if p.exists() and not _aside(p).exists():
                    os.replace(p, _aside(p))
            for p in parts:
                _put(_staged(p), p)
            os.replace(_staged(sidecar), sidecar)
        except BaseException:
            _put_back(out)
            raise
        _drop_asides(out)


def _aside(path: Path) -> Path:
    """Where --overwrite keeps a file (or the tokenizer folder) of the export it replaces until the new
    export is in place."""
    return path.with_name(f".replaced-{path.name}")


def _put(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; a folder at ``dst`` (a tokenizer a killed export left, whose sidecar never
    came) goes first."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


def _put_back(out: Path) -> None:
    """Every aside back in place, the sidecar last: the export --overwrite was replacing, whole again. One
    that cannot be put back (a full disk, a second Ctrl-C outside the CLI) stops it there: the old sidecar
    stays aside, never beside the new graph, and the next export says what is left."""
    sidecar, tok_dir = _beside(out)
    try:
        for p in (out, tok_dir, sidecar):
            if _aside(p).exists():
                _put(_aside(p), p)
    except BaseException:
        pass  # the error that stopped the export is the one to raise


def _drop_asides(out: Path) -> None:
    """Delete the export an --overwrite replaced, once the new one is in place (its sidecar aside first: a
    leftover without it is never taken for a whole export)."""
    sidecar, tok_dir = _beside(out)
    for p in (sidecar, out, tok_dir):
        a = _aside(p)
        if a.is_dir() and not a.is_symlink():
            shutil.rmtree(a, ignore_errors=True)
        else:
            a.unlink(missing_ok=True)


def leftover_note(out: Path) -> str | None:
    """What an export to ``out`` that was killed part way left, in one sentence, with the commands that put
    the export it was replacing back; None when it left nothing."""
    import shlex
    sidecar, tok_dir = _beside(out)
    kept = [p for p in (out, tok_dir, sidecar) if _aside(p).exists()]
    if not kept:
        if out.is_file() and not sidecar.exists():
            return (f"{out} has no sidecar ({sidecar.name}) beside it: an export to it stopped part way "
                    "(killed?), and it is not a whole export")
        return None
    names = ", ".join(_aside(p).name for p in kept)
    if sidecar.exists():
        return (f"{names} beside {out} are what a `rehead export --overwrite` killed after it finished left "
                f"of the export it replaced: {out} and its sidecar are whole; delete them (`rm -rf "
                f"{' '.join(shlex.quote(str(_aside(p))) for p in kept)}`)")
    if not _aside(sidecar).exists():
        return (f"{names} beside {out} are part of an export a killed `rehead export --overwrite` was replacing, "
                f"and no sidecar is in place: neither is a whole export; delete them (`rm -rf "
                f"{' '.join(shlex.quote(str(_aside(p))) for p in kept)}`)")
    put_back = " && ".join((f"rm -rf {shlex.quote(str(p))} && " if p == tok_dir else "")
                           + f"mv -f {shlex.quote(str(_aside(p)))} {shlex.quote(str(p))}" for p in kept)
    return (f"a `rehead export --overwrite` to {out} was killed between its renames: {out} is not a whole "
            f"export (no sidecar), and the export it was replacing is whole beside it ({names}); to put that one "
            f"back: `{put_back}`")


def _beside(out: Path) -> tuple[Path, Path]:
    """The sidecar and (text runs) the tokenizer folder an export to ``out`` writes beside it."""
    return out.with_name(out.name + ".json"), out.with_name(out.name + ".tokenizer")


def check_outside_data(out: Path, given, config: dict, run_dir) -> None:
    """Refuse an --out inside the folder the run was trained on (its config.yaml's ``data``), before
    anything is written: the next fit on that folder would read the export as data (model.onnx in a
    class folder, its sidecar a file of the data). A rehead run directory kept in the data is never
    read as data, so a run's default RUN/export/ there is fine. Data that is a file (a CSV) names its
    data files itself: see _check_off_data_files."""
    data = config.get("data")
    if isinstance(data, str) and os.path.isfile(data):
        return _check_off_data_files(out, given, data, config, run_dir)
    if not isinstance(data, str) or not os.path.isdir(data):
        return
    if not _inside_data(out.parent, Path(data)):
        return
    default = Path(run_dir) / "export"
    instead = f" (e.g. the default, {default}/)" if not _inside_data(default, Path(data)) else ""
    what = f"--out {given}" if given else f"the default --out {default}/"
    raise ValueError(f"{what} is inside {data}, the data {run_dir} was trained on (its config.yaml's data): the "
                     f"next fit there would read the export as data; give an --out outside {data}{instead}")


def _check_off_data_files(out: Path, given, data: str, config: dict, run_dir) -> None:
    """A CSV fit reads the CSV and the images it lists, nothing beside them: an export in their folders
    is never read as data. But --overwrite replaces the export's files (graph, sidecar, the tokenizer
    folder), and an --out inside a file fails half way: refuse either on the CSV or a file it lists.
    Files are compared by identity (a link or another spelling of a path is the same file), and the
    CSV is read only when something is there to destroy (not for a new export)."""
    sidecar, tok_dir = _beside(out)
    mine = [out, sidecar, *(tok_dir.iterdir() if tok_dir.is_dir() else ())]
    at_risk = {_identity(p): p for p in mine + [q for q in out.parents if q.exists() and not q.is_dir()]}
    at_risk.pop(None, None)
    if not at_risk:
        return
    for f in (data, *_listed_files(data, config)):
        p = at_risk.get(_identity(f))
        if p is not None:
            what = f"--out {given}" if given else f"the default --out {Path(run_dir) / 'export'}/"
            how = "write into" if p in out.parents else "replace"
            which = "the data" if f == data else f"a file {data} lists, the data"
            raise ValueError(f"{what} would {how} {f}, {which} {run_dir} was trained on (its config.yaml's data): "
                             f"give an --out that is not a data file nor inside one")


def _identity(path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, None for a missing one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _listed_files(data: str, config: dict) -> list[str]:
    """The files an image CSV lists: its path column, as rehead.data.images reads it."""
    from .data.images import listed_files
    if (config.get("data_config") or {}).get("modality") != "image" or not data.lower().endswith(".csv"):
        return []  # a text or table CSV holds its data; Parquet and shards are read whole
    return listed_files(data, (config.get("fit") or {}).get("image_column"))


def _inside_data(folder: Path, data: Path) -> bool:
    """Whether ``folder`` (existing or not) is ``data`` or inside it, and not inside a run directory there."""
    from .rundir import MARKER
    root, p = data.resolve(), folder.resolve()
    if p != root and root not in p.parents:
        return False
    while p != root:
        if (p / MARKER).is_file():  # a run directory: the data readers skip it
            return False
        p = p.parent
    return True


def _remove_unfinished(out: Path, tok_dir: Path | None, new: list[Path], made: list[Path]) -> None:
    """Remove what an export stopped part way wrote: its temporary files (the one place they are
    removed), the files it was creating (``new``: not there before; one --overwrite replaced stays) and
    the folders it made, innermost first, if they are empty then: never a folder or file that was there
    before."""
    _staged(out).unlink(missing_ok=True)
    _staged(_beside(out)[0]).unlink(missing_ok=True)
    if tok_dir is not None:
        shutil.rmtree(_staged(tok_dir), ignore_errors=True)
    for p in new:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    from .rundir import remove_empty
    remove_empty(made)


def _write_graph(model, example, fmt: str, out: Path, opset: int | None) -> None:
    """The traced graph, written to its temporary name for _install to rename to ``out``: never half a
    model at ``out``. Half a graph left by a stop or an error is _remove_unfinished's to remove."""
    net, args, names, axes = _traced_inputs(model, example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning / exporter deprecation chatter
        if fmt == "onnx":
            _onnx_export(net, args, _staged(out), names, axes, opset)
        else:
            torch.jit.trace(net, args).save(str(_staged(out)))


def precision_record(run) -> dict:
    """The number format the run's backbone computed its features in (rehead.precision) against the
    graph's. A head kept on bf16 features is scored by ``predict`` with its backbone under bf16
    autocast wherever the hardware has bf16; the graph is float32 throughout (ONNX Runtime's CPU
    kernels have no bf16 convolutions), so there the two differ slightly."""
    features = run.summary.get("inference_precision", "fp32")
    rec = {"features": features, "graph": "fp32"}
    if features == "bf16":
        rec["note"] = ("the head was trained on features the backbone computed under bf16 autocast, and rehead "
                       "predict runs the backbone so on hardware with bf16 (CUDA GPUs, CPUs with AVX512-BF16 or AMX); "
                       "this export computes in fp32, so its probabilities may differ from predict's there by up to "
                       "about 0.01 (0.009 measured); where predict runs in fp32 (REHEAD_FEATURE_PRECISION=fp32, or "
                       "no bf16 hardware) the two match")
    return rec


def table_steps(cfg: dict) -> list[dict]:
    """How ``predict`` turns a CSV's rows into the input (rehead.data.tabular): the fit's feature
    columns by name, their cells as float32; the standardisation is inside the graph."""
    cols, policy = list(cfg["columns"]), cfg.get("missing", "error")
    empty = ("predict fills it with the column's training mean (--missing mean); the graph does the same" if
             policy == "mean" else "predict refuses the row (fitted with --missing error); the graph would read "
             "it as the column's training mean, which the model never saw")
    return [{"op": "select_columns", "by": "header name", "columns": cols, "count": len(cols),
             "call": "x = df[columns]",
             "note": "these columns, in this order; any other column (label, id, split, extras) is not read, "
                     "and a table's own column order does not matter"},
            {"op": "to_float", "dtype": "float32", "call": "x = x.to_numpy(np.float32)",
             "cells": "spaces stripped; an empty cell, 'na' or 'nan' (any case) is NaN; other text is an error",
             "missing": policy, "empty_cell": empty,
             "note": "no other preprocessing: give the raw values, the graph standardises them"},
            {"op": "standardize", "where": "inside the graph (its first operation)", "call": "none: done by the graph",
             "how": f"(x - mean) / std per column, mean and std of the fit's {cfg.get('standardised_on_rows', '?')} "
                    "training rows (a constant column: std 1); a NaN then becomes 0, the column's training mean"}]


def _onnx_export(net, args, path: Path, names: list, axes: dict, opset: int) -> None:
    """The TorchScript-based exporter (the dynamo one needs onnxscript, which rehead does not require);
    an operator this opset cannot express is one line (a timm ViT's attention needs 14)."""
    try:
        torch.onnx.export(net, args, str(path), dynamo=False, input_names=names, output_names=["logits"],
                          opset_version=opset, dynamic_axes={**axes, "logits": {0: "batch"}})
    except torch.onnx.OnnxExporterError as e:
        raise ValueError(f"this model does not export at --opset {opset} ({str(e).splitlines()[0]}): "
                         f"pass a higher --opset (at most {opset_range(None)[1]})") from None


class _TextInputs(torch.nn.Module):
    """The model with its tokenized input as two tensors (a graph takes tensors, not a dict)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})


def _traced_inputs(model, x: torch.Tensor | None):
    """(module, example args, input names, dynamic axes) for one input tensor ``x``, or (None) a text
    model's two. A batch of 2 (no batch-1 specialisation); texts of two lengths, so padding is traced."""
    if x is not None:
        return model, (x.expand(2, *x.shape[1:]).contiguous(),), ["input"], {"input": {0: "batch"}}
    enc = model.backbone.tokenize(["An example sentence.", "A second, somewhat longer example sentence here."])
    return (_TextInputs(model).eval(), (enc["input_ids"], enc["attention_mask"]), TEXT_INPUTS,
            {n: {0: "batch", 1: "tokens"} for n in TEXT_INPUTS})


TEXT_INPUTS = ["input_ids", "attention_mask"]


def _staged(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}")


def _stage_tokenizer(tokenizer, path: Path, sidecar: Path) -> list[str]:
    """Save the tokenizer under a temporary name beside ``path`` and return its file names. An
    existing ``path`` (--overwrite) is replaced only if it holds nothing but files an export writes
    (this save's, or those the old sidecar lists): like save_pretrained, export never deletes a
    file it did not write, so a folder holding other files is refused, before anything is written."""
    from .rundir import RunExists
    tmp = _staged(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    files = sorted(p.name for p in tmp.iterdir())
    ours = set(files) | set(_listed_tokenizer_files(sidecar))
    foreign = sorted(p.name for p in path.iterdir() if p.name not in ours) if path.is_dir() else []
    if foreign or (path.exists() and not path.is_dir()):  # export's _remove_unfinished removes tmp
        what = f"holds files export did not write ({', '.join(foreign[:5])})" if foreign else "is not a folder"
        raise RunExists(f"{path} {what}: --overwrite replaces only the tokenizer folder an export wrote; move "
                        "them out, or choose another --out")
    return files


def _listed_tokenizer_files(sidecar: Path) -> list[str]:
    """The tokenizer files a previous export's sidecar says it wrote (none if it is unreadable)."""
    try:
        files = json.loads(sidecar.read_text())["tokenizer"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def load_exported(path):
    """A callable ``f(x) -> logits numpy array`` for an exported file, from what the export wrote
    alone: ``x`` a numpy float32 array (images, tables), or a list of texts (text runs: tokenized by
    the tokenizer shipped beside the graph, as its sidecar says)."""
    path = Path(path)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    if path.suffix == ".onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        graph = lambda *xs: sess.run(["logits"], {n: x for n, x in zip(_input_names(meta), xs)})[0]  # noqa: E731
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated; it still works
            m = torch.jit.load(str(path), map_location="cpu").eval()

        def graph(*xs):
            with torch.no_grad():
                return m(*map(torch.as_tensor, xs)).numpy()
    if "tokenizer" not in meta:
        return graph
    from transformers import AutoTokenizer
    tok, t = AutoTokenizer.from_pretrained(str(path.with_name(meta["tokenizer"]["dir"]))), meta["tokenizer"]

    def on_texts(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=t["max_length"], return_tensors="np")
        return graph(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))
    return on_texts


def _input_names(meta: dict) -> list[str]:
    spec = meta["input"]
    return [i["name"] for i in spec] if isinstance(spec, list) else [spec["name"]]


def _meaning(run) -> str:
    """What the exported output is, per task (the sidecar is all a deployment reads)."""
    task = getattr(run, "task", "multiclass")
    if task == "regression":
        return "the target standardised: value = output * target.std + target.mean"
    if task == "multilabel":
        return "one score per label; sigmoid for each label's probability (a label is on at p >= 0.5)"
    t = float(run.temperature)
    fitted = "fitted on val" if (Path(run.dir) / "temperature.json").exists() else "none fitted: T = 1"
    return ("unnormalised class scores; softmax(logits / temperature) for the calibrated probabilities rehead "
            f"predict gives (temperature {t:.4g}, {fitted}), softmax(logits) for the uncalibrated ones")
