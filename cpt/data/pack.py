"""Tokenize documents and pack them into token shards: ids of each document followed by one EOS, concatenated
with no padding, written as raw little-endian uint16 (vocabulary <= 65,536) or uint32 files that the loader
memory-maps. Tokenization is batched and multi-process (datasets' `map` with `num_proc`) and streams from disk:
neither the documents nor the tokens of a whole split are held in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cpt.tokenizer import Tokenizer


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


class _Encode:
    """Picklable batch function for datasets.map: documents -> ids with EOS appended."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: dict) -> dict:
        eos = self.tokenizer.eos_token_id
        return {"ids": [ids + [eos] for ids in self.tokenizer.encode_batch(batch["text"])]}


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
                   num_proc: int, batch_size: int, cache_dir: Path) -> dict:
    """Tokenize one JSONL file of documents into shards under out_dir; returns the split's manifest entry."""
    import datasets

    writer = ShardWriter(out_dir, dtype, shard_tokens)
    docs = 0
    if docs_jsonl.stat().st_size > 0:
        datasets.disable_progress_bars()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
        ds = datasets.load_dataset("json", data_files=str(docs_jsonl), split="train", cache_dir=str(cache_dir))
        ds = ds.select_columns(["text"])
        nproc = max(1, min(num_proc, len(ds) // batch_size + 1))
        ds = ds.map(_Encode(tokenizer), batched=True, batch_size=batch_size, num_proc=nproc if nproc > 1 else None,
                    remove_columns=["text"], desc=None)
        for batch in ds.iter(batch_size=1024):
            writer.write(np.concatenate([np.asarray(ids) for ids in batch["ids"]]))
            docs += len(batch["ids"])
    shards = writer.close()
    return {"docs": docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
