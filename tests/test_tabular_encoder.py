"""A pretrained table encoder reads its own columns by name: never the fit's label, id or split column."""
import numpy as np
import pandas as pd
import torch
import pytest

from rehead.data import DataError


def test_a_pretrained_encoder_that_reads_the_fits_label_column_is_refused(tmp_path):
    """Pretrained with the label (named y, so read as a feature), then fit on y: val 1.0 on pure
    noise before. The encoder's own columns win, so the fit must refuse, and name the fix."""
    from rehead.fit import fit
    from rehead.pretrain import pretrain
    rng = np.random.default_rng(0)
    d = pd.DataFrame(rng.normal(size=(60, 4)), columns=list("abcd"))
    d["y"] = rng.integers(0, 2, 60)
    d.to_csv(tmp_path / "t.csv", index=False)
    pretrain(tmp_path / "t.csv", tmp_path / "enc", width=8, depth=1, epochs=2, label_column=None,
             progress=False, echo=lambda *_: None)
    kw = dict(model=str(tmp_path / "enc"), strategy="extract", workers=0, progress=False)
    with pytest.raises(DataError, match=r"the encoder reads column\(s\) 'y' as input .*--label-column"):
        fit(str(tmp_path / "t.csv"), out=tmp_path / "leak", label_column="y", echo=lambda *_: None, **kw)
    assert not (tmp_path / "leak").exists()
    # the encoder's columns without y, on a table with two more: those are said, not silently dropped
    pretrain(tmp_path / "t.csv", tmp_path / "enc2", width=8, depth=1, epochs=2, label_column="y",
             id_columns="c,d", progress=False, echo=lambda *_: None)
    said = []
    fit(str(tmp_path / "t.csv"), out=tmp_path / "ok", label_column="y", echo=said.append,
        **{**kw, "model": str(tmp_path / "enc2")})
    assert any("2 other column(s)" in s and "'c', 'd'" in s for s in said), said


def _fitted_table(tmp_path, n: int) -> pd.DataFrame:
    """t.csv of n rows (label: the sign of column a) and an extract run of it at tmp_path/r."""
    from rehead.fit import fit
    rng = np.random.default_rng(0)
    d = pd.DataFrame(rng.normal(size=(n, 3)), columns=list("abc"))
    d["label"] = np.where(d["a"] > 0, "pos", "neg")
    d.to_csv(tmp_path / "t.csv", index=False)
    fit(str(tmp_path / "t.csv"), model="tabular:mlp-3-8x1", strategy="extract", out=tmp_path / "r", workers=0,
        progress=False, echo=lambda *_: None)
    return d


def test_evaluating_a_table_runs_val_split_after_the_table_changed_is_refused(tmp_path):
    """The val split names table rows by number ("t.csv#7"): re-sorting the file made `rehead evaluate
    RUN` score other rows (0.98 -> 0.80), silently."""
    from rehead.run import BadRun, Run
    d = _fitted_table(tmp_path, 60)
    run = Run(tmp_path / "r")
    assert run.evaluate(*run.val_split())["n"] == 12
    d.sort_values("b").to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(BadRun, match=r"the table changed since the fit .*t.csv was modified.*rehead evaluate RUN DATA"):
        Run(tmp_path / "r").val_split()


def test_a_column_of_huge_values_is_standardised_not_zeroed():
    """Values ~1e20 fit float32, their variance (~1e40) does not: the scaler computed in float32 got
    std = inf, so the column standardised to 0 (and alone, the solver crashed on no features)."""
    from rehead import zoo
    x = np.stack([np.linspace(1, 7, 50) * 1e20, np.linspace(0, 1, 50)], 1)
    bb = zoo.load("tabular:mlp-2-8x1")
    bb.fit_scaler(x, ["big", "small"])
    z = bb.scaler(torch.from_numpy(x).float())
    assert torch.isfinite(bb.scaler.std).all() and z.std(0).min() > 0.9


