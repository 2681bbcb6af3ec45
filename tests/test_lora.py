"""--method lora: peft LoRA adapters in the trainable stages of tiny ViT / BERT / CNN backbones
built here; only adapters and head train and are saved; a reloaded run predicts the same; export
merges the adapters (peft's merge_and_unload) and gives the same logits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rehead
from rehead import lora
from rehead.config import ConfigError, FitConfig
from tests.conftest import atol, timm_spec
from tests.test_text import sentiment_rows, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_vit_spec(tmp_path_factory) -> str:
    return timm_spec(tmp_path_factory, "test_vit")


@pytest.fixture
def tiny_bert(tiny_bert_dir):
    return tiny_bert_dir


def _fit(data, out, spec, **kw):
    opts = dict(model=spec, strategy="full", epochs=2, lr=3e-2, lr_decay=1.0, method="lora", lora_rank=4,
                progress=False, workers=0, batch_size=8, keep_last=True)
    opts.update(kw)
    return rehead.fit(str(data), out=str(out), echo=lambda *a, **k: None, **opts)


def _check_frozen_and_saved(run, tmp_path):
    """Only adapters (and the head) train; model.safetensors holds adapters, head and buffers."""
    model = run.model
    assert isinstance(model, lora.LoraTransferModel)
    wrong = [n for n, p in model.backbone.named_parameters() if p.requires_grad != ("lora_" in n)]
    adapters = [n for n, _ in model.backbone.named_parameters() if "lora_" in n]
    assert adapters and not wrong
    # the adapters moved (B starts at 0)
    assert any(p.abs().max() > 0 for n, p in model.backbone.named_parameters() if "lora_B" in n)
    # no original backbone weight moved: they equal a fresh load of the spec
    fresh = rehead.load(run.config["model"]).cut(run.config["cut"]).state_dict()
    params = {n for n, _ in model.backbone.named_parameters()}
    for n, t in model.backbone.state_dict().items():
        base = n.replace(".base_layer.", ".")
        if n in params and "lora_" not in n:
            assert torch.equal(t.cpu(), fresh[base]), n
    from safetensors.torch import load_file
    saved = load_file(str(run.dir / "model.safetensors"))
    buffers = {f"backbone.{n}" for n, _ in model.backbone.named_buffers()}
    assert all(k.startswith("head.") or "lora_" in k or k in buffers for k in saved)
    assert any(k.startswith("head.") for k in saved)
    full = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    size = (run.dir / "model.safetensors").stat().st_size
    meta = json.loads((run.dir / "lora.json").read_text())
    assert meta["peft"]["r"] == 4 and meta["peft"]["target_modules"] == model.lora_modules
    assert meta["params"]["trainable"] == meta["params"]["adapters"] + sum(p.numel() for p in model.head.parameters())
    return size, full, meta


def test_vit_lora_trains_adapters_only_reloads_and_exports_merged(tmp_path, image_folder, tiny_vit_spec):
    run = _fit(image_folder, tmp_path / "r", tiny_vit_spec)
    size, full, meta = _check_frozen_and_saved(run, tmp_path)
    assert size < full / 5
    # default targets: the attention projections (timm's fused qkv and proj) of every block
    assert {m.rsplit(".", 1)[-1] for m in meta["peft"]["target_modules"]} == {"qkv", "proj"}
    assert len(meta["peft"]["target_modules"]) == 2 * 6
    items = [str(p) for p in sorted(Path(image_folder).rglob("*.jpg"))][:6]
    before, _, _ = run.logits(items)
    again = rehead.Run(run.dir)
    assert isinstance(again.model, lora.LoraTransferModel)
    after, _, _ = again.logits(items)
    assert torch.equal(before, after)
    # export merges: plain modules, the same logits
    from rehead.export import export, load_exported
    res = export(run.dir, "torchscript")
    from PIL import Image
    from rehead.data.images import eval_transform
    tf = eval_transform(again.model.backbone.data_config)
    x = torch.stack([tf(Image.open(i).convert("RGB")) for i in items])
    got = load_exported(res["path"])(x.numpy())
    assert abs(got - before.numpy()).max() < 1e-4
    merged = lora.merge(rehead.Run(run.dir).model)
    assert type(merged) is not lora.LoraTransferModel
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(x), before, atol=1e-5)
    # a changed base is refused, not silently used
    meta["base_weights_id"] = "0" * 32
    (run.dir / "lora.json").write_text(json.dumps(meta))
    from rehead.rundir import BadRun
    with pytest.raises(BadRun, match="changed"):
        rehead.Run(run.dir)


def test_bert_lora_adapts_attention_of_trained_layers_and_reloads(tmp_path, tiny_bert):
    d = tmp_path / "sent"
    d.mkdir()
    write_csv(d / "train.csv", sentiment_rows(48, 0))
    write_csv(d / "test.csv", sentiment_rows(16, 1))
    run = _fit(d, tmp_path / "r", f"hf:{tiny_bert}", epochs=3)
    size, full, meta = _check_frozen_and_saved(run, tmp_path)
    names = meta["peft"]["target_modules"]
    leaves = {n.split(".", 2)[2] for n in names}
    assert leaves == {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}
    assert {n.split(".")[1] for n in names} == {"layer0", "layer1"}
    assert "test_acc" in run.summary
    texts = [t for t, _ in sentiment_rows(10, 3)]
    before, _, _ = run.logits(texts)
    again = rehead.Run(run.dir)
    after, _, _ = again.logits(texts)
    assert torch.equal(before, after)
    assert [r["top"][0]["label"] for r in again.predict(texts)] == [r["top"][0]["label"] for r in run.predict(texts)]
    # an ensemble copies its members' config.yaml and model.safetensors (not lora.json): the adapters
    # are placed again from config.yaml
    from rehead.ensemble import Ensemble, make_ensemble
    import shutil
    from safetensors.torch import load_file, save_file
    other = tmp_path / "r_copy"
    shutil.copytree(run.dir, other)
    w = load_file(str(other / "model.safetensors"))  # another member: a byte-identical copy is refused (two votes)
    k = next(k for k in sorted(w) if k.startswith("head.") and w[k].is_floating_point())
    w[k] = w[k] * 1.1
    save_file(w, str(other / "model.safetensors"))
    make_ensemble([run.dir, other], tmp_path / "ens")
    ens = Ensemble(tmp_path / "ens")
    want = (again.probs(texts)[0] + rehead.Run(other).probs(texts)[0]) / 2  # each member calibrated
    assert torch.allclose(ens.logits(texts)[0].softmax(1), want, atol=1e-6)
    merged = lora.merge(again.model)
    merged_logits, _, _ = again.logits(texts)  # the Run now holds the merged model
    assert torch.allclose(merged_logits, before, atol=1e-5)
    # --lora-targets, and the last --unfreeze stages only
    run2 = _fit(d, tmp_path / "r2", f"hf:{tiny_bert}", strategy="finetune", unfreeze=1, epochs=1,
                lora_targets="query,value")
    names2 = json.loads((run2.dir / "lora.json").read_text())["peft"]["target_modules"]
    assert names2 == ["stages.layer1.attention.self.query", "stages.layer1.attention.self.value"]
    assert all(not p.requires_grad for n, p in run2.model.backbone.named_parameters() if ".layer0." in n)


def test_cnn_lora_adapts_convolutions_including_those_a_stage_holds_directly(tmp_path, image_folder, tiny_spec):
    """test_efficientnet: Conv2d (groups=1) and linear layers; depthwise convolutions are left out
    (peft cannot merge them); conv_stem sits directly in its stage and still gets gradients."""
    run = _fit(image_folder, tmp_path / "r", tiny_spec, lr=1e-2)
    _, _, meta = _check_frozen_and_saved(run, tmp_path)
    names = meta["peft"]["target_modules"]
    assert "stages.stem.conv_stem" in names
    model = run.model
    convs = [model.backbone.get_submodule(n).get_base_layer() for n in names]
    assert all(c.groups == 1 for c in convs if isinstance(c, torch.nn.Conv2d))
    stem_b = model.backbone.get_submodule("stages.stem.conv_stem").lora_B["default"].weight
    assert stem_b.abs().max() > 0  # the timm model runs the adapted stem, not a stale copy
    assert model.backbone.model.conv_stem is model.backbone.get_submodule("stages.stem.conv_stem")
    items = [str(p) for p in sorted(Path(image_folder).rglob("*.jpg"))][:4]
    before, _, _ = run.logits(items)
    again = rehead.Run(run.dir)
    after, _, _ = again.logits(items)
    assert torch.equal(before, after)  # BatchNorm statistics of the trained stages were saved too
    lora.merge(again.model)
    assert again.model.backbone.model.conv_stem is again.model.backbone.get_submodule("stages.stem.conv_stem")
    merged, _, _ = again.logits(items)
    assert torch.allclose(merged, before, atol=1e-4)


def test_lora_options_and_errors(tmp_path, image_folder, tiny_spec):
    assert "lora" in FitConfig.__dataclass_fields__["method"].metadata["choices"]
    c = FitConfig(method="lora", lora_rank=16, lora_alpha=32, lora_targets="qkv")
    assert FitConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="--lora-rank"):
        FitConfig(lora_rank=0)
    with pytest.raises(ConfigError, match="--lora-dropout"):
        FitConfig(lora_dropout=1.0)
    with pytest.raises(ValueError, match="not extract"):
        _fit(image_folder, tmp_path / "a", tiny_spec, strategy="extract")
    with pytest.raises(ValueError, match="matches no .*named: .*conv"):
        _fit(image_folder, tmp_path / "b", tiny_spec, lora_targets="nosuchlayer")


class _Killed(Exception):
    pass


class _KillAfterFirstEpoch:
    order = 99  # after the checkpoint is written

    def after_epoch(self, tr):
        raise _Killed


def test_lora_resume_rebuilds_the_adapters_and_ends_like_an_uninterrupted_run(tmp_path, image_folder, tiny_spec):
    """--resume: the hooks come back from config.yaml, adapters are injected again, the checkpoint loads."""
    items = [str(p) for p in sorted(Path(image_folder).rglob("*.jpg"))][:4]
    whole = _fit(image_folder, tmp_path / "whole", tiny_spec, epochs=2)
    assert whole.config["methods"] == [{"method": "lora", "lora_rank": 4, "lora_alpha": 16.0, "lora_dropout": 0.0,
                                        "lora_targets": None}]
    with pytest.raises(_Killed):
        _fit(image_folder, tmp_path / "cut", tiny_spec, epochs=2, hooks=[lora.LoRA(4, 16.0, 0.0), _KillAfterFirstEpoch()])
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = rehead.fit(out=str(tmp_path / "cut"), resume=True, progress=False, echo=lambda *a, **k: None)
    a, _, _ = whole.logits(items)
    b, _, _ = rehead.Run(resumed.dir).logits(items)
    assert torch.allclose(a, b, atol=atol(1e-6))


def test_find_lr_with_lora_steps_the_adapters(tmp_path, image_folder, tiny_vit_spec, monkeypatch):
    """fit's --find-lr under --method lora stepped the plain backbone's weights (every one of its stages),
    an LR for another problem than the adapters the fit then trains."""
    from rehead.train import lr_find as lr_find_module
    stepped, real = [], lr_find_module.lr_find

    def spy(model, *a, param_groups=None, **k):
        ids = {id(p) for g in param_groups for p in g["params"]}
        stepped.extend(n for n, p in model.named_parameters() if id(p) in ids)
        return real(model, *a, param_groups=param_groups, **k)

    monkeypatch.setattr(lr_find_module, "lr_find", spy)
    _fit(image_folder, tmp_path / "r", tiny_vit_spec, epochs=1, find_lr=True, lr=None)
    backbone = [n for n in stepped if not n.startswith("head.")]
    assert backbone and all("lora_" in n for n in backbone), backbone[:5]
