"""Sharded, atomic checkpoints and exact resume.

Layout under `<run dir>/<checkpoint.dir>/`:
  step-00000100/        one complete checkpoint: DCP shards of {"model", "optim"} (every rank writes its own,
                        nothing is gathered; LoRA: the trainable parameters only), trainer.pt (the state_dict
                        of every object registered with the Checkpointer, by name: train state, LR schedule, loader
                        position), rng-<rank>.pt (each rank's RNG states), config.yaml, and meta.json, written last
  latest                the name of the newest complete checkpoint, replaced atomically after it is complete
  .tmp-step-00000100/   a checkpoint being written; renamed to step-... only when complete, so a crash leaves
                        the previous checkpoints valid; leftovers are deleted at the next start

Resharding comes from DCP: a checkpoint written by N ranks loads on M. The loader position is a few integers, so
resuming at any step costs the same (no batches are replayed). Every file is read through cpt.train.safe_load, with
allow-lists (DCP's metadata types; tensors and plain types elsewhere): loading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from cpt.common import faults
from cpt.common.errors import UserError
from cpt.config.schema import CheckpointConfig
from cpt.parallel.distributed import DistEnv
from cpt.train.safe_load import load_dcp, safe_load

log = logging.getLogger(__name__)

LATEST = "latest"
META = "meta.json"
TRAINER_STATE = "trainer.pt"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_checkpoint(path: Path) -> bool:
    return (path / META).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Every complete checkpoint under `root`, oldest first (step-N names sort by step)."""
    return sorted(p for p in root.glob("step-*") if is_checkpoint(p))


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under `root` (by the `latest` marker, else by name), or None."""
    marker = root / LATEST
    if marker.is_file():
        candidate = root / marker.read_text().strip()
        if is_checkpoint(candidate):
            return candidate
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def resolve_resume(resume: str, ckpt_root: Path) -> Optional[Path]:
    """`resume`: auto (the latest in this run, if any) | none | a checkpoint or run directory."""
    if resume == "none":
        log.info("resume=none: starting fresh")
        return None
    if resume == "auto":
        found = latest_checkpoint(ckpt_root)
        if found is None:
            log.info("no checkpoint in %s: starting fresh", ckpt_root)
        return found
    path = Path(resume).expanduser()
    if is_checkpoint(path):
        return path
    for root in (path, path / "checkpoints"):
        found = latest_checkpoint(root) if root.is_dir() else None
        if found is not None:
            return found
    raise CheckpointNotFoundError(f"{path} is not a complete checkpoint (no {META}) and holds none: give a "
                                  "checkpoints/step-* directory or a run directory (resume= also takes auto or none)")


def read_plan(path: Path) -> Optional[dict]:
    """The run plan a checkpoint recorded (None: written before cpt recorded one)."""
    return json.loads((path / META).read_text()).get("plan")


def all_finite(model: nn.Module) -> bool:
    """True when every rank's parameters are finite: one reduction per rank, not one host sync per parameter."""
    bad = torch.zeros((), device=next(model.parameters()).device)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        bad += (~torch.isfinite(local.detach())).sum()
    flag = (bad > 0).float().cpu()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


def rng_state() -> dict:
    """This process's RNG states as tensors and plain types (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def clean_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (activation checkpointing, compile), as in state dicts."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A checkpoint path (resume=, cpt.export, cpt.evaluate) that holds no complete checkpoint."""


