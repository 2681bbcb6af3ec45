"""Shared bits of the bench scripts: machine notes and writing results JSON."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HYMENOPTERA = Path(os.environ.get("REHEAD_HYMENOPTERA", "/work/shared/datasets/hymenoptera_data"))
REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    import torch
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"nproc": os.cpu_count(), "sched_affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "loadavg": list(os.getloadavg()), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "git_commit": commit,
            "note": os.environ.get("REHEAD_BENCH_NOTE",
                                   "compared pipelines run interleaved in one process and medians are reported")}


def write(name: str, figures: dict, extra: dict | None = None, started: dict | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"name": name, "command": " ".join([Path(sys.executable).name] + sys.argv),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine_at_start": started, "machine_at_end": machine(), "figures": figures, **(extra or {})}
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(figures, indent=1, default=str))
    print(f"-> {p}")
    return p


def median(xs):
    return statistics.median(xs) if xs else None


def fit_row(name: str, data, args: list[str], out: Path, env: dict) -> dict:
    """``rehead fit DATA ARGS --out OUT -q`` in a fresh process, as a user types it: the row with
    its wall time, val accuracy, kept phase and epoch, each phase's best, and auto's plan (with its
    probe table) when there is one; the error's tail when it failed."""
    import time
    import yaml
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "rehead", "fit", str(data), *args, "--out", str(out), "-q"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    row = {"row": name, "args": args, "rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    if p.returncode != 0:
        return {**row, "stderr_tail": p.stderr[-1000:]}
    s = json.loads((out / "summary.json").read_text())
    row.update(val_acc=s["val_acc"], test_acc=s.get("test_acc"), kept_phase=s["kept_phase"],
               kept_epoch=s["kept_epoch"], phases=s.get("phases"))
    plan = yaml.safe_load((out / "config.yaml").read_text())["fit"].get("auto_plan")
    if plan:
        row["plan"] = {k: plan.get(k) for k in ("size", "similarity", "cut", "unfreeze", "strategy", "reason", "epochs")}
        row["probe"] = [{k: r[k] for k in ("cut", "stage", "acc", "skill")} for r in plan.get("table") or []]
        if row["probe"]:  # where the probe read best (ties to the deeper cut, as auto.decide): for --cut rows
            row["best_cut"] = max(row["probe"], key=lambda r: (r["acc"], r["cut"]))["cut"]
    return row


def fit_rows(names: list[str], args_for, data, root: Path, env: dict) -> list[dict]:
    """``fit_row`` for each named row in order, printed as it ends. ``args_for(name, best_cut)`` gives
    a row's arguments; ``best_cut`` is where the ``auto`` row's probe read best (None before it ran),
    for rows that fix ``--cut`` from it."""
    rows, best_cut = [], None
    for name in names:
        row = fit_row(name, data, args_for(name, best_cut), root / name, env)
        if name == "auto":
            best_cut = row.get("best_cut")
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows

