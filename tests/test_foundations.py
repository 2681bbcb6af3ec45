"""Foundations: one typed config, one owner of the run directory, nothing written before the checks,
the Python API doing what the CLI does, and a CLI that never prints a raw traceback."""
import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

import rehead
from rehead.cli import app
from rehead.config import ConfigError, FitConfig
from rehead.data import DataError
from rehead.rundir import BadRun, RunBusy, RunDir, RunExists

runner = CliRunner()
QUIET = {"workers": 0, "progress": False, "echo": lambda *a: None}


# -- FitConfig -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, says", [
    ({"lr": -1.0}, "--lr must be > 0"), ({"epochs": 0}, "--epochs must be > 0"),
    ({"schedule": "cosin"}, "--schedule must be one of"), ({"strategy": "bogus"}, "--strategy must be one of"),
    ({"val_fraction": 1.5}, "--val-fraction"), ({"batch_size": 0}, "--batch-size must be > 0"),
    ({"head": "transformer"}, "--head must be one of"), ({"precision": "fp8"}, "--precision must be one of"),
    ({"method": "magic"}, "--method must be one of"), ({"augment": "heavy"}, "--augment must be one of"),
    ({"budget": 3, "strategy": "finetune"}, "--budget bounds what --strategy auto plans"),
    ({"ema": 1.5}, "--ema must be in"),
    ({"dropout": 1.0}, "--dropout"), ({"lr": 1e-3, "lr_min": 1e-2}, "--lr-min"), ({"seed": -1}, "--seed must be >= 0"),
    ({"seed": 2**32}, "<= 4294967295"),
])
def test_a_bad_option_is_refused_when_the_config_is_built(bad, says):
    with pytest.raises(ConfigError, match=says.replace("-", "\\-").replace("\\-\\-", "--")):
        FitConfig(**bad)


def test_the_config_round_trips_through_yaml_and_names_unknown_options():
    cfg = FitConfig(strategy="finetune", cut="block5", lr=3e-4, augment="light", id_columns="a,b")
    again = FitConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
    assert FitConfig(cut="3").cut == 3  # a numeric cut typed on the command line is a stage count
    with pytest.raises(ConfigError, match="unknown fit option.*lerning_rate"):
        FitConfig.from_dict({"lerning_rate": 1})


def test_fit_with_config_names_a_typo_and_takes_a_dict(tmp_path):
    """fit(config=FitConfig(), lrr=3) said "FitConfig.__init__() got an unexpected keyword argument"; a
    dict as config= was an AttributeError ('dict' has no attribute 'precision')."""
    from rehead.fit import _config
    with pytest.raises(ConfigError, match="unknown fit option.*lrr; options are: .*lr"):
        rehead.fit(tmp_path, config=FitConfig(), lrr=3)
    assert _config({"strategy": "extract", "lr": 0.1}, {"lr": 0.2}) == FitConfig(strategy="extract", lr=0.2)
    with pytest.raises(ConfigError, match="config= takes a rehead.FitConfig .* not a str"):
        rehead.fit(tmp_path, config="extract")


@pytest.mark.parametrize("bad, says", [
    ({"lr": "0.1"}, "--lr must be a number (or None: unset), got '0.1'"), ({"seed": "0"}, "--seed must be an integer, got '0'"),
    ({"val_fraction": "0.2"}, "--val-fraction must be a number, got '0.2'"),
    ({"epochs": 2.5}, "--epochs must be an integer (or None: unset), got 2.5"),
    ({"batch_size": 8.5}, "--batch-size must be an integer, got 8.5"), ({"hidden": True}, "--hidden must be an integer, got True"),
    ({"cut": 3.5}, "--cut must be a stage count (an integer) or a stage name"),
    ({"freeze_bn": "no"}, "--freeze-bn/--no-freeze-bn must be True or False, got 'no'"),
    ({"use_cache": "false"}, "--cache/--no-cache (use_cache=) must be True or False, got 'false'"),
    ({"model": 123}, "--model must be a string (or None: unset), got 123"), ({"text_column": 5}, "--text-column must be a string"),
    ({"lr": float("inf")}, "--lr must be a finite number, got inf"), ({"mixup": float("nan")}, "--mixup must be a finite number"),
    ({"epochs": float("inf")}, "--epochs must be an integer, got inf"), ({"head": 1}, "--head must be one of linear, mlp, got 1"),
    ({"keep_last": 1}, "--keep-last must be True or False, got 1"), ({"auto_plan": [1]}, "auto_plan must be a dict"),
])
def test_an_option_of_the_wrong_type_is_refused_naming_it_and_its_value(bad, says):
    with pytest.raises(ConfigError) as e:
        FitConfig(**bad)
    assert str(e.value).startswith(says), str(e.value)


