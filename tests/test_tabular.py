"""Tabular data, the tabular: MLP encoder, masked pretraining, multi-task heads."""
import csv
import json

import numpy as np
import pytest
import torch

from rehead import zoo
from rehead.data import DataError, infer_modality, load_dataset
from rehead.data.tabular import load_table
from tests.conftest import shared_dataset, write_csv


pytestmark = pytest.mark.usefixtures("one_thread")


def low_rank_table(path, n=80, f=16, seed=0, split=True):
    """Features driven by 2 latent factors (so masked values are predictable from the rest);
    label a = sign of factor 0, label b = sign of factor 1; raw scale far from standard."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = z @ rng.normal(size=(2, f)) + 0.1 * rng.normal(size=(n, f))
    x = x * 50 + 1000
    rows = []
    for i in range(n):
        s = ["train" if i < int(n * 0.75) else "test"] if split else []
        rows.append([f"p{i}", *s, "yes" if z[i, 0] > 0 else "no", "up" if z[i, 1] > 0 else "down",
                     *[f"{v:.3f}" for v in x[i]]])
    header = ["patient", *(["split"] if split else []), "a", "b", *[f"g{j}" for j in range(f)]]
    return write_csv(path, header, rows), x


def test_csv_without_path_or_text_is_tabular(tmp_path):
    p, _ = low_rank_table(tmp_path / "t.csv")
    assert infer_modality(p) == "tabular"
    ds = load_dataset(p, label_column="a", id_columns="patient,b")
    assert ds.modality == "tabular" and ds.classes == ["no", "yes"]
    # the split column is honoured: its test rows stay aside, val is carved from its train rows
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 12, 20)
    assert ds.feature_columns == [f"g{j}" for j in range(16)]


def test_a_column_that_numbers_the_rows_is_said_to_be_an_identifier(tmp_path):
    """golub's "patient" (1..72, its training rows ALL first, then AML) was read as a feature, silently:
    a model can learn the label from the row order. A run of distinct whole numbers, or an id-like
    name, is named with the --id-columns that leaves it out."""
    p, x = low_rank_table(tmp_path / "t.csv")
    rows = list(csv.reader(open(p)))
    rows[0].insert(1, "n")
    for i, r in enumerate(rows[1:]):
        r[0] = str(1000 + 7 * i)  # a numbered patient: read (and warned of) as the number it is
        r.insert(1, str(i + 1))
    write_csv(tmp_path / "n.csv", rows[0], rows[1:])
    said = " ".join(warned(tmp_path / "n.csv", "tabular:mlp-18-8x1", id_columns="b"))
    assert "'patient', 'n' look like row identifiers" in said and "--id-columns patient,n" in said
    assert not warned(tmp_path / "n.csv", "tabular:mlp-16-8x1", id_columns="patient,n,b")
    # real counts are not numbered rows
    assert not warned(p, "tabular:mlp-16-8x1", id_columns="patient,b")


def warned(path, model, **kw) -> list[str]:
    """The data warnings a fit of ``model`` on the table says and records (said when the model meets the
    table: what is read depends on it)."""
    from rehead.data.tabular import prepare_backbone
    ds = load_dataset(path, label_column="a", **kw)
    said = []
    prepare_backbone(zoo.load(str(model)), ds, said.append)
    assert [f"warning: {w}" for w in ds.info.get("warnings", [])] == [s for s in said if s.startswith("warning")]
    return ds.info.get("warnings", [])


def test_a_column_a_pretrained_encoder_does_not_read_is_said_not_read_and_not_counted(tmp_path):
    """fit --model ENC (pretrained with --id-columns patient) without --id-columns warned that 'patient' is read
    as a feature, then noted the encoder does not read it; config.yaml recorded the table's 17 columns, not the
    16 read. An id-like column the encoder does read is warned of, with the fix in its pretraining."""
    from rehead.fit import fit
    from rehead.pretrain import pretrain
    p, _ = low_rank_table(tmp_path / "t.csv")
    rows = list(csv.reader(open(p)))
    write_csv(tmp_path / "n.csv", ["n", *rows[0]], [[str(i + 1), *r] for i, r in enumerate(rows[1:])])
    pretrain(tmp_path / "n.csv", tmp_path / "enc", width=8, depth=1, epochs=1, label_column="a",
             id_columns="patient,b", progress=False, echo=lambda *_: None)  # reads n (1..80): an identifier
    said = []
    fit(tmp_path / "n.csv", model=str(tmp_path / "enc"), out=tmp_path / "run", strategy="full", epochs=1,
        progress=False, label_column="a", id_columns="b", echo=said.append)
    text = " | ".join(said)
    assert "'patient'" not in " ".join(s for s in said if s.startswith("warning")), text
    assert "'n' look like row identifiers and the encoder reads them" in text and "pretrain it again" in text, text
    assert any(s.startswith("note: the encoder reads the 17 column(s)") and "'patient'" in s for s in said), text
    import yaml
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data_summary"]["features"] == 17


def test_standardisation_is_fitted_on_training_rows_only_and_travels(tmp_path):
    from rehead.fit import fit
    p, x = low_rank_table(tmp_path / "t.csv")
    run = fit(p, model="tabular:mlp-16-32x2", out=tmp_path / "run", strategy="full", epochs=3,
              progress=False, label_column="a", id_columns="patient,b", echo=lambda *_: None)
    sc = run.model.backbone.scaler
    import json
    rows = [int(i.rsplit("#", 1)[1]) for i in json.loads((run.dir / "split.json").read_text())["train"]["items"]]
    assert torch.allclose(sc.mean.cpu(), torch.tensor(x[rows].mean(0), dtype=torch.float32), rtol=1e-4)
    assert not torch.allclose(sc.mean.cpu(), torch.tensor(x.mean(0), dtype=torch.float32), rtol=1e-4)
    # evaluate/predict read rows by column name: a reordered copy of the table predicts the same.
    items, labels = run.val_split()
    res = run.evaluate(items, labels)
    with open(p) as f:
        rows = list(csv.reader(f))
    perm = [0, 1, 2, 3] + list(range(19, 3, -1))
    write_csv(tmp_path / "shuffled.csv", [rows[0][j] for j in perm], [[r[j] for j in perm] for r in rows[1:]])
    logits_a, _, _ = run.logits(items)
    logits_b, _, _ = run.logits([str(tmp_path / "shuffled.csv") + "#" + i.rpartition("#")[2] for i in items])
    assert torch.allclose(logits_a, logits_b)
    assert res["n"] == 12  # the val rows carved from train (the 20 test rows are scored once, in summary.json)


def test_pretrain_saves_only_the_encoder_and_fit_reuses_it(tmp_path):
    from rehead.fit import fit
    from rehead.pretrain import pretrain
    p, _ = low_rank_table(tmp_path / "t.csv", n=120)
    s = pretrain(p, tmp_path / "enc", width=32, depth=2, epochs=150, label_column="a", id_columns="patient,b",
                 progress=False, echo=lambda *_: None)
    # Features are 2-factor + noise: hidden values are predictable, far better than the column mean (1.0).
    assert s["masked_mse"] < 0.5, s
    assert s["n_rows"] == 90  # only split=train rows
    enc = zoo.load(str(tmp_path / "enc"))
    assert enc.modality == "tabular" and len(enc) == 2 and enc.is_fitted()
    assert sorted(f.name for f in (tmp_path / "enc").iterdir() if not f.name.startswith(".")) == [
        "backbone.safetensors", "config.yaml", "metrics.csv", "summary.json"]
    from safetensors.torch import load_file
    assert not any("decoder" in k for k in load_file(str(tmp_path / "enc" / "backbone.safetensors")))
    # fit grafts a head on it; the text 'patient' column is ignored because the encoder reads its own columns.
    run = fit(p, model=str(tmp_path / "enc"), out=tmp_path / "run", strategy="full", epochs=10,
              progress=False, label_column="a", echo=lambda *_: None)
    assert torch.equal(run.model.backbone.scaler.mean.cpu(), enc.scaler.mean)
    items, labels = run.val_split()
    assert run.evaluate(items, labels)["accuracy"] >= 0.7


def test_cli_pretrain_then_fit(tmp_path):
    from typer.testing import CliRunner
    from rehead.cli import app
    p, _ = low_rank_table(tmp_path / "t.csv")
    r = CliRunner().invoke(app, ["pretrain", str(p), "--out", str(tmp_path / "enc"), "--width", "16",
                                 "--depth", "2", "--epochs", "5", "--id-columns", "patient,b", "--label-column", "a", "-q"])
    assert r.exit_code == 0, r.output
    assert "masked-cell MSE" in r.output
    r = CliRunner().invoke(app, ["pretrain", str(p), "--out", str(tmp_path / "enc"), "--id-columns", "patient,b",
                                 "--label-column", "a", "-q"])
    assert r.exit_code != 0 and "--overwrite" in r.output
    r = CliRunner().invoke(app, ["fit", str(p), "--model", str(tmp_path / "enc"), "--label-column", "a",
                                 "--out", str(tmp_path / "run"), "--strategy", "full", "--epochs", "2", "-q"])
    assert r.exit_code == 0, r.output


def test_bad_tables_give_clear_errors(tmp_path):
    p = write_csv(tmp_path / "text.csv", ["label", "x", "y"], [["a", "1", "2"], ["b", "3", "oops"]] * 3)
    with pytest.raises(DataError, match=r"column 'y', line 3 holds 'oops'.*--id-columns"):
        from rehead.data.tabular import prepare_backbone
        prepare_backbone(zoo.load("tabular:mlp-2-4x1"), load_table(p, val_fraction=0.5))
    p = write_csv(tmp_path / "nan.csv", ["label", "x", "y"], [["a", "1", ""], ["b", "3", "4"]] * 3)
    from rehead.fit import fit
    with pytest.raises(DataError, match="empty or NaN.*'y'.*--missing mean"):
        fit(p, model="tabular:mlp-2-4x1", out=tmp_path / "r1", strategy="full", epochs=1, progress=False,
            val_fraction=0.5, echo=lambda *_: None)
    # missing='mean': empty cells become the training mean; constant columns standardise to 0.
    p = write_csv(tmp_path / "ok.csv", ["label", "x", "c"], [["a", "1", "7"], ["b", "", "7"], ["b", "3", "7"]] * 4)
    run = fit(p, model="tabular:mlp-2-4x1", out=tmp_path / "r2", strategy="full", epochs=1, progress=False,
              val_fraction=0.25, missing="mean", echo=lambda *_: None)
    assert run.config["data_config"]["constant_columns"] == 1
    logits, kept, _ = run.logits(run.val_split()[0])
    assert torch.isfinite(logits).all() and len(kept) == 3
    with pytest.raises(DataError, match=r"tabular data, which has no default backbone.*--model tabular:mlp-"):
        fit(p, out=tmp_path / "r0", epochs=1, progress=False, missing="mean", echo=lambda *_: None)
    assert not (tmp_path / "r0").exists()  # refused before the run directory
    with pytest.raises(DataError, match="takes 5 features but the table has 2"):
        fit(p, model="tabular:mlp-5-4x1", out=tmp_path / "r3", strategy="full", epochs=1, progress=False,
            missing="mean", echo=lambda *_: None)
    with pytest.raises(DataError, match="no column 'lbl'"):
        load_table(p, label_column="lbl")
    with pytest.raises(zoo.ModelNotFound, match="mlp-<features>-<width>x<depth>"):
        zoo.load("tabular:resnet")


def test_encoder_stages_are_blocks_and_cut_keeps_the_scaler():
    bb = zoo.load("tabular:mlp-10-8x3")
    assert bb.stage_names == ["block0", "block1", "block2"]
    bb.fit_scaler(np.arange(40, dtype=np.float32).reshape(4, 10), [f"c{i}" for i in range(10)])
    cut = bb.cut(2)
    assert cut.scaler is bb.scaler and cut(torch.zeros(3, 10)).shape == (3, 8)
    assert zoo.load("tabular:mlp-10-8x3-d0").stages["block0"][3].p == 0.0


def test_golub_table_loads_with_its_split(tmp_path):
    p = shared_dataset("golub_leukemia") / "expression.csv"
    ds = load_table(p, label_column="label", id_columns="patient")
    assert (len(ds.train), len(ds.val), len(ds.test), len(ds.feature_columns)) == (30, 8, 34, 7129)
    assert ds.classes == ["ALL", "AML"] and sum(ds.test.labels) == 14


def test_multitask_heads_train_together_and_report_each(tmp_path):
    from rehead.multitask import fit_multitask, load_multitask, load_tasks, evaluate_multitask
    p, _ = low_rank_table(tmp_path / "t.csv", n=240)  # val is carved from the train rows: 36 of them
    s = fit_multitask(p, "a,b", "tabular:mlp-16-32x2", tmp_path / "mt", weights=[1.0, 0.5], id_columns="patient",
                      epochs=15, lr=3e-3, progress=False, echo=lambda *_: None)
    res = s["tasks"]
    assert set(res) == {"a", "b"}
    for t in ("a", "b"):  # each head learned its own label, well above the majority class
        assert res[t]["accuracy"] >= res[t]["majority_baseline"] + 0.15, res
    mt = load_multitask(tmp_path / "mt")
    ds, classes, _, y_va = load_tasks(p, "a,b", "patient")
    again = evaluate_multitask(mt, ds.val.items, y_va, classes)
    assert {t: again[t]["accuracy"] for t in again} == {t: res[t]["accuracy"] for t in res}
    cfg = json.loads((tmp_path / "mt" / "summary.json").read_text())
    assert cfg["tasks"]["a"]["n"] == len(ds.val) == 36


def test_augment_on_a_table_is_refused_before_anything_is_written(tmp_path):
    """--augment crop with a live strategy on a table (or text) crashed with an AttributeError after the
    run directory was written: its presets transform images."""
    from rehead.config import ConfigError
    from rehead.fit import fit
    p, _ = low_rank_table(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="--augment crop transforms images: .* is tabular data; leave it out"):
        fit(p, model="tabular:mlp-16-8x1", label_column="a", id_columns="patient,b", strategy="head",
            augment="crop", epochs=1, out=tmp_path / "r", progress=False, echo=lambda *a: None)
    assert not (tmp_path / "r").exists()
    fit(p, model="tabular:mlp-16-8x1", label_column="a", id_columns="patient,b", strategy="head",
        augment="none", epochs=1, out=tmp_path / "r", progress=False, echo=lambda *a: None)  # none: fine
