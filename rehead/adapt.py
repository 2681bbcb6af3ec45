"""Domain adaptation: continue pretraining a language model on unlabelled domain text.

Causal LMs learn next-token prediction, encoders masked-token prediction (15% of tokens,
80% [MASK] / 10% random / 10% kept, as in BERT). Perplexity is measured on held-out domain
text before and after, with the same masks both times for masked LMs.

The result is a run directory that ``fit --model DIR`` takes as a backbone:

    config.yaml            kind: backbone, model: hf:<abs path of DIR/hf>, depth, adapt figures
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

from .data import DataError
from .zoo import ModelNotFound

OBJECTIVES = ("auto", "causal", "masked")


def read_corpus(path, text_column: str = "text") -> list[str]:
    """Lines of a .txt (one passage per line), or the text column of a CSV / a folder's train.csv."""
    p = Path(path)
    if p.is_dir() and (p / "train.csv").exists():
        p = p / "train.csv"
    if not p.is_file():
        raise DataError(f"corpus {path} does not exist: give a .txt file (one passage per line) or a CSV "
                        "with a text column")
    if p.suffix.lower() == ".csv":
        from .data.text import read_csv
        texts, _, _ = read_csv(p, text_column, None)
    else:
        texts = [line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        texts = [t for t in texts if t]
    if len(texts) < 2:
        raise DataError(f"corpus {p} has {len(texts)} non-empty passage(s): need at least 2 "
                        "(some to train on, some held out to measure perplexity)")
    return texts


def resolve_source(model: str) -> str:
    """Where the LM's files are: hf:<id or dir>, packaged:minilm, or an earlier adapt run directory."""
    from .zoo.hf import minilm_path, parse_name
    from .run import read_config
    if model.startswith("hf:"):
        return parse_name(model[3:])[0]
    if model == "packaged:minilm":
        return minilm_path()
    p = Path(model)
    if p.is_dir() and (p / "config.yaml").exists():
        cfg = read_config(p)
        if cfg.get("kind") == "backbone" and (p / "hf" / "config.json").exists():
            return str((p / "hf").resolve())
    raise ModelNotFound(f"adapt needs a transformers language model: hf:<hub id or local dir>, packaged:minilm, "
                        f"or a directory written by an earlier `rehead adapt`; got {model!r}")


def pick_objective(config, objective: str = "auto") -> str:
    """causal for decoders (GPT-2, Llama ...), masked for encoders (BERT, RoBERTa, MiniLM ...)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective != "auto":
        return objective
    from transformers import MODEL_FOR_MASKED_LM_MAPPING
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in archs or "LMHead" in archs or getattr(config, "is_decoder", False):
        return "causal"
    if "MaskedLM" in archs or type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return "masked"
    return "causal"


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


def batches(texts, tokenizer, objective, max_length, batch_size, mlm_probability, gen, shuffle):
    order = list(range(len(texts)))
    if shuffle:
        order = torch.randperm(len(texts), generator=gen).tolist()
    for i in range(0, len(order), batch_size):
        enc = tokenizer([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        ids, attn = enc["input_ids"], enc["attention_mask"]
        if objective == "masked":
            inputs, labels = mask_tokens(ids, attn, tokenizer, mlm_probability, gen)
        else:
            inputs, labels = ids, ids.masked_fill(attn == 0, -100)
        yield inputs, attn, labels


def token_loss(lm, inputs, attn, labels, objective):
    """(sum of token losses, number of predicted tokens): the model shifts causal labels itself."""
    logits = lm(input_ids=inputs, attention_mask=attn).logits
    if objective == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


@torch.no_grad()
def perplexity(lm, texts, tokenizer, objective, max_length, batch_size, mlm_probability, seed, device) -> float:
    lm.eval()
    gen = torch.Generator().manual_seed(seed + 1)  # the same masks before and after adaptation
    tot, n = 0.0, 0
    for inputs, attn, labels in batches(texts, tokenizer, objective, max_length, batch_size, mlm_probability,
                                        gen, shuffle=False):
        loss, k = token_loss(lm, inputs.to(device), attn.to(device), labels.to(device), objective)
        tot, n = tot + loss.item(), n + k
    return math.exp(tot / max(n, 1))


def adapt(corpus, model: str, out, objective: str = "auto", epochs: int = 1, lr: float = 5e-5,
          batch_size: int = 16, max_length: int = 128, val_fraction: float = 0.1, mlm_probability: float = 0.15,
          seed: int = 0, text_column: str = "text", overwrite: bool = False, progress: bool = True,
          device: str | None = None, echo=print) -> dict:
    """Continue training ``model`` on ``corpus``; write the adapted LM as a run directory ``out``."""
    from tqdm.auto import tqdm
    from .run import prepare_run_dir, save_backbone
    from .zoo.hf import load_hf_model, wrap_text_model
    t0 = time.perf_counter()
    texts = read_corpus(corpus, text_column)
    source = resolve_source(model)
    out = prepare_run_dir(out, overwrite=overwrite)
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    n_val = max(1, round(len(texts) * val_fraction))
    val, train = [texts[i] for i in order[:n_val]], [texts[i] for i in order[n_val:]]
    torch.manual_seed(seed)
    import transformers as tf
    objective = pick_objective(tf.AutoConfig.from_pretrained(source), objective)
    lm, tokenizer, source = load_hf_model(source, pretrained=True, lm=objective)
    if objective == "masked" and tokenizer.mask_token_id is None:
        raise ValueError(f"{model} has no mask token: use --objective causal")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm.to(device)
    args = dict(max_length=max_length, batch_size=batch_size, mlm_probability=mlm_probability, device=device)
    echo(f"adapt {model} ({objective} LM) on {len(train)} passages, {len(val)} held out")
    before = perplexity(lm, val, tokenizer, objective, seed=seed, **args)
    echo(f"held-out perplexity before: {before:.2f}")
    steps = epochs * math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=steps, desc="adapt", unit="step", disable=not progress)
    for epoch in range(epochs):
        lm.train()
        tot, n = 0.0, 0
        for inputs, attn, labels in batches(train, tokenizer, objective, max_length, batch_size, mlm_probability,
                                            gen, shuffle=True):
            loss, k = token_loss(lm, inputs.to(device), attn.to(device), labels.to(device), objective)
            if k == 0:
                bar.update(1)
                continue
            opt.zero_grad(set_to_none=True)
            (loss / k).backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            opt.step()
            sched.step()
            tot, n = tot + loss.item(), n + k
            bar.update(1)
            bar.set_postfix(loss=f"{tot / max(n, 1):.3f}")
        ppl = perplexity(lm, val, tokenizer, objective, seed=seed, **args)
        history.append({"epoch": epoch + 1, "train_loss": tot / max(n, 1), "val_perplexity": ppl})
        echo(f"epoch {epoch + 1}/{epochs}: train loss {tot / max(n, 1):.3f}, held-out perplexity {ppl:.2f}")
    bar.close()
    after = history[-1]["val_perplexity"] if history else before
    lm.to("cpu").eval()
    hf_dir = (out / "hf").resolve()
    lm.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    report = {"model": model, "source": source, "objective": objective, "corpus": str(corpus),
              "train_passages": len(train), "heldout_passages": len(val), "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "max_length": max_length, "seed": seed,
              "mlm_probability": mlm_probability if objective == "masked" else None,
              "perplexity_before": before, "perplexity_after": after, "history": history,
              "wall_seconds": time.perf_counter() - t0}
    bb = wrap_text_model(lm, tokenizer, str(hf_dir), f"hf:{hf_dir}")
    save_backbone(bb, out, extra={"adapt": {k: v for k, v in report.items() if k != "history"}})
    (out / "adapt.json").write_text(json.dumps(report, indent=1))
    echo(f"held-out perplexity {before:.2f} -> {after:.2f}; adapted model in {out} "
         f"(use it with: rehead fit DATA --model {out})")
    return report
