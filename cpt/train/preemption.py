"""A warning before the job ends: save a checkpoint at once, stop, and hand the job back to be requeued.

Slurm sends SIGUSR2 ahead of a job's time limit (`--signal=USR2@<s>`: submitit's launcher always asks for it,
launchers/sbatch_torchrun.sh too) or when it preempts the job; `scancel --signal=USR2 <job>` does the same by hand.
Without this, the progress since the last periodic checkpoint was lost at every requeue.

The signal handler only raises a flag: it runs between two bytecodes of whatever the rank is doing, possibly inside
a collective. The ranks agree on the flag (any rank that got the signal counts) at the steps where the host already
waits for the device (log steps), so nothing is added per step: keep trainer.log_interval x step time well below the
signal's lead. Then every rank saves, the loop ends, and once the process group is gone rank 0 hands over to whoever
requeues: submitit's own handler (it records the requeue and calls `scontrol requeue`), else `scontrol requeue` of
the Slurm job, else nothing (a local run: the same command again resumes)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SIGNAL = signal.SIGUSR2


class Preemption:
    """Install in the main thread of a rank before training; `restore()` when the loop is over."""

    def __init__(self) -> None:
        self.received = False  # this rank got the signal
        self.stopped = False  # the ranks agreed and stopped: hand over
        self.previous: Any = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(SIGNAL, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.received = True

    def agreed(self, device: torch.device) -> bool:
        """Collective: True on every rank when any rank got the signal."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def restore(self) -> None:
        """The handler that was there before (submitit's, on a submitit task) takes the signal again."""
        if self.installed:
            signal.signal(SIGNAL, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False

    def hand_over(self, is_main: bool) -> None:
        """After the stop (process group gone): rank 0 has the job requeued. Under submitit its handler requeues and
        ends the process (SystemExit), as it would have on the signal itself."""
        self.restore()
        if not is_main:
            return
        if callable(self.previous) and getattr(self.previous, "__module__", "").startswith("submitit"):
            log.info("handing the job back to submitit to be requeued")
            self.previous(SIGNAL, None)
            return
        job = os.environ.get("SLURM_JOB_ID")
        if job is None:
            log.info("not a Slurm job: run the same command again to resume from the checkpoint just saved")
            return
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode == 0:
            log.info("Slurm job %s requeued: it resumes from the checkpoint just saved", job)
        else:
            log.warning("scontrol requeue %s failed (%s): submit the same job again to resume from the checkpoint "
                        "just saved (sbatch --requeue lets Slurm requeue it)", job, done.stderr.strip())
