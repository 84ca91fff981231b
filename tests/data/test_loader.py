"""The training loader: windows from packed shards, disjoint across ranks, weighted mixing, O(1) resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from cpt.data.loader import MixtureLoader, TokenStream
from cpt.data.pack import ShardWriter

CPU = torch.device("cpu")


def make_stream(tmp_path, name: str, tokens: np.ndarray, shard_tokens: int = 1000) -> TokenStream:
    writer = ShardWriter(tmp_path / name, "uint16", shard_tokens)
    writer.write(tokens)
    shards = writer.close()
    return TokenStream([tmp_path / name / s["file"] for s in shards], "uint16")


def test_stream_reads_across_shard_boundaries(tmp_path):
    tokens = np.arange(2500) % 60000
    stream = make_stream(tmp_path, "a", tokens, shard_tokens=1000)
    assert len(stream.maps) == 3 and len(stream) == 2500
    assert np.array_equal(stream.read(990, 25), tokens[990:1015])
    assert np.array_equal(stream.read(0, 2500), tokens)


def loader(streams, weights, rank=0, world=1, micro=4, accum=1, seed=0, seq=16):
    return MixtureLoader(streams, weights, seq, micro, accum, rank, world, seed, CPU)


def starts_of(batches, seq):
    # every test stream holds ids == positions (plus a per-source offset), so a window's first id is its start
    return [int(x[0]) for inputs, _ in batches for x in inputs]


def test_windows_are_shifted_pairs_and_an_epoch_covers_every_window_once(tmp_path):
    stream = make_stream(tmp_path, "a", np.arange(16 * 20 + 1))
    ld = loader({"a": stream}, {"a": 1.0}, micro=4)
    seen = []
    for _ in range(5):  # 5 steps x 4 = 20 windows = one epoch
        for inputs, targets in ld.next_batches():
            assert inputs.shape == targets.shape == (4, 16)
            assert torch.equal(inputs[:, 1:], targets[:, :-1])
            seen += inputs[:, 0].tolist()
    assert sorted(seen) == [16 * k for k in range(20)]


def test_ranks_get_disjoint_slices_of_the_same_global_batch(tmp_path):
    stream = make_stream(tmp_path, "a", np.arange(16 * 200 + 1))
    single = loader({"a": stream}, {"a": 1.0}, micro=4, accum=2)
    ranks = [loader({"a": stream}, {"a": 1.0}, rank=r, world=2, micro=2, accum=2) for r in range(2)]
    for _ in range(10):
        one = starts_of(single.next_batches(), 16)
        per_rank = [starts_of(ld.next_batches(), 16) for ld in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(one) == sorted(per_rank[0] + per_rank[1])


def test_mixture_follows_the_weights(tmp_path):
    legal = make_stream(tmp_path, "legal", np.arange(16 * 500 + 1))
    general = make_stream(tmp_path, "general", 30000 + np.arange(16 * 500 + 1))
    ld = loader({"legal": legal, "general": general}, {"legal": 0.95, "general": 0.05}, micro=8)
    counts = Counter()
    for _ in range(500):  # 4,000 samples
        for inputs, _ in ld.next_batches():
            counts.update("general" if x >= 30000 else "legal" for x in inputs[:, 0].tolist())
    share = counts["general"] / sum(counts.values())
    assert abs(share - 0.05) < 0.015, share  # 3.5 standard deviations of a 4,000-draw binomial
    assert ld.state_dict()["consumed"] == {"legal": counts["legal"], "general": counts["general"]}


def test_same_seed_same_batches_other_seed_other_batches(tmp_path):
    stream = make_stream(tmp_path, "a", np.arange(16 * 100 + 1))
    a, b, c = (loader({"a": stream}, {"a": 1.0}, seed=s) for s in (1, 1, 2))
    sa, sb, sc = (starts_of(ld.next_batches(), 16) for ld in (a, b, c))
    assert sa == sb and sa != sc


def test_state_restores_the_exact_next_batches_without_replay(tmp_path):
    legal = make_stream(tmp_path, "legal", np.arange(16 * 50 + 1))
    general = make_stream(tmp_path, "general", 30000 + np.arange(16 * 50 + 1))
    streams, weights = {"legal": legal, "general": general}, {"legal": 0.7, "general": 0.3}
    ref = loader(streams, weights)
    for _ in range(37):  # past an epoch of "legal"
        ref.next_batches()
    state = ref.state_dict()
    expected = [starts_of(ref.next_batches(), 16) for _ in range(5)]
    fresh = loader(streams, weights)
    fresh.load_state_dict(state)
    assert fresh.step == 37
    assert [starts_of(fresh.next_batches(), 16) for _ in range(5)] == expected


def test_resuming_costs_the_same_at_any_step(tmp_path, monkeypatch):
    """O(1) resume, counted: restoring a position and serving its next step reads the same number of windows and
    draws the same number of permutations at step 37 as at step 20,000 (a loader that replayed its batches
    to get there would read and draw in proportion to the step); the state is the same few integers."""
    import cpt.data.loader as loader_module

    legal = make_stream(tmp_path, "legal", np.arange(16 * 50 + 1))
    general = make_stream(tmp_path, "general", 30000 + np.arange(16 * 50 + 1))
    streams, weights = {"legal": legal, "general": general}, {"legal": 0.7, "general": 0.3}
    calls = Counter()
    read, randperm = TokenStream.read, torch.randperm
    monkeypatch.setattr(TokenStream, "read", lambda self, *a: (calls.update(["read"]), read(self, *a))[1])
    monkeypatch.setattr(loader_module.torch, "randperm", lambda *a, **k: (calls.update(["perm"]), randperm(*a, **k))[1])

    def cost_of_resuming_at(state: dict) -> Counter:
        calls.clear()
        fresh = loader(streams, weights)
        fresh.load_state_dict(state)
        fresh.next_batches()
        return Counter(calls)

    ref = loader(streams, weights)
    for _ in range(37):
        ref.next_batches()
    near = ref.state_dict()
    far = {"step": 20_000, "consumed": {"legal": 14_013, "general": 5_987}, "skip": [512]}
    for cost in (cost_of_resuming_at(near), cost_of_resuming_at(far)):
        # one step of 4 windows: 4 reads, at most one permutation per source (the one its position falls in)
        assert cost["read"] == 4 and 1 <= cost["perm"] <= 2, cost
    assert near.keys() == far.keys() and near["consumed"].keys() == far["consumed"].keys()


def test_skipped_batches_are_drawn_and_passed_over_and_the_skips_resume(tmp_path):
    """Skipping draw 3: the loader's 3rd batch is an unskipped loader's 4th, and so on; the skip set travels in the
    state, so a loader restored before the skipped draw passes over it too; `recent` names the last draws' windows."""
    legal = make_stream(tmp_path, "legal", np.arange(16 * 50 + 1))
    general = make_stream(tmp_path, "general", 30000 + np.arange(16 * 50 + 1))
    streams, weights = {"legal": legal, "general": general}, {"legal": 0.7, "general": 0.3}
    plain = loader(streams, weights)
    reference = [plain.next_batches()[0][0] for _ in range(6)]
    skipping = loader(streams, weights)
    skipping.skip = {3}
    skipping.keep_recent = 2
    got = [skipping.next_batches()[0][0] for _ in range(2)]
    state = skipping.state_dict()
    got += [skipping.next_batches()[0][0] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, reference[:2] + reference[3:6]))
    assert skipping.step == 6 and sorted(skipping.recent) == [5, 6]  # draw numbers; 3 was passed over
    assert [start for _, start in skipping.recent[6]] == [int(row[0]) % 30000 for row in reference[5]]
    restored = loader(streams, weights)
    restored.load_state_dict(state)
    assert state["skip"] == [3] and torch.equal(restored.next_batches()[0][0], reference[3])


