"""Which documents a training window holds, to name the data behind a loss spike.

Prepare packs each (source, split) as documents, each followed by one EOS, in the order of the lines of
docs/<source>.<split>.jsonl (whose `id` says file and record: "legal:contracts/a.pdf#3"). So the document holding
token t of the stream is the k-th, k = the number of EOS before t, and its id is line k. Both the EOS positions and
the ids are read once per source, when first asked (a spike is rare; a training step never pays for this)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cpt.data.loader import TokenStream


class DocumentIndex:
    def __init__(self, docs_dir: Path, streams: dict[str, TokenStream], eos_id: int, split: str = "train"):
        self.docs_dir, self.streams, self.eos_id, self.split = docs_dir, streams, eos_id, split
        self._ends: dict[str, np.ndarray] = {}
        self._ids: dict[str, list[str]] = {}

    def documents(self, source: str, start: int, length: int) -> list[str]:
        """Ids of the documents overlapping tokens [start, start + length) of a source's stream."""
        ends = self._eos_positions(source)
        first = int(np.searchsorted(ends, start))  # the first document ending at or after `start`
        last = int(np.searchsorted(ends, start + length - 1))
        ids = self._doc_ids(source)
        return [ids[k] if k < len(ids) else f"{source}:<document {k}>" for k in range(first, last + 1)]

    def _eos_positions(self, source: str) -> np.ndarray:
        if source not in self._ends:
            stream, found, offset = self.streams[source], [], 0
            for shard in stream.maps:
                found.append(np.flatnonzero(shard == self.eos_id) + offset)
                offset += len(shard)
            self._ends[source] = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        return self._ends[source]

    def _doc_ids(self, source: str) -> list[str]:
        if source not in self._ids:
            path = self.docs_dir / f"{source}.{self.split}.jsonl"
            ids = []
            if path.is_file():
                with open(path, encoding="utf-8") as f:
                    ids = [json.loads(line)["id"] for line in f]
            self._ids[source] = ids
        return self._ids[source]
