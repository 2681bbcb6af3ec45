"""LoRA vs full fine-tune on financial_phrasebank_allagree with packaged MiniLM, in one run.

    python bench/lora.py                       # both arms, 2 epochs each -> bench/results/lora.json
    python bench/lora.py --epochs 1 --train-subset 600

Each arm is `rehead fit` in its own subprocess (so peak memory is its own), one after the other:

    full  --strategy finetune --unfreeze -1 --epochs E --lr 1e-3 --lr-decay 1.5   (bench/text_classify.py's
          finetune settings: the head solved on cached features, then every stage + head at lr/10,
          each earlier stage 1.5x lower)
    lora  the same phases with --method lora --lora-rank 8 --lora-alpha 16 and --lr 1e-2 --lr-decay 1:
          adapters (attention q, k, v, output of every layer) + head at 1e-3, LoRA's usual ~10x the
          full fine-tune LR, one LR for all adapters.

Figures per arm: trainable parameters in the live phase, median seconds per optimizer step (the
live phase only), peak RSS during the live phase (VmHWM after resetting it at the phase start, and
the RSS it started from) and of the whole process (ru_maxrss), test accuracy (rehead carves val out
of train.csv, keeps the best val epoch and scores test.csv once), model.safetensors size; and
an interleaved step-time check (both models stepping the same batches in one process, in turn),
the only step-time ratio that is fair on a shared machine. The head phase runs at --lr, so the
arms' heads train at 1e-3 and 1e-2: bench/results/lora.json's notes say what that does.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import machine, write  # noqa: E402

DATA = Path(os.environ.get("REHEAD_DATASETS", "/work/shared/datasets")) / "financial_phrasebank_allagree"
ARMS = {
    "full": dict(strategy="finetune", unfreeze=-1, lr=1e-3, lr_decay=1.5, head="mlp"),
    "lora": dict(strategy="finetune", unfreeze=-1, lr=1e-2, lr_decay=1.0, lora_rank=8, lora_alpha=16.0, head="mlp"),
}


def _status(key: str) -> int:
    """kB from /proc/self/status."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


class Probe:
    """Step times, trainable parameters and peak RSS of the live (backbone-running) phase."""
    order = 1

    def __init__(self):
        self.steps, self.trainable, self.rss_start_kb, self.peak_kb = [], None, None, None
        self._t = None

    def before_phase(self, tr):
        if tr.on_features:
            return
        self.trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
        self.total = sum(p.numel() for p in tr.model.parameters())
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the peak from here on is the phase's own
        except OSError:
            pass
        self.rss_start_kb = _status("VmRSS")

    def before_step(self, tr):
        if not tr.on_features:
            self._t = time.perf_counter()

    def after_step(self, tr):
        if self._t is not None:
            self.steps.append(time.perf_counter() - self._t)
            self._t = None

    def after_phase(self, tr):
        if not tr.on_features:
            self.peak_kb = _status("VmHWM")


