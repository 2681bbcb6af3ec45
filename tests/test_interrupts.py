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
