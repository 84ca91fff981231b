"""The only place that knows FSDP2, device meshes, mixed precision, activation checkpointing and compile.
`parallelize()` takes a plain transformers module and returns it sharded, in place. Where nothing is sharded the
cheaper tool runs: one rank keeps the module plain (FSDP2 on a 1-rank mesh only copies through its buffers, ~10%
slower) and no_shard replicates it with DDP (composable `replicate`: bucketed all-reduce overlapped with backward,
instead of FSDP's one collective per block). Unsharded modules compute bf16 under autocast with fp32 weights."""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext

import torch
from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from cpt.config import FSDPConfig, Precision, Strategy, TrainerConfig
from cpt.distributed import DistEnv

log = logging.getLogger(__name__)


def compute_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    if precision == Precision.auto:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision == Precision.bf16 and device.type == "cpu":
        warnings.warn("trainer.precision=bf16 on CPU: most CPUs have no bf16 units and run ~30x slower than fp32")
    return torch.bfloat16 if precision == Precision.bf16 else torch.float32


def build_mesh(cfg: FSDPConfig, env: DistEnv) -> DeviceMesh:
    """1-D mesh for full_shard / shard_grad_op; 2-D (replicate, shard) for hybrid_shard and no_shard."""
    if cfg.strategy == Strategy.hybrid_shard:
        shard = cfg.shard_size or env.local_world_size
    elif cfg.strategy == Strategy.no_shard:
        shard = 1
    else:
        return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("shard",))
    return init_device_mesh(env.device.type, (env.world_size // shard, shard), mesh_dim_names=("replicate", "shard"))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, found by the class names transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (its _no_split_modules is {sorted(names)})")
    return layers


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError(f"module {type(old).__name__} not found in the model")


def uses_fsdp(fsdp: FSDPConfig, env: DistEnv) -> bool:
    """FSDP2 wraps the model to shard it over several ranks, or to offload it to host memory."""
    return fsdp.cpu_offload or (env.world_size > 1 and fsdp.strategy != Strategy.no_shard)


def autocast(model: nn.Module, precision: Precision, device: torch.device):
    """The context every forward runs in: FSDP casts its parameters itself; a plain module computing in bf16 runs
    under torch.autocast (fp32 weights and optimizer, bf16 matmuls)."""
    dtype = compute_dtype(precision, device)
    if isinstance(model, FSDPModule) or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def parallelize(model: nn.Module, fsdp: FSDPConfig, trainer: TrainerConfig, env: DistEnv) -> nn.Module:
    """Activation checkpointing and compile per block, then fully_shard each block and the root."""
    dtype = compute_dtype(trainer.precision, env.device)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if fsdp.cpu_offload else OffloadPolicy()
    wrap = uses_fsdp(fsdp, env)
    mesh = build_mesh(fsdp, env) if wrap else None
    reshard = fsdp.strategy != Strategy.shard_grad_op

    on_meta = next(model.parameters()).is_meta  # weights arrive later: load_full_state()
    if on_meta:
        pass
    elif fsdp.cpu_offload:  # parameters stay in host memory; buffers (rotary frequencies) go where compute runs
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.to(env.device)
    else:
        model.to(env.device)
    for layer in decoder_layers(model):
        block = layer
        if trainer.activation_checkpointing:
            block = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        if trainer.compile:
            block.compile()
        if block is not layer:
            _replace(model, layer, block)
        if wrap:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)
    if wrap:  # the root (embeddings, final norm, lm_head) is needed again right away by backward: keep it gathered
        fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp, offload_policy=offload)
    if on_meta:
        model.to_empty(device="cpu" if fsdp.cpu_offload else env.device)
        if not wrap:  # to_empty gives every module its own tensor: tie lm_head to the embedding again
            model.tie_weights()
    if wrap:
        how = f"FSDP2 {fsdp.strategy.value} on mesh {tuple(mesh.shape)}"
    elif env.world_size > 1:  # rank 0's weights arrive by load_full_state() before the first forward
        replicate(model, device_id=env.device, broadcast_buffers=False, gradient_as_bucket_view=True)
        how = f"no_shard: DDP over {env.world_size} ranks"
    else:
        how = "1 rank: no FSDP wrap (nothing to shard)"
    log.info("%s, compute %s, activation checkpointing %s, compile %s, cpu offload %s", how,
             str(dtype).removeprefix("torch."), trainer.activation_checkpointing, trainer.compile, fsdp.cpu_offload)
    return model


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor] | None, env: DistEnv) -> None:
    """Fill a sharded model from rank 0's full state dict: rank 0 sends, every rank keeps its own shard. Buffers
    that are not in a state dict (rotary frequencies) are sent as well, so meta-built ranks get rank 0's values."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state if env.is_main else {}, options=options)
    for _, buf in sorted(model.named_buffers()):
        dist.broadcast(buf, src=0)
