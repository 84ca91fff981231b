"""Tokenize documents and pack them into token shards: ids of each document followed by one EOS, concatenated
with no padding, written as raw little-endian uint16 (vocabulary <= 65,536) or uint32 files that the loader
memory-maps. Tokenization streams from disk in batches (neither the documents nor the tokens of a whole split are
held in memory); a transformers tokenizer encodes each batch on all cores itself (Rust threads), so there is no
process pool and no intermediate dataset to write."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np

from cpt.tokenizer import Tokenizer


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


class ShardWriter:
    """Appends token ids to tokens-00000.bin, tokens-00001.bin, ... each holding at most `shard_tokens`."""

    def __init__(self, directory: Path, dtype: str, shard_tokens: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.dtype, self.shard_tokens = directory, np.dtype(dtype), shard_tokens
        self.shards: list[dict] = []
        self._file = None

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"tokens-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            piece, ids = ids[:room], ids[room:]
            self._file.write(piece.tobytes())
            self.shards[-1]["tokens"] += len(piece)

    def close(self) -> list[dict]:
        if self._file is not None:
            self._file.close()
        return self.shards


def pack_documents(docs_jsonl: Path, out_dir: Path, tokenizer: Tokenizer, dtype: str, shard_tokens: int,
                   batch_size: int) -> dict:
    """Tokenize one JSONL file of documents into shards under out_dir; returns the split's manifest entry."""
    writer = ShardWriter(out_dir, dtype, shard_tokens)
    eos, docs = tokenizer.eos_token_id, 0
    with docs_jsonl.open(encoding="utf-8") as f:
        texts = (json.loads(line)["text"] for line in f)
        while batch := list(islice(texts, batch_size)):
            flat: list[int] = []
            for ids in tokenizer.encode_batch(batch):
                flat.extend(ids)
                flat.append(eos)
            writer.write(np.asarray(flat, dtype=np.int64))
            docs += len(batch)
    shards = writer.close()
    return {"docs": docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
