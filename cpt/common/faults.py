"""Fault injection for the resilience tests, driven by environment variables (unset in normal runs):

  CPT_FAULT_KILL=<rank>:<step>      that rank SIGKILLs itself after finishing optimizer step <step>
  CPT_FAULT_RAISE=<rank>:<step>     that rank raises an error after optimizer step <step> (the others go on into
                                    the next step's collectives)
  CPT_FAULT_SIGNAL=<rank>:<step>   that rank gets SIGUSR2 (Slurm's warning before the time limit) after step <step>
  CPT_FAULT_STALL=<rank>:<step>:<s> that rank sleeps <s> seconds after optimizer step <step> (busy, in no collective)
  CPT_FAULT_CRASH_IN_SAVE=<step>    rank 0 SIGKILLs itself while the checkpoint of <step> is written (shards on
                                    disk, not yet published)
  CPT_FAULT_NAN=<step>              the loss of optimizer step <step> becomes NaN on every rank
  CPT_FAULT_SPIKE=<batch>[:<x>]     the loss of the global batch the loader draws <batch>-th is multiplied by <x>
                                    (default 50) on every rank: a finite spike of the loss and gradient norm that
                                    comes with its data (a rolled-back run passing over that batch does not meet it)
  CPT_FAULT_SLOW=<seconds>          every optimizer step takes at least this long (a long job in a short test)
  CPT_FAULT_SLOW_EXPORT=<seconds>   writing the end-of-run export takes at least this long (a slow disk or upload)
  CPT_FAULT_PG_TIMEOUT=<seconds>    the process group's timeout (default 30 minutes): a rank left waiting in a
                                    collective fails after this long
  CPT_FAULT_CRASH_ON_FILE=<name>    the prepare worker converting a file of that name SIGKILLs itself
                                    (data.num_proc >= 2: with 1 process it is prepare itself that dies)
  CPT_FAULT_FAIL_SHARD=<k>          array task k of a Slurm prepare (data.executor=slurm) fails at its start
The tests rerun the command without the variable to resume.
"""

from __future__ import annotations

import os
import signal
import time


def _get(name: str) -> list[int] | None:
    value = os.environ.get(name)
    return [int(v) for v in value.split(":")] if value else None


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill(step: int, rank: int) -> None:
    spec = _get("CPT_FAULT_KILL")
    if spec and spec[0] == rank and spec[1] == step:
        _die()


def maybe_raise(step: int, rank: int) -> None:
    spec = _get("CPT_FAULT_RAISE")
    if spec and spec[0] == rank and spec[1] == step:
        raise RuntimeError(f"CPT_FAULT_RAISE: rank {rank} fails after step {step} on purpose")


def maybe_signal(step: int, rank: int) -> None:
    spec = _get("CPT_FAULT_SIGNAL")
    if spec and spec[0] == rank and spec[1] == step:
        os.kill(os.getpid(), signal.SIGUSR2)


def maybe_stall(step: int, rank: int) -> None:
    spec = _get("CPT_FAULT_STALL")
    if spec and spec[0] == rank and spec[1] == step:
        time.sleep(spec[2])


def maybe_crash_in_save(step: int, rank: int) -> None:
    spec = _get("CPT_FAULT_CRASH_IN_SAVE")
    if spec and rank == 0 and spec[0] == step:
        _die()


def spike_scale(batch: int) -> float:
    spec = _get("CPT_FAULT_SPIKE")
    if spec and spec[0] == batch:
        return float(spec[1]) if len(spec) > 1 else 50.0
    return 1.0


def nan_at(step: int) -> bool:
    spec = _get("CPT_FAULT_NAN")
    return bool(spec) and spec[0] == step


def maybe_crash_on_file(path) -> None:
    name = os.environ.get("CPT_FAULT_CRASH_ON_FILE")
    if name and os.path.basename(str(path)) == name:
        _die()


def maybe_slow() -> None:
    seconds = os.environ.get("CPT_FAULT_SLOW")
    if seconds:
        time.sleep(float(seconds))


def maybe_slow_export() -> None:
    seconds = os.environ.get("CPT_FAULT_SLOW_EXPORT")
    if seconds:
        time.sleep(float(seconds))


def pg_timeout_s(default: float) -> float:
    return float(os.environ.get("CPT_FAULT_PG_TIMEOUT", default))


def maybe_fail_shard(shard: int) -> None:
    spec = _get("CPT_FAULT_FAIL_SHARD")
    if spec and spec[0] == shard:
        raise RuntimeError(f"CPT_FAULT_FAIL_SHARD: shard {shard} fails on purpose")
