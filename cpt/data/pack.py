"""Tokenize the kept documents and pack them into token shards: ids of each document followed by one EOS,
concatenated with no padding, written as raw little-endian uint16 (vocabulary <= 65,536) or uint32 files that the
loader memory-maps.

Documents arrive one by one, in the corpus's fixed order, from the parent of the convert stage as it decides what
to keep (cpt.prepare). They are tokenized in batches by `data.num_proc` worker processes of one core each WHILE
conversion goes on in as many others (no second pass over the documents), and the batches are written back in the
order they were sent, so the shards are the same for any number of processes. Memory stays bounded: at most
2 * num_proc batches are in flight, plus one batch being filled per source and split (<= data.tokenize_batch
documents or BATCH_CHARS characters); neither the documents nor the tokens of a split are held whole. A tokenizer
worker that dies stops prepare (unlike a file's worker: the tokenizer fails on every document alike)."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from cpt.model.tokenizer import Tokenizer, worker_encoder

BATCH_CHARS = 1 << 20  # a batch is sent once it holds data.tokenize_batch documents or this many characters


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


_ENCODER = None  # a worker's tokenizer (set by _start_worker)


def _start_worker(encoder, dtype: str) -> None:
    global _ENCODER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker: the processes are the parallelism
    _ENCODER = (encoder, np.dtype(dtype))


def encode_documents(texts: list[str], encoder=None, dtype=None) -> np.ndarray:
    """The documents' ids, each followed by EOS, as one array (what travels back from a worker: one buffer)."""
    if encoder is None:
        encoder, dtype = _ENCODER
    ids = encoder.encode_batch(texts)
    out = np.empty(sum(map(len, ids)) + len(ids), dtype=dtype)
    at = 0
    try:
        for doc in ids:
            out[at : at + len(doc)] = doc
            out[at + len(doc)] = encoder.eos_token_id
            at += len(doc) + 1
    except OverflowError:
        raise ValueError(f"a token id ({max(max(doc, default=0) for doc in ids)}) does not fit the shards' {dtype} "
                         "(chosen from the tokenizer's length): the tokenizer gives ids past its vocabulary") from None
    return out


class Packer:
    """`add(key, text)` documents in order, per key (source, split); `close()` -> {key: manifest entry}. Use as a
    context manager: the workers stop whatever happens."""

    def __init__(self, out_dirs: dict[tuple, Path], tokenizer: Tokenizer, dtype: str, shard_tokens: int,
                 num_proc: int, batch_docs: int):
        self.writers = {key: ShardWriter(path, dtype, shard_tokens) for key, path in out_dirs.items()}
        self.docs = dict.fromkeys(out_dirs, 0)
        self.pending: dict[tuple, list[str]] = {key: [] for key in out_dirs}
        self.pending_chars = dict.fromkeys(out_dirs, 0)
        self.batch_docs, self.num_proc = batch_docs, num_proc
        self.window: deque[tuple[tuple, int, Future]] = deque()
        self.encoder, self.dtype = worker_encoder(tokenizer), np.dtype(dtype)
        self.pool, self._parallelism = None, os.environ.get("TOKENIZERS_PARALLELISM")
        if num_proc > 1:
            self.pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(self.encoder, dtype))
        elif self._parallelism is None:  # num_proc=1: one core, here too (restored on exit)
            os.environ["TOKENIZERS_PARALLELISM"] = "false"

    def __enter__(self) -> Packer:
        return self

    def __exit__(self, exc_type, *_) -> None:
        for writer in self.writers.values():
            writer.close()
        if self.pool is not None:  # after an error: no waiting for the workers
            self.pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
        elif self._parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)

    def add(self, key: tuple, text: str) -> None:
        self.pending[key].append(text)
        self.pending_chars[key] += len(text)
        if len(self.pending[key]) >= self.batch_docs or self.pending_chars[key] >= BATCH_CHARS:
            self._send(key)
        while self.window and self.window[0][2].done():  # write what is ready, without waiting
            self._write_oldest()

    def close(self) -> dict[tuple, dict]:
        for key in self.pending:
            if self.pending[key]:
                self._send(key)
        while self.window:
            self._write_oldest()
        entries = {}
        for key, writer in self.writers.items():
            shards = writer.close()
            entries[key] = {"docs": self.docs[key], "tokens": sum(s["tokens"] for s in shards), "shards": shards}
        return entries

    def _send(self, key: tuple) -> None:
        texts, self.pending[key], self.pending_chars[key] = self.pending[key], [], 0
        if self.pool is None:
            self.writers[key].write(encode_documents(texts, self.encoder, self.dtype))
            self.docs[key] += len(texts)
            return
        try:
            future = self.pool.submit(encode_documents, texts)
        except BrokenProcessPool:
            raise _worker_died() from None
        self.window.append((key, len(texts), future))
        while len(self.window) > 2 * self.num_proc:
            self._write_oldest()

    def _write_oldest(self) -> None:
        key, count, future = self.window.popleft()
        try:
            ids = future.result()
        except BrokenProcessPool:
            raise _worker_died() from None
        self.writers[key].write(ids)
        self.docs[key] += count


def _worker_died() -> RuntimeError:
    return RuntimeError("a tokenizer worker process died (out of memory, or the tokenizer could not be loaded "
                        "there: see the messages above): lower data.num_proc or data.tokenize_batch, or cut long "
                        "documents with data.chunk_chars, and prepare again (from a script: guard its code with "
                        "`if __name__ == \"__main__\":`, the workers are spawned and import the main module)")
