"""Prepare: raw documents -> deduplicated, split, packed token shards (`python -m cpt.prepare` calls `prepare`).

Reads the same composed config as training (the `data` group names the sources, the `model` group the
tokenizer) and writes `<data.root>/<data.name>/` (see cpt.data.manifest), atomically: a crash leaves the
previous version intact. Stages, streaming file by file:
  convert (one reader per format) -> chunk -> clean -> length filter -> signatures   (cpt.data.file_stage: data.num_proc
  workers, or a Slurm job array with data.executor=slurm: cpt.data.slurm_prepare)
  -> exact + near dedup (whole corpus, in file order) -> train/val split by text hash -> docs/<source>.<split>.jsonl
  -> tokenize (cpt.data.pack: data.num_proc workers, while conversion goes on) -> shards   (cpt.data.publish)
"""

from __future__ import annotations

import logging
from pathlib import Path

from cpt.config.schema import Executor, RunConfig
from cpt.data.budget import Budgets
from cpt.data.file_stage import run_in_order
from cpt.data.publish import make_plan, publish, work_dir
from cpt.data.slurm_prepare import prepare_on_slurm

log = logging.getLogger("cpt.prepare")


def prepare(cfg: RunConfig) -> Path:
    """Prepare cfg.data (nothing to do when up to date). data.executor=slurm: this process submits the Slurm jobs
    and waits for them (the last one publishes the data)."""
    plan = make_plan(cfg)
    if plan.up_to_date:
        log.info("prepared data %s is up to date (fingerprint %s): nothing to do", plan.out, plan.fingerprint)
        return plan.out
    if cfg.data.executor == Executor.slurm:
        return prepare_on_slurm(cfg, plan.tasks, work_dir(cfg.data, plan.fingerprint))
    budgets = Budgets(cfg.data.sources, plan.tokenizer)  # a full source's files are not read
    return publish(plan, run_in_order((t for t in plan.tasks if budgets.wants(t.source)), cfg.data.num_proc),
                   budgets)
