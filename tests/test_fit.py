"""fit -> run directory -> evaluate / predict, from Python and from the command line."""
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import rehead
from rehead.cli import app
from rehead.run import Run, RunExists
from tests.conftest import same, shared_dataset

runner = CliRunner()


def _fit(data, out, spec, **kw):
    kw.setdefault("strategy", "extract")
    kw.setdefault("epochs", 15)
    return rehead.fit(str(data), model=spec, out=str(out), workers=0, progress=False, echo=lambda *a: None, **kw)


def test_fit_extract_learns_and_the_run_directory_reloads_identically(tmp_path, image_folder, tiny_spec):
    run = _fit(image_folder, tmp_path / "run", tiny_spec, lr=1e-2)
    for f in ("config.yaml", "labels.json", "split.json", "metrics.csv", "model.safetensors", "summary.json"):
        assert (tmp_path / "run" / f).exists(), f
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_acc"] >= 0.75  # colour is learnable even from random features
    items, labels = run.val_split()
    in_memory, _, _ = run.logits(items)
    loaded = Run(tmp_path / "run")
    from_disk, _, _ = loaded.logits(items)
    assert torch.allclose(in_memory, from_disk, atol=1e-6)
    res = loaded.evaluate(items, labels)
    assert res["n"] == len(items) and sum(map(sum, res["confusion_matrix"])) == len(items)
    pred = loaded.predict(items[:2], top_k=2)
    assert [p["item"] for p in pred] == items[:2]
    assert abs(sum(t["prob"] for t in pred[0]["top"]) - 1) < 1e-5


def test_second_fit_with_same_inputs_builds_no_backbone_and_writes_the_same_run(tmp_path, image_folder, tiny_spec,
                                                                              monkeypatch):
    from safetensors.torch import load_file
    from rehead import zoo
    from rehead.zoo.backbone import Backbone
    first = _fit(image_folder, tmp_path / "a", tiny_spec)
    calls = []
    monkeypatch.setattr(Backbone, "forward_cuts", lambda self, x, c: calls.append(x.shape[0]))
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a warm fit built the backbone"))
    second = _fit(image_folder, tmp_path / "b", tiny_spec)
    monkeypatch.undo()
    assert calls == []
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["backbone_built"] is False
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "config.yaml").read_text() == (tmp_path / "b" / "config.yaml").read_text()
    items, _ = first.val_split()
    assert same(first.logits(items)[0], second.logits(items)[0])


def test_an_extract_fit_scores_its_test_split_from_the_store_and_a_warm_one_decodes_nothing(tmp_path, tiny_spec,
                                                                                            monkeypatch):
    import PIL.Image
    from rehead import store, zoo
    from rehead.data import images
    from tests.conftest import make_images
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)  # the images were just written: trust their stat at once
    data = tmp_path / "d"
    make_images(data / "train", n=12)
    make_images(data / "test", n=6, seed=1)
    cold = _fit(data, tmp_path / "a", tiny_spec)
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["test_n"] == 12
    # the same figures as the run's own model scoring the test images
    items = sorted(str(p) for p in (data / "test").rglob("*.jpg"))
    own = Run(tmp_path / "a").evaluate(items, [cold.classes.index(Path(p).parent.name) for p in items])
    assert (own["n"], own["accuracy"]) == (s["test_n"], s["test_acc"])
    assert abs(own["nll"] - s["test_nll"]) < 1e-6
    # a warm fit: no backbone, no image opened, the test split read from the store
    monkeypatch.setattr(images, "_CHECKED", {})
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("a warm fit decoded an image"))
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a warm fit built the backbone"))
    _fit(data, tmp_path / "b", tiny_spec)
    warm = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert {k: warm[k] for k in warm if k.startswith("test_")} == {k: s[k] for k in s if k.startswith("test_")}


def test_an_extract_run_evaluates_and_predicts_from_the_store(tmp_path, image_folder, tiny_spec, monkeypatch):
    import PIL.Image
    from tests.conftest import make_images
    _fit(image_folder, tmp_path / "a", tiny_spec)
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["kept_on_features"] is True
    run = Run(tmp_path / "a")
    items, labels = run.val_split()
    new = sorted(str(p) for p in make_images(tmp_path / "new", n=3, seed=5).rglob("*.jpg"))
    first = run.predict(new)  # computed once, kept
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("decoded an image the store holds"))
    res = Run(tmp_path / "a").evaluate(items, labels)  # val: the fit's own features
    assert (res["n"], res["accuracy"]) == (len(items), s["val_acc"])
    assert Run(tmp_path / "a").predict(new) == first
    # flips are not in the store, and a run whose backbone trained is scored by its model: both decode
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    opened = []
    Run(tmp_path / "a").evaluate(items, labels, tta=True)
    assert len(opened) == len(items)
    s["kept_on_features"] = False
    (tmp_path / "a" / "summary.json").write_text(json.dumps(s))
    opened.clear()
    assert Run(tmp_path / "a").evaluate(items, labels)["accuracy"] == res["accuracy"]
    assert len(opened) == len(items)
    # a named pipe or a missing file is never opened to key it: the model's path names it, as before
    s["kept_on_features"] = True
    (tmp_path / "a" / "summary.json").write_text(json.dumps(s))
    pipe, missing = tmp_path / "pipe.jpg", tmp_path / "missing.jpg"
    os.mkfifo(pipe)
    rows = Run(tmp_path / "a").predict([str(pipe), str(missing), new[0]])
    assert {r["item"]: "error" in r for r in rows} == {str(pipe): True, str(missing): True, new[0]: False}, rows


