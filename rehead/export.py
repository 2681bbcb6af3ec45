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
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"export supports models whose input is one tensor (image runs); this {run.modality} "
                         "run takes tokenized inputs: use `rehead predict` or load the run in Python")
    out = Path(out) if out else run.dir / "export" / f"model{FORMATS[fmt]}"
    sidecar = out.with_name(out.name + ".json")
    for p in (out, sidecar):
        if p.exists() and not overwrite:
            raise RunExists(f"{p} exists: pass --overwrite to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = example.expand(2, *example.shape[1:]).contiguous()  # batch of 2: no batch-1 specialisation
    for p in model.parameters():
        p.requires_grad_(False)
    tmp = out.with_name(f".tmp-{out.name}")  # written whole, then renamed: never half a model at `out`
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning / exporter deprecation chatter
        if fmt == "onnx":
            # The TorchScript-based exporter: the dynamo one needs onnxscript, which rehead does not require.
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        else:
            torch.jit.trace(model, (example,)).save(str(tmp))
    os.replace(tmp, out)
    meta = {"format": fmt, "file": out.name, "run": str(run.dir.resolve()), "model": run.config["model"],
            "cut": run.config["cut"], "modality": run.modality,
            "input": {"name": "input", "shape": ["batch", *example.shape[1:]], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(run.classes)], "meaning": _meaning(run)},
            "labels": {str(i): c for i, c in enumerate(run.classes)},
            "data_config": model.backbone.data_config, "torch": torch.__version__}
    task = getattr(run, "task", "multiclass")
    if task != "multiclass":
        meta["task"] = task
    if task == "regression":
        meta["target"] = run.target
    if run.modality == "image":
        from .data.images import DECODE
        meta["preprocessing"] = preprocessing_steps(model.backbone.data_config)
        meta["decode"] = DECODE  # exactly how rehead turns a file into RGB pixels
    if fmt == "onnx":
        meta["opset"] = opset
    atomic_write_bytes(sidecar, json.dumps(meta, indent=1).encode())
    return {**meta, "path": str(out), "sidecar": str(sidecar)}


def load_exported(path):
    """A callable ``f(x: numpy float32 array) -> logits numpy array`` for an exported file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: sess.run(["logits"], {"input": x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated; it still works
        m = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x):
        with torch.no_grad():
            return m(torch.as_tensor(x)).numpy()
    return run


def _meaning(run) -> str:
    """What the exported output is, per task (the sidecar is all a deployment reads)."""
    task = getattr(run, "task", "multiclass")
    if task == "regression":
        return "the target standardised: value = output * target.std + target.mean"
    if task == "multilabel":
        return "one score per label; sigmoid for each label's probability (a label is on at p >= 0.5)"
    return "unnormalised class scores; softmax for probabilities"
