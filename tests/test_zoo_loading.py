"""Loading backbones from folders, files and hubs: each wrong input gets a one-line error saying what
is wrong and how to fix it, before any work; fine-tuned checkpoints keep their own classifier."""
from __future__ import annotations

import json
import time

import pytest
import torch

from rehead import zoo

BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128)


def _timm(arch: str = "resnet10t", **kw):
    import timm
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, **kw).eval()


def _save(m, path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


def timm_folder(d, arch: str = "resnet10t", config_classes: int = 1000, **kw):
    """A timm hub repo as `hf download timm/NAME --local-dir d` leaves it: config.json + model.safetensors."""
    d.mkdir(parents=True, exist_ok=True)
    m = _timm(arch, **kw)
    cfg = dict(_timm(arch).pretrained_cfg)
    cfg.pop("hf_hub_id", None)
    (d / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": config_classes,
                                               "pretrained_cfg": cfg}, default=str))
    _save(m, d / "model.safetensors")
    return m


def pre_logits(m, x):
    with torch.no_grad():
        return m.forward_head(m.forward_features(x), pre_logits=True)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# -- 1: hf:DIR without tokenizer files ----------------------------------------------------------
def test_an_hf_folder_without_tokenizer_files_is_refused_at_load(tmp_path, tiny_bert_dir):
    """transformers 5 built a tokenizer of 5 special tokens: every word [UNK], a fit at the majority class."""
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(**BERT)).save_pretrained(tmp_path)
    with pytest.raises(zoo.ModelNotFound, match=r"has no tokenizer files \(tokenizer.json, vocab.txt, ...\).*"
                                                r"tokenizer.save_pretrained"):
        zoo.load(f"hf:{tmp_path}")
    assert zoo.load(f"hf:{tiny_bert_dir}").family == "bert"  # the same model with its tokenizer loads


def test_packaged_minilm_still_loads():
    bb = zoo.load("packaged:minilm")
    assert len(bb.tokenizer) > 30000 and bb.tokenize(["a film"])["input_ids"][0, 1] != bb.tokenizer.unk_token_id


# -- 2: timm:local-dir:DIR / hf:DIR mix-ups --------------------------------------------------------
def test_timm_local_dir_errors_say_what_is_wrong_not_offline(tmp_path):
    cases = {}
    cases["absent"] = (tmp_path / "absent", r"no folder .*absent.*hf download timm/NAME")
    (tmp_path / "empty").mkdir()
    cases["empty"] = (tmp_path / "empty", r"empty has no config.json")
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(**BERT)).save_pretrained(tmp_path / "bert")
    cases["bert"] = (tmp_path / "bert", r"bert is not a timm folder \(its config.json has no 'architecture'\).*"
                                        r"use hf:.*bert$")
    timm_folder(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    cases["noweights"] = (tmp_path / "noweights", r"noweights has no weights \(model.safetensors")
    timm_folder(tmp_path / "other")
    _save(_timm("test_efficientnet"), tmp_path / "other" / "model.safetensors")
    cases["other"] = (tmp_path / "other", r"model.safetensors \(for resnet10t, as config.json says\) does not fit "
                                          r"the architecture \(\d+ of its \d+ tensors match: weights of another "
                                          r"architecture\?\): missing: conv1.0.weight, .*\(\d+ in all\)")
    for name, (folder, match) in cases.items():
        with pytest.raises(zoo.ModelNotFound, match=match) as e:
            zoo.load(f"timm:local-dir:{folder}")
        assert "Offline?" not in one_line(e) and len(str(e.value)) < 800, name


def test_hf_on_a_timm_folder_points_to_timm_local_dir(tmp_path):
    """It was a raw TypeError (... got multiple values for keyword argument 'num_classes')."""
    timm_folder(tmp_path)
    with pytest.raises(zoo.ModelNotFound, match=r"is a timm folder .*'resnet10t'.*use timm:local-dir:"):
        zoo.load(f"hf:{tmp_path}")


def test_timm_local_dir_with_a_fine_tuned_classifier_keeps_it(tmp_path, one_thread):
    """config.json says 1000 classes (copied from the base repo), the weights hold 5: the weights win."""
    m = timm_folder(tmp_path, num_classes=5)
    bb = zoo.load(f"timm:local-dir:{tmp_path}")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), pre_logits(m, x), atol=1e-6, rtol=0)
        torch.testing.assert_close(bb.source_head[0](bb(x)), m(x), atol=1e-5, rtol=0)
    assert bb.source_labels is None  # not ImageNet's names for a 5-class head
    assert zoo.load(f"timm:local-dir:{tmp_path}", pretrained=False).source_head[0].out_features == 5


# -- 3: hub weights offline ------------------------------------------------------------------------
def _hub_cache(root, repo: str, files: dict):
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    return root


