"""Issue 15 item 4 on one GPU: extraction images/s of rehead vs hand-written pipelines vs the bare forward.

Synthetic photo-sized JPEGs (500x375, like hymenoptera's) are written once to a temp dir; every
pipeline reads and decodes the same files, the same model up to its pooled features:

- rehead:              ``rehead.features.extract`` (no cache), --workers loader processes
- rehead_float:        the same, the workers sending normalised floats (not 8-bit crops) as on a CPU
- rehead_seventh:      the same, with the seventh session's collate (stack, channels_last copy, shared-memory copy)
- loader_*:            the data path alone (workers, pinning; no model): rehead's raw and float
                       batches, the tutorial's
- tutorial:            the PyTorch tutorial's transforms + DataLoader (pinned memory), fp32, NCHW
- tutorial_cl_bf16:    the same, channels_last and bf16 autocast (the best hand-written CPU-decode loop)
- nvjpeg (reference):  file bytes read by threads, decoded on the GPU (torchvision.io.decode_jpeg),
                       resized and normalised there: what decoding off the CPU would give
- bare_forward_bf16:   the forward alone on preprocessed tensors already on the device

The model is timm's tf_efficientnet_lite0 (rehead's packaged:efficientnet_lite0) with random
weights: speed does not depend on the weights, and the GPU machine has no copy of them.
Runs are interleaved (A..J then J..A); medians reported, warm-up reps apart.

    PYTHONPATH=.:bench python bench/gpu_extract.py [--n 6000] [--reps 2] [--warmup-reps 0] [--workers N] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import rehead  # noqa: F401  first, as the CLI does
import numpy as np
import torch
from torchvision import transforms

from _common import machine, median, write

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _jpeg(args) -> None:
    path, seed = args
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    noise = rng.integers(-20, 20, (375, 500, 3))
    Image.fromarray(np.clip(np.asarray(small, dtype=np.int64) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(root: Path, n: int) -> list[str]:
    paths = [str(root / f"{i:06d}.jpg") for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_jpeg, [(p, i) for i, p in enumerate(paths)], chunksize=64))
    return paths


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB"))


def tutorial_tf():
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_rehead(bb, paths, bs, workers, dev) -> float:
    from rehead.features import extract
    t0 = time.perf_counter()
    out, kept, _ = extract(bb, paths, [len(bb)], cache=None, batch_size=bs, workers=workers, progress=False)
    assert len(kept) == len(paths)
    return len(paths) / (time.perf_counter() - t0)


def seventh_collate(batch):
    """The seventh session's collate: what the loader's shared-memory collate replaced."""
    good = [b for b in batch if b is not None]
    idx, xs, ys = zip(*good)
    return torch.tensor(idx), torch.stack(xs).contiguous(memory_format=torch.channels_last), torch.tensor(ys)


def run_rehead_as(bb, paths, bs, workers, dev, raw: bool, collate=None) -> float:
    """rehead's extract with its raw-crops choice (and collate) swapped: what each change is worth."""
    from rehead import features
    from rehead.data import images
    kept_raw, kept_collate = features.raw_inputs, images.collate_skip
    features.raw_inputs = lambda pipe, device: raw and kept_raw(pipe, device)
    images.collate_skip = collate or kept_collate
    try:
        return run_rehead(bb, paths, bs, workers, dev)
    finally:
        features.raw_inputs, images.collate_skip = kept_raw, kept_collate


def run_loader(loader, n) -> float:
    t0 = time.perf_counter()
    for b in loader:
        pass
    return n / (time.perf_counter() - t0)


def run_tutorial(model, paths, bs, workers, dev, fast: bool) -> float:
    loader = torch.utils.data.DataLoader(Files(paths, tutorial_tf()), batch_size=bs, num_workers=workers,
                                         pin_memory=dev.type == "cuda")
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if fast else torch.autocast(dev.type, enabled=False)
    t0 = time.perf_counter()
    with torch.inference_mode(), ctx:
        for x in loader:
            x = x.to(dev, non_blocking=True)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x).float().cpu()
    return len(paths) / (time.perf_counter() - t0)


def run_nvjpeg(model, paths, bs, dev) -> float:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1) * 255

    def read(p):
        return torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool, torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
        for s in range(0, len(paths), bs):
            imgs = decode_jpeg(list(pool.map(read, paths[s:s + bs])), device=dev)
            x = torch.stack([F.center_crop(F.resize(im, [256], antialias=True), [224, 224]) for im in imgs])
            x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            model(x).float().cpu()
    return len(paths) / (time.perf_counter() - t0)


