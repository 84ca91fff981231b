"""Bits per byte (cpt.eval.bits_per_byte): the byte table of a tokenizer spells the UTF-8 size of any text it encodes,
and the bits per byte that validation and evaluate compute equal a hand computation (plain cross-entropy over the
logits, bytes from decoding the targets) for one model under two tokenizers of the same text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import offline_source
from cpt.config.schema import ModelConfig, VocabExtensionConfig
from cpt.eval.bits_per_byte import bits_per_byte, token_bytes
from cpt.eval.compare import score
from cpt.eval.retokenize import tokenize_texts
from cpt.model.build import build_model
from cpt.model.tokenizer import ByteTokenizer, HFTokenizer, build_tokenizer

TEXTS = ["Licence — naïve café, 東京 🚀: the licensee and the licensor of the work.",
         "Permission is hereby granted, free of charge, to any person obtaining a copy of the software."]
NEW = [" the", " licens", "café", "東京"]  # a word, a prefix, one with a 2-byte and one of 6 bytes
CPU = torch.device("cpu")


def extended(byte_tokenizer_dir) -> HFTokenizer:
    return build_tokenizer(ModelConfig(tokenizer=str(byte_tokenizer_dir), extend_vocab=VocabExtensionConfig(NEW)))


def test_byte_table_sums_to_the_utf8_size_of_the_text(byte_tokenizer_dir):
    for tok in (ByteTokenizer(), HFTokenizer(str(byte_tokenizer_dir)), extended(byte_tokenizer_dir)):
        table = token_bytes(tok)
        assert len(table) == len(tok) and table[tok.eos_token_id] == 0
        for text in TEXTS:
            ids = tok.encode(text)
            assert table[ids].sum() == len(text.encode("utf-8")), tok.name
    ext = extended(byte_tokenizer_dir)
    assert len(ext.encode(TEXTS[0])) < len(TEXTS[0].encode("utf-8"))  # the new tokens are used


def test_real_bpe_tokenizer_byte_table(byte_tokenizer_dir):
    """SmolLM2's byte-level BPE (49,152 ids, merges, special tokens), when the offline copy is present."""
    path = offline_source("smollm2-135m")
    tok = HFTokenizer(str(path))
    table = token_bytes(tok)
    for text in TEXTS:
        assert table[tok.encode(text)].sum() == len(text.encode("utf-8"))
    assert table[tok.eos_token_id] == 0


def hand_bpb(model, ids: torch.Tensor, first_token_bytes: int) -> float:
    """Plain cross-entropy of the targets (every token but the first), in bits, over the UTF-8 size of the text
    they spell: the documents' size less the first token's."""
    with torch.no_grad():
        logits = model(input_ids=ids[None, :-1]).logits
    nats = F.cross_entropy(logits[0].double(), ids[1:], reduction="sum").item()
    return nats / math.log(2) / (sum(len(t.encode("utf-8")) for t in TEXTS) - first_token_bytes)


def test_bits_per_byte_equals_a_hand_computation_under_two_tokenizers(byte_tokenizer_dir):
    """One model (random init, vocab 512: both tokenizers fit), the same two documents, tokenized by the byte-level
    tokenizer and by its extension, scored as one window: cpt's score gives the hand computation's bits per byte
    for each (loss per token, bytes of text: the extension has fewer, longer tokens)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    found = []
    for tok in (HFTokenizer(str(byte_tokenizer_dir)), extended(byte_tokenizer_dir)):
        stream = tokenize_texts(tok, TEXTS)
        table = torch.from_numpy(token_bytes(tok))
        result = score(model, stream, len(stream) - 1, 1, None, CPU, eos_id=None, byte_table=table)
        ids = torch.from_numpy(stream.read(0, len(stream)))
        first = len(tok.decode(ids[:1].tolist()).encode("utf-8"))
        assert result["bpb"] == pytest.approx(hand_bpb(model, ids, first), rel=1e-6)
        assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / result["bytes"])
        found.append(result)
    byte_level, ext = found
    assert byte_level["bytes"] == ext["bytes"]  # the same text
    assert ext["tokens"] < byte_level["tokens"]


def test_bits_per_byte_of_nothing_is_nan():
    assert math.isnan(bits_per_byte(1.0, 0))
    assert bits_per_byte(math.log(2) * 8, 4) == pytest.approx(2.0)
    assert np.isfinite(bits_per_byte(3.0, 1))


def test_split_texts_reach_the_byte_budget_of_max_tokens(tmp_path):
    """10 documents of 100 bytes prepared as 1,000 tokens: max_tokens=250 covers 250 bytes on average, so the first
    3 documents (the third reaches the budget); no limit, or more than the split has: all of them."""
    import json

    from cpt.eval.retokenize import split_texts

    docs = tmp_path / "s.val.jsonl"
    docs.write_text("".join(json.dumps({"text": f"{i}" * 100}) + "\n" for i in range(10)))
    assert len(split_texts(docs, 1000, 250)) == 3
    assert len(split_texts(docs, 1000, 200)) == 2
    assert len(split_texts(docs, 1000, None)) == len(split_texts(docs, 1000, 5000)) == 10
