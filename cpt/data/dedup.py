"""Duplicate removal over the whole corpus (all sources): exact (hash of the normalized text) and near
(MinHash signatures of word shingles, banded into an LSH index by datasketch). The first occurrence in the
deterministic processing order is kept; the rest are dropped and counted per source."""

from __future__ import annotations

import hashlib
import re
from typing import Optional

from datasketch import MinHash, MinHashLSH

from cpt.config import DedupConfig, Shingle

_WORD = re.compile(r"\w+")


def normalized_key(text: str) -> bytes:
    """Exact-duplicate key: case and whitespace differences do not make documents different."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


_SPELLING = str.maketrans("vjy", "uii")
_VOWELS = re.compile(r"[aeiou]")
_REPEATS = re.compile(r"(.)\1+")


def skeleton(word: str) -> str:
    """A spelling-insensitive key: u/v, i/j/y merged, vowels after the first letter dropped, repeats collapsed
    ("speake" and "speak", "haue" and "have", "Citizens" and "Citizen's" map alike)."""
    word = word.translate(_SPELLING)
    return _REPEATS.sub(r"\1", word[:1] + _VOWELS.sub("", word[1:]))


def shingles(text: str, kind: Shingle, n: int) -> set[bytes]:
    """n-grams of words, of word skeletons, or of the characters of the words joined by single spaces."""
    words = _WORD.findall(text.lower())
    if kind == Shingle.skeleton:
        words = [skeleton(w) for w in words]
    if kind == Shingle.char:
        joined = " ".join(words)
        return {joined[i : i + n].encode("utf-8") for i in range(max(1, len(joined) - n + 1))}
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


class Deduplicator:
    """Feed documents in order; `check` says whether one duplicates an earlier kept one. Exact keys are shared
    by all sources; each distinct near-dedup setting has its own LSH index (sources with equal settings share
    one, so near-duplicates across them are found too)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.indexes: dict[tuple, tuple[MinHashLSH, object, str]] = {}

    def _index(self, cfg: DedupConfig) -> tuple[MinHashLSH, object, str]:
        key = (cfg.threshold, cfg.num_perm, cfg.shingle, cfg.shingle_size)
        if key not in self.indexes:
            template = MinHash(num_perm=cfg.num_perm, seed=1)  # permutations drawn once, shared by every document
            lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
            self.indexes[key] = (lsh, template.permutations, template.scheme)
        return self.indexes[key]

    def check(self, text: str, doc_id: str, cfg: DedupConfig) -> Optional[str]:
        """"exact_duplicate" / "near_duplicate" if the document is dropped, else None (kept)."""
        if cfg.exact:
            key = normalized_key(text)
            if key in self.seen:
                return "exact_duplicate"
            self.seen.add(key)
        if cfg.near:
            lsh, permutations, scheme = self._index(cfg)
            mh = MinHash(num_perm=cfg.num_perm, permutations=permutations, scheme=scheme)
            mh.update_batch(list(shingles(text, cfg.shingle, cfg.shingle_size)))
            if lsh.query(mh):
                return "near_duplicate"
            lsh.insert(doc_id, mh)
        return None
