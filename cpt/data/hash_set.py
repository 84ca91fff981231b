"""A set of 64-bit hashes at 8 bytes a member, for what dedup remembers of every kept document: its exact key and
the band hashes of its MinHash signature (cpt.data.dedup). A Python set of ints costs ~70 bytes a member and
datasketch's in-memory LSH index ~3.4 KiB a document (a set per bucket): on a corpus of millions of documents that
is the largest thing prepare holds. Here new members go into a small Python set; when it passes an eighth of the
sorted array (at least MERGE_AT members) it is merged into that array, so every member is copied a few times per
doubling of the set, and the set's memory is ~8 bytes a member plus the recent ones."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MERGE_AT = 1 << 16  # recent members kept in a Python set before they are merged into the sorted array


class HashSet:
    def __init__(self, merge_at: int = MERGE_AT) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._merge_at = merge_at

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __contains__(self, h: int) -> bool:
        return self.contains_any((h,))

    def contains_any(self, hashes: Iterable[int]) -> bool:
        hashes = list(hashes)
        return any(h in self._recent for h in hashes) or bool(self._in_sorted(hashes).any())

    def update(self, hashes: Iterable[int]) -> None:
        hashes = np.array(list(hashes), dtype=np.uint64)
        self._recent.update(hashes[~self._in_sorted(hashes)].tolist())  # a member is counted once
        if len(self._recent) >= max(self._merge_at, len(self._sorted) >> 3):
            self._merge()

    def _in_sorted(self, hashes) -> np.ndarray:
        """Which of the hashes the sorted array holds."""
        wanted = np.asarray(hashes, dtype=np.uint64)
        if not len(self._sorted):
            return np.zeros(len(wanted), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        return self._sorted[at] == wanted

    def _merge(self) -> None:
        recent = np.sort(np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent)))
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, recent), recent)  # one pass: sorted
        self._recent = set()

    def nbytes(self) -> int:
        """Roughly what the set holds in memory (the sorted array's bytes, ~70 a recent member)."""
        return self._sorted.nbytes + 70 * len(self._recent)
