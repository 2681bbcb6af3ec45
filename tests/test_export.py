"""Export: the ONNX / TorchScript file computes the run's own logits, and says how to feed it."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import atol, make_images, shared_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_spec):
    from rehead.fit import fit
    tmp = tmp_path_factory.mktemp("exportrun")
    data = make_images(tmp / "imgs", n=6)
    return fit(str(data), model=tiny_spec, out=tmp / "run", strategy="extract", epochs=3, workers=0,
               cache_dir=str(tmp / "cache"), progress=False, echo=lambda *_: None)


def _inputs(run, paths):
    """The run's own eval preprocessing (the transform `predict` uses) applied to real files."""
    from rehead.data.images import ImageDataset
    ds = ImageDataset(paths, None, run.model.backbone.data_config)
    return torch.stack([ds[i][1] for i in range(len(ds))])


def _real_images(n=6):
    root = shared_dataset("hymenoptera_data") / "val"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    return paths[:: max(1, len(paths) // n)][:n]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_matches_the_runs_logits_on_real_images(run, fmt, tmp_path):
    from rehead.export import export, load_exported
    res = export(run.dir, fmt, out=tmp_path / f"m.{fmt}")
    f = load_exported(res["path"])
    paths = _real_images()
    x = _inputs(run, paths)
    want, kept, _ = run.logits(paths)
    assert kept == list(range(len(paths)))
    got = f(x.numpy())
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    # A batch size other than the one traced.
    np.testing.assert_allclose(f(x[:1].numpy()), want[:1].numpy(), atol=1e-4, rtol=0)


def test_export_on_generated_images_and_sidecar(run, tmp_path):
    from rehead.export import export, load_exported
    res = export(run.dir, "onnx")
    assert Path(res["path"]) == run.dir / "export" / "model.onnx"
    meta = json.loads(Path(res["sidecar"]).read_text())
    assert meta["labels"] == {str(i): c for i, c in enumerate(run.classes)}
    cfg = run.model.backbone.data_config
    assert meta["data_config"] == cfg
    steps = {s["op"]: s for s in meta["preprocessing"]}
    assert steps["resize_center_crop"]["size"] == [cfg["input_size"]] * 2
    assert steps["normalize"]["mean"] == cfg["mean"] and steps["normalize"]["std"] == cfg["std"]
    assert meta["input"]["shape"] == ["batch", 3, cfg["input_size"], cfg["input_size"]]
    paths = sorted(str(p) for p in Path(run.config["data"]).rglob("*.jpg"))[:4]
    got = load_exported(res["path"])(_inputs(run, paths).numpy())
    # (on a GPU the run's logits come from features extracted there, with TF32 convolutions)
    np.testing.assert_allclose(got, run.logits(paths)[0].numpy(), atol=atol(1e-4), rtol=0)
    # Predicted labels through the sidecar's label map are the run's own predictions.
    assert [meta["labels"][str(i)] for i in got.argmax(1)] == [r["top"][0]["label"] for r in run.predict(paths)]
    # ... and with the sidecar's temperature, its probabilities are the ones rehead predict gives
    assert meta["temperature"] == pytest.approx(run.temperature) and "softmax(logits / temperature)" in \
        meta["output"]["meaning"]
    fitted = (run.dir / "temperature.json").exists()  # it said "fitted on val" of a run with none
    assert ("fitted on val" in meta["output"]["meaning"]) == fitted
    assert ("none fitted: T = 1" in meta["output"]["meaning"]) == (not fitted)
    z = got / meta["temperature"]
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert probs.max(1) == pytest.approx([r["top"][0]["prob"] for r in run.predict(paths)], abs=1e-4)


def _follow_sidecar(steps: list[dict], path: str) -> np.ndarray:
    """The sidecar's preprocessing steps, done as written with Pillow and numpy (no rehead code)."""
    from PIL import Image, ImageOps
    for s in steps:
        op = s["op"]
        if op == "decode":
            im = Image.open(path)
        elif op == "jpeg_draft":
            if im.format == "JPEG":
                im.draft("RGB", tuple(s["size"]))
        elif op == "exif_transpose":
            im = ImageOps.exif_transpose(im)
        elif op == "to_rgb":
            im = im.convert(s["mode"])
        elif op == "resize_center_crop":
            side, (size, _) = s["resize_shorter_side"], s["size"]
            w, h = im.size
            nw, nh = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
            left, top = round((nw - size) / 2), round((nh - size) / 2)
            sx, sy = w / nw, h / nh
            im = im.resize((size, size), getattr(Image, s["interpolation"].upper()),
                           box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
        elif op == "to_float":
            x = np.asarray(im, np.dtype(s["dtype"])).transpose(2, 0, 1) / np.float32(s["divide_by"])
        elif op == "normalize":
            x = (x - np.float32(s["mean"])[:, None, None]) / np.float32(s["std"])[:, None, None]
        else:
            raise AssertionError(f"a step this test does not know: {op}")
    return x


def test_following_the_sidecar_gives_predicts_probabilities(run, tmp_path):
    """The op list was resize-then-crop without JPEG draft decoding: followed literally, it gave
    probabilities up to 0.02 away from predict's. Two large JPEGs: the draft decodes them at 1/2 and 1/8."""
    from rehead.export import export, load_exported
    res = export(run.dir, "onnx", out=tmp_path / "m.onnx")
    meta = json.loads(Path(res["sidecar"]).read_text())
    root = shared_dataset("hymenoptera_data")
    paths = _real_images(4) + [str(root / "val/ants/desert_ant.jpg"), str(root / "val/ants/ants-devouring-remains-"
                                "of-large-dead-insect-on-red-tile-in-Stellenbosch-South-Africa-closeup-1-DHD.jpg")]
    z = load_exported(res["path"])(np.stack([_follow_sidecar(meta["preprocessing"], p) for p in paths]))
    np.testing.assert_allclose(z, run.logits(paths)[0].numpy(), atol=atol(1e-4), rtol=0)
    z = z / meta["temperature"]
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    want = [{t["label"]: t["prob"] for t in r["top"]} for r in run.predict(paths, top_k=len(run.classes))]
    got = [{c: probs[i, j] for j, c in enumerate(run.classes)} for i in range(len(paths))]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=atol(1e-5))


@pytest.mark.parametrize("fmt,out,opset,says", [
    ("onnx", "new/m.onnx", 5, "--opset 11 to "), ("onnx", "new/m.onnx", 99, "--opset 11 to "),
    ("torchscript", "new/m.pt", 17, "leave --opset out"), ("onnx", "new/x.txt", None, "name it x.onnx"),
    ("torchscript", "new/m.onnx", None, "name it m.pt")])
def test_export_refuses_bad_options_before_writing_anything(run, tmp_path, fmt, out, opset, says):
    """--opset 5 died in torch's exporter (leaving an empty folder), --opset 99 in torch's own check; a
    torchscript export ignored --opset; --out x.txt got an ONNX model named x.txt."""
    from rehead.export import export
    with pytest.raises(ValueError, match=says):
        export(run.dir, fmt, out=tmp_path / out, opset=opset)
    assert not (tmp_path / "new").exists()


def test_opset_range_per_modality():
    """Text runs' attention (scaled_dot_product_attention) exports from opset 14 only."""
    from rehead.export import check_options, opset_range
    lo, hi = opset_range("text")
    assert lo == 14 and hi >= 20 and check_options("onnx", None, None, "text") == 17
    with pytest.raises(ValueError, match=f"a text run takes --opset 14 to {hi}"):
        check_options("onnx", None, 13, "text")
    assert check_options("torchscript", "m.pth", None, "image") is None  # .pth: a TorchScript file too


def test_an_operator_the_opset_lacks_is_one_line_and_no_file(run, tmp_path, monkeypatch):
    from rehead.export import export

    def fails(*a, **kw):
        Path(a[2]).write_bytes(b"half")
        raise torch.onnx.errors.UnsupportedOperatorError("aten::scaled_dot_product_attention", 11, 14)
    monkeypatch.setattr(torch.onnx, "export", fails)
    with pytest.raises(ValueError, match="does not export at --opset 11 .*a higher --opset"):
        export(run.dir, "onnx", out=tmp_path / "m.onnx", opset=11)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_and_names_bad_formats(run, tmp_path):
    from rehead.export import export
    from rehead.run import RunExists
    out = tmp_path / "m.pt"
    export(run.dir, "torchscript", out=out)
    with pytest.raises(RunExists, match="--overwrite"):
        export(run.dir, "torchscript", out=out)
    export(run.dir, "torchscript", out=out, overwrite=True)
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export(run.dir, "tflite")


def test_export_cli(run, tmp_path):
    from typer.testing import CliRunner
    from rehead.cli import app
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(app, ["export", str(run.dir), "--format", "onnx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and Path(str(out) + ".json").exists()
    r = CliRunner().invoke(app, ["export", str(run.dir), "--format", "onnx", "--out", str(out)])
    assert r.exit_code != 0 and "--overwrite" in r.output
    # one line each, and no folder made: --opset 5 was a raw SymbolicValueError after an empty folder
    for bad, says in ((["--opset", "5"], "--opset 5 is out of range"), (["-f", "torchscript", "--opset", "17"],
                      "leave --opset out"), (["--out", str(tmp_path / "g/x.txt")], "name it x.onnx")):
        out = ["--out", str(tmp_path / "g" / ("m.pt" if "torchscript" in bad else "m.onnx"))]
        r = CliRunner().invoke(app, ["export", str(run.dir), *out, *bad])
        assert r.exit_code != 0 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "g").exists()
    # a folder (existing, a trailing slash, or a name without extension) gets model.onnx inside it: a file
    # named "exports" was written, and an existing folder died naming a temporary file
    (tmp_path / "d").mkdir()
    for given in (tmp_path / "d", f"{tmp_path / 'e'}/", tmp_path / "f"):
        r = CliRunner().invoke(app, ["export", str(run.dir), "--format", "onnx", "--out", str(given)])
        assert r.exit_code == 0 and (Path(str(given)) / "model.onnx").is_file(), r.output
        assert (Path(str(given)) / "model.onnx.json").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_text_run_exports_with_its_tokenizer_and_gives_the_runs_logits(fmt, tmp_path, tiny_bert_dir):
    """A text run took "export supports models whose input is one tensor (image runs)"; now the graph
    takes input_ids and attention_mask (any batch, any length) and its tokenizer ships beside it."""
    from rehead.export import export, load_exported
    from rehead.fit import fit
    from tests.test_text import sentiment_rows, write_csv
    data = write_csv(tmp_path / "train.csv", sentiment_rows(24, 0))
    run = fit(str(data), model=f"hf:{tiny_bert_dir}", out=tmp_path / "run", strategy="extract", epochs=3,
              workers=0, cache_dir=str(tmp_path / "cache"), progress=False, echo=lambda *_: None)
    res = export(run.dir, fmt)
    meta = json.loads(Path(res["sidecar"]).read_text())
    assert [i["name"] for i in meta["input"]] == ["input_ids", "attention_mask"]
    assert (Path(res["path"]).parent / meta["tokenizer"]["dir"] / "tokenizer_config.json").exists()
    texts = ["the movie was really superb", "awful", "the plot and the acting were quite dreadful overall"]
    want = run.logits(texts)[0].numpy()
    f = load_exported(res["path"])  # from the exported files alone: graph, sidecar, tokenizer
    np.testing.assert_allclose(f(texts), want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(f(texts[2:]), want[2:], atol=1e-4, rtol=0)  # one text, another length


def test_the_sidecar_records_the_feature_precision_and_that_a_bf16_run_may_differ(run, tmp_path, monkeypatch,
                                                                                  image_folder, tiny_spec):
    """A run whose features were computed in bf16 gave export probabilities up to 0.009 from predict's, and
    its sidecar did not say so."""
    from rehead.export import export
    from rehead.fit import fit
    meta = json.loads(Path(export(run.dir, "onnx", out=tmp_path / "f.onnx")["sidecar"]).read_text())
    assert meta["precision"] == {"features": "fp32", "graph": "fp32"}  # no note: predict runs fp32 too
    monkeypatch.setenv("REHEAD_FEATURE_PRECISION", "bf16")
    bf = fit(str(image_folder), out=tmp_path / "bf", model=tiny_spec, strategy="extract", epochs=3, workers=0,
             progress=False, echo=lambda *_: None)
    meta = json.loads(Path(export(bf.dir, "onnx", out=tmp_path / "b.onnx")["sidecar"]).read_text())
    assert meta["precision"]["features"] == "bf16" and meta["precision"]["graph"] == "fp32"
    assert "may differ from predict's" in meta["precision"]["note"]
    from typer.testing import CliRunner
    from rehead.cli import app
    r = CliRunner().invoke(app, ["export", str(bf.dir), "--out", str(tmp_path / "c.onnx")])
    assert r.exit_code == 0 and "note: " in r.output and "may differ from predict's" in r.output, r.output


def test_a_table_runs_sidecar_says_which_raw_columns_in_what_order(tmp_path, one_thread):
    """A table export's sidecar named no input columns: a deployment could not tell what to feed it."""
    import csv
    from rehead.export import export, load_exported
    from rehead.fit import fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)) * [1, 10, 100] + [0, 5, 50]
    rows = [[f"{v:.4f}" for v in r] + ["ab"[int(r[0] > 0)], f"id{i}"] for i, r in enumerate(x)]
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["a", "b", "c", "label", "key"], *rows])
    run = fit(str(tmp_path / "t.csv"), model="tabular:mlp-3-8x1", out=tmp_path / "run", strategy="head",
              epochs=2, workers=0, id_columns="key", missing="mean", progress=False, echo=lambda *_: None)
    res = export(run.dir, "onnx")
    steps = {s["op"]: s for s in json.loads(Path(res["sidecar"]).read_text())["preprocessing"]}
    assert steps["select_columns"]["columns"] == ["a", "b", "c"] and steps["to_float"]["dtype"] == "float32"
    assert "inside the graph" in steps["standardize"]["where"]
    assert steps["to_float"]["missing"] == "mean" and "training mean" in steps["to_float"]["empty_cell"]
    # a new table: columns in another order, an extra one, an empty cell; followed as the sidecar says
    new = tmp_path / "new.csv"
    with open(new, "w", newline="") as f:
        csv.writer(f).writerows([["extra", "c", "a", "b"], ["x", "60", "0.5", ""], ["y", "40", "-1", "3"]])
    with open(new) as f:
        table = list(csv.DictReader(f))
    cells = [[r[c].strip() for c in steps["select_columns"]["columns"]] for r in table]
    feed = np.array([[float(v) if v.lower() not in ("", "na", "nan") else np.nan for v in r] for r in cells],
                    np.float32)
    want = run.logits([f"{new}#0", f"{new}#1"])[0].numpy()
    np.testing.assert_allclose(load_exported(res["path"])(feed), want, atol=1e-5, rtol=0)