def test_a_warm_fit_imports_neither_timm_nor_torchvision(tmp_path, image_folder, tiny_spec):
    import os
    import subprocess
    import sys
    _fit(image_folder, tmp_path / "a", tiny_spec)
    code = (f"import sys, rehead; rehead.fit({str(image_folder)!r}, model={tiny_spec!r}, out={str(tmp_path / 'b')!r}, "
            "strategy='extract', epochs=15, workers=0, progress=False, echo=lambda *a: None); "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_a_warm_extract_run_keeps_the_pretrained_head_and_measures_forgetting(tmp_path, image_folder, tiny_spec):
    _fit(image_folder, tmp_path / "a", tiny_spec)
    b = _fit(image_folder, tmp_path / "b", tiny_spec)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["backbone_built"] is False  # warm
    sa, sb = (load_file(str(tmp_path / r / "source_head.safetensors")) for r in ("a", "b"))  # b had none
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    items = [str(p) for p in sorted(image_folder.rglob("*.jpg"))[:4]]
    assert Run(b.dir).source_agreement(items)["source_agreement"] == 1.0  # the backbone never trained


def test_a_run_made_from_a_run_keeps_the_pretrained_head_of_its_source(tmp_path, image_folder, tiny_spec):
    """--model RUN built the source run's architecture without weights, so its "pretrained" head was
    random: saved as source_head.safetensors, and --source-agreement read 0.0 for an untouched backbone."""
    a = _fit(image_folder, tmp_path / "a", tiny_spec)
    c = _fit(image_folder, tmp_path / "c", str(a.dir))
    sa, sc = (load_file(str(tmp_path / r / "source_head.safetensors")) for r in ("a", "c"))
    assert sa.keys() == sc.keys() and all(torch.equal(sa[k], sc[k]) for k in sa)
    items = [str(p) for p in sorted(image_folder.rglob("*.jpg"))[:4]]
    assert Run(c.dir).source_agreement(items)["source_agreement"] == 1.0  # extract: nothing forgotten


def test_predict_keeps_the_input_order_with_unreadable_items(tmp_path, image_folder, tiny_spec):
    run = _fit(image_folder, tmp_path / "a", tiny_spec)
    good = [str(p) for p in sorted(image_folder.rglob("*.jpg"))[:2]]
    bad = tmp_path / "bad.jpg"
    bad.write_text("x")
    rows = run.predict([good[0], str(bad), good[1]])
    assert [r["item"] for r in rows] == [good[0], str(bad), good[1]]  # a script pairs outputs with inputs
    assert "error" in rows[1] and "top" in rows[0] and "top" in rows[2]


def test_new_weights_in_the_same_file_are_not_taken_from_the_snapshot(tmp_path, image_folder):
    import os
    import timm
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    spec = f"file:{path}#timm:test_efficientnet"
    for seed, run in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()},
                  str(path))
        os.utime(path, ns=(10**18, 10**18))  # same size and mtime as before: only the bytes differ
        _fit(image_folder, tmp_path / run, spec, epochs=2)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert "backbone_built" not in summary or summary["backbone_built"]


def test_an_mlp_head_run_reloads_identically(tmp_path, image_folder, tiny_spec):
    run = _fit(image_folder, tmp_path / "run", tiny_spec, head="mlp", hidden=16, epochs=3)
    items, _ = run.val_split()
    assert torch.allclose(run.logits(items)[0], Run(tmp_path / "run").logits(items)[0], atol=1e-6)


def test_a_run_directory_is_never_overwritten_without_asking(tmp_path, image_folder, tiny_spec):
    _fit(image_folder, tmp_path / "run", tiny_spec, epochs=1)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RunExists, match="--overwrite"):
        _fit(image_folder, tmp_path / "run", tiny_spec, epochs=1)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    _fit(image_folder, tmp_path / "run", tiny_spec, epochs=1, overwrite=True)


def test_checkpoint_for_another_architecture_is_a_clear_error(tmp_path, image_folder, tiny_spec):
    from safetensors.torch import save_file
    _fit(image_folder, tmp_path / "run", tiny_spec, epochs=1)
    save_file({"head.0.weight": torch.zeros(3, 3)}, str(tmp_path / "run" / "model.safetensors"))
    with pytest.raises(ValueError, match="another architecture"):
        Run(tmp_path / "run")


