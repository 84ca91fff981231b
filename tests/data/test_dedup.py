"""Dedup signatures (cpt.data.dedup): the vectorized MinHash equals datasketch's for the same shingle hashes, words
are found as re finds them and hashed alike wherever they are, the estimate tracks the true Jaccard similarity,
shingles see word order, duplicates are dropped in order."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from conftest import real_corpus
from cpt.config.schema import DedupConfig, Shingle
from cpt.data import dedup as dedup_module
from cpt.data.dedup import _WORD, Deduplicator, _word_hashes, minhash_values, permutations, shingle_hashes, signature


def licenses(count: int) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(real_corpus("licenses").glob("*.LICENSE"))[:count]]


@pytest.mark.parametrize("kind", list(Shingle))
def test_minhash_equals_datasketch_for_the_same_shingles(kind):
    num_perm = 64
    for text in licenses(40):
        hashes = shingle_hashes(text, kind, 4)
        reference = MinHash(num_perm=num_perm, seed=1, scheme="affine32", hashfunc=int)
        reference.update_batch(hashes.tolist())
        assert (minhash_values(hashes, num_perm) == reference.hashvalues).all()
        assert (minhash_values(hashes, num_perm, block=7) == reference.hashvalues).all()  # blocks change nothing
    a, b = permutations(num_perm)
    assert (a % 2 == 1).all() and (reference.permutations == np.array([a, b])).all()


def test_words_are_found_and_hashed_as_regex_words_wherever_they_are(monkeypatch):
    """The vectorized word hashes: one per `\\w+` word of re.findall (accents, CJK, digits, underscores, astral
    letters), equal words hash alike at any position of any document, distinct words (almost) never collide."""
    texts = [t.lower() for t in licenses(300)]
    texts.append("naïve café — 東京 🚀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 x_y 3.14 ١٢٣ ǆ straße ﬁne 🚀x𝔘 " * 3)
    by_word: dict[str, int] = {}
    for text in texts:
        words, hashes = _WORD.findall(text), _word_hashes(text).tolist()
        assert len(words) == len(hashes)
        for word, h in zip(words, hashes):
            assert by_word.setdefault(word, h) == h, word
    assert len(set(by_word.values())) >= len(by_word) - 1 and len(by_word) > 5000
    long = texts[-1] + "x" * 50 + " " + texts[0]
    whole = _word_hashes(long)
    monkeypatch.setattr(dedup_module, "_BLOCK", 5)  # blocks of a few words, one word longer than a block
    assert (_word_hashes(long) == whole).all()


def test_signature_estimates_jaccard_and_sees_word_order():
    rng = random.Random(0)
    words = [f"w{rng.randrange(5000)}" for _ in range(3000)]
    cfg = DedupConfig(shingle_size=3, num_perm=256)

    def estimate(x: list[str], y: list[str]) -> tuple[float, float]:
        sx, sy = (set(shingle_hashes(" ".join(w), Shingle.word, 3).tolist()) for w in (x, y))
        vx, vy = (signature(" ".join(w), cfg)[1] for w in (x, y))
        return float((vx == vy).mean()), len(sx & sy) / len(sx | sy)

    for changed in (100, 600, 1500):  # replace that many words: the true Jaccard falls, the estimate follows
        other = list(words)
        for i in rng.sample(range(len(words)), changed):
            other[i] = f"x{i}"
        est, true = estimate(words, other)
        assert abs(est - true) < 0.08, (changed, est, true)
    assert estimate(words, words[::-1])[1] == 0  # the same words backwards share no 3-gram
    assert len(shingle_hashes("", Shingle.word, 5)) == 1 and len(shingle_hashes("two words", Shingle.word, 5)) == 1


def test_near_duplicates_are_dropped_across_documents_in_order():
    text = licenses(1)[0] * 3
    cfg = DedupConfig()
    dedup = Deduplicator()
    twin = text.replace("the", "THE", 2) + "\n(a copy)"
    assert dedup.check(signature(text, cfg), cfg) is None
    assert dedup.check(signature(text.upper(), cfg), cfg) == "exact_duplicate"  # case: same normalized key
    assert dedup.check(signature(twin, cfg), cfg) == "near_duplicate"
    assert dedup.check(signature(licenses(300)[-1], cfg), cfg) is None


def test_near_index_decides_as_datasketch_lsh():
    """The compact index keeps and drops exactly the documents datasketch's MinHashLSH (query, then insert if no
    candidate) keeps and drops, on licenses and edited copies of them at every distance around the threshold."""
    from datasketch import LeanMinHash, MinHashLSH

    rng = random.Random(0)
    texts = licenses(150)
    for text in texts[:100]:  # copies with 0.5% .. 5% of the words replaced: Jaccard ~0.95 .. ~0.6 on 5-word shingles
        words = text.split()
        for share in (0.005, 0.01, 0.02, 0.03, 0.05):
            copy = [rng.choice(("alpha", "beta", "gamma")) if rng.random() < share else w for w in words]
            texts.append(" ".join(copy))
    rng.shuffle(texts)
    cfg = DedupConfig(exact=False)
    reference, ours = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm), Deduplicator()
    expected, got = [], []
    for n, text in enumerate(texts):
        sig = signature(text, cfg)
        mh = LeanMinHash(seed=1, hashvalues=sig[1], scheme="affine32")
        duplicate = bool(reference.query(mh))
        if not duplicate:
            reference.insert(n, mh)
        expected.append("near_duplicate" if duplicate else None)
        got.append(ours.check(sig, cfg))
    assert got == expected
    index = next(iter(ours.indexes.values()))
    kept = signature(texts[0], cfg)[1]
    shifted = np.roll(kept, -index.rows)  # band 1 of the kept document's values as band 0: different bands never meet
    assert index.band_hashes(shifted)[0] != index.band_hashes(kept)[1]
    assert 150 < expected.count(None) < 550 and expected.count("near_duplicate") > 100  # both outcomes, many of each


def test_hash_set_holds_what_a_set_holds_across_merges():
    from cpt.data.hash_set import HashSet

    rng = random.Random(1)
    ours, reference = HashSet(merge_at=64), set()
    for n in range(5000):
        batch = [rng.getrandbits(64) for _ in range(rng.randint(1, 9))]
        if n % 5 == 0 and reference:  # some members again, old and recent
            batch[0] = rng.choice(sorted(reference))
        assert ours.contains_any(batch) == any(h in reference for h in batch)
        ours.update(batch)
        reference.update(batch)
    assert len(ours) == len(reference) and all(h in ours for h in rng.sample(sorted(reference), 500))
    assert ours.nbytes() < 20 * len(reference)  # mostly merged into the array: 8 bytes a member (~70 in a Python set)
