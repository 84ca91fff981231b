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

from cpt.config.schema import Device
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
