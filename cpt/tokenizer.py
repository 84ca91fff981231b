"""Tokenizers: the built-in byte-level one (needs no files) or a transformers tokenizer; both encode without
special tokens (cpt puts one EOS after every document itself) and carry an identity that prepared data records."""

from __future__ import annotations

import hashlib
from typing import List, Protocol

from cpt.config import ModelConfig

PROBE = "Continued pretraining, 2026: naïve café — 東京 🚀\n\tdef f(x): return x**2"


class Tokenizer(Protocol):
    name: str
    eos_token_id: int

    def encode(self, text: str) -> List[int]: ...

    def encode_batch(self, texts: List[str]) -> List[List[int]]: ...

    def decode(self, ids: List[int]) -> str: ...

    def __len__(self) -> int: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and an end-of-text id 256: fits any vocabulary of 257 or more."""

    name = "byte"
    eos_token_id = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: List[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return 257


class HFTokenizer:
    """A transformers tokenizer (hub id or local directory)."""

    def __init__(self, source: str):
        from transformers import AutoTokenizer

        self.name = source
        self.inner = AutoTokenizer.from_pretrained(source)
        if self.inner.eos_token_id is None:
            raise ValueError(f"tokenizer '{source}' has no EOS token; cpt needs one to separate documents")
        self.eos_token_id = self.inner.eos_token_id

    def encode(self, text: str) -> List[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return self.inner(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: List[int]) -> str:
        return self.inner.decode(ids)

    def __len__(self) -> int:
        return len(self.inner)


def build_tokenizer(cfg: ModelConfig) -> Tokenizer:
    source = cfg.tokenizer or cfg.name_or_path
    if source == "byte":
        return ByteTokenizer()
    try:
        return HFTokenizer(source)
    except OSError as e:
        raise RuntimeError(
            f"could not load tokenizer '{source}' (model.tokenizer / model.name_or_path): {e}. "
            "Offline? Point model.tokenizer at a local directory, or use model.tokenizer=byte."
        ) from e


def identity(tok: Tokenizer) -> dict:
    """What prepared data must match: same name, vocabulary size, EOS and the same ids for a probe text."""
    probe = hashlib.sha256(str(tok.encode(PROBE)).encode()).hexdigest()[:16]
    return {"name": tok.name, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "probe": probe}