def test_cli_models_inspect_fit_evaluate_predict(tmp_path, image_folder, tiny_spec):
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "packaged:efficientnet_lite0" in r.output
    r = runner.invoke(app, ["inspect", tiny_spec])
    assert r.exit_code == 0 and "stem" in r.output and "params" in r.output
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(image_folder), "--model", tiny_spec, "--strategy", "extract",
                            "--out", str(out), "--epochs", "5", "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    assert "val accuracy" in r.output
    r = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(res["per_class"]) == {"blue", "red"} and len(res["confusion_matrix"]) == 2
    r = runner.invoke(app, ["evaluate", str(out), str(image_folder)])  # DATA: every image of a class folder
    assert r.exit_code == 0 and "on 20 samples" in r.output
    # ... which are the run's own train and val images: said, or 1.0 on its training data reads as held out
    assert "20 of 20 samples were seen by this run" in r.output and "optimistic" in r.output
    import shutil  # a copy of them under another folder: the same photos, still said (compared by content)
    shutil.copytree(image_folder, tmp_path / "copy")
    r = runner.invoke(app, ["evaluate", str(out), str(tmp_path / "copy")])
    assert r.exit_code == 0 and "20 of 20 samples were seen by this run" in r.output, r.output
    from tests.conftest import make_images
    r = runner.invoke(app, ["evaluate", str(out), str(make_images(tmp_path / "new", n=3, seed=7)), "--json"])
    assert r.exit_code == 0 and "seen" not in json.loads(r.output) and "seen by this run" not in r.output
    one = next(image_folder.glob("red/*.jpg"))
    r = runner.invoke(app, ["predict", str(out), str(one), str(image_folder / "blue"), "--json"])
    rows = json.loads(r.output)
    assert len(rows) == 11 and all(len(x["top"]) == 2 for x in rows)
    # a CSV of image paths (relative to it, as fit reads one): each image predicted, not the CSV
    # itself called an unreadable image; a CSV without the path column or with a missing image: an error
    (tmp_path / "new.csv").write_text(f"path\n{os.path.relpath(one, tmp_path)}\n{rows[1]['item']}\n")
    r = runner.invoke(app, ["predict", str(out), str(tmp_path / "new.csv"), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert [x["item"] for x in got] == [str(one), rows[1]["item"]]
    for mine, theirs in zip(got, rows[:2]):  # the same images in other batches: equal up to float rounding
        assert [t["label"] for t in mine["top"]] == [t["label"] for t in theirs["top"]]
        assert [t["prob"] for t in mine["top"]] == pytest.approx([t["prob"] for t in theirs["top"]], rel=1e-4, abs=1e-9)
    (tmp_path / "bad.csv").write_text(f"file\n{one}\n")
    (tmp_path / "gone.csv").write_text("path\nno_such.jpg\n")
    for f, said in (("bad.csv", "no column 'path'"), ("gone.csv", "do not exist")):
        r = runner.invoke(app, ["predict", str(out), str(tmp_path / f)])
        assert r.exit_code == 2 and said in r.output, r.output
    # every input unreadable: each named, and an exit status a script can test (it was 0)
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["predict", str(out), str(tmp_path / "fake.jpg")])
    assert r.exit_code == 2 and "fake.jpg: unreadable" in r.output and "none of the 1 input(s)" in r.output, r.output
    r = runner.invoke(app, ["fit", str(image_folder), "--model", "timm:no_such_net", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "timm has no model" in r.output


def test_auto_strategy_says_what_it_chose(tmp_path, image_folder, tiny_spec):
    said = []
    rehead.fit(str(image_folder), model=tiny_spec, out=str(tmp_path / "r"), epochs=1, workers=0,
               progress=False, echo=said.append)
    assert any("strategy auto -> extract" in s and "< 1000" in s for s in said)


@pytest.mark.slow
def test_hymenoptera_extract_reaches_the_tutorial_accuracy(tmp_path):
    """Real weights on real photos: the figure of issue 3 (>= 0.92 val accuracy)."""
    data = shared_dataset("hymenoptera_data")
    run = rehead.fit(str(data), model="packaged:efficientnet_lite0", out=str(tmp_path / "ants"),
                     strategy="extract", progress=False, echo=lambda *a: None)
    summary = json.loads((tmp_path / "ants" / "summary.json").read_text())
    assert summary["val_acc"] >= 0.92
    items, labels = run.val_split()
    assert Run(tmp_path / "ants").evaluate(items, labels)["accuracy"] >= 0.92


def test_a_finetune_that_keeps_its_head_suggests_only_what_it_did_not_try():
    """The closing hint when unfreezing never beat the head: no augmentation advice for text or for
    images already augmented, no "fewer stages" after a one-stage phase."""
    from rehead.fit import _no_gain_note
    s = {"kept_phase": "head", "phases": [{"phase": "head", "best_val_acc": 0.96, "best_val_loss": 0.1},
                                          {"phase": "unfreeze2", "best_val_acc": 0.95, "best_val_loss": 0.2}]}
    augmented = _no_gain_note(s, "image", "light", [0, 2])
    assert "unfreeze2 best 0.9500 <= head 0.9600" in augmented and "--augment" not in augmented
    assert "fewer --unfreeze stages" in augmented
    plain = _no_gain_note(s, "image", None, [0, 1])
    assert "--augment light" in plain and "fewer" not in plain
    text = _no_gain_note(s, "text", None, [0, -1])
    assert "--augment" not in text and "fewer --unfreeze stages" in text and "--strategy extract" in text
    assert _no_gain_note({**s, "kept_phase": "unfreeze2"}, "image", None, [0, 2]) is None
    l2sp = _no_gain_note(s, "image", "light", [0, 2], method="l2sp")  # extract would refuse --method l2sp
    assert "--strategy extract --method plain" in l2sp and "--strategy extract (" not in l2sp


def test_a_finetune_that_barely_trained_is_told_to_train_more_not_less():
    """An unfrozen phase whose train loss hardly fell from the head's (a task far from the source at
    the default LR: bench/orientation.py) underfit: the hint says raise the LR, not lower it."""
    from rehead.fit import _no_gain_note
    head = {"phase": "head", "best_val_acc": 0.65, "best_val_loss": 0.66, "train_loss_last": 0.61, "train_acc_last": 0.77}
    flat = {"phase": "unfreeze2", "best_val_acc": 0.64, "best_val_loss": 0.65, "train_loss_last": 0.58,
            "train_acc_last": 0.78}
    note = _no_gain_note({"kept_phase": "head", "phases": [head, flat]}, "image", "light", [0, 2])
    assert "barely trained (train loss 0.610 -> 0.580, train accuracy 0.780)" in note
    assert "a higher --lr" in note and "a lower --lr" not in note
    # the same val, but the phase fit its training samples: too much training, the old advice
    fitted = {**flat, "train_loss_last": 0.05, "train_acc_last": 0.99}
    note = _no_gain_note({"kept_phase": "head", "phases": [head, fitted]}, "image", "light", [0, 2])
    assert "a lower --lr" in note and "barely" not in note
    # a phase that fits its samples though its loss did not fall: not flat either
    nearly = {**head, "train_loss_last": 0.03, "train_acc_last": 0.99}
    note = _no_gain_note({"kept_phase": "head", "phases": [nearly, {**flat, "train_loss_last": 0.03,
                                                                     "train_acc_last": 0.99}]}, "image", "light", [0, 2])
    assert "a lower --lr" in note and "barely" not in note
    # a head that fit its samples: mixing is suggested, unless the run already mixed its images
    solved = {**head, "train_loss_last": 0.005, "train_acc_last": 1.0}
    s = {"kept_phase": "head", "phases": [solved, flat]}
    assert "--mixup 0.2" in _no_gain_note(s, "image", "light", [0, 2])
    assert "--mixup" not in _no_gain_note(s, "image", "light", [0, 2], mixed=True)


def test_a_finetune_whose_train_loss_rose_is_told_to_lower_the_lr_not_raise_it():
    """A regression fine-tune whose unfrozen steps took its train loss from the solved head's 0.058 to
    0.140 did not "barely train": it undid the head's fit. (Images under augmentation are not compared:
    the head's loss is on clean features.)"""
    from rehead.fit import _no_gain_note
    head = {"phase": "head", "best_val_acc": None, "best_val_loss": 0.34, "train_loss_last": 0.058,
            "train_acc_last": None}
    later = {"phase": "unfreeze7", "best_val_acc": None, "best_val_loss": 0.56, "train_loss_last": 0.140,
             "train_acc_last": None}
    note = _no_gain_note({"kept_phase": "head", "phases": [head, later]}, "text", None, [0, -1])
    assert "its train loss rose (train loss 0.058 -> 0.140)" in note and "a lower --lr" in note
    assert "barely" not in note and "higher" not in note
    augmented = _no_gain_note({"kept_phase": "head", "phases": [{**head, "best_val_acc": 0.9},
                                                                {**later, "best_val_acc": 0.8}]}, "image", "light", [0, 2])
    assert "rose" not in augmented


def test_a_finetune_after_a_head_that_fit_every_sample_is_told_why_it_kept_the_head():
    """A head solved to train loss ~0 with every training sample right leaves the unfrozen phases no
    gradient (digits: 0.005): the hint says so and names what gives them one, not a lower LR."""
    from rehead.fit import _no_gain_note
    solved = {"phase": "head", "best_val_acc": 0.919, "best_val_loss": 0.34, "train_loss_last": 0.005,
              "train_acc_last": 1.0}
    later = {"phase": "unfreeze2", "best_val_acc": 0.912, "best_val_loss": 0.35, "train_loss_last": 0.002,
             "train_acc_last": 1.0}
    s = {"kept_phase": "head", "phases": [solved, later]}
    note = _no_gain_note(s, "image", None, [0, 2])
    assert "the head already fit its training samples (train loss 0.005, train accuracy 1.000)" in note
    assert "--mixup 0.2 --cutmix 1.0" in note and "a higher --lr with --unfreeze -1" in note
    assert "a lower --lr" not in note and "--strategy extract" in note
    text = _no_gain_note(s, "text", None, [0, -1])
    assert "--mixup" not in text and "a higher --lr" in text
    one_wrong = {**solved, "train_acc_last": 0.999}  # not every sample right: the usual advice
    assert "a lower --lr" in _no_gain_note({**s, "phases": [one_wrong, later]}, "image", None, [0, 2])


def test_a_model_no_better_than_a_linear_model_of_its_input_is_told_so():
    """auto probes the input itself (16x16 pixels on digits: 0.94 against Lite2's 0.88): when that
    scored val at least as well as the model kept, the closing lines say so."""
    from rehead.fit import _input_note
    plan = {"reference": {"what": "16x16 pixels", "val_acc": 0.94, "acc": 0.942}}
    note = _input_note({"val_acc": 0.93}, plan)
    assert "the input itself (16x16 pixels) scored val 0.9400" in note and "0.9300" in note
    assert _input_note({"val_acc": 0.95}, plan) is None       # the model beats it: nothing to say
    assert _input_note({"val_acc": 0.93}, None) is None        # not auto: no probe of the input
    assert _input_note({"val_acc": None, "val_rmse": 1.0}, plan) is None


def test_a_text_csv_whose_text_column_is_named_otherwise_is_told_to_name_it(tmp_path):
    """A CSV of sentence,label is read as a table (no 'text' column): the error named table encoders
    only; the fix is --text-column sentence."""
    from rehead.data import DataError
    p = tmp_path / "t.csv"
    p.write_text("sentence,label\n" + "".join(f"the market rose {i} points today,{'ab'[i % 2]}\n" for i in range(20)))
    for model in (None, "packaged:minilm"):
        with pytest.raises(DataError, match="if column 'sentence' holds texts, pass --text-column sentence"):
            rehead.fit(str(p), model=model, out=tmp_path / "r", progress=False, echo=lambda *_: None)
    assert not (tmp_path / "r").exists()


def test_an_image_csv_whose_path_column_is_named_otherwise_is_told_to_name_it(tmp_path, image_folder, tiny_spec):
    """A CSV of file,label listing photos is read as a table (no 'path' column): the error said to choose a
    tabular model; the fix is --image-column file (evaluate already said so)."""
    from rehead.data import DataError
    p = tmp_path / "imgs.csv"
    rows = [f"{f},{f.parent.name}\n" for f in sorted(image_folder.rglob("*.jpg"))]
    p.write_text("file,label\n" + "".join(rows))
    for model in (None, tiny_spec):
        with pytest.raises(DataError, match="if column 'file' lists image files, pass --image-column file"):
            rehead.fit(str(p), model=model, out=tmp_path / "r", progress=False, echo=lambda *_: None)
    assert not (tmp_path / "r").exists()
    run = rehead.fit(str(p), model=tiny_spec, out=tmp_path / "r", image_column="file", progress=False,
                     echo=lambda *_: None)  # the hint's fix works
    assert run.modality == "image"


# -- options an extract fit leaves idle; a Path as the model ---------------------------------------------
def _said(data, out, spec, **kw):
    said = []
    run = rehead.fit(str(data), model=spec, out=str(out), workers=0, progress=False, echo=said.append, **kw)
    return run, [s for s in said if s.startswith("note: ")]


def test_an_extract_fit_names_in_one_note_every_option_its_solved_linear_head_leaves_idle(tmp_path, image_folder,
                                                                                          tiny_spec):
    """The linear head is solved on cached features in one step: epochs, LRs, schedules, EMA, dropout and
    the backbone's options change nothing (the same head as without them), and one note says so."""
    plain, notes = _said(image_folder, tmp_path / "a", tiny_spec, strategy="extract")
    assert notes == []
    idle, notes = _said(image_folder, tmp_path / "b", tiny_spec, strategy="extract", epochs=3, lr=0.05, ema=0.9,
                        dropout=0.5, schedule="cosine", patience=1, optimizer="sgd", unfreeze=-1, layer_decay=0.5,
                        lr_min=1e-5, freeze_bn=False, hidden=8, seed=0)
    assert notes == ["note: --strategy extract solves the linear head on cached features: --epochs, --lr, --unfreeze, "
                     "--lr-min, --layer-decay, --schedule, --optimizer, --ema, --patience, --dropout, --hidden, "
                     "--no-freeze-bn have no effect (use --strategy finetune, or --head mlp for a trained head)"]
    items, _ = plain.val_split()
    assert same(plain.logits(items)[0], idle.logits(items)[0])  # what the fit computes is unchanged


def test_a_budget_that_auto_leaves_idle_by_extracting_is_said(tmp_path, image_folder, tiny_spec):
    """--budget 2 with auto choosing extract was recorded in config.yaml with no word (extract has no live phase)."""
    run, notes = _said(image_folder, tmp_path / "a", tiny_spec, strategy="auto", budget=2)
    assert all(p["on_features"] for p in run.config["phases"])  # auto extracts here (tests/test_auto.py)
    assert any("--budget" in n and "no effect" in n for n in notes), notes


def test_an_extract_fit_with_an_mlp_head_flags_only_what_its_trained_head_does_not_use(tmp_path, image_folder,
                                                                                       tiny_spec):
    _, notes = _said(image_folder, tmp_path / "a", tiny_spec, strategy="extract", head="mlp", hidden=8, epochs=2,
                     lr=1e-2, dropout=0.2, schedule="cosine", unfreeze=1, optimizer="sgd", ema=0.9)
    assert notes == ["note: --strategy extract trains only the mlp head, on cached features: --unfreeze, --optimizer, "
                     "--ema have no effect (use --strategy finetune to train backbone stages)"]


def test_find_lr_with_extract_is_refused_before_any_work(tmp_path, image_folder, tiny_spec, monkeypatch):
    from rehead import fit as fit_module
    from rehead.config import ConfigError
    monkeypatch.setattr(fit_module, "find_lr", lambda *a, **k: pytest.fail("the range test ran"))
    with pytest.raises(ConfigError, match="--find-lr has nothing to set with --strategy extract"):
        _fit(image_folder, tmp_path / "run", tiny_spec, find_lr=True)
    assert not (tmp_path / "run").exists()
    r = runner.invoke(app, ["fit", str(image_folder), "--model", tiny_spec, "--strategy", "extract", "--find-lr",
                            "--out", str(tmp_path / "run"), "--workers", "0", "-q"])
    assert r.exit_code == 2 and "--find-lr has nothing to set" in r.output and not (tmp_path / "run").exists()


def test_find_lr_where_auto_chose_extract_skips_the_range_test_and_says_so(tmp_path, image_folder, tiny_spec,
                                                                          monkeypatch):
    import yaml
    from rehead import fit as fit_module
    monkeypatch.setattr(fit_module, "find_lr", lambda *a, **k: pytest.fail("the range test ran"))
    _, notes = _said(image_folder, tmp_path / "run", tiny_spec, find_lr=True, epochs=1)
    assert any(n.startswith("note: --find-lr has nothing to set: this fit runs extract") for n in notes), notes
    assert "note: extract (--strategy auto's choice) solves the linear head on cached features: --epochs has no " \
           "effect (use --strategy finetune, or --head mlp for a trained head)" in notes
    fit_cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["fit"]
    assert fit_cfg["find_lr"] is False and fit_cfg["lr"] is None  # config.yaml records what ran


def test_a_run_directory_given_as_a_path_is_the_model(tmp_path, image_folder, tiny_spec):
    _fit(image_folder, tmp_path / "bb", tiny_spec, epochs=1)
    run = rehead.fit(str(image_folder), model=tmp_path / "bb", out=tmp_path / "run", strategy="extract", workers=0,
                     progress=False, echo=lambda *a: None)
    assert run.summary["val_acc"] is not None
    import yaml
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == str(tmp_path / "bb")


def test_a_mistyped_option_is_refused_before_the_run_directory_exists(tmp_path, image_folder, tiny_spec):
    from rehead.config import ConfigError
    for bad, says in (({"epochs": 2.5}, "--epochs must be an integer"), ({"model": 123}, "--model must be a string"),
                      ({"freeze_bn": "no"}, "--freeze-bn/--no-freeze-bn must be True or False")):
        kw = {"model": tiny_spec, **bad}
        with pytest.raises(ConfigError, match=says):
            rehead.fit(str(image_folder), out=tmp_path / "run", strategy="extract", progress=False,
                       echo=lambda *a: None, **kw)
        assert not (tmp_path / "run").exists()


def test_inspect_a_run_shows_its_head_and_how_to_cut(tmp_path, image_folder, tiny_spec):
    _fit(image_folder, tmp_path / "a", tiny_spec)
    r = runner.invoke(app, ["inspect", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "head (linear, the run's own)" in r.output and "-> 2 outputs (blue, red)" in r.output
    assert "rehead fit DATA --model" in r.output  # inspect has no --cut: the line names the command that has
    j = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "a"), "--json"]).output)
    assert j["head"]["out"] == 2
    assert json.loads(runner.invoke(app, ["inspect", tiny_spec, "--json"]).output)["head"] is None


@pytest.mark.parametrize("options, said", [
    ({"find_lr": True, "lr": 1e-3, "strategy": "finetune"}, "--find-lr picks the learning rate and --lr"),
    ({"layer_decay": 0.75, "lr_decay": 2.0, "strategy": "finetune"}, "replaces --lr-decay and --lr-min"),
    ({"warmup": 0.3, "strategy": "finetune"}, "--warmup applies to --schedule cosine or linear"),
    ({"sgdr_mult": 3.0, "strategy": "finetune"}, "shapes --schedule sgdr"),
    ({"unfreeze": 1}, "auto plans its own unfreezing")])
def test_an_option_another_one_overrides_is_refused_before_anything_is_written(tmp_path, image_folder, tiny_spec,
                                                                              options, said):
    from rehead.config import ConfigError
    with pytest.raises(ConfigError, match=said):  # each was recorded in config.yaml as if it had run
        _fit(image_folder, tmp_path / "r", tiny_spec, **{"strategy": "auto", **options})
    assert not (tmp_path / "r").exists()


def test_a_phase_early_stopping_ended_is_said_in_the_phases_line(tmp_path, image_folder, tiny_spec):
    said = []
    run = rehead.fit(str(image_folder), model=tiny_spec, out=str(tmp_path / "r"), strategy="finetune", unfreeze=1,
                     epochs=4, lr=3.0, patience=1, workers=0, progress=False, echo=said.append)
    phases = run.summary["phases"]
    assert all(p["epochs_planned"] for p in phases)
    line = next(s for s in said if s.startswith("phases: "))
    stopped = [p for p in phases if p["epochs_run"] < p["epochs_planned"]]
    assert stopped, phases  # a top LR of 3 cannot improve val every epoch: patience 1 ends the phase early
    assert f"(stopped after {stopped[0]['epochs_run']} of {stopped[0]['epochs_planned']} epochs)" in line


def test_features_the_same_for_every_sample_are_refused_and_leave_no_run_behind(tmp_path, tiny_spec):
    """A CLS-pooled text encoder cut at its embeddings (or any input the prefix maps to one point) crashed
    the solver with a raw "cannot reshape tensor of 0 elements" and left a run directory behind."""
    from PIL import Image
    from rehead.data import DataError
    for c in ("a", "b"):
        (tmp_path / "same" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), (90, 120, 30)).save(tmp_path / "same" / c / f"{i}.png")
    with pytest.raises(DataError, match="are the same for every training sample: nothing to learn from"):
        _fit(tmp_path / "same", tmp_path / "run", tiny_spec)
    assert not (tmp_path / "run").exists()  # refused on its data: a rerun needs no --overwrite


