"""Open any run directory by its kind: the one place that knows every kind of run.

    fit, soup   a TransferModel: evaluate, predict, report, export
    ensemble    several models, mean probability: evaluate, predict, report (export a member)
    multitask   one backbone, a head per task: `rehead evaluate` scores each head (through
                `rehead.multitask.evaluate_multitask_run`); predict, report and export take one head,
                `load_multitask` gives the model
    backbone    an encoder saved by `pretrain` or `adapt`: no head; `rehead fit DATA --model DIR`
    probe, rank, compare
                experiments: `rehead report DIR`
"""
from __future__ import annotations

from pathlib import Path

from .rundir import BadRun, read_yaml

WHY_NOT = {
    "backbone": "{d} is an encoder saved by `rehead pretrain` or `rehead adapt`: it has no head to predict with; "
                "graft one with `rehead fit DATA --model {d}`",
    # evaluate, predict and export all say this (open_run is not told which is asking)
    "multitask": "{d} is a multi-task run (one head per task): rehead predict and export take single-head "
                 "runs; `rehead evaluate {d} [DATA]` scores each head, and from Python "
                 "`rehead.multitask.load_multitask({d!r})` gives the model (`.task_logits(x)`: each head's logits)",
    "probe": "{d} is a cut-depth probe, not a model: `rehead report {d}` shows it",
    "rank": "{d} is a backbone ranking, not a model: `rehead report {d}` shows it",
    "compare": "{d} is a transfer-vs-scratch comparison, not a model: `rehead report {d}` shows it",
}


def run_kind(run_dir) -> str:
    return read_yaml(Path(run_dir) / "config.yaml").get("kind", "fit")


def open_run(run_dir):
    """A Run (or Ensemble) for predict / evaluate / export, or BadRun saying why this kind has none."""
    kind = run_kind(run_dir)
    if kind == "ensemble":
        from .ensemble import Ensemble
        return Ensemble(run_dir)
    if kind in ("fit", "soup"):
        from .run import Run
        return Run(run_dir)
    why = WHY_NOT.get(kind, "{d} is a {kind!r} directory, which rehead cannot predict with")
    raise BadRun(why.format(d=str(run_dir), kind=kind))
