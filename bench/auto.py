"""What `--strategy auto` measures and decides on real sets (plan only: no training).

    python bench/auto.py [hym digits random fpb ...]   -> bench/results/auto.json

hym: hymenoptera (244 train / 153 val photos, close to ImageNet) on the default image backbone
(``config.DEFAULT_MODEL``, EfficientNet-Lite2 since the eighth session; Lite0 before);
digits: scikit-learn's digits, 50 a class, written as 64x64 images (rehead demo's set), far from
ImageNet; random: hymenoptera on the same backbone with random weights (timm's init);
fpb: financial_phrasebank_allagree (1812 train sentences) on packaged MiniLM; rt: rt_polarity on
packaged MiniLM; golub: golub_leukemia's 38 training rows (7129 expression values) on an MLP encoder
pretrained by `rehead pretrain` on those rows (masked reconstruction, 150 epochs, seed 0).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def sets(tmp: Path) -> dict:
    from rehead.config import DEFAULT_MODEL
    from rehead.demo import write_digits
    return {"hym": (SHARED / "hymenoptera_data", DEFAULT_MODEL, {}),
            "digits": (write_digits(tmp / "digits"), DEFAULT_MODEL, {}),
            "random": (SHARED / "hymenoptera_data", DEFAULT_MODEL, {"random": True}),
            "fpb": (SHARED / "financial_phrasebank_allagree", "packaged:minilm", {}),
            "rt": (SHARED / "rt_polarity", "packaged:minilm", {}),
            "golub": (SHARED / "golub_leukemia" / "expression.csv", None, {"golub": True})}


GOLUB_KW = {"label_column": "label", "id_columns": "patient"}


def golub_encoder(tmp: Path) -> str:
    """An encoder pretrained on golub's training rows only (bench/golub_pretrain.py's architecture)."""
    from rehead.experiments import quiet
    from rehead.pretrain import pretrain
    out = tmp / "golub_encoder"
    pretrain(SHARED / "golub_leukemia" / "expression.csv", out, width=256, depth=3, epochs=150, seed=0,
             rows="train", progress=False, echo=quiet, **GOLUB_KW)
    return str(out)


def plan_for(data, model, random=False, data_kw=None) -> dict:
    import torch
    from rehead import zoo
    from rehead.auto import measure_and_decide
    from rehead.config import FitConfig
    from rehead.data import pipeline
    from rehead.data.inputs import as_dataset
    from rehead.features import FeatureCache
    cfg = FitConfig(model=model, **(data_kw or {}))
    ds = as_dataset(str(data), cfg)
    bb = zoo.load(model)
    if random:  # every weight and statistic at its initial value, as timm builds it untrained
        torch.manual_seed(0)
        for m in bb.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
        bb._weights_id = None
    pipe = pipeline(bb.modality)
    if hasattr(pipe, "prepare_backbone"):
        pipe.prepare_backbone(bb, ds)
    said = []
    t0 = time.perf_counter()
    plan = measure_and_decide(cfg, bb, ds, FeatureCache(), echo=lambda s: (print(s, flush=True), said.append(s)))
    plan["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"auto: {plan['reason']}", flush=True)
    plan["said"] = said
    return plan


def main(names):
    out = ROOT / "bench" / "results" / "auto.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data, model, kw = sets(Path(tmp))[name]
            if kw.pop("golub", False):
                model, kw = golub_encoder(Path(tmp)), {"data_kw": GOLUB_KW}
            print(f"== {name}: {data.name} on {model}{' (random weights)' if kw.get('random') else ''}", flush=True)
            results[name] = {"data": data.name, "model": model, **kw, "plan": plan_for(data, model, **kw)}
            out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:] or ["hym", "digits", "random", "fpb", "rt", "golub"])
