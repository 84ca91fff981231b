"""Held-out loss, one implementation for in-loop validation (cpt.train) and `cpt.evaluate`:
windows of a token stream -> summed token loss and token count -> mean loss and perplexity.

Window k of a stream covers tokens [k * seq_len, (k + 1) * seq_len] (seq_len inputs, the same shifted by one as
targets), as in training. Validation gives each rank a contiguous, equal share of the first windows (every rank runs
the same number of forwards, as FSDP needs) and sums over ranks; `cpt.evaluate` scores the first windows in one
process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Optional

import numpy as np
import torch
from torch import nn

from cpt.config.schema import LossImpl
from cpt.data.loader import Batch, TokenStream, num_windows, to_batch
from cpt.model.loss import lm_loss


def rank_windows(stream: TokenStream, seq_len: int, rank: int, world: int, max_windows: int) -> range:
    """This rank's share of the first windows: at most `max_windows`, the same count on every rank."""
    per_rank = min(num_windows(stream, seq_len) // world, max_windows)
    return range(rank * per_rank, (rank + 1) * per_rank)


def window_batches(stream: TokenStream, windows: range, seq_len: int, batch_size: int,
                   device: torch.device) -> Iterator[Batch]:
    for first in range(windows.start, windows.stop, batch_size):
        ids = range(first, min(windows.stop, first + batch_size))
        yield to_batch(np.stack([stream.read(i * seq_len, seq_len + 1) for i in ids]), device)


@torch.no_grad()
def summed_loss(model: nn.Module, stream: TokenStream, windows: range, seq_len: int, batch_size: int,
                device: torch.device, amp=nullcontext(), impl: LossImpl = LossImpl.chunked,
                eos_id: Optional[int] = None, byte_table: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[summed token loss, token count, UTF-8 bytes of the targets] over the windows, as a float64 tensor on
    `device` (ready to all-reduce); `eos_id`: documents masked from each other (cpt.model.doc_masking); `byte_table`:
    bytes per token id (cpt.eval.bits_per_byte; without it the byte count is 0)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64, device=device)
    for inputs, targets in window_batches(stream, windows, seq_len, batch_size, device):
        with amp:
            total[0] += lm_loss(model, inputs, targets, "sum", impl, eos_id).double()
        total[1] += targets.numel()
        if byte_table is not None:
            total[2] += byte_table[targets].sum()
    model.train(was_training)
    return total