def test_hub_weights_fail_fast_offline_and_load_from_the_local_cache(tmp_path, monkeypatch, one_thread):
    """Offline, timm:/torchvision:/timm:hf-hub: spent 40-57 s in huggingface_hub's retries before failing."""
    from huggingface_hub import constants
    from rehead.zoo import hf
    monkeypatch.setattr(hf, "hub_reachable", lambda *a: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec, arch in [("timm:resnet10t", "timm:resnet10t"), ("torchvision:resnet18", "torchvision:resnet18"),
                       ("timm:hf-hub:timm/resnet10t.c3_in1k", "timm:<architecture>")]:
        t0 = time.perf_counter()
        with pytest.raises(zoo.ModelNotFound, match=r"not in the local Hugging Face cache .* the Hub is "
                                                    rf"unreachable\). Offline\?.*file:PATH#{arch}") as e:
            zoo.load(spec)
        assert time.perf_counter() - t0 < 10 and "timm:local-dir:FOLDER" in one_line(e), spec
    m = _timm()
    cfg = {"architecture": "resnet10t", "num_classes": 1000, "pretrained_cfg": dict(m.pretrained_cfg)}
    _hub_cache(tmp_path / "hub", "timm/resnet10t.c3_in1k",
               {"model.safetensors": lambda p: _save(m, p),
                "config.json": lambda p: p.write_text(json.dumps(cfg, default=str))})
    x = torch.randn(1, 3, 64, 64)
    for spec in ("timm:resnet10t", "timm:hf-hub:timm/resnet10t.c3_in1k"):
        with torch.no_grad():
            torch.testing.assert_close(zoo.load(spec)(x), pre_logits(m, x), atol=1e-6, rtol=0)
    assert constants.HF_HUB_OFFLINE is False  # offline only while loading


# -- 4: file: weights of a fine-tuned timm model -------------------------------------------------
@pytest.mark.parametrize("arch,classes", [("resnet10t", 5), ("test_vit", 3), ("test_efficientnet", 0)])
def test_file_weights_of_a_fine_tuned_timm_model_keep_their_own_classifier(tmp_path, arch, classes, one_thread):
    """It was refused: shape mismatch: fc.weight (5, 512) vs (1000, 512). 0: saved without a classifier."""
    m = _timm(arch, num_classes=classes)
    spec = f"file:{_save(m, tmp_path / 'w.safetensors')}#timm:{arch}"
    bb = zoo.load(spec)
    size = bb.data_config["input_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), pre_logits(m, x), atol=1e-5, rtol=0)
        if classes:
            torch.testing.assert_close(bb.source_head[0](bb(x)), m(x), atol=1e-5, rtol=0)
    assert bb.source_head[0] is None if not classes else bb.source_head[0].out_features == classes
    arch_only = zoo.load(spec, pretrained=False)  # what a run reloads its saved weights into
    assert {k: v.shape for k, v in arch_only.state_dict().items()} == {k: v.shape for k, v in bb.state_dict().items()}


def test_file_weights_that_differ_beyond_the_classifier_are_still_refused(tmp_path):
    sd = _timm(num_classes=5).state_dict()
    sd["conv1.0.weight"] = sd["conv1.0.weight"][:, :, :1]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(zoo.ModelNotFound, match=r"shape mismatch: conv1.0.weight .*fc.weight \(5, 512\) vs"):
        zoo.load(f"file:{tmp_path / 'w.pth'}#timm:resnet10t")


def test_a_fine_tuned_torchvision_state_dict_loads(tmp_path, one_thread):
    import torchvision
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    bb = zoo.load(f"file:{tmp_path / 'r18.pth'}#torchvision:resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.source_head[0](bb(x)), tv(x), atol=1e-5, rtol=0)


# -- 5: specs without their source ---------------------------------------------------------------
def test_folders_and_files_without_a_source_get_the_spec_they_need(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel
    monkeypatch.chdir(tmp_path)
    BertModel(BertConfig(**BERT)).save_pretrained(tmp_path / "hf" / "tinybert")
    timm_folder(tmp_path / "w" / "vitdir", "test_vit")
    (tmp_path / "w" / "x.safetensors").write_bytes(b"")
    for spec, hint in [("hf/tinybert", "did you mean hf:hf/tinybert (a Hugging Face transformers folder)? Use"),
                       ("w/vitdir", "did you mean timm:local-dir:w/vitdir (a timm folder)? Use"),
                       ("w/x.safetensors", "did you mean file:w/x.safetensors#timm:ARCH (or #torchvision:ARCH)"),
                       ("resnet18", "is not a model spec: did you mean timm:resnet18? Use SOURCE:NAME")]:
        with pytest.raises(zoo.ModelNotFound) as e:
            zoo.load(spec)
        assert hint in one_line(e) and "?." not in str(e.value), spec


def test_rank_cut_syntax_elsewhere_points_to_cut():
    with pytest.raises(zoo.ModelNotFound, match=r"@block3 names a cut only in `rehead rank --models`; here give "
                                                r"the model alone \(--model packaged:efficientnet_lite0\) and the "
                                                r"cut as --cut block3"):
        zoo.load("packaged:efficientnet_lite0@block3")


def test_a_path_spec_that_is_gone_is_said_so_not_called_a_bad_spec(tmp_path):
    """A run made from a run that was later deleted said "'/x/runs/a' is not a model spec"."""
    from rehead import zoo
    with pytest.raises(zoo.ModelNotFound, match="runs/a does not exist: a run directory .* moved or deleted"):
        zoo.load(str(tmp_path / "runs" / "a"))
    with pytest.raises(zoo.ModelNotFound, match="a Hugging Face Hub model is hf:org/name"):
        zoo.load("org/name")
