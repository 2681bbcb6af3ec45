"""Shared fixtures: tiny models built here, generated images, the real data when present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Features in fp32 on every machine (module-scoped fixtures and subprocesses included), so exact
# comparisons hold whether or not this CPU has bf16; tests/test_precision.py checks the bf16 path.
os.environ["REHEAD_FEATURE_PRECISION"] = "fp32"

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# The suite also runs on a GPU machine (bench/gpu_suite.sh), where a fit hands back its model on the
# GPU. There cuDNN's TF32 convolutions and its choice of algorithm per batch shape move a forward's
# last bits: what is bit-for-bit on the CPU is compared within GPU_ATOL.
ON_GPU = torch.cuda.is_available()
GPU_ATOL = 2e-3


def atol(cpu: float) -> float:
    return max(cpu, GPU_ATOL) if ON_GPU else cpu


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal on the CPU; within GPU_ATOL on a GPU."""
    a, b = a.cpu(), b.cpu()
    return torch.allclose(a, b, atol=GPU_ATOL, rtol=0) if ON_GPU else torch.equal(a, b)


def shared_dataset(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} is absent (a fresh clone has no ../shared): real-data test skipped")
    return p


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REHEAD_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)


@pytest.fixture
def cli_handlers():
    """The CLI's Ctrl-C / SIGTERM handlers (``interrupts.install``) for one test, then the test process's own back."""
    import signal
    import sys
    from rehead import interrupts
    saved, hook = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, sys.unraisablehook
    interrupts.install()
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    sys.unraisablehook = hook
    interrupts._arrived.clear()
    interrupts._pending.clear()


@pytest.fixture
def one_thread():
    """Tiny models: a second intra-op thread only waits for the other on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def timm_spec(tmp_path_factory, name: str) -> str:
    """A tiny timm model (random init, seeded) saved as safetensors: loads via file:."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False)
    p = tmp_path_factory.mktemp("weights") / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    return f"file:{p}#timm:{name}"


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> str:
    return timm_spec(tmp_path_factory, "test_efficientnet")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT masked LM, random init, with the packaged MiniLM's WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
    from rehead.zoo.hf import minilm_path
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(d)
    return d


def make_images(root: Path, classes=("red", "blue"), n: int = 10, size: int = 40, seed: int = 0) -> Path:
    """Class folders of JPEGs whose colour is the label (learnable by any backbone)."""
    rng = np.random.default_rng(seed)
    colours = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.array(colours.get(c, (128, 128, 128)), dtype=np.float32)
            px = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{c}_{i}.jpg", quality=90)
    return root


def split_rows(n: int, split_of, classes=("red", "blue")) -> list[str]:
    """CSV rows ``path,label,split`` over make_images' files; ``split_of(i)`` names image i's split."""
    return ["path,label,split"] + [f"{c}/{c}_{i}.jpg,{c},{split_of(i)}" for c in classes for i in range(n)]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_images(tmp_path / "imgs")


def write_csv(path, header, rows):
    """A CSV of ``header`` then ``rows``; returns its path."""
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path
