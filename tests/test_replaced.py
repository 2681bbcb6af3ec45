"""A run --overwrite set aside in RUN/.replaced and never finished with (the process killed, the machine
down): every command that reads or opens the run says so, once, with what to do; `rehead restore RUN`
puts the old run back; nothing is deleted on the way. And the commands without --resume let go of the
run's lock only once the old run is gone."""
from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rehead.cli import app
from rehead.rundir import REPLACED, RunDir
from tests.test_overwrite import assert_still_the_old_run, ctrl_c_when, files, old_run, tabular_fit  # noqa: F401

SAID = ".replaced holds the run an earlier `--overwrite` replaced"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def fit_args(data, out, *more):
    return ["fit", data, "--model", "tabular:mlp-4-8x1", "--strategy", "full", "--val-fraction", "0.2",
            "--epochs", "3", "--out", out, "--quiet", *more]


def killed_overwrite(data, out: Path, monkeypatch) -> None:
    """What `fit --overwrite` killed (kill -9) after its first checkpoint leaves: the new run unfinished in
    RUN, the old one in RUN/.replaced, the lock free. A Ctrl-C there leaves the same, and is what runs here."""
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: (out / "checkpoint.pt").exists())
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, epochs=3, overwrite=True)
    assert (out / REPLACED / "summary.json").exists() and not (out / "summary.json").exists()


def said_once(r, out: Path) -> str:
    assert r.stderr.count(SAID) == 1, r.stderr
    assert "no process is writing to it (its lock is free)" in r.stderr, r.stderr
    assert f"rehead restore {out}`" in r.stderr, r.stderr
    return r.stderr


def test_every_command_that_reads_a_run_a_killed_overwrite_left_says_so_once(old_run, tmp_path, monkeypatch):
    """kill -9 during `fit --overwrite` left the old run hidden in RUN/.replaced beside the unfinished new one,
    and nothing said so: evaluate and predict only said the new run had not finished."""
    data, out, before = old_run
    killed_overwrite(data, out, monkeypatch)
    left = files(out)
    for args in (["evaluate", out], ["predict", out, data], ["report", out, "--out", tmp_path / "r.html"],
                 ["export", out, "--out", f"{tmp_path / 'x'}/"]):
        r = cli(*args)
        said = said_once(r, out)
        assert f"Finish it: `rehead fit --resume {out}` (then the old run is deleted)" in said, said
        assert left.items() <= files(out).items()  # nothing deleted, moved or changed (report adds its plots)
    r = cli("fit", "--resume", out, "--quiet")
    assert r.exit_code == 0, r.output
    said_once(r, out)
    assert not (out / REPLACED).exists() and (out / "summary.json").exists()  # the new run finished, the old went
    r = cli("evaluate", out)
    assert r.exit_code == 0 and SAID not in r.stderr, r.output


def test_nothing_is_said_while_a_process_writes_the_run(old_run, monkeypatch):
    """An --overwrite still running holds the lock: its RUN/.replaced is as it should be."""
    data, out, before = old_run
    killed_overwrite(data, out, monkeypatch)
    with open(out / ".lock", "a+") as lock:  # another process writing there (flock: per open file)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = cli("evaluate", out)
        assert SAID not in r.stderr, r.stderr
        r = cli("restore", out)
        assert r.exit_code == 2 and "another rehead process is writing to" in r.output, r.output
    said_once(cli("evaluate", out), out)


def test_restore_puts_back_the_run_a_killed_overwrite_replaced(old_run, monkeypatch):
    data, out, before = old_run
    killed_overwrite(data, out, monkeypatch)
    r = cli("restore", out)
    assert r.exit_code == 0 and "is the run --overwrite replaced, as it was" in r.output, r.output
    assert "checkpoint.pt" in r.output  # the new run's files it deleted, named
    assert_still_the_old_run(out, before)
    r = cli("restore", out)
    assert r.exit_code == 2 and "nothing to restore" in r.output, r.output


def test_a_second_overwrite_after_a_kill_says_so_and_keeps_the_run_the_user_had(old_run, monkeypatch):
    data, out, before = old_run
    killed_overwrite(data, out, monkeypatch)
    old = {k: v for k, v in files(out).items() if k.startswith(f"{REPLACED}/")}
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: (out / "checkpoint.pt").exists())  # this one killed after its checkpoint too
        r = CliRunner().invoke(app, fit_args(data, out, "--overwrite", "--seed", "3"))
    assert r.exit_code == 130, r.output
    assert "this --overwrite deletes it and keeps the old run in" in said_once(r, out)
    assert {k: v for k, v in files(out).items() if k.startswith(f"{REPLACED}/")} == old  # still the user's run
    assert cli("restore", out).exit_code == 0
    assert_still_the_old_run(out, before)


