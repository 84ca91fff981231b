"""Batches for training and validation from prepared token shards (see cpt.prepare).

Each (source, split) is one packed token stream (documents joined by EOS, no padding), memory-mapped from its
shards. A stream is cut into windows of seq_len + 1 tokens (window k starts at token k * seq_len; inputs are
its first seq_len tokens, targets the last seq_len). Training:
- every optimizer step draws the source of each sample of the GLOBAL batch from a generator seeded with
  (seed, step), weighted by the mixture's shares at that step (domain data mixed with replayed general data;
  cpt.data.mixture, which may change the shares in stages);
- each source serves its windows in a seeded random order, a new permutation each epoch, without replacement;
- rank r's micro-step m takes slice (m * world + r) of the global batch: ranks see disjoint windows, and N ranks
  see exactly the batch that 1 rank with N times the accumulation sees;
- the position is {"step", "consumed" per source}: saving and restoring it is O(1), nothing is replayed;
- global batches named in `skip` (by their draw number: the step that draws them in a run without skips) are drawn
  and passed over, never trained on (trainer.skip_batches, or a spike's rollback); the set is part of the position.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from cpt.data.mixture import Mixture

Batch = tuple[torch.Tensor, torch.Tensor]


class TokenStream:
    """The shards of one (source, split), read as one sequence of token ids."""

    def __init__(self, files: list[Path], dtype: str):
        self.maps = [np.memmap(f, dtype=dtype, mode="r") for f in files if f.stat().st_size > 0]
        self.ends = np.cumsum([len(m) for m in self.maps])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.ends, start, side="right"))
        while filled < length:
            shard_start = int(self.ends[shard - 1]) if shard else 0
            local = start + filled - shard_start
            piece = self.maps[shard][local : local + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out


def num_windows(stream: TokenStream, seq_len: int) -> int:
    return max(0, (len(stream) - 1) // seq_len)


class MixtureLoader:
    """Training batches drawn from weighted sources; deterministic for a seed, resumable in O(1). `mixture`: the
    sources' shares per step, or constant weights."""

    def __init__(self, streams: Mapping[str, TokenStream], mixture: Mixture | Mapping[str, float], seq_len: int,
                 micro_batch: int, grad_accum: int, rank: int, world: int, seed: int, device: torch.device):
        self.names = list(streams)
        self.streams, self.seq_len, self.device = streams, seq_len, device
        self.micro_batch, self.grad_accum, self.rank, self.world, self.seed = micro_batch, grad_accum, rank, world, seed
        self.global_batch = micro_batch * grad_accum * world
        self.windows = {n: num_windows(s, seq_len) for n, s in streams.items()}
        self.mixture = mixture if isinstance(mixture, Mixture) else Mixture.constant(mixture)
        drawn = self.mixture.drawn()
        for name, count in self.windows.items():
            if count == 0 and name in drawn:  # a source no stage draws from: its size does not matter
                raise ValueError(f"source '{name}' has {len(streams[name])} training tokens, fewer than one window of "
                                 f"trainer.seq_len+1={seq_len + 1}: add data or shorten trainer.seq_len")
        self.stage_shares = [torch.tensor([stage[n] for n in self.names], dtype=torch.float64)
                             for stage in self.mixture.stages]
        self.step = 0  # global batches drawn so far (skipped ones included)
        self.consumed = {n: 0 for n in self.names}
        self.skip: set[int] = set()  # draw numbers (1-based) passed over
        self.recent: dict[int, list[tuple[str, int]]] = {}  # draw number -> its samples' (source, token start)
        self.keep_recent = 1  # how many of the last trained draws `recent` remembers (the loop: its log interval)
        self._perm_cache: dict[str, tuple[int, torch.Tensor]] = {}

    def state_dict(self) -> dict:
        return {"step": self.step, "consumed": dict(self.consumed), "skip": sorted(self.skip)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["consumed"])
        if missing:
            raise ValueError(f"loader state has no position for sources {sorted(missing)}")
        self.step = int(state["step"])
        self.consumed = {n: int(state["consumed"][n]) for n in self.names}
        self.skip = set(state.get("skip", []))  # checkpoints written before skips existed have none
        self.recent.clear()

    def _window_id(self, name: str, index: int) -> int:
        """The index-th window served by a source: epoch-wise seeded permutations, no replacement within one."""
        epoch, pos = divmod(index, self.windows[name])
        cached = self._perm_cache.get(name)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, self.names.index(name), epoch))
            cached = (epoch, torch.randperm(self.windows[name], generator=g))
            self._perm_cache[name] = cached
        return int(cached[1][pos])

    def sources_of_step(self, step: int) -> list[int]:
        """The source index of each sample of the global batch of `step`."""
        if len(self.names) == 1:
            return [0] * self.global_batch
        g = torch.Generator().manual_seed(_mix(self.seed, step, 1 << 20))
        shares = self.stage_shares[self.mixture.stage_of(step)]
        return torch.multinomial(shares, self.global_batch, replacement=True, generator=g).tolist()

    def _draw(self) -> list[tuple[str, int]]:
        """The next global batch's samples as (source, token start), in order; advances the position."""
        starts = []
        for s in self.sources_of_step(self.step):
            name = self.names[s]
            starts.append((name, self._window_id(name, self.consumed[name]) * self.seq_len))
            self.consumed[name] += 1
        self.step += 1
        return starts

    def next_batches(self) -> list[Batch]:
        """This rank's grad_accum micro-batches of the next optimizer step (after any skipped draws); advances the
        position. `self.step` is then this batch's draw number."""
        starts = self._draw()
        while self.step in self.skip:
            starts = self._draw()
        self.recent[self.step] = starts
        while len(self.recent) > self.keep_recent:  # the oldest first (a dict keeps insertion order)
            del self.recent[next(iter(self.recent))]
        batches = []
        for m in range(self.grad_accum):
            first = (m * self.world + self.rank) * self.micro_batch
            window = starts[first : first + self.micro_batch]
            rows = [self.streams[n].read(start, self.seq_len + 1) for n, start in window]
            batches.append(to_batch(np.stack(rows), self.device))
        return batches


def to_batch(rows: np.ndarray, device: torch.device) -> Batch:
    t = torch.from_numpy(rows)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t[:, :-1], t[:, 1:]


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h