class Checkpointer:
    """Saves and restores a run's registered state: the model and optimizer (DCP, sharded) and named stateful objects
    (anything with state_dict / load_state_dict of tensors and plain types: scheduler, loader, train state). Saves
    every `interval` steps and at the end, keeps the last `keep_last`, optionally asynchronously."""

    def __init__(self, cfg: CheckpointConfig, run_dir: Path, env: DistEnv, model: nn.Module,
                 optimizer: torch.optim.Optimizer, states: dict[str, Stateful], trainable_only: bool = False,
                 plan: Optional[dict] = None):
        self.cfg, self.root, self.config_yaml = cfg, run_dir / cfg.dir, run_dir / "config.yaml"
        self.plan = plan  # what a resume must find unchanged (cpt.train.resume_plan), recorded in meta.json
        self.rank, self.world = env.rank, env.world_size
        self.model, self.optimizer, self.states = model, optimizer, states
        # LoRA: frozen base weights are not saved; they come back from where the run built them
        self.options = StateDictOptions(ignore_frozen_params=True, strict=False) if trainable_only else None
        self.pending: Optional[tuple[Any, Path, int, float]] = None  # (future, tmp dir, step, start) of an async save
        # an async save runs collectives from a background thread: they need their own group, or they interleave
        # with training's collectives on the default one
        self.group = dist.new_group(backend="gloo") if cfg.async_save else None
        # async saves stage into host buffers allocated once and reused by every save (pinned on GPU); close()
        # releases them
        self.stager = None
        if cfg.async_save:
            gpu = env.device.type == "cuda"
            self.stager = DefaultStager(StagingOptions(use_pinned_memory=gpu, use_shared_memory=False,
                                                       use_async_staging=False, use_non_blocking_copy=gpu))
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for partial in self.root.glob(".tmp-*"):
                log.warning("removing the partial checkpoint %s (a save was interrupted)", partial)
                shutil.rmtree(partial, ignore_errors=True)
        dist.barrier()

    def due(self, step: int, last: int) -> bool:
        return (self.cfg.interval > 0 and step % self.cfg.interval == 0) or (step == last and self.cfg.at_end)

    def save(self, step: int) -> None:
        """Collective. Refuses non-finite weights; the checkpoint appears only when complete."""
        self.wait()
        if not all_finite(self.model):
            raise RuntimeError(f"step {step}: the model holds NaN/inf weights; refusing to write a checkpoint "
                               f"(the last good one stays in {self.root})")
        start = time.perf_counter()
        tmp = self.root / f".tmp-{step_name(step)}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        sharded = self._state()
        torch.save(rng_state(), tmp / f"rng-{self.rank}.pt")
        if self.rank == 0:
            torch.save({name: obj.state_dict() for name, obj in self.states.items()}, tmp / TRAINER_STATE)
            if self.config_yaml.is_file():
                shutil.copy(self.config_yaml, tmp / "config.yaml")
        if self.cfg.async_save:
            future = dcp.async_save(sharded, checkpoint_id=str(tmp), process_group=self.group,
                                    async_stager=self.stager)
            self.pending = (future, tmp, step, start)
            log.info("checkpoint %s: staged in %.2f s, writing in the background", step_name(step),
                     time.perf_counter() - start)
        else:
            dcp.save(sharded, checkpoint_id=str(tmp))
            self._finish(tmp, step, start)

    def load(self, path: Path) -> None:
        """Restore everything registered from a complete checkpoint: model + optimizer resharded to this world size,
        each named state, and the RNG states when the world size matches."""
        start = time.perf_counter()
        sharded = self._state()
        load_dcp(sharded, path)
        set_state_dict(self.model, self.optimizer, model_state_dict=sharded["model"], optim_state_dict=sharded["optim"],
                       options=self.options)
        saved = safe_load(path / TRAINER_STATE)
        fresh = {n for n in set(self.states) - set(saved) if getattr(self.states[n], "may_start_fresh", False)}
        for name in sorted(fresh):
            log.warning("checkpoint %s holds no '%s' state (it was written before cpt kept one): it starts fresh",
                        path, name)
        missing = set(self.states) - set(saved) - fresh
        if missing:
            raise ValueError(f"checkpoint {path} holds no state for {sorted(missing)} (it has {sorted(saved)}): it was "
                             "written by another version of cpt; start fresh with resume=none")
        for name, obj in self.states.items():
            if name in saved:
                obj.load_state_dict(saved[name])
        meta = json.loads((path / META).read_text())
        rng = path / f"rng-{self.rank}.pt"
        if meta["world_size"] == self.world and rng.is_file():
            set_rng_state(safe_load(rng))
        else:
            log.warning("checkpoint %s was written by %d ranks, this run has %d: RNG states start fresh",
                        path.name, meta["world_size"], self.world)
        log.info("resumed from %s (step %d) in %.2f s", path, meta["step"], time.perf_counter() - start)

    def _state(self) -> dict:
        """{"model", "optim"} state dicts of this rank, as DCP saves and loads them."""
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=self.options)
        if self.options is not None:  # a tied lm_head is named apart from its (frozen) embedding: drop it too
            frozen = {clean_name(n) for n, p in self.model.named_parameters(remove_duplicate=False)
                      if not p.requires_grad}
            model_sd = {k: v for k, v in model_sd.items() if k not in frozen}
        return {"model": model_sd, "optim": optim_sd}

    def poll(self) -> None:
        """Every step: rank 0 publishes an asynchronous save as soon as its write is complete, so a crash after that
        resumes from it. No collective: rank 0's future completes only after every rank's shards are written (DCP
        gathers the ranks' write results before it writes .metadata), and the other files were written before."""
        if self.rank != 0 or self.pending is None or not self.pending[0].done():
            return
        future, tmp, step, start = self.pending
        self.pending = None
        future.result()  # a failed write raises here
        self._publish(tmp, step, start)

    def wait(self) -> None:
        """Complete an asynchronous save on every rank (rank 0 publishes it, unless poll did already). Collective
        whenever saves are asynchronous, pending or not, so that every rank makes the same calls."""
        if not self.cfg.async_save:
            return
        if self.pending is not None:
            future, tmp, step, start = self.pending
            self.pending = None
            future.result()
            if self.rank == 0:
                self._publish(tmp, step, start)
        dist.barrier()

    def before(self, step: int) -> Optional[Path]:
        """The newest complete checkpoint of this run from before `step`, or None."""
        earlier = [p for p in complete_checkpoints(self.root) if checkpoint_step(p) < step]
        return earlier[-1] if earlier else None

    def close(self) -> None:
        """Collective, at the end of training: the last save completes and is published; the staging buffers (a
        model's worth of pinned host memory per rank on GPU) and the save group are released."""
        self.wait()
        if self.stager is not None:
            self.stager.close()
            self.stager = None
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None

    def _finish(self, tmp: Path, step: int, start: float) -> None:
        dist.barrier()  # every rank's shard is on disk
        if self.rank == 0:
            self._publish(tmp, step, start)
        dist.barrier()

    def _publish(self, tmp: Path, step: int, start: float) -> None:
        """Rank 0: the complete checkpoint in `tmp` becomes step-N, then `latest` points at it; old ones go."""
        faults.maybe_crash_in_save(step, self.rank)
        final = self.root / step_name(step)
        (tmp / META).write_text(json.dumps({"step": step, "world_size": self.world,
                                            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "plan": self.plan}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        marker = self.root / f".{LATEST}.tmp"
        marker.write_text(final.name)
        os.replace(marker, self.root / LATEST)
        self._prune()
        log.info("checkpoint %s saved in %.2f s", final, time.perf_counter() - start)

    def _prune(self) -> None:
        complete = complete_checkpoints(self.root)
        for old in complete[: max(0, len(complete) - self.cfg.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
