"""How the ranks of a run come to exist: N local ranks started from one process (torch elastic's launcher API),
ranks that submitit started (Hydra's submitit launcher, locally or on SLURM: rank, world and rendezvous from its job
environment), and ranks torchrun started (every rank runs Hydra: they agree on one run directory through rank 0's
clock). The function each rank runs is the caller's (cpt.run's training)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cpt.common.errors import UserError, fail
from cpt.config.schema import ConfigError, Device, to_run_config
from cpt.config.validate import validate
from cpt.data.manifest import load_manifest_file
from cpt.parallel import distributed

log = logging.getLogger("cpt.run")


def launch_local(rank_main: Callable, nproc: int, *args):
    """Run rank_main(*args) in `nproc` spawned local ranks (a top-level, picklable function); rank 0's result."""
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
    # what torchrun does: spawned ranks would each start one OpenMP thread per core, nproc times oversubscribed
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log.info("starting %d local ranks", nproc)
    results = elastic_launch(launch, rank_main)(*args)
    return results[0]


def adopt_submitit_rank() -> None:
    """In a submitit task (SLURM or local), export RANK/WORLD_SIZE/LOCAL_*/MASTER_* from submitit's job environment.
    A requeued job gets the same job id, hence the same rendezvous port. Clusters whose job environment already
    exports MASTER_ADDR / MASTER_PORT (the address of the interface to use, a port the site reserves) keep them;
    a LOCAL_RANK / LOCAL_WORLD_SIZE the cluster exported for the whole job gives way to this task's (submitit's
    export refused to run at all when any of them was set)."""
    if "SUBMITIT_EXECUTOR" in os.environ and not distributed.launched_as_rank():
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        dist_env = TorchDistributedEnvironment()  # reads MASTER_PORT when set
        dist_env.master_addr = os.environ.get("MASTER_ADDR", dist_env.master_addr)
        if os.environ["SUBMITIT_EXECUTOR"] == "local" and "MASTER_PORT" not in os.environ:
            job = JobEnvironment()
            port_file = Path(job.paths.folder) / f"{job.job_id}_master_port"
            dist_env.master_port = distributed.local_job_port(port_file, job.global_rank)
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)


@contextmanager
def failing_rank_ends_the_job():
    """Around a rank's work in a job of several submitit tasks (SLURM or local): an error ends this process with exit
    status 1 after printing its traceback. Hydra's job wrapper would catch it and the task would exit 0, so srun never
    learnt that a rank failed, and with SLURM_KILL_BAD_EXIT=1 (SweepChecks) a failed rank is what makes srun end the
    other ranks at once, instead of leaving them in a collective until the process group times out."""
    try:
        yield
    except Exception:
        if "SUBMITIT_EXECUTOR" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise
        traceback.print_exc()
        log.error("rank %s failed: ending this task with status 1 so that the job's other ranks end too",
                  os.environ.get("RANK"))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def share_run_stamp() -> None:
    """Under torchrun every rank runs Hydra: make them all resolve the run directory from rank 0's clock, and
    keep non-zero ranks from writing Hydra's files there."""
    import torch.distributed as dist

    distributed.init_process_group(distributed.resolve_device(Device.auto))
    stamp = [datetime.now().isoformat()]
    dist.broadcast_object_list(stamp, src=0)
    os.environ["CPT_RUN_STAMP"] = stamp[0]
    if dist.get_rank() != 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/hydra_logging=disabled"]


class SweepChecks(Callback):
    """Hydra callback (conf/config.yaml), run once by the process that submits a `-m` sweep, before any job is queued:
    - Slurm launchers start ranks with srun, whose default leaves the other ranks of a step waiting in a collective
      (up to the process group's 30-minute timeout) when one rank exits with an error: the jobs are submitted with
      SLURM_KILL_BAD_EXIT=1 in the environment sbatch passes on, so srun ends the whole step (srun -K). An explicit
      SLURM_KILL_BAD_EXIT=0 keeps Slurm's default.
    - A launcher that requeues timed-out jobs (max_num_timeout > 0) restarts them from their latest checkpoint: with
      checkpoint.interval=0 there is none before the end, and a requeued job would start again from step 0.
    - Every job's config is composed and validated (and its prepared data looked for) before the first job starts:
      a bad value in job 7 of 9 fails the sweep in seconds, naming each bad job, not after six jobs have trained."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        if "Slurm" in str(launcher.get("_target_", "")):
            self.slurm_checks(config)
        check_every_job(config)

    @staticmethod
    def slurm_checks(config: DictConfig) -> None:
        launcher = config.hydra.launcher
        os.environ.setdefault("SLURM_KILL_BAD_EXIT", "1")
        requeues = launcher.get("max_num_timeout") or 0
        if requeues > 0 and config.checkpoint.interval == 0:  # Hydra turns a callback's exception into a warning
            fail(ConfigError("checkpoint.interval", f"is 0 but hydra.launcher.max_num_timeout={requeues} requeues "
                             "jobs that reach their time limit, and a requeued job resumes from its latest "
                             "checkpoint: with none it would start again from step 0. Set checkpoint.interval=<steps> "
                             "(a few minutes of training), or hydra.launcher.max_num_timeout=0 to not requeue"))


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job of the sweep, as Hydra's basic sweeper expands them (sweep params first)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_every_job(config: DictConfig) -> None:
    from hydra import compose

    launcher = config.hydra.launcher
    submitit = "submitit" in str(launcher.get("_target_", ""))
    jobs, errors = sweep_jobs(config), []
    for number, overrides in enumerate(jobs):
        try:
            run_cfg = to_run_config(compose(config_name=config.hydra.job.config_name, overrides=overrides))
            local = launcher.tasks_per_node if submitit else run_cfg.trainer.nproc_per_node
            nodes = (launcher.get("nodes") or 1) if submitit else 1
            validate(run_cfg, local * nodes, local)
            load_manifest_file(run_cfg.data)
        except UserError as e:
            errors.append(f"job {number} ({' '.join(overrides)}): {' '.join(str(e).split())}")
    if errors:
        fail(UserError(f"{len(errors)} of {len(jobs)} jobs of this sweep cannot run, so none was started: "
                       + "; ".join(errors)))
    log.info("checked the configs of all %d jobs of the sweep", len(jobs))
