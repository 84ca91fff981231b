"""`python -m cpt.run [group=option ...] [key=value ...]`: THE entrypoint.

Hydra composes the config once, cpt validates it and writes it resolved into the run directory, then:
- launched as a rank (torchrun; or a submitit task of Hydra's submitit launcher, locally or on SLURM, where each
  task is one rank and submitit's environment gives rank, world and rendezvous) -> train as that rank;
- trainer.nproc_per_node=N > 1 -> start N local ranks from this process with torch elastic's launcher API;
- otherwise -> train in this process as the only rank.
Every way gives one run directory, one train.log and one metrics.jsonl, written by global rank 0 only.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.distributed.elastic.multiprocessing.errors import record

from cpt import distributed
from cpt.cli import user_errors
from cpt.config import DataConfig, RunConfig, to_run_config
from cpt.logs import setup_logging
from cpt.validate import validate

log = logging.getLogger("cpt.run")


@record
def _rank_main(cfg: RunConfig, run_dir: str) -> float:
    """What each locally started rank runs (a top-level function: spawned processes import it)."""
    from cpt.train import train

    return train(cfg, Path(run_dir))


def launch_local(cfg: RunConfig, run_dir: Path, nproc: int) -> float:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"cpt-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{distributed.free_port()}",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    log.info("starting %d local ranks", nproc)
    results = elastic_launch(launch, _rank_main)(cfg, str(run_dir))
    return results[0]


def write_resolved(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def adopt_submitit_rank() -> None:
    """In a submitit task (SLURM or local), export RANK/WORLD_SIZE/MASTER_* from submitit's job environment. A
    requeued job gets the same job id, hence the same rendezvous port."""
    if "SUBMITIT_EXECUTOR" in os.environ and not distributed.launched_as_rank():
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        dist_env = TorchDistributedEnvironment()
        if os.environ["SUBMITIT_EXECUTOR"] == "local" and "MASTER_PORT" not in os.environ:
            job = JobEnvironment()
            port_file = Path(job.paths.folder) / f"{job.job_id}_master_port"
            dist_env.master_port = distributed.local_job_port(port_file, job.global_rank)
        dist_env.export(set_cuda_visible_devices=False)


def wandb_naming(cfg: DictConfig) -> None:
    """W&B group = the sweep (its directory), name = the job's overrides, unless the logger config sets them."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    with open_dict(cfg):
        if cfg.logger.group is None and hc.mode == RunMode.MULTIRUN:
            cfg.logger.group = str(Path(hc.sweep.dir))
        if cfg.logger.name is None:
            cfg.logger.name = hc.job.override_dirname or hc.job.name


def check_prepared(cfg: DataConfig) -> None:
    """Missing or unusable prepared data is the user's to fix: say so before building anything."""
    from cpt.data.manifest import load_manifest_file

    load_manifest_file(cfg)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> Optional[float]:
    adopt_submitit_rank()
    wandb_naming(cfg)
    run_cfg = to_run_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if distributed.launched_as_rank():
        rank, _, world, local_world = distributed.env_world()
        validate(run_cfg, world, local_world)
        check_prepared(run_cfg.data)
        if rank == 0:
            write_resolved(cfg, run_dir)
        from cpt.train import train

        return train(run_cfg, run_dir)

    nproc = run_cfg.trainer.nproc_per_node
    validate(run_cfg, nproc, nproc)
    check_prepared(run_cfg.data)
    setup_logging(run_dir, rank=0)
    write_resolved(cfg, run_dir)
    log.info("run directory %s", run_dir)
    if nproc == 1:
        from cpt.train import train

        return train(run_cfg, run_dir)
    return launch_local(run_cfg, run_dir, nproc)


def share_run_stamp() -> None:
    """Under torchrun every rank runs Hydra: make them all resolve the run directory from rank 0's clock, and
    keep non-zero ranks from writing Hydra's files there."""
    import torch.distributed as dist

    from cpt.config import Device

    distributed.init_process_group(distributed.resolve_device(Device.auto))
    stamp = [datetime.now().isoformat()]
    dist.broadcast_object_list(stamp, src=0)
    os.environ["CPT_RUN_STAMP"] = stamp[0]
    if dist.get_rank() != 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/hydra_logging=disabled"]


def entry() -> None:
    if distributed.launched_as_rank() and "CPT_RUN_STAMP" not in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        share_run_stamp()
    main()


if __name__ == "__main__":
    entry()
