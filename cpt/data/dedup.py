"""Duplicate removal over the whole corpus (all sources): exact (hash of the normalized text) and near
(MinHash signatures of word shingles, banded into an LSH index by datasketch). Signatures are computed where the
documents are converted (worker processes); the decisions are made in one place in the corpus's fixed order, so
the first occurrence is kept whatever the number of processes; the rest are dropped and counted per source.

A signature is computed with numpy, not per shingle in Python: each word is hashed once (all words of a document
at once; skeletons with xxh32), the n-grams' hashes are combined from those, and the MinHash values are datasketch's
`affine32` scheme (MurmurHash3's 32-bit finalizer, then h -> a*h + b mod 2^32 per permutation) applied to all
shingles at once: the same values datasketch's MinHash.update_batch gives for these shingle hashes
(tests/data/test_dedup.py), several times faster. The decisions are datasketch's LSH decisions (its bands and rows
for the threshold), made on 64-bit band hashes in a compact set (cpt.data.hash_set): memory ~80 bytes a kept
document instead of ~3.4 KiB."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Optional

import numpy as np
import xxhash

from cpt.config.schema import DedupConfig, Shingle
from cpt.data.hash_set import HashSet

_WORD = re.compile(r"\w+")


def normalized_key(text: str) -> int:
    """Exact-duplicate key (64 bits): case and whitespace differences do not make documents different."""
    return xxhash.xxh3_64_intdigest(" ".join(text.lower().split()).encode("utf-8"))


_SPELLING = str.maketrans("vjy", "uii")
_VOWELS = re.compile(r"[aeiou]")
_REPEATS = re.compile(r"(.)\1+")


def skeleton(word: str) -> str:
    """A spelling-insensitive key: u/v, i/j/y merged, vowels after the first letter dropped, repeats collapsed
    ("speake" and "speak", "haue" and "have", "Citizens" and "Citizen's" map alike)."""
    word = word.translate(_SPELLING)
    return _REPEATS.sub(r"\1", word[:1] + _VOWELS.sub("", word[1:]))


SHINGLE_HASH = "poly64-words-fnv/affine32/xxh3-64"  # part of prepare's fingerprint: changing it changes every signature

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_BASE = _FNV_PRIME  # the words' polynomial hash base: odd, so invertible mod 2^64
_BASE_INVERSE = np.uint64(pow(int(_BASE), -1, 1 << 64))


@lru_cache(maxsize=1)
def _is_word_bmp() -> np.ndarray:
    """Which code points of the Basic Multilingual Plane `\\w` matches (str.isalnum() or "_", as `re` defines it)."""
    return np.array([c.isalnum() or c == "_" for c in map(chr, range(0x10000))])


_BLOCK = 1 << 16  # code points hashed at once: the power tables stay small (cached) whatever the document's length


@lru_cache(maxsize=2)
def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^i and B^-i mod 2^64 for i < n."""
    powers, inverses = np.ones(n, dtype=np.uint64), np.ones(n, dtype=np.uint64)
    if n > 1:
        np.cumprod(np.full(n - 1, _BASE), out=powers[1:])
        np.cumprod(np.full(n - 1, _BASE_INVERSE), out=inverses[1:])
    return powers, inverses