def test_overwrite_keeps_a_users_files_in_the_tokenizer_folder(tmp_path, tiny_bert_dir):
    """--overwrite replaced the tokenizer folder whole, deleting a file a user kept there. Now a folder holding
    only an export's files is replaced, and one holding other files is refused before anything is written."""
    from rehead.export import export
    from rehead.fit import fit
    from rehead.run import RunExists
    from tests.test_text import sentiment_rows, write_csv
    data = write_csv(tmp_path / "train.csv", sentiment_rows(24, 0))
    run = fit(str(data), model=f"hf:{tiny_bert_dir}", out=tmp_path / "run", strategy="extract", epochs=2,
              workers=0, cache_dir=str(tmp_path / "cache"), progress=False, echo=lambda *_: None)
    out = tmp_path / "e" / "m.pt"
    res = export(run.dir, "torchscript", out=out)
    tok = out.with_name("m.pt.tokenizer")
    written = sorted(p.name for p in tok.iterdir())
    assert json.loads(Path(res["sidecar"]).read_text())["tokenizer"]["files"] == written
    (tok / "stale.json").write_text("{}")  # listed by an earlier export's sidecar: export's own, replaced
    sc = json.loads(Path(res["sidecar"]).read_text())
    sc["tokenizer"]["files"].append("stale.json")
    Path(res["sidecar"]).write_text(json.dumps(sc))
    export(run.dir, "torchscript", out=out, overwrite=True)
    assert sorted(p.name for p in tok.iterdir()) == written
    (tok / "NOTES.md").write_text("mine")
    before = out.stat().st_mtime_ns, Path(res["sidecar"]).read_bytes()
    with pytest.raises(RunExists, match=r"holds files export did not write \(NOTES.md\)"):
        export(run.dir, "torchscript", out=out, overwrite=True)
    assert (tok / "NOTES.md").read_text() == "mine" and (out.stat().st_mtime_ns, Path(res["sidecar"]).read_bytes()) \
        == before
    assert not out.with_name(".tmp-m.pt.tokenizer").exists()