def run_bare(bb, x, bs, dev) -> float:
    from rehead.precision import autocast, feature_precision
    sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(dev, feature_precision(dev)):
        for s in range(0, len(x), bs):
            bb.forward_cuts(x[s:s + bs], [len(bb)])[len(bb)].float().cpu()
    sync(dev)
    return len(x) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup-reps", type=int, default=0, help="first reps of every pipeline, not in the medians")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    a = ap.parse_args()
    started = machine()
    import timm
    from rehead.data.images import ImageDataset, make_loader
    from rehead.precision import extraction_device, feature_precision
    from rehead.zoo.timm_stages import timm_backbone
    dev = extraction_device()
    bb = timm_backbone(timm.create_model("tf_efficientnet_lite0", pretrained=False), "timm:tf_efficientnet_lite0").eval()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval().to(dev)
    model_cl = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval().to(dev)
    model_cl = model_cl.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = make_jpegs(Path(tmp), a.n)
        made = time.perf_counter() - t0
        loader = torch.utils.data.DataLoader(ImageDataset(paths, None, bb.data_config), batch_size=256,
                                             num_workers=a.workers)
        x = torch.cat([b[1] for b in loader]).to(dev).contiguous(memory_format=torch.channels_last)
        runs = {"rehead": lambda: run_rehead(bb, paths, a.batch_size, a.workers, dev),
                "rehead_float": lambda: run_rehead_as(bb, paths, a.batch_size, a.workers, dev, False),
                "rehead_seventh": lambda: run_rehead_as(bb, paths, a.batch_size, a.workers, dev, False,
                                                        seventh_collate),
                "loader_rehead_raw": lambda: run_loader(make_loader(bb, paths, None, a.batch_size, a.workers,
                                                                    raw=True), a.n),
                "loader_rehead_float": lambda: run_loader(make_loader(bb, paths, None, a.batch_size, a.workers), a.n),
                "loader_tutorial": lambda: run_loader(torch.utils.data.DataLoader(
                    Files(paths, tutorial_tf()), batch_size=a.batch_size, num_workers=a.workers,
                    pin_memory=dev.type == "cuda"), a.n),
                "tutorial": lambda: run_tutorial(model, paths, a.batch_size, a.workers, dev, False),
                "tutorial_cl_bf16": lambda: run_tutorial(model_cl, paths, a.batch_size, a.workers, dev, True),
                "bare_forward": lambda: run_bare(bb.to(dev), x, a.batch_size, dev)}
        if dev.type == "cuda":
            runs["nvjpeg_reference"] = lambda: run_nvjpeg(model_cl, paths, a.batch_size, dev)
        run_bare(bb.to(dev), x[:a.batch_size * 2], a.batch_size, dev)  # warm-up (cuDNN autotune, kernels)
        speeds, warm = {k: [] for k in runs}, {}
        order = list(runs)
        for r in range(a.warmup_reps + a.reps):
            if r == a.warmup_reps:
                warm, speeds = speeds, {k: [] for k in runs}
            for k in (order if r % 2 == 0 else order[::-1]):
                try:
                    speeds[k].append(runs[k]())
                except Exception as e:  # a reference pipeline this torchvision lacks: say so, go on
                    print(f"{k} failed: {type(e).__name__}: {e}", flush=True)
                    continue
                print(f"rep {r} {k}: {speeds[k][-1]:.0f} img/s", flush=True)
    med = {k: median(v) for k, v in speeds.items() if v}
    figures = {"images_per_s": med, "runs": speeds, "warmup_runs": warm, "device": str(dev), "precision": feature_precision(dev),
               "n_images": a.n, "jpeg_size": "500x375, quality 90", "seconds_to_write_jpegs": round(made, 1),
               "batch_size": a.batch_size, "workers": a.workers, "cpu_count": os.cpu_count(),
               "rehead_vs_tutorial": med["rehead"] / med["tutorial"],
               "rehead_vs_tutorial_cl_bf16": med["rehead"] / med["tutorial_cl_bf16"],
               "rehead_vs_bare_forward": med["rehead"] / med["bare_forward"],
               "rehead_vs_rehead_seventh": med["rehead"] / med["rehead_seventh"],
               "goals": "rehead >= 1.3x the hand-written pipeline, >= 0.9x the bare forward"}
    write("gpu_extract" if dev.type == "cuda" else "gpu_extract_on_cpu", figures, started=started)


if __name__ == "__main__":
    main()
