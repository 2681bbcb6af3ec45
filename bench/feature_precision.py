"""Issue 15 item 4: features in bf16 (rehead's default where the CPU or GPU has bf16 arithmetic)
against fp32, end to end: the same ``rehead fit --strategy extract`` run with each, on an image set
(hymenoptera, EfficientNet-Lite0: val) and a text set (financial_phrasebank_allagree, MiniLM:
val carved from train.csv, test.csv scored once). Reports accuracy, the features' agreement and
the fit's wall time.

    PYTHONPATH=.:bench python bench/feature_precision.py
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import rehead  # noqa: F401  first, as the CLI does

from _common import HYMENOPTERA, machine, write

SETS = {"hymenoptera": (str(HYMENOPTERA), "packaged:efficientnet_lite0"),
        "financial_phrasebank_allagree": ("/work/shared/datasets/financial_phrasebank_allagree",
                                          "packaged:minilm")}


def one(data: str, model: str, precision: str, tmp: Path) -> dict:
    from rehead.fit import fit
    os.environ["REHEAD_FEATURE_PRECISION"] = precision
    out = tmp / f"{Path(data).name}-{precision}"
    t0 = time.perf_counter()
    run = fit(data, out=out, model=model, strategy="extract", cache_dir=str(tmp / f"cache-{precision}"),
              progress=False, echo=lambda *_: None)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    return {"val_acc": s["val_acc"], "test_acc": s.get("test_acc"), "wall_s": round(wall, 1),
            "extract_s": round(s.get("extract_seconds", 0.0), 1), "inference_precision": s["inference_precision"],
            "C": (s.get("head_solver") or {}).get("C"), "_run": run}


def agreement(a, b, items) -> dict:
    """How close the two runs' backbones' features are on the same items (each in its precision)."""
    import torch
    fa = _features(a, items)
    fb = _features(b, items)
    cos = torch.nn.functional.cosine_similarity(fa, fb)
    return {"n": len(fa), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff_over_max_abs": float((fa - fb).abs().max() / fa.abs().max())}


def _features(run, items):
    import torch
    from rehead.data import pipeline
    from rehead.precision import autocast
    m = run.model
    loader = pipeline(run.modality).make_loader(m.backbone, items, None, batch_size=32, workers=0)
    out = []
    with torch.inference_mode(), autocast("cpu", run.inference_precision):
        for _, x, _ in loader:
            out.append(m.features(x).float())
    return torch.cat(out)


def main():
    started, figures = machine(), {}
    with tempfile.TemporaryDirectory() as d:
        for name, (data, model) in SETS.items():
            rows = {p: one(data, model, p, Path(d)) for p in ("fp32", "bf16")}
            items = rows["fp32"]["_run"].val_split()[0][:96]
            agree = agreement(rows["fp32"]["_run"], rows["bf16"]["_run"], items)
            figures[name] = {"model": model, **{p: {k: v for k, v in r.items() if k != "_run"}
                                                for p, r in rows.items()}, "feature_agreement": agree}
            print(name, json.dumps(figures[name]), flush=True)
    write("feature_precision", figures, started=started)


if __name__ == "__main__":
    main()
