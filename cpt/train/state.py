"""The training loop's own state, checkpointed with the model: the step reached and the guard against non-finite
updates. Both are registered with the Checkpointer by name (state_dict / load_state_dict of plain types)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from cpt.config.schema import NonFinite

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class NonFiniteGuard:
    """Counts the updates skipped for a NaN/inf loss or gradient norm on the device, so the loop never waits for the
    host; `check()` reads the counters (at log and checkpoint steps only) and warns, or stops the run under
    trainer.on_nonfinite=stop."""

    def __init__(self, policy: NonFinite, device: torch.device, ckpt_root):
        self.policy, self.ckpt_root = policy, ckpt_root
        self.counts = torch.zeros(2, device=device)  # [updates skipped in this process, last such step]
        self.seen = 0  # of counts[0], already reported
        self.earlier = 0  # skipped before the checkpoint this run resumed from

    def record(self, nonfinite: torch.Tensor, step: int) -> None:
        """`nonfinite` is the step's device flag (1.0: its update was skipped)."""
        self.counts[0] += nonfinite
        self.counts[1] = torch.where(nonfinite > 0, step, self.counts[1])

    def check(self, done: int) -> int:
        """Report updates skipped since the last check (or stop); returns the run's total."""
        count, last = (int(v) for v in self.counts.tolist())
        if count > self.seen and self.policy == NonFinite.stop:
            raise FloatingPointError(
                f"step {last}: non-finite loss or gradient norm; its update was not applied and the run stops at step "
                f"{done} (trainer.on_nonfinite=stop; trainer.on_nonfinite=skip drops such updates and goes on). "
                f"Checkpoints in {self.ckpt_root} hold no non-finite weights.")
        if count > self.seen:
            log.warning("step %d: non-finite gradient norm: update skipped (%d so far)", last, self.earlier + count)
        self.seen = count
        return self.earlier + count

    def state_dict(self) -> dict:
        return {"skipped": self.earlier + int(self.counts[0].item())}

    def load_state_dict(self, state: dict) -> None:
        self.earlier = int(state["skipped"])
        self.counts.zero_()
        self.seen = 0
