"""``glove:<path to vectors .txt>``: pretrained word vectors (GloVe or word2vec text format) in a
frozen embedding layer, pooled over the words of a sentence: a light baseline backbone.

The file is read every time the backbone is built (it is the vocabulary too), so keep it where
it is. Words are lowercased and split on word characters / punctuation; words not in the file
are left out of the pooling. Pooling concatenates the mean and the max over words (SWEM-concat,
Shen et al. 2018), a stronger bag-of-vectors baseline than the mean alone.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import ModelNotFound, register_source
from .backbone import Backbone

WORD = re.compile(r"\w+|[^\w\s]")
PAD, UNK = 0, 1


def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """Words and vectors from a GloVe file (``word v1 v2 ...``) or word2vec text (same, plus a
    ``count dim`` header line)."""
    if not path.exists():
        raise ModelNotFound(f"word vectors file {path} does not exist")
    words, vecs, dim = [], [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                raise ModelNotFound(f"{path}:{n} has {len(parts) - 1} numbers, the lines before have {dim}: "
                                    "is this a GloVe/word2vec text file (word then numbers, space separated)?")
            try:
                vecs.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError as e:
                raise ModelNotFound(f"{path}:{n} is not 'word number number ...': {e}") from e
            words.append(parts[0])
    if not words:
        raise ModelNotFound(f"{path} holds no word vectors")
    return words, np.stack(vecs)


class WordEmbeddings(nn.Module):
    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(matrix, freeze=True, padding_idx=PAD)

    def forward(self, ids):
        return self.embedding(ids)


class GloveBackbone(Backbone):
    modality = "text"

    def __init__(self, words: list[str], matrix: np.ndarray, path: Path, spec: str, max_length: int = 256):
        full = np.concatenate([np.zeros((2, matrix.shape[1]), np.float32), matrix])  # PAD, UNK rows
        super().__init__({"embeddings": WordEmbeddings(torch.from_numpy(full))},
                         {"modality": "text", "tokenizer": f"words:{path}",
                          "tokenizer_id": hashlib.sha256("\n".join(words).encode()).hexdigest()[:16],
                          "max_length": max_length, "pooling": "mean+max"}, spec)
        self.index = {w: i + 2 for i, w in enumerate(words)}

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ml = self.data_config["max_length"]
        ids = [[self.index.get(w, UNK) for w in WORD.findall(t.lower())][:ml] or [UNK] for t in texts]
        width = max(len(s) for s in ids)
        x = torch.full((len(ids), width), PAD, dtype=torch.long)
        for i, s in enumerate(ids):
            x[i, :len(s)] = torch.tensor(s)
        return {"input_ids": x, "attention_mask": (x > UNK).long()}

    def begin(self, inputs):
        return inputs["input_ids"], inputs["attention_mask"]

    def run_stage(self, i, state):
        return self.stages[self.stage_names[i]](state[0]), state[1]

    def pool(self, state) -> torch.Tensor:
        x, mask = state
        m = mask.to(x.dtype).unsqueeze(-1)
        mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        mx = x.masked_fill(m == 0, float("-inf")).amax(1)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))  # no known word: zeros
        return torch.cat([mean, mx], 1)


def _list() -> list[dict]:
    return [{"spec": "glove:<path to vectors .txt>", "modality": "text", "offline": True,
             "note": "GloVe / word2vec text vectors, frozen, mean+max pooled (a light baseline)"}]


@register_source("glove", "word vectors file: glove:<path to GloVe/word2vec .txt>", _list)
def load_glove(name: str, pretrained: bool = True) -> GloveBackbone:
    path = Path(name).expanduser()
    words, matrix = read_vectors(path)
    return GloveBackbone(words, matrix, path.resolve(), f"glove:{name}")
