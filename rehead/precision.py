"""The number format frozen features are computed in.

Extraction (and the inference of a head trained on extracted features) runs the frozen backbone
under bf16 autocast where the hardware has bf16 arithmetic: CUDA GPUs that support it, and CPUs
with AVX512-BF16 or AMX (oneDNN then runs convolutions and matmuls in bf16: 2.6x the fp32 forward
of EfficientNet-Lite0 on this project's CPU, bench/extract_speed.py; accuracy against fp32 in
bench/results/feature_precision.json). Elsewhere, and when ``REHEAD_FEATURE_PRECISION=fp32``, it
stays fp32. Training steps are unaffected (``--precision`` sets theirs; ``training_note`` says where
that setting cannot hold as asked).
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

CHOICES = ("auto", "fp32", "bf16")


def feature_precision(device: torch.device | str = "cpu") -> str:
    """"bf16" or "fp32" for features computed on ``device`` (``REHEAD_FEATURE_PRECISION`` overrides)."""
    asked = os.environ.get("REHEAD_FEATURE_PRECISION", "auto").lower()
    if asked not in CHOICES:
        raise ValueError(f"REHEAD_FEATURE_PRECISION must be one of {', '.join(CHOICES)}, got {asked!r}")
    if asked != "auto":
        return asked
    return "bf16" if _native_bf16(torch.device(device)) else "fp32"


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def training_note(asked: str, device: torch.device | str, live: bool) -> str | None:
    """What ``--precision`` will not do as asked on ``device``, said before a fit trains; None when it will.
    fp16 on a CPU: accelerate autocasts only GPUs to fp16, so the steps run fp32. bf16 on a CPU without
    bf16 arithmetic: live phases (the backbone's forward) run emulated, ~10x an fp32 epoch."""
    device = torch.device(device)
    if device.type != "cpu" or asked not in ("fp16", "bf16"):
        return None
    native = _native_bf16(device)
    if asked == "fp16":
        fix = "use --precision bf16 on this CPU" if native else "leave --precision out: this CPU has no bf16 " \
            "arithmetic either"
        return f"note: --precision fp16 needs a CUDA GPU; this fit runs on the CPU: training in fp32 ({fix})"
    if live and not native:
        return ("warning: --precision bf16 on a CPU without bf16 arithmetic (AVX512-BF16 or AMX): its live phases "
                "run emulated, about 10x slower than fp32; leave --precision out to train in fp32")
    return None


def autocast(device: torch.device | str, precision: str):
    """The context a frozen forward runs in: bf16 autocast, or nothing for fp32."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def extraction_device() -> torch.device:
    """Where a single process computes frozen features: the GPU when there is one, else the CPU.
    (Under a launch each process uses its own device from accelerate: ``rehead.distributed``.)
    ACCELERATE_USE_CPU=true keeps it on the CPU, as it keeps accelerate's training there."""
    from accelerate.utils import parse_flag_from_env
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def device_of(module: torch.nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def to_device_of(module: torch.nn.Module, inputs):
    """``inputs`` (a tensor, or the dict/tuple a text or table batch is) on ``module``'s device: a
    model trained on the GPU stays there, while loaders hand out CPU tensors."""
    from accelerate.utils import send_to_device
    return send_to_device(inputs, device_of(module), non_blocking=True)


def default_workers() -> int:
    """Data-loading processes when none are asked for. On a CPU 2: the same cores run the forward.
    On a GPU machine decoding is what bounds extraction (an H200 with 16 cores: 505 images/s with 2
    workers, 1,358 with 15; bench/results/gpu_extract.json), so every core but one, at most 16,
    shared among the processes of a launch on this node."""
    if not torch.cuda.is_available():
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    per_process = (cores - 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(2, min(per_process, 16))
