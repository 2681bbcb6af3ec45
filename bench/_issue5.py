"""Shared bits of the issue-5 benchmarks: where the data is, how a result is written."""
from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

from bench._common import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera_data"


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
