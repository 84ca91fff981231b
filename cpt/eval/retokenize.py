"""Held-out text for models with different tokenizers (`cpt.evaluate`): when a model's tokenizer is not the one the
data was prepared with (a vocabulary extension, another model family), every model is scored on the same
documents of the split (docs/<source>.<split>.jsonl, kept by prepare), each tokenized by the model's own tokenizer
with its EOS after every document, and compared by bits per byte (cpt.eval.bits_per_byte).

The documents are the first ones of the split up to the UTF-8 size that `max_tokens` tokens of the prepared data
cover on average; every model scores all whole windows of its own stream of them (the tail shorter than a window
differs between models: at most seq_len tokens of text)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np


class MemoryStream:
    """A token stream held in memory, read as cpt.data.loader.TokenStream is."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, length: int) -> np.ndarray:
        return self.ids[start:start + length].astype(np.int64)


def split_texts(docs_jsonl: Path, tokens: int, max_tokens: Optional[int]) -> list[str]:
    """The first documents of a split that reach the UTF-8 size `max_tokens` of its `tokens` prepared tokens cover
    on average; max_tokens None (or more than the split has): all of them."""
    texts = [json.loads(line)["text"] for line in docs_jsonl.read_text(encoding="utf-8").splitlines()]
    if max_tokens is None or tokens <= max_tokens:
        return texts
    budget = sum(len(t.encode("utf-8")) for t in texts) * max_tokens / tokens
    kept, total = [], 0
    for text in texts:  # up to and including the document that reaches the budget
        kept.append(text)
        total += len(text.encode("utf-8"))
        if total >= budget:
            break
    return kept


def tokenize_texts(tokenizer, texts: list[str]) -> MemoryStream:
    """Documents joined as prepare joins them: each followed by the tokenizer's EOS."""
    eos = tokenizer.eos_token_id
    ids = [np.asarray([*doc, eos], dtype=np.int64) for doc in tokenizer.encode_batch(texts)]
    return MemoryStream(np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64))


def sets_per_model(root: Path, manifest: dict, split: str, sources: list[str], tokenizers: dict,
                   max_tokens: Optional[int]) -> dict[str, dict[str, MemoryStream]]:
    """{model: {source: the split's first documents in that model's tokens}}: the same texts for every model."""
    texts = {s: split_texts(root / "docs" / f"{s}.{split}.jsonl", manifest["sources"][s][split]["tokens"], max_tokens)
             for s in sources}
    return {name: {s: tokenize_texts(tok, texts[s]) for s in sources} for name, tok in tokenizers.items()}
