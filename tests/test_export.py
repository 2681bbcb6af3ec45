"""Export: the ONNX / TorchScript file computes the run's own logits, and says how to feed it."""
import json
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
    assert steps["center_crop"]["size"] == [cfg["input_size"]] * 2
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
    z = got / meta["temperature"]
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert probs.max(1) == pytest.approx([r["top"][0]["prob"] for r in run.predict(paths)], abs=1e-4)


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
