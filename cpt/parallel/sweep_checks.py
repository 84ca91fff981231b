"""Checks run once by the process that submits a `-m` sweep, before any job is queued (`SweepChecks`, a Hydra
callback in conf/config.yaml). Every command's start instantiates the callbacks, so this module stays light: no
torch (cpt.parallel.launch starts the ranks)."""

from __future__ import annotations

import logging
import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cpt.common.errors import UserError, fail
from cpt.config.schema import ConfigError, to_run_config
from cpt.config.validate import validate
from cpt.data.manifest import load_manifest_file

log = logging.getLogger("cpt.run")  # as before the move from cpt.parallel.launch


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