def test_an_integral_float_is_an_int_and_a_number_a_float_that_round_trips_through_yaml():
    import numpy as np
    from pathlib import Path
    cfg = FitConfig(epochs=3.0, cut=2.0, lr=1, batch_size=np.int64(8), mixup=0, budget=2, freeze_bn=False,
                    use_cache=False, cache_dir=Path("/tmp/c"), seed=np.int32(4))
    assert (cfg.epochs, cfg.cut, cfg.batch_size, cfg.seed, cfg.cache_dir) == (3, 2, 8, 4, "/tmp/c")
    assert all(type(v) is int for v in (cfg.epochs, cfg.cut, cfg.batch_size, cfg.seed))
    assert all(type(v) is float for v in (cfg.lr, cfg.mixup, cfg.budget))
    again = FitConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def test_cli_choices_show_in_help_and_a_wrong_one_fails_before_any_work(tmp_path, image_folder):
    out = runner.invoke(app, ["fit", "--help"], env={"COLUMNS": "300"}).output
    for choice in ("extract|head|finetune|gradual|full|auto", "onecycle|cosine|sgdr|constant", "linear|mlp"):
        assert choice in out
    res = runner.invoke(app, ["fit", str(image_folder), "--schedule", "cosin", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and not (tmp_path / "r").exists()
    res = runner.invoke(app, ["fit", str(image_folder), "--lr", "-1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--lr must be > 0" in res.output and not (tmp_path / "r").exists()
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "r"), "--workers", "-1"], env={"COLUMNS": "300"})  # taken
    assert res.exit_code == 2 and "--workers" in res.output and "greater than or equal to 0" in res.output, res.output


def test_a_csv_without_the_named_column_asks_for_the_right_one(tmp_path):
    """`predict RUN new.csv --text-column foo` said the run reads 'foo' "as its fit did"."""
    from rehead.data.images import csv_images
    from rehead.data.text import input_texts
    (tmp_path / "new.csv").write_text("sentence,path\nhello,a.jpg\n")
    with pytest.raises(DataError) as e:
        input_texts(str(tmp_path / "new.csv"), "foo")
    assert "no 'foo' column (columns: sentence, path)" in str(e.value) and "fit did" not in str(e.value)
    with pytest.raises(DataError) as e:
        csv_images(tmp_path / "new.csv", "img")
    assert "--image-column" in str(e.value) and "fit did" not in str(e.value)


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from rehead.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--version']); assert r.output.startswith('rehead '), r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- checks before the run directory ------------------------------------------------------------------
def test_bad_data_or_model_leaves_no_run_directory(tmp_path, image_folder, tiny_spec):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        rehead.fit(str(tmp_path / "empty"), model=tiny_spec, out=tmp_path / "r1", **QUIET)
    assert not (tmp_path / "r1").exists()
    with pytest.raises(Exception, match="no stage named"):
        rehead.fit(str(image_folder), model=tiny_spec, cut="nope", out=tmp_path / "r2", **QUIET)
    assert not (tmp_path / "r2").exists()
    res = runner.invoke(app, ["fit", str(image_folder), "--model", "packaged:nope", "--out", str(tmp_path / "r3")])
    assert res.exit_code == 2 and "error:" in res.output and not (tmp_path / "r3").exists()


# -- the run directory ---------------------------------------------------------------------------------
def test_run_and_cache_files_get_the_permissions_of_any_new_file(tmp_path, image_folder, tiny_spec):
    """Atomic writes go through a temporary file (0600 from mkstemp): the renamed files must end up
    with what a plain ``open()`` gives under the user's umask, so a run can be shared or served."""
    import os
    import stat
    (tmp_path / "plain").write_bytes(b"")
    plain = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", cache_dir=str(tmp_path / "cache"), **QUIET)
    made = [p for p in [*(tmp_path / "run").rglob("*"), *(tmp_path / "cache").rglob("*.npy")] if p.is_file()]
    assert any(p.suffix == ".npy" for p in made) and (tmp_path / "run" / "model.safetensors") in made
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {p.name: oct(plain) for p in made}


def test_a_run_directory_is_claimed_by_one_process(tmp_path):
    first = RunDir.create(tmp_path / "run")
    with pytest.raises(RunBusy, match="another rehead process"):
        RunDir.create(tmp_path / "run", overwrite=True)
    first.write_json("summary.json", {"a": 1})
    first.release()
    again = RunDir.create(tmp_path / "run", overwrite=True)  # released: --overwrite may replace it
    assert not again.exists("summary.json")
    again.release()


def test_a_lock_let_go_a_moment_later_is_waited_for(tmp_path):
    """`fit --resume` right after a SIGTERM was refused as "another rehead process is writing": the stopped
    fit's data-loading workers, forked with its lock, outlive it by a moment. A child holding the lock for
    half a second stands for them."""
    import subprocess
    import sys
    import time
    RunDir.create(tmp_path / "run").release()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); "
        "time.sleep(0.5)"), str(tmp_path / "run" / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    rd = RunDir.create(tmp_path / "run")  # claimed again, as a rerun would
    assert time.monotonic() - t0 < 3.0
    rd.release()
    holder.wait()


def test_overwrite_never_deletes_a_folder_rehead_did_not_make(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(RunExists, match="not a directory rehead made"):
        RunDir.create(mine, overwrite=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    # a project folder with a config.yaml of its own: `fit ... --out . --overwrite` deleted all of it
    (mine / "config.yaml").write_text("lr: 1\n")
    with pytest.raises(RunExists, match="not a directory rehead made"):
        RunDir.create(mine, overwrite=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    run = RunDir.create(tmp_path / "run")  # one rehead made is replaced
    (run.path / "old.txt").write_text("x")
    run.release()
    RunDir.create(tmp_path / "run", overwrite=True).release()
    assert not (tmp_path / "run" / "old.txt").exists()


def test_demo_refuses_a_folder_of_the_users_before_any_work(tmp_path, monkeypatch):
    """`rehead demo --out photos` wrote the digits to the cache, then was refused by the fit."""
    monkeypatch.setenv("REHEAD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "photos")])
    assert r.exit_code != 0 and "already exists" in r.output, r.output
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "photos"), "--overwrite"])
    assert r.exit_code != 0 and "not a directory rehead made" in r.output, r.output
    assert not (tmp_path / "cache").exists() and (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    # a run of the user's: demo's --overwrite defaulted to on and replaced it, unasked
    RunDir.create(tmp_path / "precious").release()
    (tmp_path / "precious" / "config.yaml").write_text("kind: fit\ndata: /elsewhere/photos\n")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "precious")])
    assert r.exit_code != 0 and "--overwrite" in r.output and (tmp_path / "precious" / "config.yaml").exists()
    from rehead.demo import _is_demo_run
    digits = tmp_path / "cache" / "demo" / "digits"
    (tmp_path / "precious" / "config.yaml").write_text(f"kind: fit\ndata: {digits}\n")
    assert _is_demo_run(tmp_path / "precious", digits)  # an earlier demo run: replaced without asking


