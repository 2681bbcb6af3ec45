"""Export a trained run (prefix + head, eval mode) as ONNX or TorchScript, with a JSON sidecar.

The sidecar says everything a deployment needs that the graph does not hold: how to turn
an image into the input tensor (resize, crop, scale, normalise, in that order), the input
and output names and shapes, and the label map.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


def preprocessing_steps(cfg: dict) -> list[dict]:
    """The eval transform of rehead.data.images as plain steps (so a non-Python runtime can redo it)."""
    size = int(cfg["input_size"])
    return [{"op": "decode", "mode": "RGB"},
            {"op": "resize_shorter_side", "size": int(round(size / cfg.get("crop_pct", 1.0))),
             "interpolation": cfg.get("interpolation", "bilinear"), "antialias": True},
            {"op": "center_crop", "size": [size, size]},
            {"op": "to_float", "scale": "divide by 255 (values in [0, 1])", "layout": "CHW"},
            {"op": "normalize", "mean": cfg["mean"], "std": cfg["std"]}]


def export(run_dir, fmt: str = "onnx", out=None, overwrite: bool = False, opset: int = 17) -> dict:
    """Write the run's model to ``out`` (default RUN/export/model.onnx|.pt) and ``<out>.json``."""
    from .data import pipeline
    from .rundir import RunExists, atomic_write_bytes
    from .runs import open_run
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = open_run(run_dir)
    from .lora import merge
    model = merge(run.model).eval()  # LoRA adapters folded into the base weights (peft's merge_and_unload)
    example = pipeline(run.modality).example_input(model.backbone)
    text = not isinstance(example, torch.Tensor)  # tokenized inputs
    tokenizer = getattr(model.backbone, "tokenizer", None)
    if text and not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"export of a text run needs a Hugging Face tokenizer to ship beside the graph; "
                         f"{run.config['model']} has none: use `rehead predict` or load the run in Python")
    # a folder (an existing one, a trailing slash, or a name without extension): the model goes inside it
    if out and (Path(out).is_dir() or str(out).endswith(("/", os.sep)) or not Path(out).suffix):
        out = Path(out) / f"model{FORMATS[fmt]}"
    out = Path(out) if out else run.dir / "export" / f"model{FORMATS[fmt]}"
    sidecar = out.with_name(out.name + ".json")
    tok_dir = out.with_name(out.name + ".tokenizer")
    for p in (out, sidecar) + ((tok_dir,) if text else ()):
        if p.exists() and not overwrite:
            raise RunExists(f"{p} exists: pass --overwrite to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    net, args, names, axes = _traced_inputs(model, None if text else example)
    tmp = out.with_name(f".tmp-{out.name}")  # written whole, then renamed: never half a model at `out`
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning / exporter deprecation chatter
        if fmt == "onnx":
            # The TorchScript-based exporter: the dynamo one needs onnxscript, which rehead does not require.
            torch.onnx.export(net, args, str(tmp), dynamo=False, input_names=names, output_names=["logits"],
                              opset_version=opset, dynamic_axes={**axes, "logits": {0: "batch"}})
        else:
            torch.jit.trace(net, args).save(str(tmp))
    os.replace(tmp, out)
    if text:
        _save_tokenizer(tokenizer, tok_dir)
    inputs = ([{"name": n, "shape": ["batch", "tokens"], "dtype": "int64"} for n in names] if text else
              {"name": "input", "shape": ["batch", *args[0].shape[1:]], "dtype": "float32"})
    meta = {"format": fmt, "file": out.name, "run": str(run.dir.resolve()), "model": run.config["model"],
            "cut": run.config["cut"], "modality": run.modality, "input": inputs,
            "output": {"name": "logits", "shape": ["batch", len(run.classes)], "meaning": _meaning(run)},
            "labels": {str(i): c for i, c in enumerate(run.classes)},
            "data_config": model.backbone.data_config, "torch": torch.__version__}
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
    if text:  # everything a deployment needs to turn a text into the two inputs
        cfg = model.backbone.data_config
        meta["tokenizer"] = {"dir": tok_dir.name, "max_length": cfg["max_length"], "padding": True,
                             "truncation": True, "how": f"AutoTokenizer.from_pretrained(dir)(texts, padding=True, "
                                                        f"truncation=True, max_length={cfg['max_length']})"}
    if fmt == "onnx":
        meta["opset"] = opset
    atomic_write_bytes(sidecar, json.dumps(meta, indent=1).encode())
    return {**meta, "path": str(out), "sidecar": str(sidecar)}


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
    names = ["input_ids", "attention_mask"]
    return (_TextInputs(model).eval(), (enc["input_ids"], enc["attention_mask"]), names,
            {n: {0: "batch", 1: "tokens"} for n in names})


def _save_tokenizer(tokenizer, path: Path) -> None:
    """Written whole beside the graph, then renamed (an export never leaves half a tokenizer)."""
    import shutil
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


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
    return ("unnormalised class scores; softmax(logits / temperature) for the calibrated probabilities rehead "
            f"predict gives (temperature {t:.4g}, fitted on val), softmax(logits) for the uncalibrated ones")
