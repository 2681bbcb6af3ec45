"""``--strategy auto``: how much of the backbone to reuse and how much to train, from the two
axes of the decks' rule, measured on the data before anything is written::

                    similar to the source              different from it
    small data      features from the top (extract)    features from an earlier cut (extract)
    large data      fine-tune the top stages           fine-tune more stages

**Size** is the number of training samples (small: < ``SMALL``). **Similarity** is measured
from one cached pass: the features at ``N_CUTS`` cuts spread over the depth come out of ONE
``extract`` call over train + val (the head's own features are among them, so the head phase
reads them back from the cache), and at each cut

- a linear probe (``train.linear_head``: softmax + L2 to its optimum, C by 5-fold CV on the
  training split only) gives the CV accuracy on train and the accuracy on val (val is carved
  from train; the test split is never read). ``acc`` pools the two (weighted by their sizes);
  ``skill`` = (acc - chance) / (1 - chance), chance = the majority class's share of train:
  0 is a guess, 1 is perfect;
- LogME (``experiments.logme``) is recorded beside it (not used by the rule).

The rule (thresholds are module constants; the test of the rule is ``tests/test_auto.py``):

- ``poor``      the best cut's skill < ``POOR`` (0.5): the source transfers poorly (a
                random-weights backbone lands here): the head first, then unfreeze half, then
                every stage.
- ``different`` an earlier cut beats the top by ``margin`` accuracy, or the input itself
                (``reference``: the same probe on 16x16 pixels, TF-IDF or the raw columns)
                beats the best cut by ``margin``, or the top's skill < ``WEAK_TOP`` (0.7). ``margin``
                is ``MARGIN`` (0.02), or two binomial standard errors of the two accuracies (the
                larger) on the samples the probe pools, when that is larger: on golub's few rows a
                0.05 lead is one or two rows, not a finding, and the plan says so.
- ``similar``   otherwise.

    small + similar    extract at the top
    small + different  extract at the best earlier cut; the input reads better and no earlier cut
                       does: extract at the top; the top is only weak: the head then the top 1, 2
                       stages (kept only if val improves)
    large + similar    the head, then the top 1, 2 stages (>= ``HUGE`` samples: 2, then all)
    large + different  an earlier cut beats the top: cut there, the head, then its last 2, 4
                       stages; otherwise: the head, then 2, 4, ... stages up to
                       max(4, depth - best cut + 2)
    poor (any size)    the head, then half the stages, then all; cut first at an earlier cut that
                       beats the top by ``margin``

**Budget** (``--budget`` minutes, default ``DEFAULT_BUDGET`` = 5, the live phases only): a few
training steps of the most-unfrozen model are timed on real training batches (a copy of the
model: the real one is untouched) and the epochs per unfreezing phase are chosen to fit
(at most ``MAX_EPOCHS`` each; phases dropped from the deepest end when even one epoch each
does not fit; when the most-unfrozen model does not fit one epoch, the first step is timed
alone and kept if it fits; none fits: extract only, said so). While training, ``AutoGuard`` (a loop callback)
ends the fit when the next epoch would overrun the budget (the measured epoch time, then the
last epoch's own), and starts a further unfreezing phase only when the previous one improved
the best val score so far. The loop keeps the best val epoch over every phase (the head phase
included), so auto never ends below its own head phase; the summary names the kept phase.

The plan (table, decision, reason, epochs, measured times) is recorded in ``config.yaml`` as
``fit.auto_plan``; ``--resume`` reads it back instead of measuring again.

Where the thresholds come from (packaged EfficientNet-Lite0, pooled probe accuracy / skill;
``bench/auto.py``, ``bench/results/auto.json``): hymenoptera (ImageNet photos) rises to the top,
0.738 / 0.867 / 0.952 / 0.957 at block2 / block4 / block6 / head_conv (top skill 0.91); the
same network with random weights stays near chance at every cut (best skill 0.24 on 244
photos); scikit-learn's digits peak before the top (block6 0.830 vs head_conv 0.800 on 500
images; +0.04 to +0.09 on 200 images over three val seeds).

On the default since the eighth session, EfficientNet-Lite2, the same sets read 0.793 / 0.887 /
0.972 / 0.970 (hymenoptera, skill 0.94: similar), best skill 0.34 (random weights: poor), and
digits 0.722 / 0.846 / 0.842 / 0.880 (top skill 0.87): the stronger top fits digits best, and by
skill alone they counted as *similar*. Their 16x16 pixels probe 0.942 (hymenoptera's 0.620): the
input reference makes them *different* (``bench/results/auto.json``). What that changes, measured
(``bench/auto_digits.py``, ``bench/digits_large.py``, one seed): on 400 digits, fine-tuning the
top's last 1-2 stages for 5 epochs ended at the head's val (0.88) in 163 s against extraction's
40 s, so small data whose input reads better is extracted (and told so); on 1,040 digits the head
then the last 2, 4 stages (5 minutes) reached test 0.940, against 0.9275 extracted and 0.930 for
the plan it had as *similar* (the last 1, 2 stages). On golub's 38 rows (an encoder pretrained on its
30 training rows) an earlier cut's 0.947 against the top's 0.895, and the raw columns' 0.974, are
within two standard errors (0.100, 0.072): said as not told apart; the top's weak skill (0.65) makes
it *different* (before the noise rule: extract at the earlier cut, on a lead of two rows).

Not covered: ``--keep-last`` keeps the last epoch, so the never-below-the-head guarantee is
the default's (best val epoch); under several processes each one times its own steps (the
measured epoch time is not broadcast), so give ``--epochs`` there.
"""
from __future__ import annotations