def test_source_too_small_for_one_window_is_an_error(tmp_path):
    stream = make_stream(tmp_path, "tiny", np.arange(10))
    with pytest.raises(ValueError, match="trainer.seq_len"):
        loader({"tiny": stream}, {"tiny": 1.0})


def test_a_weight_zero_source_is_never_drawn_whatever_its_size(tmp_path):
    """Prepared for later (or only to be validated): an empty or tiny weight-0 source does not stop training."""
    main = make_stream(tmp_path, "main", np.arange(16 * 40 + 1))
    later = make_stream(tmp_path, "later", np.arange(5))  # not even one window
    mixed = loader({"main": main, "later": later}, {"main": 1.0, "later": 0.0})
    for _ in range(10):
        mixed.next_batches()
    assert mixed.state_dict()["consumed"] == {"main": 40, "later": 0}


def staged_mixture(steps: int, *stages):
    """A Mixture from (until, {source: weight}) pairs, as data.stages would give it."""
    from cpt.config.schema import DataConfig, SourceConfig, StageConfig
    from cpt.data.mixture import training_mixture

    cfg = DataConfig(sources=[SourceConfig(name=n, paths=["x"], weight=1.0) for n in ("legal", "general")],
                     stages=[StageConfig(until=u, weights=w) for u, w in stages])
    return training_mixture(cfg, steps)


