"""`python -m cpt.run [group=option ...] [key=value ...]`: THE entrypoint.

Hydra composes the config once, cpt validates it and writes it resolved into the run directory, then:
- launched as a rank (torchrun; or a submitit task of Hydra's submitit launcher, locally or on SLURM, where each
  task is one rank and submitit's environment gives rank, world and rendezvous) -> train as that rank;
- trainer.nproc_per_node=N > 1 -> start N local ranks from this process with torch elastic's launcher API;
- otherwise -> train in this process as the only rank.
Every way gives one run directory, one train.log and one metrics.jsonl, written by global rank 0 only.
(How ranks start: cpt.parallel.launch; what a rank does: cpt.train.loop.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.distributed.elastic.multiprocessing.errors import record

from cpt.common.errors import user_errors
from cpt.common.logs import setup_logging
from cpt.config.schema import RunConfig, to_run_config
from cpt.config.validate import validate
from cpt.data.manifest import load_manifest_file
from cpt.eval.base_validation import SWEEP_DIR_ENV
from cpt.parallel import distributed
from cpt.parallel.launch import adopt_submitit_rank, failing_rank_ends_the_job, launch_local, share_run_stamp

log = logging.getLogger("cpt.run")


def train(cfg: RunConfig, run_dir: Path) -> float:
    # lazy: the model and training stack (transformers, FSDP) load in the ranks, not in a parent that only launches
    from cpt.train.loop import train as train_rank

    return train_rank(cfg, run_dir)


@record
def _rank_main(cfg: RunConfig, run_dir: str) -> float:
    """What each locally started rank runs (a top-level function: spawned processes import it)."""
    return train(cfg, Path(run_dir))


def write_resolved(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def wandb_naming(cfg: DictConfig) -> None:
    """W&B group = the sweep (its directory), name = the job's overrides, unless the logger config sets them."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    with open_dict(cfg):
        if cfg.logger.group is None and hc.mode == RunMode.MULTIRUN:
            cfg.logger.group = str(Path(hc.sweep.dir))
        if cfg.logger.name is None:
            cfg.logger.name = hc.job.override_dirname or hc.job.name


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> Optional[float]:
    adopt_submitit_rank()
    wandb_naming(cfg)
    if HydraConfig.get().mode.name == "MULTIRUN":  # the jobs of a sweep share its base model's step-0 validation
        os.environ[SWEEP_DIR_ENV] = str(Path(HydraConfig.get().sweep.dir).resolve())
    run_cfg = to_run_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if distributed.launched_as_rank():
        rank, _, world, local_world = distributed.env_world()
        validate(run_cfg, world, local_world)
        load_manifest_file(run_cfg.data)  # missing or unusable prepared data: the user's to fix, said before building
        if rank == 0:
            write_resolved(cfg, run_dir)
        with failing_rank_ends_the_job():
            return train(run_cfg, run_dir)

    nproc = run_cfg.trainer.nproc_per_node
    validate(run_cfg, nproc, nproc)
    load_manifest_file(run_cfg.data)
    setup_logging(run_dir, rank=0)
    write_resolved(cfg, run_dir)
    log.info("run directory %s", run_dir)
    if nproc == 1:
        return train(run_cfg, run_dir)
    return launch_local(_rank_main, nproc, run_cfg, str(run_dir))


def entry() -> None:
    if distributed.launched_as_rank() and "CPT_RUN_STAMP" not in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        share_run_stamp()
    main()


if __name__ == "__main__":
    entry()