def test_inspect_shows_the_feature_size_a_head_reads_at_each_cut(tmp_path_factory):
    """A ViT's last stage showed its token sequence (tokens, dim) and nothing said a head reads one vector."""
    from tests.conftest import timm_spec
    spec = timm_spec(tmp_path_factory, "test_vit")
    r = runner.invoke(app, ["inspect", spec])
    assert r.exit_code == 0 and "features" in r.output, r.output
    last = [line for line in r.output.splitlines() if "pre_logits" in line or " norm " in line][-1]
    width, features = map(int, re.search(r"\((\d+),\)\s+(\d+)", last).groups())
    assert features == width  # the last stage's output is the pooled vector a head reads, not tokens x width


def test_a_run_records_its_model_path_absolute_so_it_loads_from_anywhere(tmp_path, image_folder, tiny_spec,
                                                                        monkeypatch):
    """--model runs/a (relative) was recorded as typed: from another directory the run said "'runs/a' is
    not a model spec"."""
    monkeypatch.chdir(tmp_path)
    _fit(image_folder, "a", tiny_spec)
    c = _fit(image_folder, "c", "a")
    assert c.config["model"] == str(tmp_path / "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    item = str(next(image_folder.rglob("*.jpg")))
    again, first = (r.predict([item])[0]["top"] for r in (Run(tmp_path / "c"), c))
    assert [t["label"] for t in again] == [t["label"] for t in first]
    assert [t["prob"] for t in again] == pytest.approx([t["prob"] for t in first], abs=1e-6)
    # a Run loaded by a relative path read its summary (and temperature) relative to the new working directory
    assert c.summary == Run(tmp_path / "c").summary and c.summary["val_acc"] is not None


def test_a_fit_into_the_directory_of_its_own_model_is_refused_before_any_work(tmp_path, image_folder, tiny_spec,
                                                                             monkeypatch):
    from rehead.fit import fit
    from rehead.rundir import RunExists
    _fit(image_folder, tmp_path / "bb", tiny_spec, epochs=1)
    _fit(image_folder, tmp_path / "r2", str(tmp_path / "bb"), epochs=1)  # made from bb: bb rebuilds it
    before = (tmp_path / "bb" / "config.yaml").read_text()
    import sys
    monkeypatch.setattr(sys.modules["rehead.fit"], "_prepare", lambda *a, **k: pytest.fail("work began"))
    for model, out in ((tmp_path / "bb", tmp_path / "bb"), (tmp_path / "bb", tmp_path / "bb" / ".." / "bb"),
                       (tmp_path / "r2", tmp_path / "bb"), (tmp_path / "bb", tmp_path)):
        with pytest.raises(RunExists, match="which this command reads: --overwrite would delete it"):
            fit(str(image_folder), model=model, out=out, overwrite=True, strategy="extract", progress=False,
                echo=lambda *a: None)
    assert (tmp_path / "bb" / "config.yaml").read_text() == before


def test_a_run_whose_model_leads_back_to_itself_is_a_clear_error(tmp_path, image_folder, tiny_spec):
    import yaml
    from rehead import zoo
    from rehead.rundir import BadRun
    for name in ("a", "b"):
        _fit(image_folder, tmp_path / name, tiny_spec, epochs=1)
    for name, model in (("a", "a"), ("b", "c"), ("c", "b")):  # a names itself; b and c each other
        if name == "c":
            (tmp_path / "c").mkdir()
            (tmp_path / "c" / "config.yaml").write_text((tmp_path / "b" / "config.yaml").read_text())
        cfg = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": str(tmp_path / model)}))
    for name in ("a", "b"):
        with pytest.raises(BadRun, match="leads back to itself"):
            zoo.load(str(tmp_path / name))


def test_find_lr_with_unfrozen_phases_measures_their_stages_and_runs_them_at_the_suggestion(tmp_path, image_folder,
                                                                                           tiny_spec, monkeypatch):
    """--find-lr measured the head alone on cached features and ran the unfrozen phases at that / 10: on MiniLM
    0.0115, 57x text's default, which wrecked the fine-tune. The range test now steps the first unfrozen
    phase's stages, and that phase runs at its suggestion."""
    import yaml
    from rehead import fit as fit_module
    calls, real = [], fit_module.find_lr
    monkeypatch.setattr(fit_module, "find_lr", lambda *a, **k: calls.append(k) or calls.append(real(*a, **k))
                        or calls[-1])
    said = []
    rehead.fit(str(image_folder), model=tiny_spec, out=str(tmp_path / "r"), strategy="finetune", unfreeze=1, epochs=1,
               find_lr=True, workers=0, progress=False, echo=said.append)
    kw, res = calls
    assert kw["unfreeze"] == 1
    phases = {p["name"]: p for p in yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["phases"]}
    assert phases["unfreeze1"]["lr"] == pytest.approx(res["suggested"])
    line = next(s for s in said if s.startswith("--find-lr: "))
    assert f"{res['suggested']:.2e}, measured with the last 1 stage(s) training" in line
    assert f"unfreeze1 {res['suggested']:.2e}" in line and "head solved (no LR)" in line
    assert not any("so give it --lr" in s for s in said)  # the standalone finder's hint is not for this fit


def test_a_single_phase_early_stopping_ended_is_said_too(tmp_path, image_folder, tiny_spec):
    """Only a multi-phase run's "phases:" line said a phase stopped early; one phase said nothing."""
    said = []
    run = rehead.fit(str(image_folder), model=tiny_spec, out=str(tmp_path / "r"), strategy="head", epochs=6, lr=300.0,
                     patience=1, workers=0, progress=False, echo=said.append)
    (p,) = run.summary["phases"]
    assert p["epochs_run"] < p["epochs_planned"] == 6, p  # a head LR of 300 cannot improve val every epoch
    assert f"head (stopped after {p['epochs_run']} of 6 epochs); kept epoch {run.summary['kept_epoch']}" in said


def test_the_closing_hint_quotes_a_run_path_with_spaces(tmp_path, image_folder, tiny_spec):
    said = []
    out = tmp_path / "my runs" / "r"
    rehead.fit(str(image_folder), model=tiny_spec, out=str(out), strategy="extract", workers=0, progress=False,
               echo=said.append)
    hint = next(s for s in said if "next: " in s).split("next: ")[1]
    assert hint == f"rehead evaluate '{out}' | rehead predict '{out}' FILES | rehead report '{out}'"


def test_resuming_a_finished_run_needs_no_write_access(tmp_path, image_folder, tiny_spec, monkeypatch, capsys):
    """`fit --resume` on a finished read-only run (a colleague's) said "Permission denied: .lock", not that
    it had finished: the lock was taken before the run was read."""
    from rehead.fit import fit
    from rehead.rundir import RunDir
    fit(str(image_folder), model=tiny_spec, out=tmp_path / "run", strategy="extract", workers=0, progress=False,
        echo=lambda *_: None)

    def read_only(self):
        raise PermissionError(13, "Permission denied", str(self.path / ".lock"))
    monkeypatch.setattr(RunDir, "_claim", read_only)
    said = []
    run = fit(out=tmp_path / "run", resume=True, progress=False, echo=said.append)
    assert run is not None and any("already finished" in s for s in said), said
    # data, options, config= and hooks= given with resume=True were dropped without a word (the CLI refuses)
    from rehead.config import ConfigError
    for extra in ({"data": "/no/such/data"}, {"epochs": 10, "lr": 1.0}, {"config": {"seed": 7}}, {"hooks": [object()]}):
        with pytest.raises(ConfigError, match="resume=True continues .* would be ignored"):
            fit(out=tmp_path / "run", resume=True, progress=False, echo=said.append, **extra)


def test_keep_last_says_when_a_later_epoch_made_val_worse(tmp_path):
    """--keep-last kept an unfrozen phase that took val from 1.0 to 0.82 with no note (the note that says
    unfreezing did not pay only looks at runs that kept the head), and summary.json's best_epoch is the kept
    one: the note names the better epoch; the same run keeping its best epoch gives the plain note."""
    from sklearn.datasets import load_iris
    d = load_iris(as_frame=True)
    df = d.frame.drop(columns="target").assign(label=d.target.map(dict(enumerate(d.target_names))))
    df.drop_duplicates().to_csv(tmp_path / "iris.csv", index=False)
    notes = {}
    for keep_last in (True, False):
        rehead.fit(str(tmp_path / "iris.csv"), model="tabular:mlp-4-8x1", out=tmp_path / f"r{keep_last}",
                   strategy="finetune", epochs=2, unfreeze=1, keep_last=keep_last, lr=30.0, val_fraction=0.3,
                   progress=False, echo=lambda *a: None)
        s = json.loads((tmp_path / f"r{keep_last}" / "summary.json").read_text())
        notes[keep_last] = s["note"] or ""
        head = s["phases"][0]
        assert head["best_val_acc"] > s["phases"][1]["best_val_acc"]  # the unfrozen steps undid the head's fit
    assert notes[True].startswith("--keep-last kept the last epoch (unfreeze1 epoch 2, val ") and \
        f"below head epoch 1 (val {head['best_val_acc']:.4f}): the later epochs made val worse" in notes[True], notes
    assert "kept the head weights; unfreezing did not pay here" in notes[False], notes


def test_an_image_run_given_a_folder_of_csv_files_says_they_are_not_images(tmp_path, image_folder, tiny_spec):
    """`rehead evaluate IMAGE_RUN texts/` said "texts has no class folders: put each class's images in a folder":
    the folder holds a text set (train.csv, test.csv), which is what to say."""
    _fit(image_folder, tmp_path / "run", tiny_spec)
    (tmp_path / "texts").mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / "texts" / name).write_text("text,label\na fine film,pos\nan awful film,neg\n")
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "texts")])
    assert r.exit_code == 2 and "it holds test.csv, train.csv: text or table data, and this reads images" in r.output, \
        r.output


