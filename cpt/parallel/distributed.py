"""Process group up and down. Rank and world come from the environment (torchrun, torch elastic, SLURM via
submitit), never from argv; the backend follows the device: gloo on CPU, nccl (plus gloo for CPU tensors) on GPU."""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from cpt.common import faults
from cpt.config.schema import Device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_as_rank() -> bool:
    """True when a launcher (torchrun, torch elastic, submitit) made this process one rank of a job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_world() -> tuple[int, int, int, int]:
    """(rank, local_rank, world_size, local_world_size) from the environment; a lone process is rank 0 of 1."""
    if not launched_as_rank():
        return 0, 0, 1, 1
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return rank, local_rank, world, local_world


def resolve_device(device: Device) -> str:
    if device == Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == Device.cuda and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but torch sees no GPU: use trainer.device=cpu or auto")
    return device.value


def backend_for(device_type: str) -> str:
    """gloo on CPU; on GPU nccl for CUDA tensors plus gloo for CPU ones, always: the CPU-offloaded state of
    fsdp=offload and the object collectives of DCP's save/load planning carry CPU tensors, and a second
    communicator costs nothing per step."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def cuda_index(local_rank: int, device_count: int) -> int:
    """The GPU of a rank: its local rank, modulo the GPUs it sees (a Slurm task bound to one GPU sees only device 0,
    whatever its local rank)."""
    if device_count < 1:
        raise RuntimeError("trainer.device=cuda but this process sees no GPU (CUDA_VISIBLE_DEVICES?)")
    return local_rank % device_count


def configure_cuda() -> None:
    """fp32 matmuls and convolutions on tensor cores (TF32): ~7x faster than full fp32, and what the fp32 entries of
    the peak table (cpt.train.metrics) assume."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def init_process_group(device_type: str) -> None:
    """Join the job's default process group (env:// rendezvous) unless already joined."""
    if dist.is_initialized():
        return
    rank, local_rank, world, _ = env_world()
    device_id = None
    if device_type == "cuda":
        device_id = torch.device("cuda", cuda_index(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device_id)
    if not launched_as_rank():  # a lone process: a private rendezvous, whatever MASTER_* the cluster exported
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group(backend=backend_for(device_type), rank=rank, world_size=world,
                            timeout=timedelta(seconds=faults.pg_timeout_s(30 * 60)),
                            device_id=device_id)  # device_id: NCCL connects eagerly


def setup(device: Device, num_threads: int | None) -> DistEnv:
    device_type = resolve_device(device)
    rank, local_rank, world, local_world = env_world()
    if device_type == "cpu":
        torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // local_world))
    else:  # CPU work beside the GPU (offloaded optimizer steps, data) gets this rank's share of the cores too
        configure_cuda()
        torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // local_world))
    init_process_group(device_type)
    dev = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    return DistEnv(rank, local_rank, world, local_world, dev)


def teardown() -> None:
    """All ranks meet before the group goes, so no rank aborts while another still talks to it. Garbage that still
    holds a group (a model in a reference cycle: its mesh, DDP's reducer) goes first: a group whose last reference
    dies during interpreter shutdown can abort the process after the work is done."""
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_job_port(port_file: Path, rank: int, wait_s: float = 120.0) -> int:
    """The rendezvous port of a job whose ranks share one machine (submitit's local executor). Submitit derives it
    from the job id without looking whether something already listens there, and a busy port leaves the other ranks
    waiting out the whole rendezvous timeout. Rank 0 takes a free port once and publishes it in the job folder (kept
    for a requeued attempt, as submitit keeps its port); the other ranks read it."""
    if rank == 0 and not port_file.exists():
        tmp = port_file.with_name(f"{port_file.name}.tmp")
        tmp.write_text(str(free_port()))
        tmp.replace(port_file)  # atomic: a reader sees no file or the whole port
    deadline = time.monotonic() + wait_s
    while not port_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0 of this job published no rendezvous port in {port_file} within "
                               f"{wait_s:.0f} s: did rank 0 start? (see its log in {port_file.parent})")
        time.sleep(0.1)
    return int(port_file.read_text())