@pytest.mark.parametrize("name, damage", [
    ("config.yaml", b"kind: [fit\n"), ("labels.json", b"{not json"), ("model.safetensors", b"\x00" * 40),
    ("labels.json", b'{"a": 1}'),
])
def test_a_damaged_run_file_is_one_line_that_names_it(tmp_path, image_folder, tiny_spec, name, damage):
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=2, **QUIET)
    (tmp_path / "run" / name).write_bytes(damage)
    with pytest.raises(BadRun, match=name.replace(".", r"\.")):
        rehead.Run(tmp_path / "run")
    res = runner.invoke(app, ["predict", str(tmp_path / "run"), str(next(image_folder.rglob("*.jpg")))])
    assert res.exit_code == 2 and name in res.output and "Traceback" not in res.output


def test_a_damaged_checkpoint_is_named_on_resume(tmp_path, image_folder, tiny_spec):
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=2, **QUIET)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage")
    (tmp_path / "run" / "model.safetensors").unlink()
    res = runner.invoke(app, ["fit", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 2 and "checkpoint.pt" in res.output and "Traceback" not in res.output
    # options or other data given with --resume were ignored silently (--epochs 20 added no epoch)
    for extra, says in ((["--epochs", "20", "--lr", "0.5"], "--epochs, --lr would be ignored"),
                        ([str(tmp_path)], "on its own data")):
        res = runner.invoke(app, ["fit", *extra, "--resume", str(tmp_path / "run")])
        assert res.exit_code == 2 and says in res.output, res.output
    res = runner.invoke(app, ["fit", "--resume", str(tmp_path / "never")])
    assert res.exit_code == 2 and "does not exist: nothing to resume" in res.output, res.output
    # --workers changes how data loads, not the run: taken, and said (it was refused as "would be ignored")
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "cut", strategy="extract", epochs=2, **QUIET)
    (tmp_path / "cut" / "model.safetensors").unlink()
    res = runner.invoke(app, ["fit", "--workers", "1", "--resume", str(tmp_path / "cut"), "-q"])
    assert res.exit_code == 0 and "1 worker process(es) for this resume" in res.output, res.output


def test_every_kind_of_run_opens_or_says_why_not(tmp_path):
    from rehead.runs import open_run
    for kind, says in [("backbone", "graft one with `rehead fit"), ("multitask", "multi-task"),
                       ("probe", "rehead report")]:
        d = RunDir.create(tmp_path / kind)
        d.write_yaml("config.yaml", {"kind": kind})
        with pytest.raises(BadRun, match=says):
            open_run(d.path)


# -- the Python API does what the CLI does -------------------------------------------------------------------
def test_fit_takes_pairs_and_a_dataframe_and_run_evaluates_a_path(tmp_path, image_folder, tiny_spec):
    pairs = [(str(p), p.parent.name) for p in sorted(image_folder.rglob("*.jpg"))]
    run = rehead.fit(pairs, model=tiny_spec, out=tmp_path / "pairs", strategy="extract", epochs=5, **QUIET)
    assert run.classes == ["blue", "red"]
    import os  # relative paths are stored absolute (split.json was read from another directory)
    here = os.getcwd()
    try:
        os.chdir(image_folder.parent)
        rel = rehead.fit([(os.path.relpath(p), c) for p, c in pairs], model=tiny_spec, out=tmp_path / "rel",
                         strategy="extract", **QUIET)
    finally:
        os.chdir(here)
    assert all(os.path.isabs(i) for i in rel.val_split()[0])
    res = run.evaluate(str(image_folder))  # a path: its classes mapped onto the run's by name
    assert res["n"] == len(pairs)
    # items with labels as class names (scikit-learn's habit), as indices, or a DataFrame: one answer
    import pandas as pd
    items, names = [p for p, _ in pairs], [c for _, c in pairs]
    idx = [run.classes.index(c) for c in names]
    frame = pd.DataFrame({"path": items, "label": names})
    assert run.evaluate(items, names)["accuracy"] == run.evaluate(items, idx)["accuracy"] \
        == run.evaluate(frame)["accuracy"] == res["accuracy"]
    for labels, said in ((names[:-1], "items but .* labels"), (["green"] * len(items), "neither one of this run's"),
                         ([7] * len(items), "class index 0..1")):  # were raw IndexError / ValueError
        with pytest.raises(DataError, match=said):
            run.evaluate(items, labels)
    with pytest.raises(DataError, match="no column.*'path'"):
        run.evaluate(frame.rename(columns={"path": "file"}))
    assert "Run(" in repr(run) and "val_acc=" in repr(run) and "<table>" in run._repr_html_()
    with_blank = rehead.fit(pairs + [(pairs[0][0], " ")], model=tiny_spec, out=tmp_path / "blank",
                            strategy="extract", epochs=1, **QUIET)
    assert with_blank.config["data_summary"]["train"] + with_blank.config["data_summary"]["val"] == len(pairs)
    from PIL import Image
    rows = run.predict([Image.open(pairs[0][0])], top_k=1)
    assert rows[0]["top"][0]["label"] in run.classes


def test_config_yaml_holds_the_fit_options_and_resume_reads_them(tmp_path, image_folder, tiny_spec):
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=3, seed=4,
               **QUIET)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert FitConfig.from_dict(cfg["fit"]) == FitConfig(model=tiny_spec, strategy="extract", epochs=3, seed=4,
                                                        workers=0).for_data("image")  # unset options as filled
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert set(split["train"]["items"]).isdisjoint(split["val"]["items"])


