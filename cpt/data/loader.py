"""Batches of fixed-length windows (seq_len + 1 tokens -> inputs and shifted targets) from a token stream.

The batch of optimizer step s is a pure function of (seed, s): each step draws the window starts of the whole
global batch from a generator seeded with (seed, s), and rank r's micro-step m takes its own slice. So:
- a run with N ranks sees exactly the batch a 1-rank run with N times the accumulation sees;
- ranks get disjoint slices of each global batch;
- the loader's position is just the step number: resuming at step 100,000 costs nothing.
"""

from __future__ import annotations

from typing import Iterator

import torch


class WindowLoader:
    def __init__(self, tokens: torch.Tensor, seq_len: int, micro_batch: int, grad_accum: int,
                 rank: int, world: int, seed: int, device: torch.device):
        if len(tokens) < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {seq_len + 1}")
        self.tokens, self.seq_len, self.device = tokens, seq_len, device
        self.micro_batch, self.grad_accum, self.rank, self.world, self.seed = micro_batch, grad_accum, rank, world, seed
        self.global_batch = micro_batch * grad_accum * world
        self._offsets = torch.arange(seq_len + 1)

    def _windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tokens[starts[:, None] + self._offsets]
        if self.device.type == "cuda":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]

    def step_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's grad_accum micro-batches of optimizer step `step`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.tokens) - self.seq_len, (self.global_batch,), generator=g)
        for m in range(self.grad_accum):
            first = (m * self.world + self.rank) * self.micro_batch
            yield self._windows(starts[first : first + self.micro_batch])

    def eval_windows_per_rank(self, max_batches: int) -> int:
        return min(((len(self.tokens) - 1) // self.seq_len) // self.world, max_batches * self.micro_batch)

    def eval_batches(self, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows from the start of the stream, a contiguous equal share per rank (every
        rank runs the same number of forwards, as FSDP needs), in micro-batches of at most micro_batch."""
        per_rank = self.eval_windows_per_rank(max_batches)
        first = self.rank * per_rank
        for b in range(0, per_rank, self.micro_batch):
            idx = torch.arange(first + b, first + min(per_rank, b + self.micro_batch))
            yield self._windows(idx * self.seq_len)
