"""Finite loss and gradient-norm spikes: detected on the device every step, acted on where the host already waits.

Every step, `flag()` compares the step's global mean loss (one scalar all-reduce, queued without waiting) and its
gradient norm with the mean and standard deviation of the last `trainer.spike.window` normal steps; past
`min_steps` of them, a step is a spike when either value exceeds its mean by `sigma` standard deviations and by
`min_rise` of the mean. Under skip, rollback and stop the flag joins the non-finite flag that the fused AdamW
kernel reads (`found_inf`), so the update is dropped on the device; spikes and non-finite steps never enter the
window. The window is checkpointed state: a resumed run decides exactly as the uninterrupted one.

At log and checkpoint steps the loop calls `check()` (one read of this interval's flags) and gets the spikes with
their numbers, the draw number of their global batch and the documents in it (`describe`); what happens next is
trainer.on_spike's: skip and warn log, stop raises SpikeStop, rollback is the loop's (cpt.train.loop)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from cpt.common.errors import UserError
from cpt.config.schema import OnSpike, SpikeConfig
from cpt.data.loader import MixtureLoader
from cpt.data.provenance import DocumentIndex
from cpt.train.checkpoint import checkpoint_step

log = logging.getLogger(__name__)

STATS = ("spike", "loss", "grad_norm", "loss_band", "grad_norm_band", "loss_mean", "grad_norm_mean")


class SpikeStop(UserError):
    """trainer.on_spike=stop met a spike, or rollback its limit: the run ends, its checkpoints untouched."""


class SpikeGuard:
    may_start_fresh = True  # a checkpoint from before spike detection resumes with an empty window (warned)

    def __init__(self, policy: OnSpike, cfg: SpikeConfig, device: torch.device, world_size: int):
        self.policy, self.cfg, self.world = policy, cfg, world_size
        self.enabled = policy != OnSpike.off
        self.drops = policy in (OnSpike.skip, OnSpike.rollback, OnSpike.stop)  # the update of a spike is not applied
        self.values = torch.zeros(cfg.window, 2, device=device)  # (loss, grad norm) of the last normal steps
        self.normal = torch.zeros((), device=device)  # normal steps seen so far
        self.slots = torch.arange(cfg.window, device=device)
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # (step, draw, STATS) since the last check
        self.last: Optional[torch.Tensor] = None
        self.rollbacks = 0

    def flag(self, loss: torch.Tensor, grad_norm: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
        """Collective. This step's device flag, 1.0 when its update must be dropped (a spike, under a policy that
        drops); updates the window. No host sync."""
        mean_loss = loss.detach().float().reshape(()).clone()
        dist.all_reduce(mean_loss)
        x = torch.stack([mean_loss / self.world, grad_norm.detach().float().reshape(())])
        seen = self.normal.clamp(max=self.cfg.window)
        valid = (self.slots < seen).float()[:, None]
        mean = (self.values * valid).sum(0) / seen.clamp(min=1)
        std = (((self.values - mean) ** 2 * valid).sum(0) / seen.clamp(min=1)).sqrt()
        band = mean + torch.maximum(self.cfg.sigma * std, self.cfg.min_rise * mean)
        spike = ((self.normal >= self.cfg.min_steps) & (x > band).any()).float()
        accept = (1 - spike) * (1 - nonfinite)  # NaN compares False: a non-finite step is no spike, and not normal
        slot = (self.normal % self.cfg.window).long()
        self.values[slot] = torch.where(accept > 0, x, self.values[slot])
        self.normal += accept
        self.last = torch.stack([spike, x[0], x[1], band[0], band[1], mean[0], mean[1]])
        return spike if self.drops else torch.zeros_like(spike)

    def record(self, step: int, draw: int) -> None:
        if self.last is not None:
            self.pending.append((step, draw, self.last))
            self.last = None

    def check(self) -> list[dict]:
        """The spikes since the last check (one device read): {"step", "batch", loss, grad_norm, bands, means}."""
        if not self.pending:
            return []
        rows = torch.stack([stats for _, _, stats in self.pending]).tolist()
        events = [{"step": step, "batch": draw, **{k: v for k, v in zip(STATS[1:], row[1:])}}
                  for (step, draw, _), row in zip(self.pending, rows) if row[0] > 0]
        self.pending.clear()
        return events

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "normal": int(self.normal.item()), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.normal.fill_(state["normal"])
        self.rollbacks = int(state["rollbacks"])
        self.pending.clear()
        self.last = None


def describe(event: dict, loader: MixtureLoader, index: DocumentIndex, seq_len: int, out_dir: Path,
             action: str) -> dict:
    """Rank 0: the spike's record for metrics.jsonl and W&B, with the first documents of its batch; every window
    and document goes to <out_dir>/step-N.json."""
    windows = loader.recent.get(event["batch"], [])
    detail = [{"source": source, "start": start, "documents": index.documents(source, start, seq_len + 1)}
              for source, start in windows]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"step-{event['step']:08d}.json"
    path.write_text(json.dumps({**event, "action": action, "windows": detail}, indent=1))
    documents = list(dict.fromkeys(d for w in detail for d in w["documents"]))
    record = {"step": event["step"], "spike_action": action, "spike_batch": event["batch"],
              "spike_loss": event["loss"], "spike_loss_band": event["loss_band"],
              "spike_grad_norm": event["grad_norm"], "spike_grad_norm_band": event["grad_norm_band"],
              "spike_documents": documents[:8], "spike_detail": str(path)}
    log.warning("step %d: spike (loss %.4g, band %.4g; grad norm %.4g, band %.4g) from global batch %d: %s. %d "
                "windows, %d documents, e.g. %s; all in %s", event["step"], event["loss"], event["loss_band"],
                event["grad_norm"], event["grad_norm_band"], event["batch"], action, len(detail), len(documents),
                ", ".join(documents[:3]) or "(windows not recorded)", path)
    return record


def respond(events: list[dict], guard: SpikeGuard, ckpt, loader: MixtureLoader, sink, index: DocumentIndex,
            seq_len: int, out_dir: Path, is_main: bool) -> bool:
    """Every rank, at a check, with the same events (the flags are computed from global values): log them, then
    act as trainer.on_spike says. True when the run went back to a checkpoint (the loop goes on from its step)."""
    if not events:
        return False
    policy = guard.policy
    for event in events:
        if is_main:
            sink.write(describe(event, loader, index, seq_len, out_dir, policy.value))
    batches = sorted({e["batch"] for e in events})
    first = min(e["step"] for e in events)
    fix = (f"To go on without that data: rerun with trainer.skip_batches={batches} (the run resumes from its latest "
           f"checkpoint and passes over those batches), or trainer.on_spike=skip. The batch's windows and documents "
           f"are listed in {out_dir}")
    if policy == OnSpike.stop:
        raise SpikeStop(f"step {first}: loss or gradient-norm spike (trainer.on_spike=stop); its update was not "
                        f"applied and the run stops, its checkpoints untouched. {fix}")
    if policy != OnSpike.rollback:
        return False
    if guard.rollbacks >= guard.cfg.max_rollbacks:
        raise SpikeStop(f"step {first}: a spike after {guard.rollbacks} rollbacks (trainer.spike.max_rollbacks="
                        f"{guard.cfg.max_rollbacks}): the run stops, its checkpoints untouched; spikes this often "
                        f"point at the learning rate or the data rather than one bad batch. {fix}")
    target = ckpt.before(first)
    if target is None:
        raise SpikeStop(f"step {first}: a spike, and no complete checkpoint from before it to roll back to in "
                        f"{ckpt.root}. {fix}")
    skip, rollbacks = loader.skip | set(batches), guard.rollbacks + 1
    ckpt.wait()
    ckpt.load(target)  # model, optimizer, schedule, loader position, this guard's window, the step
    loader.skip, guard.rollbacks = skip, rollbacks
    log.warning("rolled back to %s (rollback %d of at most %d): global batches %s are passed over from now on",
                target.name, rollbacks, guard.cfg.max_rollbacks, batches)
    if is_main:
        sink.write({"step": checkpoint_step(target), "rolled_back_from": first, "skip_batches": sorted(skip)})
    return True
