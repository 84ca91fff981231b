"""Duplicate removal over the whole corpus (all sources): exact (hash of the normalized text) and near
(MinHash signatures of word shingles, banded into an LSH index by datasketch). Signatures are computed where the
documents are converted (worker processes); the decisions are made in one place in the corpus's fixed order, so
the first occurrence is kept whatever the number of processes; the rest are dropped and counted per source."""

from __future__ import annotations

import hashlib
import re
from typing import Optional

import numpy as np
import xxhash
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


Signature = tuple[Optional[bytes], Optional[np.ndarray]]  # (exact key, MinHash values); None where not used

_PERMUTATIONS: dict[int, tuple] = {}


SHINGLE_HASH = "xxh32"  # part of prepare's fingerprint: changing it changes every signature


def _minhash(num_perm: int, **kw) -> MinHash:
    """MinHash with permutations drawn once per size (seed 1) and shared by every document and process. Shingles
    are hashed with xxh32 (datasketch's default, sha1 in Python, took 3/4 of prepare's per-file time)."""
    if num_perm not in _PERMUTATIONS:
        template = MinHash(num_perm=num_perm, seed=1)
        _PERMUTATIONS[num_perm] = (template.permutations, template.scheme)
    permutations, scheme = _PERMUTATIONS[num_perm]
    return MinHash(num_perm=num_perm, permutations=permutations, scheme=scheme, hashfunc=xxhash.xxh32_intdigest, **kw)


def signature(text: str, cfg: DedupConfig) -> Signature:
    """What dedup needs of a document, computed where the document is (a worker process): its exact key and its
    MinHash values. Pure: the same text and settings give the same signature in any process."""
    key = normalized_key(text) if cfg.exact else None
    values = None
    if cfg.near:
        mh = _minhash(cfg.num_perm)
        mh.update_batch(list(shingles(text, cfg.shingle, cfg.shingle_size)))
        values = mh.hashvalues
    return key, values


class Deduplicator:
    """Feed signatures in the corpus's fixed order; `check` says whether a document duplicates an earlier kept one.
    Exact keys are shared by all sources; each distinct near-dedup setting has its own LSH index (sources with equal
    settings share one, so near-duplicates across them are found too)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.indexes: dict[tuple, MinHashLSH] = {}

    def check(self, sig: Signature, doc_id: str, cfg: DedupConfig) -> Optional[str]:
        """"exact_duplicate" / "near_duplicate" if the document is dropped, else None (kept and remembered)."""
        key, values = sig
        if key is not None:
            if key in self.seen:
                return "exact_duplicate"
            self.seen.add(key)
        if values is not None:
            index_key = (cfg.threshold, cfg.num_perm, cfg.shingle, cfg.shingle_size)
            if index_key not in self.indexes:
                self.indexes[index_key] = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
            lsh = self.indexes[index_key]
            mh = _minhash(cfg.num_perm, hashvalues=values)
            if lsh.query(mh):
                return "near_duplicate"
            lsh.insert(doc_id, mh)
        return None