def _export_cli(*args):
    from typer.testing import CliRunner
    from rehead.cli import app
    return CliRunner().invoke(app, ["export", *map(str, args)])


def test_an_interrupted_export_removes_what_it_made_and_only_that(run, tmp_path, monkeypatch):
    """`export RUN --out NEWDIR/` stopped by Ctrl-C left NEWDIR (empty, or with a temporary graph) and said
    only 'interrupted'. Now what it made goes; a folder or file that was there before stays."""
    import rehead.export
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    with monkeypatch.context() as m:
        m.setattr(rehead.export, "_write_graph", _stop_in_graph)
        for out in (tmp_path / "new" / "sub", mine, mine / "deeper"):
            r = _export_cli(run.dir, "--out", f"{out}/")
            assert r.exit_code == 130 and "run the same command again" in r.output, r.output
            assert not (tmp_path / "new").exists()
            assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
            assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    with monkeypatch.context() as m:  # the graph renamed into place, its sidecar not yet
        m.setattr(os, "replace", _stop_at_rename(1))
        r = _export_cli(run.dir, "--out", tmp_path / "new" / "m.onnx")
        assert r.exit_code == 130 and not (tmp_path / "new").exists(), r.output
    r = _export_cli(run.dir, "--out", f"{tmp_path / 'new' / 'sub'}/")  # the same command, no --overwrite
    assert r.exit_code == 0 and (tmp_path / "new" / "sub" / "model.onnx.json").is_file(), r.output


