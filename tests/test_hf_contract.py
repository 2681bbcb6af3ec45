"""Contract tests for Hugging Face text backbones, parametrized over families like transformers'
own model tests: tiny random configs built here (offline), saved with a tiny tokenizer, loaded
through ``hf:DIR``. At full depth and at every cut, rehead's features equal the hidden states of
``AutoModel(..., output_hidden_states=True)`` pooled the same way, on a padded batch."""
from __future__ import annotations

import copy
import csv
import json

import pytest
import torch

from rehead import zoo

WORDS = ("the movie was really quite plot acting film story overall good great excellent bad awful "
         "terrible a an of and it is not very".split())
SENTENCES = ["the plot was good", "awful", "the film was quite really terrible overall and the acting "
             "was not very good", "a great story"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3)
FAMILIES = {  # model_type -> config overrides (None: COMMON as it is)
    "bert": {},
    "roberta": {},
    "distilbert": dict(dim=32, n_layers=3, n_heads=4, hidden_dim=37, max_position_embeddings=64, pad_token_id=0),
    "deberta-v2": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                       max_relative_positions=16, position_biased_input=False),
    "modernbert": dict(global_attn_every_n_layers=2, local_attention=4, cls_token_id=2, sep_token_id=3),
    "gpt2": dict(n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=3),
    "llama": dict(num_key_value_heads=2),
    # more families, each for a different piece of glue in the model's own forward
    "electra": dict(embedding_size=16),  # embeddings projected to the hidden size
    "mpnet": {},  # relative attention bias computed in the encoder, shared by the blocks
    "qwen2": dict(num_key_value_heads=2),
    "gemma2": dict(num_key_value_heads=2, head_dim=8, sliding_window=4),  # sliding / global masks per block
    "opt": dict(ffn_dim=37, word_embed_proj_dim=32),  # the final norm inside model.decoder
    "bloom": dict(n_layer=3, n_head=4),  # ALiBi, no attention flag: a decoder by its LM heads
}
DECODERS = {"gpt2", "llama", "qwen2", "gemma2", "opt", "bloom"}
FINAL_NORM = {"gpt2": "ln_f", "llama": "norm", "modernbert": "final_norm", "qwen2": "norm", "gemma2": "norm",
              "opt": "decoder.final_layer_norm", "bloom": "ln_f"}
OWN_KEYS = {"distilbert", "gpt2"}  # configs with their own names for the sizes


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]")


def save_tiny(d, family: str):
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    kw = FAMILIES[family] if family in OWN_KEYS else {**COMMON, **FAMILIES[family]}
    cfg = AutoConfig.for_model(family, vocab_size=len(tok), **kw)
    AutoModel.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return {f: save_tiny(tmp_path_factory.mktemp(f.replace("-", "_")), f) for f in FAMILIES}