def test_evaluate_and_predict_with_the_arguments_swapped_say_so(tmp_path, image_folder, tiny_spec):
    """`rehead evaluate DATA RUN` said only "DATA is not a rehead run directory (no config.yaml)"."""
    _fit(image_folder, tmp_path / "run", tiny_spec)
    for cmd in ("evaluate", "predict"):
        r = CliRunner().invoke(app, [cmd, str(image_folder), str(tmp_path / "run")])
        assert r.exit_code == 2 and f"is not a rehead run directory and {tmp_path / 'run'} is: give the run " \
            f"directory first (`rehead {cmd} {tmp_path / 'run'} {image_folder}`)" in r.output, r.output


def test_the_in_memory_images_a_run_trained_on_are_counted_as_seen(tmp_path, tiny_spec, one_thread):
    """A run fitted on a TensorDataset can only be evaluated with tensors, and those were never matched with
    its training split: a score on its own training images (0.95, against a held-out val of 0.75) read as
    held out. They are now compared by the PNG bytes the Dataset was written as."""
    from rehead.fit import fit
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 16, 16, generator=g)
    y = torch.arange(24).remainder(2)
    x[y == 1, 0] *= 0.2
    run = fit(torch.utils.data.TensorDataset(x, y), tmp_path / "r", model=tiny_spec, strategy="extract",
              val_fraction=0.25, workers=0, progress=False, echo=lambda *a: None,
              cache_dir=str(tmp_path / "cache"))
    res = run.evaluate(list(x), y.tolist())
    assert res["seen"] == {"train": 18, "val": 6}, res.get("seen")
    assert "24 of 24 samples were seen by this run" in res["warnings"][-1]
    fresh = torch.rand(4, 3, 16, 16, generator=g)  # images it never saw: nothing said
    assert "seen" not in run.evaluate(list(fresh), [0, 1, 0, 1])
