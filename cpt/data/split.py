"""Deterministic document-level train/validation split: a document's split depends only on its own text (a
hash), so it is stable across reruns and independent of file order, and the split happens after deduplication,
so near-duplicates cannot straddle it."""

from __future__ import annotations

import hashlib


def split_of(text: str, val_fraction: float) -> str:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"cpt-split").digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"