def reference_pool(h, mask, pooling):
    if pooling == "cls":
        return h[:, 0]
    if pooling == "last":  # right padding: the last real token
        return h[torch.arange(len(h)), mask.sum(1) - 1]
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_features_equal_automodel_hidden_states_pooled(family, tiny_dirs, one_thread):
    from transformers import AutoModel
    d = tiny_dirs[family]
    bb = zoo.load(f"hf:{d}").eval()
    ref = AutoModel.from_pretrained(d).eval()
    decoder = family in DECODERS
    pooling = "last" if decoder else "cls"
    assert bb.family == family and bb.data_config["pooling"] == pooling
    names = ["embeddings", "layer0", "layer1", "layer2"] + (["norm"] if family in FINAL_NORM else [])
    assert bb.stage_names == names
    x = bb.tokenize(SENTENCES)
    mask = x["attention_mask"]
    # padded, lengths differ (transformers swaps Qwen2's own tokenizer class in, which splits differently)
    assert (mask == 0).any() and len(set(mask.sum(1).tolist())) >= 3
    # the reference: AutoModel's hidden states; the last block's output before a final norm by a hook
    pre_norm = {}
    norm = FINAL_NORM.get(family)
    if norm:
        ref.get_submodule(norm).register_forward_pre_hook(lambda m, a: pre_norm.setdefault("h", a[0]))
    with torch.inference_mode():
        out = ref(**x, output_hidden_states=True)
    hs = out.hidden_states
    n = ref.config.num_hidden_layers
    assert len(hs) == n + 1
    want = {c: reference_pool(hs[c - 1], mask, pooling) for c in range(1, n + 1)}  # embeddings + c-1 blocks
    want[n + 1] = reference_pool(pre_norm["h"] if norm else out.last_hidden_state, mask, pooling)
    want[len(bb)] = reference_pool(out.last_hidden_state, mask, pooling)  # full depth
    cuts = list(range(1, len(bb) + 1))
    with torch.inference_mode():
        one_pass = bb.forward_cuts(x, cuts)
        for c in cuts:
            cut = bb.cut(c)
            got = cut(x)  # the model truncated to the cut
            assert got.shape == (len(SENTENCES), 32)
            assert torch.allclose(got, want[c], atol=1e-5), (family, c, (got - want[c]).abs().max())
            assert torch.allclose(one_pass[c], want[c], atol=1e-5), (family, c)
            state = cut.begin(x)  # stage by stage, as rehead's trainer runs it
            for i in range(len(cut)):
                state = cut.run_stage(i, state)
            assert torch.allclose(cut.pool(state), want[c], atol=1e-5)
    rows = bb.describe(x)
    assert [r["output_shape"] for r in rows] == [(mask.shape[1], 32)] * len(bb)
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in bb.parameters())
    # a deep copy runs on its own modules; a cut moved alone (here: to float64) uses only what it holds
    twin = copy.deepcopy(bb)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    with torch.inference_mode():
        assert not torch.allclose(twin(x), want[len(bb)], atol=1e-3)
        assert torch.allclose(bb(x), want[len(bb)], atol=1e-5)
        low = bb.cut(2).to(torch.float64)(x)
    assert low.dtype == torch.float64 and torch.allclose(low.float(), want[2], atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_frozen_prefix_runs_without_autograd_and_the_rest_trains(family, tiny_dirs, one_thread):
    """As rehead's trainer runs a backbone: the frozen prefix under no_grad stores no
    activations (no gradient reaches it even with requires_grad on), the rest gets gradients."""
    bb = zoo.load(f"hf:{tiny_dirs[family]}").train()
    x = bb.tokenize(SENTENCES)
    entering = {}

    def record(mod, args, kwargs):
        entering["grad"] = (args[0] if args else next(iter(kwargs.values()))).requires_grad
    bb.stages["layer1"].register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        state = bb.begin(x)
        for i in range(2):  # embeddings, layer0 frozen
            state = bb.run_stage(i, state)
    for i in range(2, len(bb)):
        state = bb.run_stage(i, state)
    bb.pool(state).sum().backward()
    assert torch.is_grad_enabled()
    grads = {name: any(p.grad is not None for p in s.parameters()) for name, s in bb.stages.items()}
    assert grads == {n: n not in ("embeddings", "layer0") for n in bb.stage_names}
    assert entering["grad"] is False  # layer1, the first trainable block, gets layer0's output without a graph


def test_a_sentence_transformers_folder_pools_as_its_card_says(tmp_path, one_thread):
    """modules.json + 1_Pooling/config.json: mean pooling, max_seq_length; equal to SentenceTransformer."""
    from sentence_transformers import SentenceTransformer
    d = save_tiny_st(tmp_path / "st")
    bb = zoo.load(f"hf:{d}").eval()
    assert (bb.data_config["pooling"], bb.data_config["max_length"]) == ("mean", 20)
    with torch.inference_mode():
        ours = bb(bb.tokenize(SENTENCES))
    ref = torch.from_numpy(SentenceTransformer(str(d), device="cpu").encode(SENTENCES))
    assert torch.allclose(ours, ref, atol=1e-5)
    # options override the card
    bb = zoo.load(f"hf:{d}?pooling=cls&normalize=1&max_length=8")
    assert (bb.data_config["pooling"], bb.data_config["normalize"], bb.data_config["max_length"]) == ("cls", True, 8)
    with torch.inference_mode():
        x = bb.tokenize(SENTENCES)
        assert x["input_ids"].shape[1] == 8
        assert torch.allclose(bb(x).norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-6)
    with pytest.raises(zoo.ModelNotFound, match="pooling=mean|cls"):
        zoo.load(f"hf:{d}?pooling=avg")


def save_tiny_st(d):
    """A sentence-transformers folder: tiny BERT + modules.json, mean Pooling, max_seq_length 20."""
    save_tiny(d, "bert")
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                             "pooling_mode_mean_tokens": True}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20, "do_lower_case": False}))
    return d