import copy
import time

import numpy as np

SMALL = 1000          # training samples below which the backbone stays frozen when the source fits
HUGE = 50000          # and from which every stage may train
MIN_PROBE = 12        # fewer training samples: similarity is not measured (the probe would be noise)
POOR = 0.5            # best cut's probe skill below this: the source transfers poorly
WEAK_TOP = 0.7        # top cut's probe skill below this: the data is different from the source
MARGIN = 0.02         # an earlier cut beats the top when its pooled probe accuracy is this much higher (at
                      # least; on few samples two standard errors, ``margin``)
N_CUTS = 4            # cuts probed, spread over the depth (one forward pass)
CUT_FRACTIONS = (0.45, 0.65, 0.85, 1.0)
PROBE_MAX = 4000      # the probe fits on at most this many training samples (a seeded stratified subset)
DEFAULT_BUDGET = 5.0  # minutes for the live (unfrozen) phases
MAX_EPOCHS = 5        # epochs per unfreezing phase at most
TIMED_STEPS = 3       # training steps timed (the first is a warm-up when there are more)
MIRROR_MAX = 128      # val images the mirror check reads at most (two forward passes each)
MIRROR_DROP = 0.05    # val accuracy lost on mirrored images from which flips count as changing labels


# -- what is measured ------------------------------------------------------------------------------
def probe_cuts(depth: int, top: int | None = None) -> list[int]:
    """``N_CUTS`` cuts spread over ``1..top`` (default the full depth), the top always among them."""
    top = depth if top is None else top
    ks = {max(1, min(top, round(top * f))) for f in CUT_FRACTIONS} | {top}
    return sorted(ks)


def chance_level(y) -> float:
    """The accuracy of always answering the most common training class."""
    y = np.asarray(y)
    return float(np.bincount(y).max() / len(y)) if len(y) else 0.0


def skill(acc: float, chance: float) -> float:
    return float((acc - chance) / (1 - chance)) if chance < 1 else 0.0


def probe_table(feats: dict, ys: dict, cuts: list[int], stage_names: list[str], n_classes: int,
                seed: int = 0) -> tuple[list[dict], float]:
    """One row per cut: linear probe (CV on train, then val) and LogME. Returns (rows, chance)."""
    ytr, yva = np.asarray(ys["train"]), np.asarray(ys["val"])
    sub = _stratified_subset(ytr, PROBE_MAX, seed)
    chance = chance_level(ytr)
    rows = [{"cut": int(k), "stage": stage_names[k - 1],
             **_probe_row(feats["train"][k][sub], ytr[sub], feats["val"][k], yva, n_classes, chance, seed)}
            for k in cuts]
    return rows, chance


def input_row(modality: str, backbone, items: dict, ys: dict, n_classes: int, seed: int = 0, cache=None) -> dict:
    """The same probe on the input itself (``reference``): at most ``PROBE_MAX`` samples of each
    split (a seeded stratified subset), the train subset the cuts' probe uses."""
    from .reference import describe, sampled, scaling
    t0 = time.perf_counter()
    xtr, ytr, xva, yva = sampled(modality, backbone, items, ys, PROBE_MAX, seed, cache)
    row = _probe_row(xtr, ytr, xva, yva, n_classes, chance_level(ys["train"]), seed, scaling=scaling(modality))
    row.update(cut=0, stage="input", what=describe(modality), seconds=_r(time.perf_counter() - t0, 2))
    return row


