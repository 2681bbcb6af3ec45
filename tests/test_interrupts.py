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


def test_an_ignored_ctrl_c_stops_a_fit_started_from_python(tmp_path, image_folder, tiny_spec):
    """Only the CLI routed an ignored Ctrl-C to the loops' check: from Python (a notebook) a Ctrl-C that landed
    in a destructor or a fork hook was printed as "Exception ignored" and the fit ran to its end."""
    import rehead
    from rehead.train.callbacks import Callback

    class CtrlCInADestructor(Callback):
        def after_epoch(self, tr):
            if len(tr.history) == 1:
                _Collected()

    hook = sys.unraisablehook
    with pytest.raises(KeyboardInterrupt):
        rehead.fit(str(image_folder), tmp_path / "r", model=tiny_spec, strategy="head", epochs=3, workers=0,
                   progress=False, echo=lambda *a: None, hooks=[CtrlCInADestructor()])
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 2  # the header and epoch 1
    assert sys.unraisablehook is hook and not interrupts.pending()  # the caller's hook back, nothing left over


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


@pytest.mark.parametrize("command", ["python -m rehead", "rehead"])
def test_sigterm_stops_a_fit_as_ctrl_c_does_and_says_how_to_resume(tmp_path, image_folder, tiny_spec, command):
    """SIGTERM (a scheduler, `timeout`, `kill`) ended a fit with no word; `--resume` worked, unsaid. The
    installed `rehead` command ran the CLI app without its main(), so it ended silently (rc 143), and an
    --overwrite stopped so left the old run set aside in RUN/.replaced."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path
    env = {**os.environ, "REHEAD_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    out = tmp_path / "run"
    exe = [sys.executable, "-m", "rehead"] if command != "rehead" else [str(Path(sys.executable).parent / "rehead")]
    if not Path(exe[0]).exists():
        pytest.skip("rehead is not installed as a command beside this Python")
    p = subprocess.Popen([*exe, "fit", str(image_folder), "--model", tiny_spec, "--out",
                          str(out), "--strategy", "finetune", "--epochs", "500", "--workers", "0", "-q"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (out / "metrics.csv").exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    said, _ = p.communicate(timeout=60)
    assert p.returncode == 130 and f"rehead fit --resume {out}" in said, said


def test_a_directory_an_interrupted_start_left_blocks_nothing(tmp_path):
    """Ctrl-C during `fit --find-lr` (or adapt, pretrain) left .lock, the marker and lr_find.json:
    the same command's rerun was refused ("not empty") and --resume said "no config.yaml"."""
    from rehead.rundir import MARKER, RunDir, RunExists, load_tensors
    d = tmp_path / "run"
    RunDir.create(d).release()
    assert RunDir.check_free(d) is False  # only the lock and the marker: free, no --overwrite needed
    RunDir.create(d).release()
    (d / "lr_find.json").write_text("{}")
    with pytest.raises(RunExists):
        RunDir.check_free(d)
    assert RunDir.discard_unstarted(d) and not d.exists()
    RunDir.create(d).release()
    (d / "config.yaml").write_text("kind: fit\n")  # started: kept for --resume
    assert not RunDir.discard_unstarted(d) and (d / MARKER).exists()
    (tmp_path / "m.safetensors").write_bytes(b"\x00" * 40)
    interrupts._arrived.set()  # a Ctrl-C inside safetensors surfaced as its TypeError: not "corrupt"
    try:
        with pytest.raises(KeyboardInterrupt):
            load_tensors(tmp_path / "m.safetensors")
    finally:
        interrupts._arrived.clear()


def test_overwrite_never_empties_a_run_directory_holding_the_data(tmp_path, image_folder, tiny_spec):
    """`fit runs/old/mydata --out runs/old --overwrite` deleted the 40 photos, then failed raw."""
    import shutil
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.rundir import RunDir
    RunDir.create(tmp_path / "old").release()
    (tmp_path / "old" / "config.yaml").write_text("kind: fit\n")
    shutil.copytree(image_folder, tmp_path / "old" / "mydata")
    n = len(list((tmp_path / "old" / "mydata").rglob("*.jpg")))
    r = CliRunner().invoke(app, ["probe", str(tmp_path / "old" / "mydata"), "--model", tiny_spec, "--out",
                                 str(tmp_path / "old"), "--overwrite", "--workers", "0"], env={"COLUMNS": "300"})
    assert r.exit_code != 0 and "which this command reads" in r.output, r.output
    assert len(list((tmp_path / "old" / "mydata").rglob("*.jpg"))) == n
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "old" / "mydata"), "--model", tiny_spec, "--out",
                                 str(tmp_path / "old"), "--overwrite", "--workers", "0"], env={"COLUMNS": "300"})
    assert r.exit_code != 0 and "which this command reads" in r.output, r.output
    assert len(list((tmp_path / "old" / "mydata").rglob("*.jpg"))) == n