def test_bad_cells_at_predict_are_located_by_column_and_line(tmp_path):
    """An infinite cell was "holds infinite values: replace them before training" (at predict, with no
    column); a NaN was "1 row(s) have empty/NaN features" with no file, row or column."""
    from rehead.run import Run
    from rehead.data import DataError
    from rehead.data.tabular import expand_inputs
    d = _fitted_table(tmp_path, 40)
    x = d.drop(columns="label").head(4)
    x.loc[1, "b"] = np.inf
    x.to_csv(tmp_path / "inf.csv", index=False)
    run = Run(tmp_path / "r")
    with pytest.raises(DataError, match=r"inf.csv: 1 infinite cell\(s\).*column 'b', line 3"):
        run.predict(expand_inputs([str(tmp_path / "inf.csv")]))
    x.loc[1, "b"] = np.nan
    x.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError, match=r"first nan.csv data row 2 in column 'b'.*--missing mean"):
        run.predict(expand_inputs([str(tmp_path / "nan.csv")]))


def test_a_table_runs_training_rows_are_recognised_by_their_cells_in_another_file(tmp_path):
    """Rows are "file#row": a copy of training rows in another file (or re-sorted) got no "seen"
    warning, so a score on them read as held out. Compared by their cells now; and when the training
    table itself changed, evaluate says it cannot tell."""
    from rehead.run import Run
    d = _fitted_table(tmp_path, 40)
    d.sample(frac=1, random_state=1).head(10).to_csv(tmp_path / "copy.csv", index=False)
    res = Run(tmp_path / "r").evaluate(str(tmp_path / "copy.csv"))
    assert sum(res["seen"].values()) == 10 and "10 of 10 samples were seen" in res["warnings"][-1]
    fresh = pd.DataFrame(np.random.default_rng(5).normal(size=(6, 3)), columns=list("abc")).assign(label="pos")
    fresh.to_csv(tmp_path / "new.csv", index=False)
    assert "seen" not in Run(tmp_path / "r").evaluate(str(tmp_path / "new.csv"))
    d.sort_values("b").to_csv(tmp_path / "t.csv", index=False)
    res = Run(tmp_path / "r").evaluate(str(tmp_path / "copy.csv"))
    assert "seen" not in res and "its training table changed since the fit" in res["warnings"][-1]


def test_pretrain_says_which_rows_its_mse_is_on_and_when_it_is_no_better_than_the_mean(tmp_path):
    """golub, 5 epochs: "masked-cell MSE 1.083 (predicting the column mean: 1.0)", worse than the
    baseline with no comment, and no word of the rows it was measured on."""
    from rehead.pretrain import mask_batch, masked_errors, mse_verdict, pretrain
    from rehead.zoo.tabular import TabularBackbone
    bad = mse_verdict(1.083, 1.002, 38)
    assert "on the 38 pretraining rows" in bad and "against 1.002 predicting each column's mean" in bad
    assert "learned nothing useful yet" in bad and "--epochs" in bad
    assert "nothing useful" not in mse_verdict(0.4, 1.0, 38)
    # the baseline is the column mean's error (0 once standardised) on the very cells the model is scored on
    x, observed = torch.randn(50, 4), torch.ones(50, 4, dtype=torch.bool)
    enc = TabularBackbone(4, 8, 1, 0.0, spec="tabular:mlp-4-8x1")
    _, base = masked_errors(enc, torch.nn.Linear(8, 4), x, observed, 0.3, 7)
    m = mask_batch(x, 0.3, torch.Generator().manual_seed(7), observed)[1]
    assert base == pytest.approx(float((x[m] ** 2).mean()), rel=1e-5)
    said = []
    pd.DataFrame(np.random.default_rng(0).normal(size=(30, 4)), columns=list("abcd")).to_csv(tmp_path / "t.csv",
                                                                                         index=False)
    summary = pretrain(tmp_path / "t.csv", tmp_path / "enc", width=8, depth=1, epochs=1, label_column=None,
                       progress=False, echo=said.append)
    assert "on the 30 pretraining rows" in said[-1], said
    assert 0.5 < summary["masked_mse_predicting_mean"] < 1.5