def _probe_row(xtr, ytr, xva, yva, n_classes: int, chance: float, seed: int, scaling: str = "column") -> dict:
    """A linear probe's figures: CV accuracy on train (its chosen C), accuracy on val, the two
    pooled by size, skill, LogME."""
    from .experiments.logme import logme
    from .train.linear_head import fit_linear_head
    import torch
    t0 = time.perf_counter()
    linear, info = fit_linear_head(xtr, ytr, n_classes, seed=seed, scaling=scaling)
    cv = [r for r in info.get("cv", []) if r["C"] == info["C"]]
    cv_acc = float(cv[0]["accuracy"]) if cv else float("nan")
    with torch.no_grad():
        val_acc = float((linear(torch.as_tensor(xva, dtype=torch.float32)).argmax(1).numpy() == yva).mean()) \
            if len(yva) else float("nan")
    parts = [(a, n) for a, n in [(cv_acc, len(ytr)), (val_acc, len(yva))] if n and a == a]
    acc = sum(a * n for a, n in parts) / sum(n for _, n in parts)
    both = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    try:
        lm = logme(*both) if len(np.unique(both[1])) > 1 else float("nan")
    except (ValueError, np.linalg.LinAlgError):
        lm = float("nan")
    return {"dim": int(xtr.shape[1]), "n": int(sum(n for _, n in parts)), "cv_acc": _r(cv_acc),
            "val_acc": _r(val_acc), "acc": _r(acc),
            "skill": _r(skill(acc, chance)), "logme": _r(lm), "C": float(info["C"]),
            "seconds": _r(time.perf_counter() - t0, 2)}


def _r(v: float, nd: int = 4) -> float:
    return round(float(v), nd) if v == v else float("nan")


def _stratified_subset(y: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if len(y) <= cap:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, max(1, round(cap * len(idx) / len(y))), replace=False))
    return np.sort(np.concatenate(keep))


# -- the rule ----------------------------------------------------------------------------------------
def _steps(lo: int, hi: int) -> list[int]:
    """Unfreezing steps lo, 2 lo, 4 lo, ... then hi (hi = -1: every stage)."""
    if hi == -1:
        return [lo, -1]
    out, s = [], lo
    while s < hi:
        out.append(s)
        s *= 2
    return out + [hi]