def test_a_kill_while_the_old_run_is_moved_aside_loses_nothing(old_run, tmp_path, monkeypatch):
    """The old run moved into RUN/.replaced one file at a time: killed part way, half of it was in .replaced,
    and the next --overwrite deleted the other half as the unfinished run; killed after the last move, RUN held
    no marker and a second --overwrite refused it as "not a directory rehead made"."""
    data, out, before = old_run
    real_rename, real_touch, kills = Path.rename, Path.touch, []

    def kill_here():  # what a kill at this instant leaves, copied
        kills.append(tmp_path / f"kill{len(kills)}")
        shutil.copytree(out, kills[-1])

    def rename(src, dst):
        if Path(src).parent == out or Path(src) == out / ".replacing":
            kill_here()
        return real_rename(src, dst)

    def touch(p, *a, **k):
        if p == out / ".rehead-run" and (out / REPLACED).exists():
            kill_here()
        return real_touch(p, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(Path, "rename", rename)
        m.setattr(Path, "touch", touch)
        ctrl_c_when(m, lambda: True)
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, overwrite=True)
    assert len(kills) >= 4
    for snap in kills:
        with monkeypatch.context() as m:  # a second --overwrite, stopped in its first epoch: the old run back
            ctrl_c_when(m, lambda: True)
            with pytest.raises(KeyboardInterrupt):
                tabular_fit(data, snap, seed=3, overwrite=True)
        assert_still_the_old_run(snap, before)


@pytest.mark.parametrize("command", ["pretrain", "multitask", "adapt"])
def test_the_lock_is_let_go_only_once_the_replaced_run_is_gone(tmp_path, monkeypatch, command, tiny_bert_dir):
    """pretrain, fit-multitask and adapt released the lock inside kept_if_finished, which deleted RUN/.replaced
    after it: a second --overwrite claiming in between kept that run as the user's, and saw it deleted."""
    from tests.test_overwrite import iris
    if command == "adapt":
        from rehead.adapt import adapt
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n".join(f"a short line of text number {i}" for i in range(8)) + "\n")

        def run(seed):
            adapt(corpus, f"hf:{tiny_bert_dir}", tmp_path / "out", epochs=1, batch_size=8, max_length=16,
                  seed=seed, overwrite=seed > 1, progress=False, echo=lambda *a: None)
    elif command == "multitask":
        from rehead.multitask import fit_multitask
        data = tmp_path / "iris.csv"
        iris(data)
        import pandas as pd
        df = pd.read_csv(data)
        df.assign(big=(df["sepal length (cm)"] > 5.8).map({True: "big", False: "small"})).to_csv(data, index=False)

        def run(seed):
            fit_multitask(str(data), "label,big", "tabular:mlp-4-8x1", tmp_path / "out", epochs=1, seed=seed,
                          overwrite=seed > 1, progress=False, echo=lambda *a: None)
    else:
        from rehead.pretrain import pretrain
        data = iris(tmp_path / "iris.csv")

        def run(seed):
            pretrain(data, tmp_path / "out", width=8, depth=1, epochs=1, seed=seed, overwrite=seed > 1,
                     progress=False, echo=lambda *a: None)
    run(1)
    real, seen = RunDir.release, []

    def release(self):
        if self._lock is not None:
            seen.append((self.path / REPLACED).exists())
        real(self)
    monkeypatch.setattr(RunDir, "release", release)
    run(2)
    assert seen and not any(seen), "the lock let go while RUN/.replaced was still there"
    assert not (tmp_path / "out" / REPLACED).exists()


def test_resume_of_a_fit_that_finished_before_the_old_run_went_deletes_it_and_says_so(old_run, tmp_path):
    """Killed after the new fit wrote summary.json, before RUN/.replaced went: `--resume` said "already
    finished; nothing to resume" and left the old run there for good."""
    data, out, before = old_run
    shutil.copytree(out, tmp_path / "old")
    tabular_fit(data, out, seed=2, overwrite=True)  # the new run, finished
    (tmp_path / "old").rename(out / REPLACED)  # ... as a kill just before finish() leaves it
    r = cli("evaluate", out)
    assert f"Keep the new run: `rehead fit --resume {out}` (it deletes the old one)" in said_once(r, out)
    r = cli("fit", "--resume", out, "--quiet")
    assert r.exit_code == 0 and "is deleted now, as that --overwrite asked" in r.output, r.output
    assert not (out / REPLACED).exists() and (out / "summary.json").exists()