def one(arm: str, out: Path, epochs: int, subset: int | None, seed: int) -> dict:
    import torch
    from rehead.fit import fit
    from rehead.methods import method_hooks
    settings = dict(ARMS[arm])
    data = DATA
    if subset:
        import csv
        import random
        tmp = out.parent / f"data_{arm}"
        tmp.mkdir(parents=True, exist_ok=True)
        with open(DATA / "train.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        keep = random.Random(seed).sample(rows[1:], subset)
        with open(tmp / "train.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([rows[0]] + keep)
        (tmp / "test.csv").write_bytes((DATA / "test.csv").read_bytes())
        data = tmp
    probe = Probe()
    hooks = [probe]
    if arm == "lora":
        hooks = method_hooks("lora", lora_rank=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
                             lora_dropout=0.0) + hooks
    t0 = time.perf_counter()
    run = fit(str(data), out=str(out), model="packaged:minilm", epochs=epochs, seed=seed, progress=False,
              method="lora" if arm == "lora" else "plain", hooks=hooks, **settings)
    wall = time.perf_counter() - t0
    s = run.summary
    res = {"settings": {**settings, "epochs": epochs, "method": "lora" if arm == "lora" else "plain",
                        "batch_size": 32, "seed": seed},
           "trainable_params": probe.trainable, "total_params": probe.total,
           "step_seconds_median": statistics.median(probe.steps) if probe.steps else None,
           "step_seconds_mean": statistics.fmean(probe.steps) if probe.steps else None, "steps": len(probe.steps),
           "peak_rss_live_phase_mb": probe.peak_kb / 1024 if probe.peak_kb else None,
           "rss_at_live_phase_start_mb": probe.rss_start_kb / 1024 if probe.rss_start_kb else None,
           "ru_maxrss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "test_acc": s.get("test_acc"), "test_n": s.get("test_n"), "val_acc": s.get("val_acc"),
           "kept_epoch": s.get("kept_epoch"), "phases": s.get("phases"),
           "model_safetensors_bytes": (Path(out) / "model.safetensors").stat().st_size,
           "wall_seconds": wall, "torch_threads": torch.get_num_threads(), "loadavg_at_end": list(os.getloadavg())}
    if arm == "lora":
        res["lora"] = json.loads((Path(out) / "lora.json").read_text())["params"]
    return res


def interleaved(n_steps: int, seed: int) -> dict:
    """Seconds per training step of both arms on the same batches, alternating in one process
    (which goes first alternates too): the step-time ratio with the machine's load shared."""
    import csv
    import torch
    from rehead import zoo
    from rehead.data import pipeline
    from rehead.heads import make_head
    from rehead.lora import count, inject, peft_config, resolve
    from rehead.model import TransferModel
    with open(DATA / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: 32 * n_steps]
    classes = sorted({r["label"] for r in rows})
    torch.manual_seed(seed)
    arms = {}
    for arm in ("full", "lora"):
        m = TransferModel(zoo.load("packaged:minilm"), make_head(384, len(classes), "mlp", 512, 0.0))
        if arm == "lora":
            names, _, _ = resolve(m, -1)
            inject(m, peft_config(names, 8, 16.0, 0.0))
        m.set_trainable_last(-1).train()
        opt = torch.optim.AdamW(m.param_groups(1e-4, 1.0, 0.01))
        arms[arm] = (m, opt, [], count(m)["trainable"])
    pipe = pipeline("text")
    bb = arms["full"][0].backbone
    loader = pipe.make_loader(bb, [r["text"] for r in rows], [classes.index(r["label"]) for r in rows],
                              batch_size=32, workers=0, shuffle=False)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i, (_, x, y) in enumerate(loader):
        for arm in (("full", "lora") if i % 2 == 0 else ("lora", "full")):
            m, opt, times, _ = arms[arm]
            t0 = time.perf_counter()
            loss = loss_fn(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    out = {arm: {"step_seconds_median": statistics.median(t[1:]), "steps_timed": len(t) - 1, "trainable_params": n}
           for arm, (_, _, t, n) in arms.items()}  # the first step of each (allocations) left out
    out["lora_over_full"] = out["lora"]["step_seconds_median"] / out["full"]["step_seconds_median"]
    out["what"] = (f"{n_steps} batches of 32 train.csv sentences, each stepped by both models in turn (order "
                   "alternating), one process, forward + backward + AdamW step, every stage trainable (full) / "
                   "adapters in every layer (lora), LR 1e-4; the first step of each is not timed")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the live phase (the head is solved first)")
    ap.add_argument("--train-subset", type=int, default=None, help="sample this many train.csv rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    ap.add_argument("--interleaved-steps", type=int, default=8, help="step-time check in one process (0: skip)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one == "interleaved":
        print("RESULT " + json.dumps(interleaved(a.interleaved_steps, a.seed)))
        return
    if a.one:  # a child: one arm, figures as JSON on the last line
        print("RESULT " + json.dumps(one(a.one, Path(a.out), a.epochs, a.train_subset, a.seed)))
        return
    started = machine()
    figs = {"data": DATA.name, "model": "packaged:minilm", "epochs": a.epochs, "train_subset": a.train_subset,
            "what": "val carved from train.csv (20%, stratified, seed 0); test.csv scored once at the end; "
                    "each arm in its own process, one after the other, with its own empty feature cache"}
    arms = list(a.arms) + (["interleaved"] if a.interleaved_steps else [])
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            env = dict(os.environ, REHEAD_CACHE=str(Path(tmp) / f"cache_{arm}"))
            cmd = [sys.executable, __file__, "--one", arm, "--out", str(Path(tmp) / arm), "--epochs", str(a.epochs),
                   "--seed", str(a.seed), "--interleaved-steps", str(a.interleaved_steps)] \
                + (["--train-subset", str(a.train_subset)] if a.train_subset else [])
            load0 = list(os.getloadavg())
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                sys.stderr.write(p.stdout[-3000:] + p.stderr[-5000:])
                raise SystemExit(f"{arm} failed")
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            figs[arm] = {**json.loads(line[len("RESULT "):]), "loadavg_at_start": load0}
            print(arm, json.dumps(figs[arm])[:400], flush=True)
    if "full" in figs and "lora" in figs:
        f, l = figs["full"], figs["lora"]
        figs["lora_vs_full"] = {
            "trainable_params_ratio": l["trainable_params"] / f["trainable_params"],
            "step_time_ratio": l["step_seconds_median"] / f["step_seconds_median"],
            "peak_rss_live_phase_ratio": l["peak_rss_live_phase_mb"] / f["peak_rss_live_phase_mb"],
            "model_file_ratio": l["model_safetensors_bytes"] / f["model_safetensors_bytes"],
            "test_acc_difference": l["test_acc"] - f["test_acc"]}
    write("lora", figs, started=started)


if __name__ == "__main__":
    main()
