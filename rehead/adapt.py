"""Domain adaptation: continue pretraining a language model on unlabelled domain text.

Causal LMs learn next-token prediction, encoders masked-token prediction (15% of tokens,
80% [MASK] / 10% random / 10% kept, as in BERT). Perplexity is measured on held-out domain
text before and after, with the same masks both times for masked LMs.

The result is a run directory that ``fit --model DIR`` takes as a backbone:

    config.yaml            kind: backbone, model: hf:<abs path of DIR/hf>?pooling=..&max_length=.. (the
                           source backbone's, so a fit pools and truncates as on the source), depth, adapt figures
    backbone.safetensors   the encoder's stages (what rehead loads)
    hf/                    the whole adapted LM + tokenizer (save_pretrained): usable by transformers,
                           and the architecture/tokenizer rehead rebuilds the backbone from
    adapt.json             perplexity before/after, corpus sizes, settings
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn

from .data import DataError
from .recipes import Phase
from .zoo.hf import max_positions
from .train.callbacks import Callback, ClipGrad, MetricsCSV, Progress, Schedule
from .zoo import ModelNotFound
from .zoo.hf import quiet_transformers

OBJECTIVES = ("auto", "causal", "masked")


CORPUS_KINDS = "a .txt file (one passage per line), a CSV with a text column, or a folder with train.csv"
CORPUS_SUFFIXES = (".txt", ".csv")  # any other file was read as text: a JPEG gave ~1000 garbled passages


def corpus_file(path) -> Path:
    """The file a corpus argument names: itself, or a folder's train.csv. Another kind of file is refused:
    read as text, a JPEG or a spreadsheet became a thousand garbled 'passages', trained on."""
    p = Path(path)
    if p.is_dir():
        if not (p / "train.csv").is_file():
            raise DataError(f"corpus {path} is a folder without train.csv: give {CORPUS_KINDS}")
        return p / "train.csv"
    if not p.is_file():
        raise DataError(f"corpus {path} does not exist: give {CORPUS_KINDS}")
    if p.suffix.lower() not in CORPUS_SUFFIXES:
        raise DataError(f"corpus {path} is not a .txt or .csv file: adapt reads {CORPUS_KINDS} (a spreadsheet: "
                        "save it as CSV UTF-8; a plain text file: name it .txt)")
    return p


def corpus_text(p: Path) -> str:
    """A corpus file's text; one that is not UTF-8 text is refused, not decoded with replacement characters
    (an image renamed .txt trained on its bytes) nor left to the CSV reader (whose advice is not adapt's)."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                        f"adapt reads {CORPUS_KINDS}, saved as UTF-8") from None
    if "\x00" in text:  # valid UTF-8 yet binary (a NUL byte is in no text file)
        raise DataError(f"corpus {p} holds NUL bytes, so it is a binary file, not text: adapt reads {CORPUS_KINDS}")
    return text


def read_corpus(path, text_column: str = "text") -> list[str]:
    """Lines of a .txt (one passage per line), or the text column of a CSV / a folder's train.csv."""
    p = corpus_file(path)
    text = corpus_text(p)
    if p.suffix.lower() == ".csv":
        from .data.text import read_csv
        texts, _, _ = read_csv(p, text_column, None)
    else:
        texts = [t for t in (line.strip() for line in text.splitlines()) if t]
    if len(texts) < 2:
        raise DataError(f"corpus {p} has {len(texts)} non-empty passage(s): need at least 2 "
                        "(some to train on, some held out to measure perplexity)")
    return texts


def resolve_source(model: str) -> tuple[str, dict]:
    """Where the LM's files are (hf:<id or dir>, packaged:minilm, or an earlier adapt run directory),
    and the pooling / max_length / normalize its spec sets (hf.parse_name's options)."""
    from .zoo.hf import DEFAULT_MAX_LENGTH, minilm_path, parse_name, resolve
    from .run import read_config
    if model.startswith("hf:"):
        name, opts = parse_name(model[3:])
        return resolve(name), opts  # a missing folder named as fit names it, before any work
    if model == "packaged:minilm":
        return minilm_path(), {"max_length": DEFAULT_MAX_LENGTH}  # as zoo.hf.minilm loads it
    p = Path(model)
    if p.is_dir() and (p / "config.yaml").exists():
        cfg = read_config(p)
        if cfg.get("kind") == "backbone" and (p / "hf" / "config.json").exists():
            return str((p / "hf").resolve()), parse_name(str(cfg.get("model", ""))[3:])[1]
    raise ModelNotFound(f"adapt needs a transformers language model: hf:<hub id or local dir>, packaged:minilm, "
                        f"or a directory written by an earlier `rehead adapt`; got {model!r}")


def load_config(source: str):
    """The model's transformers config; an unreachable hub id gets hf's offline advice."""
    import transformers as tf
    from .zoo.hf import _offline_error, hub_or_cache
    try:
        with hub_or_cache(source):
            return tf.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise _offline_error(source, e) from e


def preprocessing(lm, tokenizer, source: str, opts: dict) -> dict:
    """The source backbone's pooling, max_length and normalize (spec options, else its card, else the
    family's default): the adapted backbone must pool and truncate as the one `fit` would have used."""
    from .zoo.hf import wrap_text_model
    dc = wrap_text_model(lm, tokenizer, source, "", opts.get("max_length"), opts.get("pooling"),
                         opts.get("normalize", False)).data_config
    return {"pooling": dc["pooling"], "max_length": dc["max_length"], "normalize": bool(dc.get("normalize"))}


def adapted_spec(hf_dir: Path, prep: dict) -> str:
    """hf:DIR with the source's preprocessing as options: hf/ has no sentence-transformers card to say it."""
    q = f"pooling={prep['pooling']}&max_length={prep['max_length']}" + ("&normalize=1" if prep["normalize"] else "")
    return f"hf:{hf_dir}?{q}"


def causal_attention(config) -> bool:
    """Whether each token attends only to those before it (GPT-2, Llama ...). Families with both a masked
    and a causal LM class (BERT, RoBERTa ...) are causal only with ``is_decoder`` (XLM: ``causal``): their
    ForCausalLM / LMHeadModel without it is a bidirectional encoder that sees the token it is to predict."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING
    if getattr(config, "is_decoder", False) or getattr(config, "causal", False) is True:
        return True
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return False
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return True
    archs = " ".join(getattr(config, "architectures", None) or [])
    return "CausalLM" in archs or "LMHeadModel" in archs


def pick_objective(config, objective: str = "auto", model: str = "") -> str:
    """causal for decoders (GPT-2, Llama ...), masked for encoders (BERT, RoBERTa, MiniLM ...); causal on an
    encoder is refused: its perplexity would be measured with the next token in view."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    causal = causal_attention(config)
    if objective == "causal" and not causal:
        from .config import ConfigError
        raise ConfigError(f"--objective causal needs a decoder (GPT-2, Llama ...): {model or 'the model'} is an "
                          f"encoder ({config.model_type}) whose attention sees every token, the next one included; "
                          "use --objective masked (or a decoder model)")
    if objective == "masked" and causal:
        from .config import ConfigError
        raise ConfigError(f"--objective masked needs an encoder (BERT, RoBERTa ...): {model or 'the model'} is a "
                          f"decoder ({config.model_type}) whose attention sees only earlier tokens, with no masked-LM "
                          "head; use --objective causal (or an encoder model)")
    if objective != "auto":
        return objective
    return "causal" if causal else "masked"


def check_options(objective, epochs, lr, batch_size, max_length, val_fraction, mlm_probability, seed) -> None:
    """Every option, before the corpus is read, the model loaded or --out created."""
    from .config import ConfigError, check_seed
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if epochs < 0:
        raise ConfigError(f"--epochs must be >= 0 (0: only measure perplexity and save the model as is), got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--lr must be > 0, got {lr}")
    for flag, v in (("--batch-size", batch_size), ("--max-length", max_length)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    for flag, v in (("--val-fraction", val_fraction), ("--mlm-probability", mlm_probability)):
        if not 0 < v < 1:
            raise ConfigError(f"{flag} must be between 0 and 1 (exclusive), got {v}")
    check_seed(seed)

MAX_LENGTH = 128  # tokens per passage while adapting, when --max-length is not given


def checked_max_length(config, max_length: int | None, model: str) -> int:
    """--max-length, or MAX_LENGTH cut to a smaller model's positions. A given one past the position
    embeddings is refused: it failed inside the first long batch, with a raw error, after --out was made."""
    from .config import ConfigError
    most = max_positions(config)
    if max_length is None:
        return MAX_LENGTH if most is None else min(MAX_LENGTH, most)
    if most is not None and max_length > most:
        raise ConfigError(f"--max-length {max_length} is more than {model} takes: its maximum is {most} tokens "
                          f"(its position embeddings); give --max-length {most} or less")
    return max_length


def checkpoint_keys(source: str) -> set[str] | None:
    """Tensor names of a folder's / a cached hub model's safetensors checkpoint; None when unknown."""
    from safetensors import safe_open

    def find(name):
        if Path(source).is_dir():
            f = Path(source) / name
            return f if f.is_file() else None
        try:
            from transformers.utils import cached_file
            from .zoo.hf import hub_or_cache
            with hub_or_cache(source):
                f = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False)
        except Exception:  # not cached, offline: unknown
            return None
        return Path(f) if f else None

    index = find("model.safetensors.index.json") or find("pytorch_model.bin.index.json")
    if index is not None:
        return set(json.loads(index.read_text()).get("weight_map", {}))
    single = find("model.safetensors")
    if single is None:
        return None
    with safe_open(str(single), "pt") as f:
        return set(f.keys())


def head_is_new(lm, source: str) -> bool:
    """True when none of the LM head's own tensors (those outside the base model and not tied to it)
    is in the checkpoint: a sentence encoder saved without its pretraining head (all-MiniLM-L6-v2)."""
    prefix = getattr(lm, "base_model_prefix", "") + "."
    heads = {n.split(".")[0] + "." for n, _ in lm.named_parameters() if not n.startswith(prefix)}
    keys = checkpoint_keys(source)
    if not heads or keys is None:
        return False
    return not any(k.startswith(tuple(heads)) for k in keys)


def mask_tokens(ids: torch.Tensor, attn: torch.Tensor, tokenizer, prob: float, gen: torch.Generator):
    """BERT masking: (inputs, labels) with labels -100 except at the chosen positions."""
    labels = ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for t in tokenizer.all_special_ids:
        special |= ids == t
    choose = (torch.rand(ids.shape, generator=gen) < prob) & ~special & attn.bool()
    labels[~choose] = -100
    inputs = ids.clone()
    r = torch.rand(ids.shape, generator=gen)
    inputs[choose & (r < 0.8)] = tokenizer.mask_token_id
    rand = choose & (r >= 0.8) & (r < 0.9)
    inputs[rand] = torch.randint(len(tokenizer), ids.shape, generator=gen)[rand]
    return inputs, labels


def batches(texts, tokenizer, objective, max_length, batch_size, mlm_probability, generator, shuffle):
    order = list(range(len(texts)))
    if shuffle:
        order = torch.randperm(len(texts), generator=generator).tolist()
    for i in range(0, len(order), batch_size):
        enc = tokenizer([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        ids, attn = enc["input_ids"], enc["attention_mask"]
        if objective == "masked":
            inputs, labels = mask_tokens(ids, attn, tokenizer, mlm_probability, generator)
        else:
            inputs, labels = ids, ids.masked_fill(attn == 0, -100)
        yield inputs, attn, labels


def lm_loss(logits, labels, objective, reduction="mean"):
    """Cross-entropy over the predicted tokens (labels -100 are not); causal: token t predicts t+1."""
    if objective == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100, reduction=reduction)


def token_loss(lm, inputs, attn, labels, objective):
    """(sum of token losses, number of predicted tokens)."""
    logits = lm(input_ids=inputs, attention_mask=attn).logits
    n = int(((labels[:, 1:] if objective == "causal" else labels) != -100).sum())
    return lm_loss(logits, labels, objective, "sum"), n


class LanguageModel(nn.Module):
    """A transformers LM as the training loop's model: (input_ids, attention_mask) -> logits."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, x):
        inputs, attn = x
        return self.lm(input_ids=inputs, attention_mask=attn).logits


class LMBatches:
    """The loop's (index, (input_ids, attention_mask), labels) batches of a shuffled corpus; a batch
    with no token to predict (possible with masking on short texts) is left out."""

    def __init__(self, texts, generator, **kw):
        self.texts, self.gen, self.kw = texts, generator, kw

    def __len__(self):
        return math.ceil(len(self.texts) / self.kw["batch_size"])

    def __iter__(self):
        causal = self.kw["objective"] == "causal"
        for inputs, attn, labels in batches(self.texts, generator=self.gen, shuffle=True, **self.kw):
            if ((labels[:, 1:] if causal else labels) != -100).any():
                yield torch.arange(len(inputs)), (inputs, attn), labels


class HeldOutPerplexity(Callback):
    """After each epoch: perplexity on the held-out passages, into the epoch's row."""
    order = 5

    def __init__(self, texts, tokenizer, objective, echo, **kw):
        self.texts, self.tokenizer, self.objective, self.echo, self.kw = texts, tokenizer, objective, echo, kw

    def after_epoch(self, tr):
        ppl = perplexity(tr.model.lm, self.texts, self.tokenizer, self.objective, device=tr.device, **self.kw)
        tr.row["val_perplexity"] = ppl
        self.echo(f"epoch {tr.epoch + 1}/{tr.phase.epochs}: train loss {tr.row['train_loss']:.3f}, "
                  f"held-out perplexity {_ppl(ppl)}")


@torch.no_grad()
def perplexity(lm, texts, tokenizer, objective, max_length, batch_size, mlm_probability, seed, device) -> float:
    lm.eval()
    gen = torch.Generator().manual_seed(seed + 1)  # the same masks before and after adaptation
    tot, n = 0.0, 0
    for inputs, attn, labels in batches(texts, tokenizer, objective, max_length, batch_size, mlm_probability,
                                        generator=gen, shuffle=False):
        loss, k = token_loss(lm, inputs.to(device), attn.to(device), labels.to(device), objective)
        tot, n = tot + loss.item(), n + k
    if n == 0:  # no held-out token scored (passages too short for any mask): not measured, not 1.0
        return math.nan
    mean = tot / n
    return math.exp(mean) if mean < 700 else math.inf  # a diverged LM: inf, not an OverflowError


def _ppl(p: float) -> str:
    return "not measured" if math.isnan(p) else f"{p:.2f}"


def adapt(corpus, model: str, out, objective: str = "auto", epochs: int = 1, lr: float = 5e-5,
          batch_size: int = 16, max_length: int | None = None, val_fraction: float = 0.1, mlm_probability: float = 0.15,
          seed: int = 0, text_column: str = "text", overwrite: bool = False, progress: bool = True,
          device: str | None = None, echo=print) -> dict:
    """Continue training ``model`` on ``corpus``; write the adapted LM as a run directory ``out``.
    ``epochs=0`` only measures perplexity and saves the model as it is (a baseline)."""
    from .rundir import RunDir
    from .train.loop import TrainConfig, Trainer
    from .zoo.hf import load_hf_model, wrap_text_model
    from .zoo.runs import save_backbone
    t0 = time.perf_counter()
    # Everything that can be refused is, before --out is created: a failed start leaves no directory behind.
    check_options(objective, epochs, lr, batch_size, max_length, val_fraction, mlm_probability, seed)
    from .zoo.paths import spec_path
    reads = [corpus, spec_path(model)]  # never emptied by --overwrite
    RunDir.check_free(out, overwrite, inputs=reads)  # before the model loads: a refused start costs nothing
    texts = read_corpus(corpus, text_column)
    source, opts = resolve_source(model)
    config = load_config(source)
    objective = pick_objective(config, objective, model)
    max_length = checked_max_length(config, max_length, model)
    torch.manual_seed(seed)  # a head the checkpoint lacks is initialised here
    with quiet_transformers():
        lm, tokenizer, source = load_hf_model(source, pretrained=True, lm=objective)
    if objective == "masked" and tokenizer.mask_token_id is None:
        raise ValueError(f"{model} has no mask token: use --objective causal")
    prep = preprocessing(lm, tokenizer, source, opts)
    new_head = head_is_new(lm, source)
    run = RunDir.create(out, overwrite=overwrite, inputs=reads)
    with run.kept_if_finished():  # no --resume: an interrupted adapt leaves no half directory
        rng = random.Random(seed)
        order = list(range(len(texts)))
        rng.shuffle(order)
        n_val = min(max(1, round(len(texts) * val_fraction)), len(texts) - 1)  # one passage to train on at least
        val, train = [texts[i] for i in order[:n_val]], [texts[i] for i in order[n_val:]]
        accelerator = None
        if device == "cpu":
            from accelerate import Accelerator
            accelerator = Accelerator(cpu=True)
        kw = dict(tokenizer=tokenizer, objective=objective, max_length=max_length, batch_size=batch_size,
                  mlm_probability=mlm_probability)
        cbs = [Schedule(), ClipGrad(1.0), HeldOutPerplexity(val, echo=echo, seed=seed, **kw), MetricsCSV()]
        trainer = Trainer(TrainConfig(seed=seed, task="lm", checkpoints=False), run=run, accelerator=accelerator,
                          callbacks=cbs + ([Progress()] if progress else []),
                          loss_fn=lambda logits, labels: lm_loss(logits, labels, objective))
        device = trainer.acc.device
        lm.to(device)
        echo(f"adapt {model} ({objective} LM) on {len(train)} passages, {len(val)} held out")
        if new_head:
            echo(f"note: {model}'s checkpoint has no {objective} LM head: it starts from random weights, so the "
                 "first perplexity drop is mostly that head learning")
        before = perplexity(lm, val, seed=seed, device=device, **kw)
        echo(f"held-out perplexity before: {_ppl(before)}")
        if math.isnan(before):
            scored = f"{mlm_probability:.0%} of tokens masked" if objective == "masked" else "next-token"
            echo(f"warning: the {len(val)} held-out passage(s) gave no token to score ({objective} LM, {scored}): "
                 "perplexity cannot say whether adapting helped; give a larger corpus or a larger --val-fraction")
        # Hugging Face's recipe: AdamW, weight decay 0.01, 10% linear warmup then linear decay, clip at 1.
        trainer.fit(LanguageModel(lm), train, None,
                    [Phase("adapt", epochs, lr, trainable=None, schedule="linear", warmup=0.1, weight_decay=0.01)],
                    make_loader=lambda texts, shuffle, gen: LMBatches(texts, gen, **kw))
        history = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "val_perplexity": r["val_perplexity"]}
                   for r in trainer.history]
        after = history[-1]["val_perplexity"] if history else before
        lm.to("cpu").eval()
        hf_dir = (run.path / "hf").resolve()
        if run.writer:  # transformers writes its own folder
            with quiet_transformers():
                lm.save_pretrained(hf_dir)
                tokenizer.save_pretrained(hf_dir)
        report = {"model": model, "source": source, "objective": objective, "corpus": str(corpus),
                  "train_passages": len(train), "heldout_passages": len(val), "epochs": epochs, "lr": lr,
                  "batch_size": batch_size, "max_length": max_length, "seed": seed,
                  "mlm_probability": mlm_probability if objective == "masked" else None,
                  "head_from_random": new_head, "backbone": prep,
                  "perplexity_before": before, "perplexity_after": after, "history": history,
                  "wall_seconds": time.perf_counter() - t0}
        # The source's pooling / max length / normalize go in the spec: hf/ alone would give the family default.
        bb = wrap_text_model(lm, tokenizer, str(hf_dir), adapted_spec(hf_dir, prep), prep["max_length"],
                             prep["pooling"], prep["normalize"])
        save_backbone(bb, run, extra={"adapt": {k: v for k, v in report.items() if k != "history"}})
        run.write_json("adapt.json", report)
    run.release()  # after kept_if_finished's finish: the old run gone before another claim
    echo(f"held-out perplexity {_ppl(before)} -> {_ppl(after)}; adapted model in {run.path} "
         f"(use it with: rehead fit DATA --model {run.path})")
    return report