def _stop_in_graph(model, example, fmt, out, opset):
    """Stands in for export's _write_graph: the traced graph half written to its temporary name, then a Ctrl-C."""
    out.with_name(f".tmp-{out.name}").write_bytes(b"half")
    raise KeyboardInterrupt


def _stop_at_rename(n: int):
    """An os.replace that stops the command (a Ctrl-C, once) at its call number n, counting from 0, before
    renaming."""
    real, done, stopped = os.replace, [], []

    def replace(src, dst):
        if len(done) == n and not stopped:
            stopped.append(dst)
            raise KeyboardInterrupt
        real(src, dst)
        done.append(dst)
    return replace


def test_an_overwrite_stopped_anywhere_never_pairs_a_graph_with_another_exports_sidecar(run, tmp_path, monkeypatch):
    """--overwrite renamed the new graph over the old one, then wrote its sidecar: stopped in between, it left the
    new graph beside the old sidecar (another export's labels, temperature, preprocessing), unsaid. Now a stop
    before the renames leaves the old export as it was, and one between them at worst a graph without a sidecar.
    The two exports differ in their opset, which both the graph and the sidecar record."""
    import onnx
    import rehead.export
    from rehead.export import export
    out, sidecar = tmp_path / "m.onnx", tmp_path / "m.onnx.json"

    def paired() -> bool:
        graph = {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""]
        return not sidecar.exists() or json.loads(sidecar.read_text())["opset"] == graph
    export(run.dir, "onnx", out=out, opset=17)
    old = out.read_bytes(), sidecar.read_bytes()
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):  # stopped writing the graph
        m.setattr(rehead.export, "_write_graph", _stop_in_graph)
        export(run.dir, "onnx", out=out, overwrite=True, opset=14)
    assert (out.read_bytes(), sidecar.read_bytes()) == old and sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.json"]
    n = 0
    while True:  # stopped before rename n, for each n until the export ends
        with monkeypatch.context() as m:
            m.setattr(os, "replace", _stop_at_rename(n))
            try:
                export(run.dir, "onnx", out=out, overwrite=True, opset=14)
            except KeyboardInterrupt:
                pass
            else:
                break
        assert paired(), f"stopped before rename {n}: the graph beside another export's sidecar"
        assert out.exists() and set(os.listdir(tmp_path)) <= {"m.onnx", "m.onnx.json"}  # no temporary left
        out.write_bytes(old[0])
        sidecar.write_bytes(old[1])
        n += 1
    assert n >= 2 and paired() and json.loads(sidecar.read_text())["opset"] == 14  # graph and sidecar: two renames