def decide(table: list[dict] | None, n_train: int, depth: int, chance: float | None = None,
           user_cut: bool = False, reference: dict | None = None, needs_training: str | None = None) -> dict:
    """The decks' rule on a probe table (rows as ``probe_table`` makes them, shallow to deep; the
    last row is the top: the full depth, or the cut the user fixed). ``reference``: the same probe on
    the input itself (``input_row``), or None. ``needs_training``: a ``--method`` that acts on backbone
    training (l2sp, guided, lora): the plan then always trains stages. Pure: no model, no data.

    Returns ``size``, ``similarity``, ``cut``, ``unfreeze`` (the unfreezing steps, [] = the head
    only), ``strategy`` and ``reason`` (in the decks' terms, with the figures behind it)."""
    size = "small" if n_train < SMALL else "large"
    size_why = (f"small data ({n_train} training samples < {SMALL})" if size == "small" else
                f"large data ({n_train} training samples >= {SMALL})")
    if not table:
        sim, sim_why, best, top = "unmeasured", (f"similarity not measured (fewer than {MIN_PROBE} training "
                                                 "samples)"), None, None
        earlier_better = input_better = False
    else:
        top = table[-1]
        best = max(table, key=lambda r: (r["acc"], r["cut"]))  # ties go to the deeper cut
        m_cut = margin(best, top)
        earlier_better = best["cut"] < top["cut"] and best["acc"] >= top["acc"] + m_cut
        m_in = margin(reference, best) if reference is not None else MARGIN
        input_better = reference is not None and reference["acc"] >= best["acc"] + m_in
        noise = []  # leads over MARGIN that the samples cannot tell from noise: said, not acted on
        if best["cut"] < top["cut"] and top["acc"] + MARGIN <= best["acc"] < top["acc"] + m_cut:
            noise.append(f"cut {best['cut']} {best['stage']} probes {best['acc']:.3f} vs the top's {top['acc']:.3f}, "
                         f"within two standard errors ({m_cut:.3f}) on {_n(best, top)} pooled samples")
        if reference is not None and best["acc"] + MARGIN <= reference["acc"] < best["acc"] + m_in:
            noise.append(f"the input itself ({reference['what']}) probes {reference['acc']:.3f} vs the best cut's "
                         f"{best['acc']:.3f}, within two standard errors ({m_in:.3f}) on {_n(reference, best)} "
                         "pooled samples")
        if best["skill"] < POOR:
            sim = "poor"
            sim_why = (f"the source transfers poorly: the best probe (cut {best['cut']} {best['stage']}) reaches "
                       f"{best['acc']:.3f} against chance {chance if chance is not None else float('nan'):.3f} "
                       f"(skill {best['skill']:.3f} < {POOR})")
        elif earlier_better:
            sim = "different"
            sim_why = (f"different from the source: an earlier cut beats the top (cut {best['cut']} {best['stage']} "
                       f"probes {best['acc']:.3f} vs the top's {top['acc']:.3f}, margin >= {m_cut:.3f})")
        elif input_better:
            sim = "different"
            sim_why = (f"different from the source: its best features (cut {best['cut']} {best['stage']}, probe "
                       f"{best['acc']:.3f}) read this data worse than the input itself ({reference['what']}, "
                       f"probe {reference['acc']:.3f}, margin >= {m_in:.3f}; a model of the input alone may serve it "
                       "as well)")
        elif top["skill"] < WEAK_TOP:
            sim = "different"
            sim_why = (f"different from the source: the top's probe is weak ({top['acc']:.3f}, skill "
                       f"{top['skill']:.3f} < {WEAK_TOP}) and no earlier cut beats it by {m_cut:.3f}")
        else:
            sim = "similar"
            sim_why = (f"similar to the source: the top's probe is strong ({top['acc']:.3f}, skill "
                       f"{top['skill']:.3f} >= {WEAK_TOP}) and no earlier cut beats it by {m_cut:.3f}")
        if input_better and "the input itself" not in sim_why:  # still worth knowing: say it too
            sim_why += (f"; the input itself ({reference['what']}) probes {reference['acc']:.3f}, better than any "
                        "cut: a model of the input alone may serve it as well")
        if noise:
            sim_why += "; not told apart: " + "; ".join(noise)
    top_cut = top["cut"] if top else depth
    cut, unfreeze = top_cut, []
    if sim == "poor":
        # Start from the best features measured: an earlier cut that beats the top is taken first
        # (bench/orientation.py: test 0.680 -> 0.732), then half of what is left trains, then all of it.
        where = ""
        if earlier_better and not user_cut:
            cut = best["cut"]
            where = f"features from an earlier cut, cut {cut} ({best['stage']}), "
        unfreeze = _steps(max(1, cut // 2), -1) if cut > 1 else [-1]
        action = where + f"the head, then unfreeze {_say(unfreeze)} (each kept only if val improves)"
    elif sim == "unmeasured" or (size == "small" and sim == "similar"):
        action = "features from the top: extract (a new head on frozen features)"
    elif size == "small" and earlier_better:
        cut = best["cut"]
        action = f"features from an earlier cut: extract at cut {cut} ({best['stage']})"
    elif size == "small" and input_better:
        # Fine-tuning the top on a few hundred samples does not close that gap: on 400 digits, the last
        # 1-2 stages for 5 epochs ended at the head's val (0.88) in 163 s against 40 s (bench/auto_digits.py).
        action = "features from the top: extract (too few samples for fine-tuning to close the gap to the input)"
    elif size == "small":  # different only because the top is weak
        unfreeze = _steps(1, min(2, top_cut))
        action = ("features from the top, then fine-tune its last stages "
                  f"({', '.join(map(str, unfreeze))}; kept only if val improves)")
    elif sim == "similar":
        unfreeze = _steps(2, -1) if n_train >= HUGE else _steps(1, min(2, top_cut))
        action = ("fine-tune the top stages" + (" then every stage" if n_train >= HUGE else "")
                  + f": the head, then unfreeze {_say(unfreeze)} (each kept only if val improves)")
    elif earlier_better:  # large + different, an earlier cut better
        # The stages after the best cut fit the source, not this data: the head starts from the better
        # features, and training goes on below the cut (retraining the top from the worse features
        # would first have to recover what the cut gives at once; measured: bench/auto_far.py).
        cut = best["cut"]
        hi = min(cut, 4)
        unfreeze = _steps(min(2, hi), hi) if n_train < HUGE else _steps(min(2, hi), -1)
        action = (f"features from an earlier cut, then fine-tune more stages below it: cut {cut} ({best['stage']}), "
                  f"the head, then unfreeze {_say(unfreeze)} (each kept only if val improves)")
    else:  # large + different: the top is weak (or the input reads better) and nothing earlier is better
        hi = min(top_cut, max(4, top_cut - best["cut"] + 2))
        unfreeze = _steps(min(2, hi), hi) if n_train < HUGE else _steps(min(2, hi), -1)
        action = (f"fine-tune more stages: the head, then unfreeze {_say(unfreeze)} "
                  "(each kept only if val improves)")
    if user_cut and cut != top_cut:
        cut = top_cut  # a cut the user fixed is kept
        action += f"; but --cut fixes cut {top_cut}"
    if needs_training and not unfreeze:  # extract would leave the method nothing to act on: the smallest live plan
        unfreeze = _steps(1, min(2, cut))
        action += (f"; but --method {needs_training} needs backbone training: the head, then unfreeze "
                   f"{_say(unfreeze)} (each kept only if val improves)")
    strategy = "extract" if not unfreeze else ("finetune" if len(unfreeze) == 1 else "gradual")
    return {"size": size, "similarity": sim, "cut": int(cut), "unfreeze": unfreeze, "strategy": strategy,
            "reason": f"{size_why} + {sim_why} -> {action}"}


def margin(better: dict, other: dict | None = None) -> float:
    """How much higher ``better``'s pooled probe accuracy must be than ``other``'s to count: ``MARGIN``, or
    two binomial standard errors of either accuracy (the larger) on the fewer samples either row pools,
    when that is larger. A row without ``n`` (a plan from before rows counted them) gets ``MARGIN``."""
    from .experiments import noise_margin
    n = _n(better, other)
    if not n:
        return MARGIN
    return max(MARGIN, *(noise_margin(r["acc"], n) for r in (better, other) if r))


def _n(*rows) -> int:
    ns = [r["n"] for r in rows if r and r.get("n")]
    return min(ns) if ns else 0


def _say(steps: list[int]) -> str:
    return ", then ".join("every stage" if s == -1 else f"the last {s}" for s in steps)


def fit_budget(plan: dict, epoch_seconds: float, budget_minutes: float, epochs: int | None = None) -> dict:
    """Epochs per unfreezing phase within the budget, from the measured seconds per epoch (of the
    most-unfrozen model: an upper bound for the others). Pure. Updates and returns ``plan``."""
    budget_s = budget_minutes * 60
    steps = list(plan["unfreeze"])
    affordable = int(budget_s // epoch_seconds) if epoch_seconds > 0 else len(steps) * MAX_EPOCHS
    plan.update(epoch_seconds=_r(epoch_seconds, 2), budget_minutes=budget_minutes)
    if affordable < 1:
        plan.update(unfreeze=[], strategy="extract", epochs=0,
                    reason=plan["reason"] + f"; but one unfrozen epoch takes ~{epoch_seconds / 60:.1f} min (measured) "
                    f"and the budget is {budget_minutes:g} min: extract only (raise --budget to fine-tune)")
        return plan
    if affordable < len(steps):
        dropped = steps[affordable:]
        steps = steps[:affordable]
        plan["reason"] += (f"; the budget ({budget_minutes:g} min, ~{epoch_seconds:.0f} s an epoch) fits "
                           f"{affordable} epoch(s): not unfreezing {_say(dropped)}")
    e = epochs or max(1, min(MAX_EPOCHS, affordable // len(steps)))
    plan.update(unfreeze=steps, epochs=int(e),
                strategy="finetune" if len(steps) == 1 else "gradual")
    need_s = len(steps) * e * epoch_seconds
    if epochs and need_s > budget_s:  # not capped: the user's --epochs is kept, and AutoGuard keeps to the budget
        plan["reason"] += (f"; --epochs {e} asked: ~{need_s / 60:.1f} min (measured ~{epoch_seconds:.0f} s an epoch), "
                           f"over the {budget_minutes:g} min budget: the budget stops the phases early (raise "
                           "--budget for every epoch)")
    else:
        plan["reason"] += (f"; {e} epoch(s) per unfreezing phase: ~{need_s / 60:.1f} of {budget_minutes:g} min "
                           f"(measured ~{epoch_seconds:.0f} s an epoch)")
    return plan


def budget_plan(plan: dict, epoch_seconds_for, budget_minutes: float, epochs: int | None = None) -> dict:
    """Time an epoch of the most-unfrozen step (``epoch_seconds_for(unfreeze)``: measured), then
    ``fit_budget``. When that model does not fit one epoch in the budget, the first step is timed
    alone (a shorter backward) and kept alone if it fits. Updates and returns ``plan``."""
    steps = plan["unfreeze"]
    most = -1 if -1 in steps else max(steps)
    epoch_s = epoch_seconds_for(most)
    if epoch_s > budget_minutes * 60 and len(steps) > 1:
        first_s = epoch_seconds_for(steps[0])
        if first_s <= budget_minutes * 60:
            plan["reason"] += (f"; one epoch with {_say([most])} unfrozen takes ~{epoch_s / 60:.1f} min (measured), "
                               f"over the {budget_minutes:g} min budget: only {_say([steps[0]])}")
            plan["unfreeze"], epoch_s = [steps[0]], first_s
    return fit_budget(plan, epoch_s, budget_minutes, epochs)


# -- measuring a step --------------------------------------------------------------------------------
def time_epoch(backbone, cut: int, unfreeze: int, ds, cfg, in_dim: int, steps: int = TIMED_STEPS) -> float:
    """Seconds an epoch (train + val) of the model cut at ``cut`` with its last ``unfreeze`` stages
    training, from ``steps`` timed training steps (loading, forward, backward, AdamW) on real
    training batches. Runs on a copy: the backbone's weights and statistics are untouched."""
    import torch
    from .data import pipeline
    from .heads import loss_for, make_head
    from .model import TransferModel
    from .precision import extraction_device, to_device_of
    pipe = pipeline(backbone.modality)
    prefix = copy.deepcopy(backbone.cut(cut))
    state = torch.random.get_rng_state()
    model = TransferModel(prefix, make_head(in_dim, len(ds.classes), cfg.head, cfg.hidden, cfg.dropout),
                          train_frozen_bn=cfg.train_frozen_bn, freeze_bn=cfg.freeze_bn, layer_decay=cfg.layer_decay)
    torch.random.set_rng_state(state)
    model.set_trainable_last(unfreeze)
    device = extraction_device()  # where the fit will train (a GPU's steps are not the CPU's)
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-8)
    loss_fn = loss_for("multiclass")
    bs = cfg.batch_size
    n = min(len(ds.train), bs * steps)
    augment = cfg.augment_for(backbone.modality, unfreeze != 0)
    transform = pipe.train_transform(prefix, augment) if augment else None
    loader = pipe.make_loader(prefix, ds.train.items[:n], ds.train.labels[:n], batch_size=bs, workers=0,
                              shuffle=False, generator=None, transform=transform, strict=False)
    text = backbone.modality == "text"
    times, units = [], []  # per step: seconds, and samples (text: padded tokens, what a step costs)
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            _, x, y = next(it)
        except StopIteration:
            break
        if len(y) == 0:
            continue
        x, y = to_device_of(model, (x, y))
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels, not only their launch
        times.append(time.perf_counter() - t0)
        units.append(x["input_ids"].numel() if text else len(y))
    if not times:
        return 0.0
    if len(times) > 1:  # the first step pays for allocations and lazy imports
        times, units = times[1:], units[1:]
    per_unit = sum(times) / sum(units)
    if text:  # training batches are grouped by length (text.make_loader); val batches are in order
        from .data.text import token_lengths
        train = padded_tokens(token_lengths(backbone, ds.train.items), bs, grouped=True)
        val = padded_tokens(token_lengths(backbone, ds.val.items), bs, grouped=False)
    else:
        train, val = len(ds.train), len(ds.val)
    # val: a forward pass without autograd, about a third of a training step
    return per_unit * (train + val / 3)


def padded_tokens(lengths: list[int], batch_size: int, grouped: bool) -> int:
    """Tokens an epoch of text computes on, each batch padded to its longest text; ``grouped``:
    batches of similar lengths (about what the training sampler's length groups give). Timing the
    first batches as they come and scaling by samples overestimated a grouped epoch 1.6-3x."""
    ls = sorted(lengths) if grouped else list(lengths)
    return sum(max(ls[i:i + batch_size]) * len(ls[i:i + batch_size]) for i in range(0, len(ls), batch_size))


# -- the whole of it: what fit._prepare calls ---------------------------------------------------------
def plan_auto(cfg, backbone, ds, cache, hooks: list, echo=print):
    """Measure (once) and decide. Returns ``(cfg, hooks)``: ``cfg`` with ``cut`` and ``auto_plan``
    set (so the recipe, config.yaml and --resume follow the plan), ``hooks`` with ``AutoGuard``
    added when the plan has live phases."""
    from .methods import backbone_method
    plan = cfg.auto_plan
    if plan is None:
        plan = measure_and_decide(cfg, backbone, ds, cache, echo, needs_training=backbone_method(hooks))
        cfg = cfg.replace(cut=plan["cut"], auto_plan=plan, augment=plan.get("augment", cfg.augment))
    if plan.get("unfreeze"):
        hooks = list(hooks) + [AutoGuard(plan.get("budget_minutes") or DEFAULT_BUDGET,
                                         plan.get("epoch_seconds"), echo)]
    return cfg, hooks


def measure_and_decide(cfg, backbone, ds, cache, echo=print, needs_training: str | None = None) -> dict:
    """Probe, decide (``decide``), then time the live phases against the budget. ``needs_training``: a
    ``--method`` acting on backbone training; when not even one unfrozen epoch fits the budget, refused."""
    from .experiments import split_features
    depth = len(backbone)
    user_cut = cfg.cut is not None
    top = backbone.stage_index(cfg.cut)
    n_train = len(ds.train)
    budget = cfg.budget if cfg.budget is not None else DEFAULT_BUDGET
    table, chance, reference, extract_s, probe_s = None, None, None, 0.0, 0.0
    if n_train >= MIN_PROBE and len(ds.classes) > 1:
        cuts = probe_cuts(depth, top)
        echo(f"auto: measuring similarity to the source: {len(cuts)} cuts of {cfg.model} "
             f"({', '.join(backbone.stage_names[k - 1] for k in cuts)}) from one pass over "
             f"{n_train} train + {len(ds.val)} val samples")
        t0 = time.perf_counter()
        feats, ys, info = split_features(backbone, ds, cuts, cache, cfg.batch_size, cfg.workers, cfg.strict,
                                         False, echo)
        extract_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if len(ys["train"]) >= MIN_PROBE and len(np.unique(ys["train"])) > 1:
            table, chance = probe_table(feats, ys, cuts, backbone.stage_names, len(ds.classes), seed=cfg.seed)
            reference = input_row(backbone.modality, backbone, info["items"], ys, len(ds.classes), seed=cfg.seed,
                                  cache=cache)
        probe_s = time.perf_counter() - t0
        if table:
            echo(f"auto: linear probe per cut (5-fold CV on train, then val; chance {chance:.3f}):")
            echo(f"  {'cut':>4} {'stage':14} {'dim':>5} {'cv':>6} {'val':>6} {'pooled':>7} {'skill':>6} {'LogME':>7}")
            for r in table + [reference]:
                echo(f"  {r['cut']:>4} {r['stage']:14} {r['dim']:>5} {r['cv_acc']:>6.3f} {r['val_acc']:>6.3f} "
                     f"{r['acc']:>7.3f} {r['skill']:>6.2f} {r['logme']:>7.3f}"
                     + (f"  (the input itself: {reference['what']})" if r is reference else ""))
    plan = decide(table, n_train, depth, chance, user_cut=user_cut, reference=reference, needs_training=needs_training)
    plan.update(table=table, reference=reference, chance=None if chance is None else _r(chance), n_train=n_train,
                n_val=len(ds.val),
                extract_seconds=_r(extract_s, 2), probe_seconds=_r(probe_s, 2), budget_minutes=budget,
                thresholds={"small": SMALL, "huge": HUGE, "poor": POOR, "weak_top": WEAK_TOP, "margin": MARGIN})
    if plan["unfreeze"]:
        in_dim = next(r["dim"] for r in table if r["cut"] == plan["cut"]) if table else None
        if in_dim is None:
            in_dim = _width(backbone, plan["cut"])
        t0 = time.perf_counter()
        budget_plan(plan, lambda u: time_epoch(backbone, plan["cut"], u, ds, cfg, in_dim), budget, cfg.epochs)
        plan["timing_seconds"] = _r(time.perf_counter() - t0, 2)
        if needs_training and not plan["unfreeze"]:  # the budget fell back to extract: the method would do nothing
            from .methods import idle_method_error
            raise idle_method_error(needs_training, f"one unfrozen epoch takes ~{plan['epoch_seconds'] / 60:.1f} min "
                                    f"(measured), over auto's {budget:g} min budget", also="raise --budget, or ")
    if plan["unfreeze"] and table and backbone.modality == "image" and cfg.augment is None:
        # live phases are planned and would augment with flips (the default): does a mirror keep the label?
        row = next((r for r in table if r["cut"] == plan["cut"]), None)
        if row is not None:
            t0 = time.perf_counter()
            sub = _stratified_subset(np.asarray(ys["train"]), PROBE_MAX, cfg.seed)  # the probe's own rows
            m = mirror_check(backbone, plan["cut"], feats["train"][plan["cut"]][sub], np.asarray(ys["train"])[sub],
                             info["items"]["val"], ys["val"], len(ds.classes), row["C"], cfg.batch_size, cfg.seed)
            plan["mirror"] = {**m, "seconds": _r(time.perf_counter() - t0, 2)}
            if m["changes_labels"]:
                plan["augment"] = "crop"
                plan["reason"] += (f"; mirrored images lose val accuracy ({m['val_acc']:.3f} -> "
                                   f"{m['val_acc_mirrored']:.3f} on {m['n']}): flips would change labels, so the live "
                                   "phases augment with crops only (--augment crop; --augment light to keep flips)")
    return plan  # its reason is said once, by fit ("strategy auto -> ...")


def mirror_check(backbone, cut: int, xtr, ytr, items: list, y, n_classes: int, C: float, batch_size: int,
                 seed: int = 0) -> dict:
    """Does mirroring an image change its label here (digits, text)? The probe's linear model at
    ``cut`` (refitted at its C on the training features) scores at most ``MIRROR_MAX`` val images as
    they are and mirrored left to right (the same centre crop, flipped), through the frozen source."""
    import torch
    from .data import pipeline
    from .train.linear_head import fit_linear_head
    linear, _ = fit_linear_head(xtr, ytr, n_classes, C=C, seed=seed)
    y = np.asarray(y)
    sub = _stratified_subset(y, MIRROR_MAX, seed)
    loader = pipeline("image").make_loader(backbone, [items[i] for i in sub], y[sub].tolist(), batch_size=batch_size,
                                           workers=0, strict=False)
    hits = []  # per image: (right as it is, right mirrored)
    backbone.eval()
    with torch.inference_mode():
        for _, x, yb in loader:
            hits += zip(*[(linear(backbone.forward_cuts(view, [cut])[cut].float()).argmax(1) == yb).tolist()
                          for view in (x, x.flip(-1))])
    n = len(hits)
    lost = sum(a and not b for a, b in hits)    # right as it is, wrong mirrored
    gained = sum(b and not a for a, b in hits)  # and the other way round
    acc, mirrored = sum(a for a, _ in hits) / max(n, 1), sum(b for _, b in hits) / max(n, 1)
    # A real loss, not a photo or two: MIRROR_DROP of accuracy and two standard errors (McNemar's z).
    changes = acc - mirrored >= MIRROR_DROP and lost - gained >= 2 * np.sqrt(lost + gained)
    return {"val_acc": _r(acc), "val_acc_mirrored": _r(mirrored), "n": n, "lost": lost, "gained": gained,
            "changes_labels": bool(changes)}


def _width(backbone, cut: int) -> int:
    import torch
    from .data import pipeline
    prefix = backbone.cut(cut)
    with torch.inference_mode():
        return int(prefix.forward_cuts(pipeline(backbone.modality).example_input(prefix), [cut])[cut].shape[1])


# -- while training --------------------------------------------------------------------------------
class AutoGuard:
    """A loop callback for auto's live phases: the budget, and unfreezing only while it pays.

    - a further unfreezing phase starts only if the one before it improved the best val score
      (val accuracy, then val loss) of every epoch before it; otherwise the fit ends there
      (``CancelFit``: the best epoch so far is what the run keeps);
    - the next epoch of a live phase starts only if the live seconds spent so far plus one epoch
      (the last live epoch's own time, or the measured estimate before any) fit ``budget``.
    """
    order = 60

    def __init__(self, budget_minutes: float, epoch_seconds: float | None = None, echo=print):
        self.budget_s = budget_minutes * 60
        self.epoch_s = epoch_seconds
        self.echo = echo
        self.stopped: str | None = None

    # helpers on the loop's history (so a resumed fit counts what it already spent)
    @staticmethod
    def _live(tr, row) -> bool:
        return not tr.phases[row["phase_index"]].on_features

    def _spent(self, tr) -> float:
        return sum(r.get("seconds", 0.0) for r in tr.history if self._live(tr, r))

    def _next_epoch(self, tr) -> float:
        live = [r for r in tr.history if self._live(tr, r)]
        return live[-1].get("seconds", 0.0) if live else (self.epoch_s or 0.0)

    def _stop(self, tr, why: str):
        from .train.callbacks import CancelFit
        self.stopped = why
        self.echo(f"auto: {why}")
        raise CancelFit

    def before_phase(self, tr):
        ph = tr.phase
        if ph.on_features:
            return
        pi = tr.phase_index
        prev = [r for r in tr.history if r["phase_index"] == pi - 1 and "val_acc" in r]
        before = [r for r in tr.history if r["phase_index"] < pi - 1 and "val_acc" in r]
        if pi >= 2 and prev and before and not tr.phases[pi - 1].on_features:
            from .train.callbacks import score
            p, b = max(prev, key=score), max(before, key=score)
            if not score(p) > score(b):
                self._stop(tr, f"{tr.phases[pi - 1].name} best val {p['val_acc']:.4f} did not beat "
                               f"{b['phase']}'s {b['val_acc']:.4f}: no further unfreezing ({ph.name} skipped)")
        self._check_budget(tr, f"{ph.name} not started")

    def before_epoch(self, tr):
        if not tr.phase.on_features and tr.epoch > 0:
            self._check_budget(tr, f"{tr.phase.name} stopped after epoch {tr.epoch}")

    def _check_budget(self, tr, what: str):
        spent, nxt = self._spent(tr), self._next_epoch(tr)
        if spent > 0 and spent + nxt > self.budget_s:
            self._stop(tr, f"budget: {spent / 60:.1f} of {self.budget_s / 60:g} min spent on live phases and an "
                           f"epoch takes ~{nxt:.0f} s: {what}")


__all__ = ["decide", "fit_budget", "budget_plan", "probe_table", "probe_cuts", "plan_auto", "time_epoch", "AutoGuard",
           "SMALL", "HUGE", "POOR", "WEAK_TOP", "MARGIN", "DEFAULT_BUDGET", "margin"]