# -- test data is never used for selection; resume never re-splits --------------------------------------------
def test_a_test_split_is_scored_once_and_never_chosen_on(tmp_path, tiny_spec):
    from tests.conftest import make_images
    make_images(tmp_path / "d" / "train", n=10)
    make_images(tmp_path / "d" / "test", n=4, seed=1)
    run = rehead.fit(str(tmp_path / "d"), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=3,
                     **QUIET)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert all("/train/" in p for p in split["train"]["items"] + split["val"]["items"])  # val carved from train
    s = run.summary
    assert s["test_n"] == 8 and 0 <= s["test_acc"] <= 1 and "val_acc" in s


def test_resume_stops_when_the_data_changed(tmp_path, image_folder, tiny_spec):
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=2, **QUIET)
    (tmp_path / "run" / "model.safetensors").unlink()  # as if killed before the end
    victim = sorted(image_folder.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    res = runner.invoke(app, ["fit", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 2 and "changed" in res.output and "Traceback" not in res.output


def test_resume_says_that_samples_added_since_the_start_are_not_used(tmp_path, image_folder, tiny_spec):
    """New photos (or shards) added after an interrupted fit were ignored by its resume, unsaid."""
    import shutil
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=2, **QUIET)
    (tmp_path / "run" / "model.safetensors").unlink()  # as if killed before the end
    for c in ("red", "blue"):  # 3 more photos of each class
        for i in range(3):
            shutil.copy(image_folder / c / f"{c}_{i}.jpg", image_folder / c / f"new_{i}.jpg")
    res = runner.invoke(app, ["fit", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 0 and "6 sample(s) added to" in res.output and "are not used" in res.output, res.output


def test_ctrl_c_says_how_to_resume(tmp_path, image_folder, tiny_spec, monkeypatch):
    import rehead.fit as fit_module

    def before_start(job, run, *a, **k):
        raise KeyboardInterrupt

    def started(job, run, *a, **k):
        run.write_yaml("config.yaml", {"kind": "fit"})
        raise KeyboardInterrupt
    monkeypatch.setattr(fit_module, "_train", before_start)
    res = runner.invoke(app, ["fit", str(image_folder), "--model", tiny_spec, "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 130 and "nothing was kept" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()  # nothing to resume: the same command reruns without --overwrite
    monkeypatch.setattr(fit_module, "_train", started)
    res = runner.invoke(app, ["fit", str(image_folder), "--model", tiny_spec, "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 130 and f"rehead fit --resume {tmp_path / 'run'}" in res.output, res.output
    res = runner.invoke(app, ["fit", str(image_folder), "--model", tiny_spec, "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 2 and "--resume to continue it" in res.output  # unfinished: resume offered
    monkeypatch.undo()
    rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "done", strategy="extract", **QUIET)
    res = runner.invoke(app, ["fit", str(image_folder), "--model", tiny_spec, "--out", str(tmp_path / "done"), "-q"])
    assert res.exit_code == 2 and "--overwrite" in res.output and "--resume" not in res.output  # finished: not


def test_a_reloaded_run_keeps_the_pretrained_source_head(tmp_path, image_folder, tiny_spec):
    run = rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="finetune", epochs=1,
                     unfreeze=1, **QUIET)
    items = [str(p) for p in sorted(image_folder.rglob("*.jpg"))[:6]]
    again = rehead.Run(tmp_path / "run")
    import torch
    for a, b in zip(run.model.backbone.source_head[0].state_dict().values(),
                    again.model.backbone.source_head[0].state_dict().values()):
        assert torch.equal(a, b)
    res = again.source_agreement(items)
    assert res["n"] == 6 and 0 <= res["source_agreement"] <= 1
    cli = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--source-agreement", str(image_folder)])
    assert cli.exit_code == 0 and "source-task agreement" in cli.output
    cut = rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "cut", strategy="extract", cut=1, **QUIET)
    with pytest.raises(BadRun, match="is cut at stage 1 of .*needs a run without --cut"):
        rehead.Run(cut.dir).source_agreement(items)
    (tmp_path / "cut" / "source_head.safetensors").unlink()  # as a table or text backbone's run: no source task
    with pytest.raises(BadRun, match="without a source task's classifier"):
        rehead.Run(cut.dir).source_agreement(items)


def test_the_source_model_as_it_is_predicts_imagenet_labels():
    from tests.conftest import shared_dataset
    ants = sorted((shared_dataset("hymenoptera_data") / "val" / "ants").glob("*.jpg"))[:8]
    res = runner.invoke(app, ["predict", "packaged:efficientnet_lite0", *map(str, ants), "--json", "-k", "1"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 8 and sum("ant" in r["top"][0]["label"] for r in rows) >= 5


def test_fit_takes_a_torch_dataset_of_images(tmp_path, tiny_spec):
    import torch

    class Colours(torch.utils.data.Dataset):
        classes = ["blue", "red"]

        def __len__(self):
            return 12

        def __getitem__(self, i):
            x = torch.zeros(3, 32, 32)
            x[2 if i % 2 == 0 else 0] = 0.8  # blue or red
            return x, i % 2

    run = rehead.fit(Colours(), model=tiny_spec, out=tmp_path / "run", strategy="extract", **QUIET)
    assert run.classes == ["blue", "red"]
    s = run.config["data_summary"]
    assert s["train"] + s["val"] == 12
    again = rehead.fit(Colours(), model=tiny_spec, out=tmp_path / "run2", strategy="extract", **QUIET)
    assert again.config["data"] == run.config["data"]  # the same data is written once, same identity
    Colours.classes = ["train", "val"]  # class names that are split folder names: still classes
    named = rehead.fit(Colours(), model=tiny_spec, out=tmp_path / "run3", strategy="extract", **QUIET)
    assert named.classes == ["train", "val"] and sum(named.config["data_summary"][k] for k in ("train", "val")) == 12


def test_a_run_fitted_on_an_in_memory_module_says_why_it_cannot_be_reloaded(tmp_path, image_folder):
    """It died in "unknown source 'module' in 'module:EfficientNet'; sources are: file, glove, ..."."""
    import timm
    run = rehead.fit(str(image_folder), model=timm.create_model("test_efficientnet", num_classes=0),
                     out=tmp_path / "run", strategy="extract", **QUIET)
    assert run.predict([str(next(image_folder.rglob("*.jpg")))])  # the Run fit returned works
    with pytest.raises(BadRun, match="in-memory nn.Module \\(EfficientNet\\).*timm:NAME"):
        rehead.Run(tmp_path / "run").predict([str(next(image_folder.rglob("*.jpg")))])


def test_a_plain_module_is_cut_below_its_classifier_which_is_kept_as_the_source_head(tmp_path, image_folder):
    """A torchvision resnet18 was used whole: the new head sat on its 1000 ImageNet logits (in_dim 1000)."""
    import torch
    import torchvision
    m = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    run = rehead.fit(str(image_folder), model=m, out=tmp_path / "run", strategy="extract", **QUIET)
    assert run.config["head"]["in_dim"] == 512 and isinstance(m.fc, torch.nn.Linear)  # the user's module unchanged
    x = torch.rand(2, 3, 64, 64)
    bb = run.model.backbone.eval()
    with torch.no_grad():  # the source head reads the features the classifier read: the module's own logits
        assert torch.allclose(bb.source_head[0](bb(x)), m(x), atol=1e-5)


def test_evaluate_names_val_images_that_are_gone_and_says_when_none_is_left(tmp_path, image_folder, tiny_spec):
    """It printed "(1 skipped)" naming nothing, and scikit-learn's "Found empty input array" when
    the photos had moved."""
    import os
    import shutil
    from typer.testing import CliRunner
    from rehead.cli import app
    run = rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", **QUIET)
    items, _ = run.val_split()
    os.remove(items[0])
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0 and f"(1 skipped, unreadable: {items[0]})" in r.output, r.output
    shutil.rmtree(image_folder)
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 2 and f"none of the {len(items)} samples could be read" in r.output, r.output


def test_in_memory_images_are_decoded_as_their_files_are(tmp_path, image_folder, tiny_spec):
    """A 16-bit or EXIF-rotated PIL image, a [0, 1] or uint8 tensor and a numpy array were fed
    otherwise than the same picture as a file (a raw full-size tensor, a crash, a 'path' error)."""
    import numpy as np
    import torch
    from PIL import Image
    run = rehead.fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", **QUIET)
    p = str(next(image_folder.rglob("*.jpg")))
    rgb = np.asarray(Image.open(p).convert("RGB"))
    t8 = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    want = run.logits([p])[0]
    # numpy as HWC uint8, CHW uint8 and HWC float in [0, 1] (the last two were raw PIL TypeErrors)
    for x in (Image.open(p), rgb, rgb.transpose(2, 0, 1), rgb / 255.0, t8, t8.float() / 255):
        assert torch.allclose(run.logits([x])[0], want, atol=1e-5), type(x)
    with pytest.raises(DataError, match="float64 array with values in \\[0, 25.\\]: give floats in \\[0, 1\\]"):
        run.predict([rgb * 1.0])
    wide = (rgb[..., 0].astype(np.uint16) * 257)  # 16 bits: the file is scaled, so is the image in memory
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert torch.allclose(run.logits([Image.fromarray(wide)])[0], run.logits([str(tmp_path / "wide.png")])[0], atol=1e-5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: a camera's portrait photo
    Image.open(p).save(tmp_path / "rot.jpg", exif=exif)
    assert torch.allclose(run.logits([Image.open(tmp_path / "rot.jpg")])[0], run.logits([str(tmp_path / "rot.jpg")])[0],
                          atol=1e-5)
    with pytest.raises(DataError, match="tensor of shape \\(5, 5\\)"):
        run.predict([torch.zeros(5, 5)])


def test_an_unquoted_brace_pattern_gets_a_hint_to_quote_it():
    """The shell expands shards/train-{000..002}.tar into three arguments: click said only "Got unexpected
    extra argument(s)"."""
    r = CliRunner().invoke(app, ["fit", "s/train-000.tar", "s/train-001.tar", "s/train-002.tar"])
    assert r.exit_code == 2 and "quote it" in r.output and "brace pattern" in r.output, r.output
    r = CliRunner().invoke(app, ["fit", "photos", "extra"])
    assert r.exit_code == 2 and "brace" not in r.output


def test_column_options_on_a_folder_of_class_folders_are_refused(tmp_path, image_folder, tiny_spec):
    """--label-column on a folder of class folders was recorded in config.yaml and ignored unsaid
    (fit, probe, rank, lr-find); lr-find's --lr-decay with --unfreeze 0 likewise."""
    from rehead.fit import fit
    with pytest.raises(DataError, match="--label-column species: .* folder of image class folders"):
        fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", label_column="species", **QUIET)
    assert not (tmp_path / "run").exists()
    for cmd in (["probe", str(image_folder), "--model", tiny_spec, "--out", str(tmp_path / "p"),
                 "--label-column", "species"],
                ["lr-find", str(image_folder), "--model", tiny_spec, "--out", str(tmp_path / "l"), "--lr-decay", "2"]):
        r = runner.invoke(app, cmd, env={"COLUMNS": "300"})
        assert r.exit_code != 0 and ("folder of image class folders" in r.output or "--unfreeze 0" in r.output), r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "l").exists()
    run = fit(str(image_folder), model=tiny_spec, out=tmp_path / "ok", label_column="label", **QUIET)  # the default
    assert run is not None
