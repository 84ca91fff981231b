"""Weights & Biases for rank 0: one W&B run per cpt run (never per rank), its id derived from the run directory so
that a resumed or requeued job continues it; offline unless an API key is configured."""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional

from cpt.config.schema import LoggerConfig, WandbMode

log = logging.getLogger(__name__)

TRAIN_JOB_TYPE = "train"  # a training run's W&B job type (a sweep's report run is "report": cpt/eval/dashboard.py)


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def run_id(run_dir: Path) -> str:
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def resolve_mode(mode: WandbMode) -> str:
    """online or offline: auto is online exactly when an API key is configured."""
    if mode != WandbMode.auto:
        return mode.value
    return "online" if has_api_key() else "offline"


def start(cfg: LoggerConfig, run_dir: Path, config: dict) -> Optional[Any]:
    """A wandb run (job type "train": the sweep's dashboard selects its jobs by it), or None when W&B is off."""
    if not cfg.wandb:
        return None
    import wandb

    mode = resolve_mode(cfg.mode)
    if mode == "offline" and cfg.mode == WandbMode.auto:
        log.info("W&B: no API key configured, logging offline to %s/wandb (upload later: wandb sync "
                 "%s/wandb/offline-run-*)", run_dir, run_dir)
    run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, name=cfg.name, tags=cfg.tags or None,
                     job_type=TRAIN_JOB_TYPE, id=run_id(run_dir), resume="allow", dir=str(run_dir), config=config,
                     mode=mode)
    log.info("W&B run %s (%s, group %s)", run.id, mode, cfg.group)
    return run