def test_export_refuses_to_replace_or_write_into_a_csv_runs_data(tmp_path, tiny_spec):
    """A run trained from a CSV was not checked: `--out data.csv/` died on a bare "File exists", and --overwrite
    replaced a file the CSV lists (an image saved as odd.pt) with the graph. Beside the CSV or among its images an
    export is fine: a CSV fit reads the CSV and the files it lists, nothing else."""
    import shutil
    from rehead.data import load_dataset
    from rehead.fit import fit
    d = tmp_path / "d"
    make_images(d / "imgs", n=4)
    shutil.copy(d / "imgs" / "red" / "red_0.jpg", d / "imgs" / "red" / "odd.pt")
    rows = [f"imgs/{c}/{c}_{i}.jpg,{c}" for c in ("red", "blue") for i in range(4)] + ["imgs/red/odd.pt,red"]
    data = d / "data.csv"
    data.write_text("\n".join(["path,label", *rows]) + "\n")
    run = fit(str(data), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=2, workers=0,
              cache_dir=str(tmp_path / "cache"), progress=False, echo=lambda *_: None)

    def files():
        return {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    before, odd = files(), d / "imgs" / "red" / "odd.pt"
    for args, says in (
            (["-f", "torchscript", "--out", odd, "--overwrite"], f"would replace {odd}, a file {data} lists"),
            (["--out", f"{data}/"], f"would write into {data}, the data {run.dir} was trained on"),
            (["--out", f"{d / 'imgs' / 'red' / 'red_1.jpg'}/"], f"would write into {d / 'imgs' / 'red' / 'red_1.jpg'}, "
             f"a file {data} lists")):
        r = _export_cli(run.dir, *args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert says in r.output and "give an --out that is not a data file" in r.output, r.output
        assert files() == before  # nothing written

    def read():  # what a fit on the CSV reads
        ds = load_dataset(str(data))
        return sorted(ds.train.items + ds.val.items)
    items = read()
    for out in (d / "data.onnx", f"{d / 'imgs' / 'red'}/"):
        r = _export_cli(run.dir, "--out", out)
        assert r.exit_code == 0, r.output
    assert (d / "data.onnx.json").is_file() and (d / "imgs" / "red" / "model.onnx").is_file()
    assert read() == items


def test_export_refuses_an_out_inside_the_runs_data(run, tmp_path):
    """`export RUN --out DATA/bees/` wrote model.onnx and its sidecar into a class folder of the training
    data, which the next fit on it would read."""
    import shutil
    from rehead.rundir import MARKER
    data = Path(run.config["data"])
    before = sorted(str(p) for p in data.rglob("*"))
    cls = sorted(p for p in data.iterdir() if p.is_dir())[0]
    for out in (f"{cls}/", cls / "m.onnx", data, f"{data / 'exports'}/"):
        r = _export_cli(run.dir, "--out", out)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert f"is inside {data}, the data" in r.output and "give an --out outside" in r.output, r.output
        assert sorted(str(p) for p in data.rglob("*")) == before  # nothing written, no folder made
    kept = data / "runs"  # a rehead run directory kept in the data is never read as data: its export is fine
    (kept / "x").mkdir(parents=True)
    (kept / "x" / MARKER).touch()
    try:
        r = _export_cli(run.dir, "--out", f"{kept / 'x' / 'export'}/")
        assert r.exit_code == 0 and (kept / "x" / "export" / "model.onnx").is_file(), r.output
    finally:
        shutil.rmtree(kept)


def test_a_ctrl_c_between_the_renames_waits_for_them_under_the_cli(run, tmp_path, monkeypatch, cli_handlers):
    """Under the CLI's handlers a Ctrl-C (or SIGTERM) arriving between the graph's and the sidecar's renames
    stopped the export there: a new graph and no sidecar. It now lands once the renames are done: the new
    export is whole, and the command still stops."""
    import signal
    from rehead.export import export
    out, sidecar = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    export(run.dir, "onnx", out=out, opset=17)
    replace, calls = os.replace, []

    def ctrl_c_after_the_first(src, dst):
        replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, through the CLI's handler
    monkeypatch.setattr(os, "replace", ctrl_c_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        export(run.dir, "onnx", out=out, overwrite=True, opset=14)
    assert [p.name for p in calls] == [".replaced-m.onnx.json", ".replaced-m.onnx", "m.onnx", "m.onnx.json"]
    assert json.loads(sidecar.read_text())["opset"] == 14  # every rename ran, and the old export's asides went
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.json"]


def test_an_overwrite_killed_between_any_two_renames_leaves_a_whole_export_and_the_next_one_says_so(
        run, tmp_path, monkeypatch, capsys):
    """`export --overwrite` deleted the old sidecar, then renamed the new graph and sidecar into place: killed in
    between (kill -9, a power cut), the old export was gone and the new one not in place, and the next export
    said only "m.onnx exists". Now the old export's files are renamed aside (.replaced-*) and deleted only once
    the new one is in place: at every instant the old export is whole on disk or the new one is in place. The
    next export says what a kill left; without --overwrite it gives the commands that put the old export back
    (run here), with --overwrite it ends with one whole export and nothing else."""
    import re
    import shutil
    import subprocess
    from rehead.export import export
    from rehead.run import RunExists
    d = tmp_path / "e"
    out = d / "m.onnx"
    export(run.dir, "onnx", out=out, opset=17)
    old = {p.name: p.read_bytes() for p in d.iterdir()}
    assert sorted(old) == ["m.onnx", "m.onnx.json"]
    real, kills = os.replace, []

    def replace(src, dst):  # a kill just before each rename: what it leaves on disk, copied
        kills.append(tmp_path / f"kill{len(kills)}")
        shutil.copytree(d, kills[-1])
        real(src, dst)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        export(run.dir, "onnx", out=out, overwrite=True, opset=14)
    new = {p.name: p.read_bytes() for p in d.iterdir()}
    assert sorted(new) == ["m.onnx", "m.onnx.json"] and json.loads(new["m.onnx.json"])["opset"] == 14
    assert len(kills) >= 2
    mended = 0
    for snap in kills:
        files = {p.name: p.read_bytes() for p in snap.iterdir()}
        in_place = (files.get("m.onnx"), files.get("m.onnx.json"))
        new_in_place = in_place == (new["m.onnx"], new["m.onnx.json"])
        old_in_place = in_place == (old["m.onnx"], old["m.onnx.json"])
        old_on_disk = old["m.onnx"] in (files.get("m.onnx"), files.get(".replaced-m.onnx")) and \
            old["m.onnx.json"] in (files.get("m.onnx.json"), files.get(".replaced-m.onnx.json"))
        assert new_in_place or old_on_disk, f"{snap.name}: neither export whole ({sorted(files)})"
        assert in_place[1] is None or new_in_place or old_in_place, f"{snap.name}: a graph beside another's sidecar"
        if new_in_place or old_in_place:
            continue
        mend = tmp_path / f"{snap.name}-mended"  # what the user does: the commands the refusal gives
        shutil.copytree(snap, mend)
        with pytest.raises(RunExists) as e:
            export(run.dir, "onnx", out=mend / "m.onnx", opset=14)
        said = str(e.value)
        assert "is not a whole export" in said and "--overwrite" in said, said
        subprocess.run(["bash", "-c", re.search(r"put that one back: `([^`]+)`", said).group(1)], check=True)
        assert {p.name: p.read_bytes() for p in mend.iterdir() if not p.name.startswith(".tmp-")} == old
        capsys.readouterr()
        export(run.dir, "onnx", out=snap / "m.onnx", overwrite=True, opset=14)
        assert "is not a whole export" in capsys.readouterr().err
        assert sorted(p.name for p in snap.iterdir()) == ["m.onnx", "m.onnx.json"]
        assert json.loads((snap / "m.onnx.json").read_text())["opset"] == 14
        mended += 1
    assert mended >= 2  # states a kill leaves that are neither export in place: each said and mended