def test_hf_hub_id_from_the_hub_cache_reads_its_card(tmp_path, monkeypatch, one_thread):
    """hf:ORG/NAME goes through the Hub (here its cache, offline): model, tokenizer and the
    sentence-transformers card (pooling, max length) as for a local folder."""
    import shutil
    import huggingface_hub.constants
    src = save_tiny_st(tmp_path / "src")
    snap = tmp_path / "hub" / "models--rehead-test--tiny-st" / "snapshots" / ("0" * 40)
    shutil.copytree(src, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub, local = zoo.load("hf:rehead-test/tiny-st").eval(), zoo.load(f"hf:{src}").eval()
    assert hub.spec == "hf:rehead-test/tiny-st" and hub.data_config["tokenizer"] == "rehead-test/tiny-st"
    assert (hub.data_config["pooling"], hub.data_config["max_length"]) == ("mean", 20)
    x = hub.tokenize(SENTENCES)
    with torch.inference_mode():
        assert torch.allclose(hub(x), local(x), atol=1e-6)


def test_hf_specs_hub_id_offline_and_local_folders(tmp_path, tiny_dirs, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(zoo.ModelNotFound, match=r"hf download rehead-test/no-such-model --local-dir DIR.*hf:DIR"):
        zoo.load("hf:rehead-test/no-such-model")
    with pytest.raises(zoo.ModelNotFound, match="no folder"):
        zoo.load(f"hf:{tmp_path}/absent")
    with pytest.raises(zoo.ModelNotFound, match="no config.json"):
        zoo.load(f"hf:{tmp_path}")
    # a relative folder, the same model as its absolute path
    monkeypatch.chdir(tiny_dirs["distilbert"].parent)
    rel = zoo.load(f"hf:./{tiny_dirs['distilbert'].name}")
    assert rel.spec == f"hf:./{tiny_dirs['distilbert'].name}" and rel.family == "distilbert"
    assert rel.data_config["tokenizer"] == str(tiny_dirs["distilbert"].resolve())


@pytest.mark.parametrize("family", ["deberta-v2"])
def test_finetune_a_tiny_model_from_a_csv(family, tiny_dirs, tmp_path):
    """rehead.fit(strategy='finetune'): the head, then the last two blocks train; the rest is untouched."""
    import random
    import rehead
    rng = random.Random(0)
    rows = []
    for i in range(40):
        good = i % 2 == 0
        words = rng.sample(WORDS[:10], 3) + [rng.choice(["good", "great", "excellent"] if good else ["bad", "awful", "terrible"])]
        rows.append((" ".join(words), "pos" if good else "neg"))
    with open(tmp_path / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    spec = f"hf:{tiny_dirs[family]}"
    before = zoo.load(spec).state_dict()
    run = rehead.fit(tmp_path / "data.csv", out=tmp_path / "run", model=spec, strategy="finetune", epochs=1,
                     unfreeze=2, batch_size=8, keep_last=True, progress=False, echo=lambda *a: None)
    after = {k: v.cpu() for k, v in run.model.backbone.state_dict().items()}
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer1", "layer2"}
    top = rehead.Run(tmp_path / "run").predict(["a great film"])[0]["top"]
    assert {t["label"] for t in top} == {"pos", "neg"}


@pytest.mark.parametrize("model_type,kw,match", [
    # a transformers image checkpoint: refused as one (timm cannot read its folder, so no timm:hf-hub: advice)
    ("vit", dict(image_size=32, patch_size=8), "is an image model.*image checkpoints are not supported"),
    ("convnext", dict(image_size=32, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
     "is an image model.*image checkpoints are not supported"),
    ("t5", dict(d_model=32, num_layers=2, num_heads=4, d_ff=37, d_kv=8), "encoder-decoder"),
    # one block shared by all layers: said as such, not as "no list of blocks"
    ("albert", dict(embedding_size=16), "shares its transformer blocks across layers.*ALBERT"),
])
def test_models_rehead_cannot_cut_are_refused_with_a_reason(model_type, kw, match, tmp_path):
    from transformers import AutoConfig, AutoModel
    sizes = {} if model_type in ("t5", "convnext") else dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                intermediate_size=37)
    AutoModel.from_config(AutoConfig.for_model(model_type, **sizes, **kw)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(zoo.ModelNotFound, match=match):
        zoo.load(f"hf:{tmp_path}")


def test_a_decoder_gives_a_text_the_same_features_alone_and_in_a_batch_whatever_its_tokenizer_pads(tmp_path,
                                                                                                     one_thread):
    """A GPT-2 whose tokenizer pads on the left (as many decoders ship) numbered a text's positions after the
    padding: alone and beside a longer text it gave features 2.5 apart, and a prediction that depended on
    its batch (the cache kept whichever it met first)."""
    from transformers import AutoTokenizer
    d = save_tiny(tmp_path / "gpt2", "gpt2")
    AutoTokenizer.from_pretrained(d, padding_side="left").save_pretrained(d)  # saved as left-padding
    bb = zoo.load(f"hf:{d}").eval()
    with torch.inference_mode():
        alone = bb(bb.tokenize(SENTENCES[:1]))[0]
        batched = bb(bb.tokenize(SENTENCES[:1] + SENTENCES[2:3]))[0]
    assert torch.allclose(alone, batched, atol=1e-5), (alone - batched).abs().max()


def test_max_length_fits_the_position_embeddings(tiny_dirs, one_thread):
    """RoBERTa's positions start after the padding index: a default max_length of all 64 positions crashed
    in the first long batch ("index 64 is out of bounds"), after --out was made; a ?max_length past them too."""
    d = tiny_dirs["roberta"]
    bb = zoo.load(f"hf:{d}").eval()
    assert bb.data_config["max_length"] == 63  # 64 positions, less the padding index 0 and the one before
    with torch.inference_mode():
        assert bb(bb.tokenize([" ".join(["good"] * 200)])).shape == (1, 32)
    with pytest.raises(ValueError, match=r"max_length=100 is more than the model takes: .* hold 63 tokens"):
        zoo.load(f"hf:{d}?max_length=100")


def test_a_decoder_cut_at_its_embeddings_where_every_text_ends_alike_is_refused(tmp_path, tiny_dirs, one_thread):
    """GPT-2 pooled by its last token and cut at its embeddings read the [SEP] its tokenizer appends to every
    text: features that held only each text's length, accepted as a fit."""
    import rehead
    from rehead.config import ConfigError
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(24):
            w.writerow([" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 4)), "ab"[i % 2]])
    opts = dict(strategy="extract", progress=False, echo=lambda *a: None, workers=0)
    with pytest.raises(ConfigError, match="ends every text with the same token.*add \\?pooling=mean"):
        rehead.fit(str(tmp_path / "t.csv"), model=f"hf:{tiny_dirs['gpt2']}", cut=1, out=tmp_path / "r", **opts)
    assert not (tmp_path / "r").exists()
    rehead.fit(str(tmp_path / "t.csv"), model=f"hf:{tiny_dirs['gpt2']}?pooling=mean", cut=1, out=tmp_path / "m",
               **opts)
