"""A Ctrl-C that Python ignores (raised in a destructor) still stops the run at the next step."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from rehead import interrupts
from rehead.recipes import Phase
from rehead.train.loop import IndexedTensors, TrainConfig, Trainer


class _Collected:
    def __del__(self):
        raise KeyboardInterrupt  # what SIGINT does when it lands in a DataLoader iterator's __del__


def test_an_ignored_ctrl_c_stops_the_loop(monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    interrupts.catch_ignored()
    _Collected()  # collected at once: Python "ignores" the KeyboardInterrupt, the hook notes it
    data = IndexedTensors(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(progress=False)).fit(nn.Linear(4, 2), data, data, [Phase("head", 2, 1e-2)], batch_size=8)
    interrupts.check()  # raised once, not again


def test_an_error_after_an_ignored_ctrl_c_is_reported_as_the_interrupt(tmp_path, monkeypatch, image_folder):
    """Ctrl-C stops the DataLoader's workers too; when Python ignored the main process's own
    KeyboardInterrupt, the workers' death surfaces first: still "interrupted", with the resume hint."""
    from typer.testing import CliRunner
    import rehead.fit
    from rehead.cli import app

    def fit(*a, out=None, **kw):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text("kind: fit\n")
        interrupts._pending.set()
        raise RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly")
    monkeypatch.setattr(rehead.fit, "fit", fit)
    r = CliRunner().invoke(app, ["fit", str(image_folder), "--out", str(tmp_path / "run")])
    assert r.exit_code == 130 and "rehead fit --resume" in r.output and "RuntimeError" not in r.output
    interrupts._pending.clear()
