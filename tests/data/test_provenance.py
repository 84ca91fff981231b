"""A training window's documents (cpt.data.provenance): every piece of text a window of the prepared sample holds
comes from the documents the index names for it, in order, and a window inside one document names that one only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from conftest import TINY, compose_cfg
from cpt.config.schema import to_run_config
from cpt.data.manifest import data_dir, load_manifest_file, open_streams
from cpt.data.provenance import DocumentIndex

EOS = 256  # the byte tokenizer's


def test_the_named_documents_hold_every_piece_of_the_window(sample_data):
    cfg = to_run_config(compose_cfg(TINY)).data
    streams = open_streams(cfg, load_manifest_file(cfg), "train")
    root = Path(os.environ["CPT_TEST_DATA_ROOT"])
    assert data_dir(cfg).parent == root
    index = DocumentIndex(data_dir(cfg) / "docs", streams, EOS)
    texts = {}
    with open(data_dir(cfg) / "docs" / "sample.train.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts[doc["id"]] = doc["text"]
    stream, length = streams["sample"], 200
    checked_single = False
    for start in range(0, len(stream) - length, 97):
        tokens = stream.read(start, length)
        ids = index.documents("sample", start, length)
        pieces = np.split(tokens, np.flatnonzero(tokens == EOS) + 1)
        pieces = [p[p != EOS] for p in pieces if len(p[p != EOS])]
        # every piece lies in one named document, in the named order (a piece may end a document or start one)
        named = iter(ids)
        for piece in pieces:
            text = bytes(piece.astype(np.uint8).tolist()).decode("utf-8", errors="ignore")
            text = text[1:-1] if len(text) > 2 else text  # a cut multi-byte character at either end
            assert any(text in texts[doc] for doc in named), (start, ids)
        checked_single |= len(ids) == 1 and EOS not in tokens
    assert checked_single  # some window lies inside one document, and then one document is named
