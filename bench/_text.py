"""Shared bits of the text bench scripts: where the data is, machine notes, writing results JSON."""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

from bench._common import machine

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = Path(os.environ.get("REHEAD_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
if not DATASETS.exists():
    DATASETS = Path("/work/shared/datasets")


def write(name: str, figures: dict, notes: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"name": name, "command": " ".join(["python"] + sys.argv),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "notes": notes, "figures": figures}
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(out, indent=1))
    print(json.dumps(figures, indent=1))
    return p
