"""GTL vs plain fine-tuning vs L2-SP on tiny fractions of hymenoptera (ants vs bees), and
forgetting: agreement of the ImageNet head's predictions before vs after fine-tuning.

Setup (the same for every method, side by side in one run):
- backbone packaged:efficientnet_lite0; the head and the last TRAIN_STAGES stages train,
  the earlier stages are frozen. The frozen prefix has no augmentation and its BatchNorms are in
  eval mode, so its output is a fixed function of the image: it is computed once per image
  (states entering the first trainable stage) and every run trains the suffix on those states.
  This is the same computation as `rehead fit --strategy finetune --unfreeze 2 --lr 1e-2` without
  augmentation, minus re-running the frozen prefix each epoch (the CPU cost).
- recipe: rehead's `finetune` (head phase at lr 1e-2, then the last 2 stages at 1e-3 with lr_decay 3),
  batch 8, 8 epochs (default 1e-3 barely moves the weights in so few steps); the figure is val accuracy at the LAST epoch (val = the 153 val
  images; no best-epoch selection on them).
- methods: plain; l2sp (alpha 0.1 and 1.0, beta 0.01, weight decay off); guided (5 scouts,
  each on half the training images, 5 epochs at the head LR; `guided` = the paper's rule,
  gradients x guide; `guided_update` = each AdamW step x guide, rehead's default).
- forgetting (last-epoch weights): ImageNet argmax of the original classifier (backbone.source_head) on the 153 val
  images, after fine-tuning vs before; agreement = fraction unchanged.

    PYTHONPATH=. python bench/methods_hymenoptera.py [--seeds 2] [--epochs 8] [--states-cache /tmp/states.pt]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rehead import zoo  # noqa: E402
from rehead.data import load_dataset  # noqa: E402
from rehead.data.images import ImageDataset  # noqa: E402
from rehead.heads import make_head  # noqa: E402
from rehead.methods import GuidedTransfer, L2SP, compute_guide, source_agreement, source_predictions  # noqa: E402
from rehead.model import TransferModel  # noqa: E402
from rehead.recipes import build_recipe  # noqa: E402
from rehead.train.loop import IndexedTensors, TrainConfig, Trainer, seed_everything  # noqa: E402
from rehead.zoo.backbone import Backbone  # noqa: E402

# ../shared next to the checkout (or next to the folder of git worktrees)
DATA = next((d / "shared" / "datasets" / "hymenoptera_data" for d in (ROOT.parent, ROOT.parent.parent)
             if (d / "shared" / "datasets" / "hymenoptera_data").exists()), ROOT.parent / "shared")
TRAIN_STAGES = 2
LR = 1e-2  # head phase; the stages then train at LR/10 (rehead's finetune recipe)


@torch.no_grad()
def prefix_states(bb, paths, k):
    """States entering stage k (0-based) for each image, eval transform, frozen prefix in eval mode."""
    ds = ImageDataset(paths, None, bb.data_config)
    out = []
    for i in range(0, len(ds), 32):
        x = torch.stack([ds[j][1] for j in range(i, min(i + 32, len(ds)))])
        state = bb.begin(x)
        for s in range(k):
            state = bb.run_stage(s, state)
        out.append(state)
    return torch.cat(out)


def plain_backbone(bb):
    """The packaged EfficientNet as a Backbone of plain modules run in turn (rehead's timm stages
    run lazily, as one call into timm, so they have no per-stage state to cache): the same
    weights (shared), the same stages, the same function (checked in main)."""
    m = bb.model
    stages = {"stem": torch.nn.Sequential(m.conv_stem, m.bn1),
              **{f"block{i}": blk for i, blk in enumerate(m.blocks)},
              "head_conv": torch.nn.Sequential(m.conv_head, m.bn2)}
    assert list(stages) == bb.stage_names, (list(stages), bb.stage_names)
    return Backbone(stages, bb.data_config, bb.spec, source_head=bb.source_head[0]).eval()


def suffix_backbone(bb, k):
    """A fresh copy of stages k.. as a Backbone (input: prefix states), with the ImageNet head."""
    names = bb.stage_names[k:]
    stages = copy.deepcopy({n: bb.stages[n] for n in names})
    return Backbone(stages, bb.data_config, f"{bb.spec}[{k}:]", source_head=bb.source_head[0])


def pick(labels, n_per_class, seed):
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in sorted(set(labels)):
        cls = [i for i, y in enumerate(labels) if y == c]
        idx += [cls[j] for j in torch.randperm(len(cls), generator=g)[:n_per_class].tolist()]
    return sorted(idx)


class LastStateTrainer(Trainer):
    """Remembers the model state at the last evaluation (= the last epoch): the loop itself
    restores the best-val state, and choosing by val accuracy would flatter every method."""

    def evaluate(self, model, loader):
        r = super().evaluate(model, loader)
        self.last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return r


def run_one(bb, k, xs_tr, ys_tr, xs_va, ys_va, method, seed, epochs, before):
    seed_everything(seed)
    suffix = suffix_backbone(bb, k)
    with torch.no_grad():
        dim = suffix(xs_tr[:1]).shape[1]
    model = TransferModel(suffix, make_head(dim, 2))
    recipe = build_recipe("finetune", len(ys_tr), len(suffix), epochs=epochs, unfreeze=len(suffix), lr=LR)
    hooks, extra = [], {}
    if method.startswith("l2sp"):
        alpha = float(method.split("a")[-1])
        hooks = [L2SP(alpha=alpha, beta=0.01)]
        for p in recipe.phases:
            p.weight_decay = 0.0
    elif method.startswith("guided"):
        t0 = time.perf_counter()
        data = IndexedTensors(xs_tr, ys_tr)

        def make_loader(idx, generator):
            return torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=8, shuffle=True,
                                               generator=generator)
        guide = compute_guide(model, make_loader, ys_tr.tolist(), n_scouts=5, scout_size=max(4, len(ys_tr) // 2),
                              epochs=5, lr=recipe.phases[0].lr, trainable=len(suffix), seed=seed)
        # guided: the paper's rule (gradients x guide); guided_update: steps x guide (see GuidedTransfer)
        hooks = [GuidedTransfer(guide=guide, guide_on="update" if method == "guided_update" else "gradient")]
        vals = torch.cat([g.flatten() for g in guide.values()])
        extra = {"scout_seconds": time.perf_counter() - t0, "guide_mean": float(vals.mean()),
                 "guide_frac_below_0.1": float((vals < 0.1).float().mean())}
    for h in hooks:
        if hasattr(h, "bind"):
            h.bind(model)
    trainer = LastStateTrainer(TrainConfig(seed=seed, progress=False, hooks=hooks))
    t0 = time.perf_counter()
    # The loop's per-epoch val pass only feeds its best-epoch choice, which is not used here (it would
    # peek at the val images): give it 2 val samples and evaluate the last epoch on all 153 below.
    trainer.fit(model, IndexedTensors(xs_tr, ys_tr), IndexedTensors(xs_va[:2], ys_va[:2]), recipe.phases, batch_size=8)
    secs = time.perf_counter() - t0
    model.load_state_dict(trainer.last_state)
    model.eval()
    with torch.no_grad():
        last_acc = float(torch.cat([model(xs_va[i:i + 64]).argmax(1) for i in range(0, len(xs_va), 64)]).eq(ys_va).float().mean())
    after = source_predictions(suffix, xs_va)
    w0 = suffix_backbone(bb, k)
    with torch.no_grad():
        drift = float(sum(((p - q) ** 2).sum() for p, q in zip(suffix.parameters(), w0.parameters())) ** 0.5)
        # Fine-tuning also re-estimates BatchNorm running statistics on the target images, which no
        # weight penalty touches: measure forgetting again with the pretrained BN statistics put back.
        bn = {n: b for n, b in w0.named_buffers() if "running" in n}
        tuned = dict(suffix.named_buffers())
        saved = {n: tuned[n].clone() for n in bn}
        for n, b in bn.items():
            tuned[n].copy_(b)
        after_bn = source_predictions(suffix, xs_va)
        for n, b in saved.items():
            tuned[n].copy_(b)
    return {"val_acc_last": last_acc, "imagenet_agreement": source_agreement(before, after),
            "imagenet_agreement_pretrained_bn_stats": source_agreement(before, after_bn),
            "train_seconds": secs, "weight_drift": drift, **extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--fractions", default="5,10,20")
    ap.add_argument("--methods", default="plain,l2sp_a0.1,l2sp_a1,guided,guided_update")
    ap.add_argument("--out-name", default="methods_hymenoptera")
    ap.add_argument("--states-cache", default=None, help="file to keep the frozen-prefix states in between runs")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is absent")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    timm_bb = zoo.load("packaged:efficientnet_lite0").eval()
    bb = plain_backbone(timm_bb)
    k = len(bb) - TRAIN_STAGES
    tr = load_dataset(DATA)
    t0 = time.perf_counter()
    cache = Path(args.states_cache) if args.states_cache else None
    if cache and cache.exists():
        c = torch.load(cache, weights_only=True)
        x_tr_all, x_va = c["train"], c["val"]
        with torch.no_grad():  # states cached at an earlier cut: run the frozen stages in between
            for s in range(int(c["k"]), k):
                x_tr_all, x_va = bb.run_stage(s, x_tr_all), bb.run_stage(s, x_va)
    else:
        x_tr_all = prefix_states(bb, tr.train.items, k)
        x_va = prefix_states(bb, tr.val.items, k)
        if cache:
            torch.save({"k": k, "train": x_tr_all, "val": x_va}, cache)
    y_tr_all, y_va = torch.tensor(tr.train.labels), torch.tensor(tr.val.labels)
    prefix_s = time.perf_counter() - t0
    before = source_predictions(suffix_backbone(bb, k), x_va)
    # Sanity: the suffix path gives the same ImageNet argmax as the whole network.
    full = source_predictions(timm_bb, torch.stack([ImageDataset(tr.val.items[:8], None, bb.data_config)[j][1] for j in range(8)]))
    assert torch.equal(full, before[:8]), "suffix path differs from the full network"
    rows = []
    for n in [int(v) for v in args.fractions.split(",")]:
        for seed in range(args.seeds):
            idx = pick(tr.train.labels, n, seed)
            for method in args.methods.split(","):
                r = run_one(bb, k, x_tr_all[idx], y_tr_all[idx], x_va, y_va, method, seed, args.epochs, before)
                rows.append({"per_class": n, "seed": seed, "method": method, **r})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for n in sorted({r["per_class"] for r in rows}):
        for method in args.methods.split(","):
            rs = [r for r in rows if r["per_class"] == n and r["method"] == method]
            acc = [r["val_acc_last"] for r in rs]
            agr = [r["imagenet_agreement"] for r in rs]
            agr_bn = [r["imagenet_agreement_pretrained_bn_stats"] for r in rs]
            summary[f"{n}/class {method}"] = {
                "val_acc_mean": statistics.mean(acc), "val_acc_std": statistics.pstdev(acc),
                "imagenet_agreement_mean": statistics.mean(agr), "imagenet_agreement_std": statistics.pstdev(agr),
                "imagenet_agreement_pretrained_bn_stats_mean": statistics.mean(agr_bn),
                "seeds": len(rs)}
    meta = {"command": "PYTHONPATH=. python bench/methods_hymenoptera.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads (shared), torch {torch.__version__}",
            "setup": {"backbone": "packaged:efficientnet_lite0", "trainable_stages": bb.stage_names[k:],
                      "recipe": f"finetune (head phase at lr {LR}, then the last {TRAIN_STAGES} stages at lr/10, lr_decay 3)",
                      "epochs": args.epochs, "batch_size": 8, "val_images": len(y_va),
                      "figure": "val accuracy at the last epoch", "prefix_seconds": prefix_s},
            "total_seconds": time.perf_counter() - t_all}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.out_name}.json").write_text(json.dumps({**meta, "summary": summary, "runs": rows}, indent=1))
    forgetting = {**meta, "what": "agreement of the original ImageNet head's argmax on the 153 val images, "
                                  "after fine-tuning vs before (1.0 = nothing forgotten)",
                  "summary": {key: {m: v[m] for m in ("imagenet_agreement_mean", "imagenet_agreement_std",
                                                  "imagenet_agreement_pretrained_bn_stats_mean", "seeds")}
                              for key, v in summary.items()}}
    (out / ("forgetting.json" if args.out_name == "methods_hymenoptera" else f"{args.out_name}_forgetting.json")).write_text(json.dumps(forgetting, indent=1))
    for key, v in summary.items():
        print(f"{key:22} acc {v['val_acc_mean']:.3f} ± {v['val_acc_std']:.3f}   "
              f"ImageNet agreement {v['imagenet_agreement_mean']:.3f} ± {v['imagenet_agreement_std']:.3f} "
              f"(pretrained BN stats: {v['imagenet_agreement_pretrained_bn_stats_mean']:.3f})")


if __name__ == "__main__":
    main()
