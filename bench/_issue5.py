"""Shared bits of the issue-5 benchmarks: where the data is, how a result is written."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera_data"


def machine() -> dict:
    import torch
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__, "loadavg_at_end": load,
            "note": "2 CPU cores shared with other jobs: absolute seconds are noisy, ratios are measured side by side"}


def write(name: str, result: dict, pngs: dict | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for dst, src in (pngs or {}).items():
        shutil.copy(src, RESULTS / dst)
    out = RESULTS / f"{name}.json"
    result = {"name": name, "command": "python " + " ".join(sys.argv),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), **result}
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return out
