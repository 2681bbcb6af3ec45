"""Issue 3: feature-extraction speed of rehead vs the PyTorch transfer-learning tutorial's pipeline.

Both read the same JPEG files from disk (decoding included), batch 32, 2 DataLoader workers,
the same packaged EfficientNet-Lite0 up to its pooled features:

- rehead:   ``rehead.features.extract(backbone, paths, [depth], cache=None)``
- tutorial: ``torchvision.datasets.ImageFolder`` + the tutorial's transforms (Resize(256),
            CenterCrop(224), ToTensor, Normalize) + ``DataLoader`` + ``model(x)`` under ``no_grad``
- tutorial+channels_last (reference only): the tutorial's loop with the batch converted to
  channels_last, to show how much of rehead's lead is the memory format alone.
- rehead_fp32: rehead with ``REHEAD_FEATURE_PRECISION=fp32`` (what it did before bf16 features).
- bare_forward (fp32 / bf16): the model alone on the same images preloaded as one tensor,
  channels_last: the limit of this machine (no decoding, no loader).

The pipelines run interleaved (A,B,C then C,B,A ...) in one process; medians are reported.
A serial breakdown (one core decoding, the model's forward at the process's thread count)
says where the time goes.

    PYTHONPATH=. python bench/extract_speed.py [--n 160] [--reps 3] [--sweep] [--model M]

Results: ``extract_speed.json`` for Lite0, ``extract_speed_<name>.json`` for another ``--model``.
"""
from __future__ import annotations

import argparse
import time

import rehead  # noqa: F401  first, as the CLI does (sets OMP_WAIT_POLICY before torch loads)
import torch
from torchvision import datasets, transforms

from _common import HYMENOPTERA, machine, median, write

TUTORIAL_MEAN, TUTORIAL_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tutorial_transform(size: int = 224):
    """The tutorial's transforms (Resize(256), CenterCrop(224) for a 224 px model), scaled to the
    model's input size so both pipelines feed it the same number of pixels."""
    return transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                               transforms.ToTensor(), transforms.Normalize(TUTORIAL_MEAN, TUTORIAL_STD)])


def run_tutorial(bb, ds, batch_size, workers, channels_last=False) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    t0, n = time.perf_counter(), 0
    with torch.no_grad():
        for x, _ in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            bb(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def run_rehead(bb, paths, batch_size, workers, precision: str = "auto") -> float:
    import os
    from rehead.features import extract
    os.environ["REHEAD_FEATURE_PRECISION"] = precision
    t0 = time.perf_counter()
    out, kept, _ = extract(bb, paths, [len(bb)], cache=None, batch_size=batch_size, workers=workers, progress=False)
    assert len(kept) == len(paths)
    return len(paths) / (time.perf_counter() - t0)


def run_bare(bb, x, batch_size, precision: str) -> float:
    """The forward alone on preloaded, preprocessed tensors (channels_last), as extraction runs it."""
    from rehead.precision import autocast
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast("cpu", precision):
        for s in range(0, len(x), batch_size):
            bb.forward_cuts(x[s:s + batch_size], [len(bb)])
    return len(x) / (time.perf_counter() - t0)


def breakdown(bb, paths, tut_ds, batch_size) -> dict:
    """Serial cost per image: decode+resize+normalise on one core, and the forward pass."""
    from rehead.data.images import ImageDataset
    threads = torch.get_num_threads()
    reh_ds = ImageDataset(paths, None, bb.data_config)
    res = {}
    torch.set_num_threads(1)  # as in a DataLoader worker
    for name, get in (("rehead", lambda i: reh_ds[i][1]), ("tutorial", lambda i: tut_ds[i][0])):
        t0, c0 = time.perf_counter(), time.process_time()
        xs = [get(i) for i in range(len(paths))]
        res[f"{name}_decode_resize_ms_per_img"] = (time.perf_counter() - t0) / len(paths) * 1e3
        res[f"{name}_decode_resize_cpu_ms_per_img"] = (time.process_time() - c0) / len(paths) * 1e3
    torch.set_num_threads(threads)
    x = torch.stack(xs[:batch_size])
    with torch.inference_mode():
        for name, xi in (("nchw", x), ("channels_last", x.contiguous(memory_format=torch.channels_last))):
            bb(xi)  # warm-up (oneDNN primitive creation)
            walls, cpus = [], []
            for _ in range(2):
                t0, c0 = time.perf_counter(), time.process_time()
                bb(xi)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            res[f"forward_{name}_ms_per_img"] = median(walls) / len(xi) * 1e3
            res[f"forward_{name}_cpu_ms_per_img"] = median(cpus) / len(xi) * 1e3
    for name, fwd in (("rehead", "channels_last"), ("tutorial", "nchw")):
        d = res[f"{name}_decode_resize_cpu_ms_per_img"]
        f = res[f"forward_{fwd}_cpu_ms_per_img"]
        res[f"{name}_decode_share_of_cpu_time"] = d / (d + f)
    res["forward_threads"] = threads
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=160, help="images (from hymenoptera train/, both classes)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="packaged:efficientnet_lite0")
    ap.add_argument("--sweep", action="store_true", help="also rehead with workers 0/1/2 x torch threads 1/2")
    a = ap.parse_args()
    started = machine()
    from rehead import zoo
    bb = zoo.load(a.model).eval()
    full = datasets.ImageFolder(str(HYMENOPTERA / "train"), transform=tutorial_transform(bb.data_config["input_size"]))
    step = max(1, len(full) // a.n)
    idx = list(range(0, len(full), step))[:a.n]
    tut_ds = torch.utils.data.Subset(full, idx)
    paths = [full.samples[i][0] for i in idx]

    from rehead.data.images import ImageDataset
    from rehead.precision import feature_precision
    pre = ImageDataset(paths, None, bb.data_config)
    x = torch.stack([pre[i][1] for i in range(len(paths))]).contiguous(memory_format=torch.channels_last)
    auto = feature_precision("cpu")
    runs = {"rehead": lambda: run_rehead(bb, paths, a.batch_size, a.workers),
            "rehead_fp32": lambda: run_rehead(bb, paths, a.batch_size, a.workers, "fp32"),
            "bare_forward_fp32": lambda: run_bare(bb, x, a.batch_size, "fp32"),
            "bare_forward_bf16": lambda: run_bare(bb, x, a.batch_size, "bf16"),
            "tutorial": lambda: run_tutorial(bb, tut_ds, a.batch_size, a.workers),
            "tutorial_channels_last": lambda: run_tutorial(bb, tut_ds, a.batch_size, a.workers, True)}
    speeds = {k: [] for k in runs}
    order = list(runs)
    for r in range(a.reps):
        for k in (order if r % 2 == 0 else order[::-1]):
            speeds[k].append(runs[k]())
            print(f"rep {r} {k}: {speeds[k][-1]:.1f} img/s", flush=True)
    med = {k: median(v) for k, v in speeds.items()}
    bare = med["bare_forward_bf16" if auto == "bf16" else "bare_forward_fp32"]
    figures = {"model": a.model, "input_size": bb.data_config["input_size"],
               "images": len(paths), "batch_size": a.batch_size, "workers": a.workers, "reps": a.reps,
               "rehead_feature_precision": auto,
               "img_per_s_median": med, "img_per_s_all": speeds,
               "ratio_rehead_vs_tutorial_best": med["rehead"] / max(med["tutorial"], med["tutorial_channels_last"]),
               "ratio_rehead_vs_bare_forward_same_precision": med["rehead"] / bare,
               "ratio_rehead_fp32_vs_bare_forward_fp32": med["rehead_fp32"] / med["bare_forward_fp32"],
               "goals": {"vs_hand_written": 1.3, "vs_bare_forward": 0.9},
               "ratio_rehead_vs_tutorial": med["rehead"] / med["tutorial"],
               "ratio_rehead_vs_tutorial_channels_last": med["rehead"] / med["tutorial_channels_last"],
               "ratio_per_rep": [x / y for x, y in zip(speeds["rehead"], speeds["tutorial"])],
               "meets_1x": med["rehead"] / med["tutorial"] >= 1.0,
               "breakdown": breakdown(bb, paths, tut_ds, a.batch_size)}
    if a.sweep:
        sweep = {}
        base_threads = torch.get_num_threads()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for w in (0, 1, 2):
                sweep[f"threads{threads}_workers{w}"] = run_rehead(bb, paths, a.batch_size, w)
                print(f"sweep threads {threads} workers {w}: {sweep[f'threads{threads}_workers{w}']:.1f} img/s", flush=True)
        torch.set_num_threads(base_threads)
        figures["sweep_rehead_img_per_s"] = sweep
    name = a.model.split(":")[-1]
    write("extract_speed" if name == "efficientnet_lite0" else f"extract_speed_{name}", figures, started=started)


if __name__ == "__main__":
    main()
