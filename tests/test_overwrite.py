"""--overwrite replaces a run with a finished new one: a command stopped, refused or failing part way
gave back an empty directory, the run the user had (and could still predict with) deleted for nothing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rehead.data import DataError
from rehead.fit import fit
from rehead.pretrain import pretrain
from rehead.runs import open_run
from rehead.train import loop
from tests.conftest import make_images

QUIET = {"progress": False, "echo": lambda *a: None}


def iris(path) -> str:
    from sklearn.datasets import load_iris
    d = load_iris(as_frame=True)
    df = d.frame.drop(columns="target").assign(label=d.target.map(dict(enumerate(d.target_names))))
    df.to_csv(path, index=False)
    return str(path)


def tabular_fit(data, out, **kw):
    """A fit that writes a checkpoint every epoch, in a second or so."""
    return fit(data, model="tabular:mlp-4-8x1", out=out, strategy="full", val_fraction=0.2, **{"epochs": 2, **kw},
               **QUIET)


def files(run: Path) -> dict:
    """Every file under ``run``, by relative path, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def ctrl_c_when(monkeypatch, stop):
    """A Ctrl-C at the training loop's first interrupt check where ``stop()`` holds."""
    def check():
        if stop():
            raise KeyboardInterrupt
    monkeypatch.setattr(loop, "check_interrupt", check)


def assert_still_the_old_run(out: Path, before: dict):
    assert files(out) == before  # same files, same bytes: nothing of the stopped command, nothing set aside
    run = open_run(out)  # what evaluate / predict load
    logits, kept, _ = run.logits(run.val_split()[0])
    assert len(kept) == len(run.val_split()[0]) and logits.shape[1] == 3


@pytest.fixture
def old_run(tmp_path):
    data = iris(tmp_path / "iris.csv")
    out = tmp_path / "run"
    tabular_fit(data, out, seed=1)
    return data, out, files(out)


def test_a_fit_overwrite_stopped_before_its_first_checkpoint_leaves_the_old_run(old_run, monkeypatch):
    data, out, before = old_run
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: True)  # in the first epoch: config.yaml written, no checkpoint yet
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, overwrite=True)
    assert_still_the_old_run(out, before)


def test_a_fit_overwrite_refused_on_its_data_leaves_the_old_run(tmp_path, tiny_spec):
    make_images(tmp_path / "imgs")
    out = tmp_path / "run"
    fit(str(tmp_path / "imgs"), model=tiny_spec, out=out, strategy="extract", epochs=2, workers=0, **QUIET)
    before = files(out)
    from PIL import Image
    for c in ("a", "b"):  # every image alike: the features cannot vary, refused once the backbone read them
        (tmp_path / "same" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), (90, 120, 30)).save(tmp_path / "same" / c / f"{i}.png")
    with pytest.raises(DataError, match="the same for every training sample"):
        fit(str(tmp_path / "same"), model=tiny_spec, out=out, strategy="extract", workers=0, overwrite=True, **QUIET)
    assert files(out) == before
    assert open_run(out).classes == ["blue", "red"]


def test_a_fit_overwrite_stopped_after_a_checkpoint_resumes_and_then_drops_the_old_run(old_run, monkeypatch):
    data, out, before = old_run
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: (out / "checkpoint.pt").exists())
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, epochs=3, overwrite=True)
    assert (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()  # the new run, resumable
    kept = {k: v for k, v in files(out).items() if k.startswith(".replaced/")}
    assert kept == {f".replaced/{k}": v for k, v in before.items() if k != ".lock"}  # the old run, kept aside
    run = fit(out=out, resume=True, **QUIET)
    assert run.config["fit"]["seed"] == 2 and run.summary["phases"][0]["epochs_run"] == 3
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock", ".rehead-run"]


def test_an_overwrite_over_an_unfinished_one_keeps_the_run_the_user_had(old_run, monkeypatch):
    """A second --overwrite of a run whose first --overwrite never finished: stopped, the run before both."""
    data, out, before = old_run
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: (out / "checkpoint.pt").exists())
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, epochs=3, overwrite=True)
        ctrl_c_when(m, lambda: True)
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=3, overwrite=True)
    assert_still_the_old_run(out, before)


def test_an_interrupted_pretrain_overwrite_puts_the_old_run_back_exactly(tmp_path, monkeypatch):
    data = iris(tmp_path / "iris.csv")
    out = tmp_path / "enc"
    args = dict(width=8, depth=1, epochs=2, **QUIET)
    pretrain(data, out, seed=1, **args)
    before = files(out)
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: (out / "metrics.csv").exists())  # mid-run, files of the new run written
        with pytest.raises(KeyboardInterrupt):
            pretrain(data, out, seed=2, overwrite=True, **args)
    assert files(out) == before