def test_stages_change_the_mixture_at_their_boundaries(tmp_path):
    legal = make_stream(tmp_path, "legal", np.arange(16 * 500 + 1))
    general = make_stream(tmp_path, "general", 30000 + np.arange(16 * 500 + 1))
    mixture = staged_mixture(20, (0.25, {"general": 0.0}), (0.75, {"legal": 0.0}), (1.0, {}))
    assert mixture.ends == (5, 15, 20) and mixture.describe().startswith("steps 1-5: legal 1, general 0; steps 6-15")
    ld = loader({"legal": legal, "general": general}, mixture, micro=8)
    kinds = []
    for _ in range(25):  # 5 steps past the end: the last stage goes on
        kinds.append({"general" if x >= 30000 else "legal" for x in starts_of(ld.next_batches(), 16)})
    assert kinds[:5] == [{"legal"}] * 5 and kinds[5:15] == [{"general"}] * 10
    assert set().union(*kinds[15:]) == {"legal", "general"}  # 1:1 in the last stage


def test_resume_across_a_stage_boundary_is_exact(tmp_path):
    legal = make_stream(tmp_path, "legal", np.arange(16 * 60 + 1))
    general = make_stream(tmp_path, "general", 30000 + np.arange(16 * 60 + 1))
    streams = {"legal": legal, "general": general}
    mixture = staged_mixture(40, (0.5, {"legal": 0.9, "general": 0.1}), (1.0, {"legal": 0.5, "general": 0.5}))
    ref = loader(streams, mixture)
    for _ in range(17):  # saved 3 steps before the boundary (step 20)
        ref.next_batches()
    state = ref.state_dict()
    expected = [starts_of(ref.next_batches(), 16) for _ in range(10)]
    fresh = loader(streams, mixture)
    fresh.load_state_dict(state)
    assert [starts_of(fresh.next_batches(), 16) for _ in range(10)] == expected
    assert ref.mixture.stage_of(state["step"]) == 0 and ref.mixture.stage_of(ref.step - 1) == 1


def test_a_source_only_a_later_stage_draws_must_have_a_window(tmp_path):
    main = make_stream(tmp_path, "legal", np.arange(16 * 40 + 1))
    tiny = make_stream(tmp_path, "general", np.arange(5))
    with pytest.raises(ValueError, match="'general'"):
        loader({"legal": main, "general": tiny}, staged_mixture(10, (0.5, {"general": 0.0}), (1.0, {})))