def _mix64(h: np.ndarray) -> np.ndarray:
    """Spread the bits (a shortened MurmurHash3 fmix64), keep 32."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    return (h ^ (h >> np.uint64(32))).astype(np.uint32)


def _word_hashes(lower: str) -> np.ndarray:
    """A 32-bit hash of each `\\w+` word of the text, in order, without a Python loop over the words: the words'
    bounds from a table of word characters; each word's polynomial hash sum(c_i B^(i - start)) mod 2^64 from one
    prefix sum over the code points of a block of words; then mixed. The same words as re.findall
    (tests/data/test_dedup.py), 4x faster with the hashing."""
    cp = np.frombuffer(lower.encode("utf-32-le"), dtype=np.uint32)
    word = _is_word_bmp()[np.minimum(cp, 0xFFFF)]
    astral = np.flatnonzero(cp > 0xFFFF)
    if len(astral):  # emoji, historic scripts, CJK extensions: rare, looked up one by one
        word[astral] = [chr(c).isalnum() for c in cp[astral].tolist()]
    edges = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = np.empty(len(starts), dtype=np.uint32)
    first = 0
    while first < len(starts):  # blocks of whole words, about _BLOCK code points each
        begin = starts[first]
        last = max(int(np.searchsorted(ends, begin + _BLOCK, side="right")), first + 1)
        end = ends[last - 1]
        powers, inverses = _power_tables(max(_BLOCK, end - begin))
        prefix = np.zeros(end - begin + 1, dtype=np.uint64)
        np.cumsum(cp[begin:end] * powers[: end - begin], out=prefix[1:])
        s, e = starts[first:last] - begin, ends[first:last] - begin
        out[first:last] = _mix64((prefix[e] - prefix[s]) * inverses[s])
        first = last
    return out


def shingle_hashes(text: str, kind: Shingle, n: int) -> np.ndarray:
    """32-bit hashes of the document's shingles: n-grams of words, of word skeletons, or of the characters of the
    words joined by single spaces (a text shorter than n units is one shingle). Repeated shingles may repeat."""
    lower = text.lower()
    if kind == Shingle.word:
        units = _word_hashes(lower)
    elif kind == Shingle.skeleton:
        words = [skeleton(w).encode() for w in _WORD.findall(lower)]
        units = np.fromiter(map(xxhash.xxh32_intdigest, words), np.uint32, len(words))
    else:
        units = np.frombuffer(" ".join(_WORD.findall(lower)).encode("utf-32-le"), dtype=np.uint32)
    width = min(n, len(units))
    count = len(units) - width + 1
    h = np.full(count, _FNV_OFFSET)
    for k in range(width):  # FNV-1a over the n units of each shingle, all shingles at once
        h = (h ^ units[k : k + count]) * _FNV_PRIME
    return (h ^ (h >> np.uint64(32))).astype(np.uint32)


@cache
def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the affine permutations h -> a*h + b mod 2^32, a odd; drawn once per size (seed 1), the same in
    every process."""
    gen = np.random.RandomState(1)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (a bijection that spreads the bits), as datasketch applies it."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_values(hashes: np.ndarray, num_perm: int, block: int = 1024) -> np.ndarray:
    """The MinHash signature (num_perm uint32 values) of a set of 32-bit shingle hashes."""
    a, b = permutations(num_perm)
    out = np.full(num_perm, np.uint32(0xFFFFFFFF))
    mixed = _fmix32(hashes)
    for start in range(0, len(mixed), block):  # blocks that stay in cache (2x faster than 4096), any length
        np.minimum(out, (mixed[start : start + block, None] * a + b).min(axis=0), out=out)
    return out


Signature = tuple[Optional[int], Optional[np.ndarray]]  # (exact key, MinHash values); None where not used


def signature(text: str, cfg: DedupConfig) -> Signature:
    """What dedup needs of a document, computed where the document is (a worker process): its exact key and its
    MinHash values. Pure: the same text and settings give the same signature in any process."""
    key = normalized_key(text) if cfg.exact else None
    values = minhash_values(shingle_hashes(text, cfg.shingle, cfg.shingle_size), cfg.num_perm) if cfg.near else None
    return key, values


class NearIndex:
    """The LSH index of one near-dedup setting: a document is a near-duplicate when any band of its signature (b
    bands of r values, the b and r datasketch's MinHashLSH chooses for the threshold and num_perm) equals the same band
    of a kept document's — datasketch's MinHashLSH.query decision (tests/data/test_dedup.py) — but each band is
    remembered as one 64-bit hash in a HashSet (8 bytes; datasketch's index holds ~3.4 KiB a document)."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        from datasketch import MinHashLSH  # here only: its import (scipy) is slow for the workers

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.bands, self.rows = lsh.b, lsh.r
        self.seen = HashSet()

    def band_hashes(self, values: np.ndarray) -> list[int]:
        """One hash per band, seeded by the band's number: equal values in different bands do not meet."""
        r = self.rows
        return [xxhash.xxh3_64_intdigest(values[i * r : (i + 1) * r].tobytes(), seed=i) for i in range(self.bands)]

    def check(self, values: np.ndarray) -> bool:
        """Whether the signature shares a band with a kept document's; if not, it is kept (remembered)."""
        bands = self.band_hashes(values)
        if self.seen.contains_any(bands):
            return True
        self.seen.update(bands)
        return False


class Deduplicator:
    """Feed signatures in the corpus's fixed order; `check` says whether a document duplicates an earlier kept one.
    Exact keys are shared by all sources; each distinct near-dedup setting has its own LSH index (sources with equal
    settings share one, so near-duplicates across them are found too)."""

    def __init__(self) -> None:
        self.seen = HashSet()
        self.indexes: dict[tuple, NearIndex] = {}

    def check(self, sig: Signature, cfg: DedupConfig) -> Optional[str]:
        """"exact_duplicate" / "near_duplicate" if the document is dropped, else None (kept and remembered)."""
        key, values = sig
        if key is not None:
            if key in self.seen:
                return "exact_duplicate"
            self.seen.update((key,))
        if values is not None:
            index_key = (cfg.threshold, cfg.num_perm, cfg.shingle, cfg.shingle_size)
            if index_key not in self.indexes:
                self.indexes[index_key] = NearIndex(cfg.threshold, cfg.num_perm)
            if self.indexes[index_key].check(values):
                return "near_duplicate"
        return None

    def nbytes(self) -> int:
        """Roughly what dedup remembers, in bytes (logged by prepare: it grows with the kept documents)."""
        return self.seen.nbytes() + sum(index.seen.nbytes() for index in self.indexes.values())