def test_an_interrupted_ensemble_overwrite_puts_the_old_ensemble_back(old_run, tmp_path, monkeypatch):
    import rehead.ensemble
    from rehead.ensemble import make_ensemble
    data, a, _ = old_run
    b, c = tabular_fit(data, tmp_path / "b", seed=2).dir, tabular_fit(data, tmp_path / "c", seed=3).dir
    out = tmp_path / "ens"
    make_ensemble([a, b], out)
    before = files(out)

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(rehead.ensemble, "_write_common", stop)  # members copied, config.yaml written
    with pytest.raises(KeyboardInterrupt):
        make_ensemble([a, c], out, overwrite=True)
    assert files(out) == before
    assert len(open_run(out).members) == 2


def test_the_old_run_goes_once_the_overwrite_finishes(old_run, tmp_path, monkeypatch):
    """Stopped, the --overwrite gives the old run back; the same command run to its end replaces it whole."""
    data, out, before = old_run
    enc = tmp_path / "enc"
    args = dict(width=8, depth=1, epochs=2, **QUIET)
    pretrain(data, enc, seed=1, **args)
    enc_before = files(enc)
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: True)
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, overwrite=True)
        with pytest.raises(KeyboardInterrupt):
            pretrain(data, enc, seed=2, overwrite=True, **args)
    assert files(out) == before and files(enc) == enc_before
    tabular_fit(data, out, seed=2, overwrite=True)
    tabular_fit(data, tmp_path / "fresh", seed=2)
    assert sorted(files(out)) == sorted(files(tmp_path / "fresh"))  # the new run's files, none of the old's
    assert files(out)["summary.json"] != before["summary.json"]
    pretrain(data, enc, seed=2, overwrite=True, **args)
    pretrain(data, tmp_path / "enc2", seed=2, **args)
    assert sorted(files(enc)) == sorted(files(tmp_path / "enc2"))


def test_the_cli_says_which_run_a_stopped_overwrite_left(old_run, monkeypatch):
    """`fit --overwrite` stopped before its first checkpoint said "continue with `rehead fit --resume RUN`" of
    the old run put back (finished: the resume says so and does nothing); stopped later, it said nothing of
    the old run kept aside."""
    from typer.testing import CliRunner
    from rehead.cli import app
    data, out, before = old_run
    args = ["fit", data, "--model", "tabular:mlp-4-8x1", "--strategy", "full", "--val-fraction", "0.2",
            "--epochs", "3", "--out", str(out), "--overwrite", "--quiet"]
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: True)
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 130 and "is the run --overwrite was to replace, as it was" in r.output, r.output
    assert files(out) == before
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: (out / "checkpoint.pt").exists())
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 130 and f"rehead fit --resume {out}`" in r.output, r.output
    assert f"stays in {out / '.replaced'} until this one finishes" in r.output, r.output


def test_a_second_ctrl_c_while_the_old_run_is_put_back_waits_for_it(old_run, monkeypatch, cli_handlers):
    """A user pressing Ctrl-C twice: the second landed while the stopped --overwrite was moving the old run
    back, leaving it split between RUN and RUN/.replaced. Under the CLI's handlers it now waits for the move."""
    import signal
    data, out, before = old_run
    real, moved = Path.rename, []

    def rename(src, dst):  # the second Ctrl-C, as the first file comes back out of .replaced
        result = real(src, dst)
        if src.parent.name == ".replaced":
            moved.append(dst)
            if len(moved) == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return result
    with monkeypatch.context() as m:
        ctrl_c_when(m, lambda: True)  # the first Ctrl-C: in the first epoch
        m.setattr(Path, "rename", rename)
        with pytest.raises(KeyboardInterrupt):
            tabular_fit(data, out, seed=2, overwrite=True)
    assert len(moved) > 1
    assert_still_the_old_run(out, before)


def test_a_run_object_from_before_an_overwrite_refuses_to_mix_the_two_runs(old_run, tmp_path):
    """A notebook's Run kept its model, config and classes but read temperature.json and summary.json from
    disk at each call: after a fit with overwrite=True it predicted with the old weights and the new T (bees
    0.981 where neither run says that) and its repr showed the old strategy beside the new val accuracy."""
    from rehead.rundir import BadRun
    data, out, _ = old_run
    old = open_run(out)
    items, _ = old.val_split()
    fit(data, model="tabular:mlp-4-8x1", out=out, strategy="head", epochs=1, seed=2, overwrite=True, **QUIET)
    for use in (lambda: old.predict(items[:2]), lambda: old.summary, lambda: old.val_split(), lambda: old.temperature):
        with pytest.raises(BadRun, match="was replaced .* since this Run was loaded: load it again"):
            use()
    assert "replaced or removed since loaded" in repr(old)
    new = open_run(out)  # loaded again: the new run, whole
    assert new.config["strategy"] == "head" and len(new.predict(items[:2])) == 2
