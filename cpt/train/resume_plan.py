"""What a resume must not change silently: the run's plan, recorded in every checkpoint and compared on resume.

Exact resume restores the weights, the optimizer, the LR schedule's step and the loader's position (windows consumed
per source). Those mean what they meant only while the prepared data, the window length, the global batch, the data
order (seed, mixture), the number of steps (the schedule is planned over them) and the optimizer settings stay the
same. The plan records them; on resume every difference is listed in one message, and the run stops with the fix
(`resume=none` to start fresh, or `resume_allow=[<key>, ...]` to accept deliberate changes). Accepted changes are
logged with what they do, and the new config's optimizer settings and LR schedule apply from the resume step on
(`replan`): e.g. training longer re-plans the schedule over the new number of steps.

A different split of the same global batch over ranks, micro-batches and accumulation is not a change: the loader
gives every step the same windows (tested: 2 ranks -> 1 rank resumes the curve).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cpt.common.errors import UserError
from cpt.config.schema import RunConfig
from cpt.data.mixture import training_mixture
from cpt.train.optim import lr_factor

log = logging.getLogger(__name__)

# plan key -> what a change does to an exact resume
EFFECTS = {
    "data": "the prepared data changed (other files, prepare options or tokenizer): the loader's position counts "
            "windows of the old data",
    "trainer.seq_len": "the loader's position counts windows of the old length",
    "global_batch": "each step draws another number of windows (trainer.micro_batch_size x trainer.grad_accum x "
                    "ranks)",
    "trainer.seed": "the data order and the drawing of sources follow the seed",
    "data.mixture": "the sources are drawn with other shares from here on",
    "trainer.steps": "the LR schedule (and data.stages) are planned over the steps; accepted, the schedule is "
                     "re-planned over the new steps from the resume step",
    "optim.lr": "accepted, the new peak LR applies from the resume step",
    "optim.schedule": "accepted, the new schedule applies from the resume step",
    "optim.warmup_steps": "accepted, the new warmup applies from the resume step",
    "optim.min_lr_ratio": "accepted, the new floor applies from the resume step",
    "optim.decay_fraction": "accepted, the new decay phase applies from the resume step",
    "optim.betas": "accepted, AdamW's new betas apply from the resume step (its moments are kept)",
    "optim.eps": "accepted, AdamW's new eps applies from the resume step",
    "optim.weight_decay": "accepted, the new weight decay applies from the resume step",
    "optim.grad_clip": "accepted, the new clipping applies from the resume step",
}


def run_plan(cfg: RunConfig, world_size: int, data_fingerprint: str) -> dict:
    """The plan of this run, as recorded in each checkpoint's meta.json (plain JSON types)."""
    t, o = cfg.trainer, cfg.optim
    return {"data": data_fingerprint, "trainer.seq_len": t.seq_len,
            "global_batch": t.micro_batch_size * t.grad_accum * world_size, "trainer.seed": t.seed,
            "data.mixture": training_mixture(cfg.data, t.steps).describe(), "trainer.steps": t.steps,
            "optim.lr": o.lr, "optim.schedule": str(getattr(o.schedule, "value", o.schedule)),
            "optim.warmup_steps": o.warmup_steps, "optim.min_lr_ratio": o.min_lr_ratio,
            "optim.decay_fraction": o.decay_fraction, "optim.betas": list(o.betas), "optim.eps": o.eps,
            "optim.weight_decay": o.weight_decay, "optim.grad_clip": o.grad_clip}


class ResumeMismatchError(UserError, RuntimeError):
    """The run differs from the checkpoint it resumes in ways that break an exact resume."""


def check_resume(saved: dict | None, current: dict, allowed: list[str], path: Path) -> dict[str, tuple]:
    """The accepted changes {key: (old, new)}; raises ResumeMismatchError listing every change not in `allowed`.
    `saved` None: a checkpoint of an older cpt, which recorded no plan (warned, nothing checked)."""
    if saved is None:
        log.warning("checkpoint %s records no run plan (written by an older cpt): what changed since cannot be "
                    "checked", path)
        return {}
    changes = {k: (saved[k], v) for k, v in current.items() if k in saved and saved[k] != v}
    refused = [k for k in changes if k not in allowed]
    if refused:
        lines = "; ".join(f"{k}: {_short(changes[k][0])} -> {_short(changes[k][1])} ({EFFECTS[k]})" for k in changes)
        raise ResumeMismatchError(
            f"resume from {path}: this run differs from the checkpoint in {len(changes)} setting(s): {lines}. The "
            f"resume would not be exact. Start fresh with resume=none, or accept the changes deliberately with "
            f"resume_allow=[{','.join(changes)}]")
    for k, (old, new) in changes.items():
        log.warning("resume_allow: %s changed %s -> %s: %s", k, _short(old), _short(new), EFFECTS[k])
    return changes


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def replan(changes: dict[str, tuple], cfg: RunConfig, optimizer: torch.optim.Optimizer, scheduler, step: int) -> None:
    """After an accepted change, the new config's optimizer settings and LR schedule apply from `step` on (the
    restored optimizer and scheduler state would otherwise keep the old peak LR, betas, eps and weight decay, and
    use the old schedule's LR for one more step)."""
    if not any(k == "trainer.steps" or k.startswith("optim.") for k in changes):
        return
    o = cfg.optim
    old_lr = scheduler.get_last_lr()
    factor = lr_factor(step, o, cfg.trainer.steps)
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = o.lr
        group["lr"] = o.lr * factor
        group["betas"], group["eps"] = tuple(o.betas), o.eps
        if i == 0:  # the decaying group (cpt.train.optim.param_groups); the other never decays
            group["weight_decay"] = o.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    log.warning("the LR schedule is re-planned from step %d (%s over %d steps): lr %.4g -> %.4g at this step", step,
                getattr(o.schedule, "value", o.schedule), cfg.trainer.steps, old_lr[0], o.lr * factor)
