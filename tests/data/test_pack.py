"""Prepare's tokenizing (cpt.data.pack): the encoder that travels to a worker gives the ids of the tokenizer it came
from (a tokenizer.json's truncation and padding are not applied, as transformers does not apply them); the packer
writes every key's documents in order, the same bytes and counts with 1 or 2 processes and any batch size; a
tokenizer worker that dies stops it with a message that says what to do."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from conftest import offline_source, real_corpus
from cpt.config.schema import ModelConfig, VocabExtensionConfig
from cpt.data.pack import Packer, encode_documents
from cpt.model.tokenizer import PROBE, BackendEncoder, ByteTokenizer, build_tokenizer, worker_encoder


def licenses(count: int) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace")[:3000]
            for p in sorted(real_corpus("licenses").glob("*.LICENSE"))[:count]]


def qwen(**kw):
    return build_tokenizer(ModelConfig(tokenizer=str(offline_source("qwen2.5-tokenizer")), **kw))


@pytest.mark.full  # 25 s: three Qwen tokenizers
def test_the_worker_encoder_gives_the_tokenizers_ids(tmp_path):
    texts = [PROBE, "", "  leading spaces\n\ttabs", "an <|endoftext|> inside", *licenses(20)]
    truncating = tmp_path / "truncating"
    shutil.copytree(offline_source("qwen2.5-tokenizer"), truncating)
    spec = json.loads((truncating / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    (truncating / "tokenizer.json").write_text(json.dumps(spec))
    extended = qwen(extend_vocab=VocabExtensionConfig(tokens=[" licensee", "sublicense"]))
    for tok in (qwen(), extended, build_tokenizer(ModelConfig(tokenizer=str(truncating))), ByteTokenizer()):
        encoder = worker_encoder(tok)
        assert isinstance(encoder, BackendEncoder) or isinstance(tok, ByteTokenizer)
        encoder = pickle.loads(pickle.dumps(encoder))  # as a spawned worker gets it
        ids = encode_documents(texts, encoder, np.dtype("uint32"))
        expected = [i for t in tok.encode_batch(texts) for i in (*t, tok.eos_token_id)]
        assert ids.tolist() == expected
    assert len(extended.encode(" licensee")) == 1 and len(qwen().encode(licenses(1)[0])) > 64


def pack(tmp_path, name: str, tokenizer, docs: list[tuple[tuple, str]], num_proc: int, batch_docs: int) -> dict:
    keys = sorted({key for key, _ in docs})
    dirs = {key: tmp_path / name / "-".join(key) for key in keys}
    with Packer(dirs, tokenizer, "uint32", shard_tokens=5000, num_proc=num_proc, batch_docs=batch_docs) as packer:
        for key, text in docs:
            packer.add(key, text)
        entries = packer.close()
    files = {str(p.relative_to(tmp_path / name)): p.read_bytes() for p in sorted((tmp_path / name).rglob("*.bin"))}
    return {"entries": entries, "files": files}


@pytest.mark.full  # spawns tokenizer workers; num_proc 1 = 2 also in tests/data/test_formats.py (Parquet)
def test_packing_is_the_same_for_any_process_count_and_batch_size(tmp_path):
    tok = qwen()
    texts = licenses(60)
    keys = [("legal", "train"), ("legal", "val"), ("general", "train")]
    docs = [(keys[i % 7 % 3], text) for i, text in enumerate(texts)]  # keys interleaved unevenly
    one = pack(tmp_path, "one", tok, docs, num_proc=1, batch_docs=256)
    for n, batch in ((2, 1), (2, 3), (1, 2)):
        assert pack(tmp_path, f"p{n}-{batch}", tok, docs, n, batch) == one
    for key in keys:  # each key's shards: its documents in order, each followed by EOS
        ids = np.concatenate([np.frombuffer(one["files"][f"{'-'.join(key)}/{s['file']}"], dtype=np.uint32)
                              for s in one["entries"][key]["shards"]])
        expected = [i for _, t in filter(lambda d: d[0] == key, docs) for i in (*tok.encode(t), tok.eos_token_id)]
        assert ids.tolist() == expected and one["entries"][key]["tokens"] == len(expected)
        assert one["entries"][key]["docs"] == sum(k == key for k, _ in docs)
    assert len(one["entries"][keys[0]]["shards"]) > 1  # 5,000 tokens per shard: documents cross shard ends


class _DiesOnEncode:
    """An encoder whose worker process exits in the middle of its first batch."""

    eos_token_id = 0

    def encode_batch(self, texts):
        os._exit(3)


def test_a_tokenizer_worker_that_dies_stops_prepare_with_the_fix(tmp_path, monkeypatch):
    import cpt.data.pack

    monkeypatch.setattr(cpt.data.pack, "worker_encoder", lambda tok: _DiesOnEncode())
    with pytest.raises(RuntimeError, match="tokenizer worker process died.*data.num_proc"):
        with Packer({("s", "train"): tmp_path / "s"}, ByteTokenizer(), "uint16", 1000, num_proc=2,
                    batch_docs=1) as packer:
            for text in ("a", "b", "c", "d", "e", "f"):
                packer.add(("s", "train"), text)
            packer.close()
