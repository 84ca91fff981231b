"""The only place that knows FSDP2, device meshes, mixed precision, activation checkpointing, compile and meta-device
init. `build_parallel_model()` builds a plain transformers module (cpt.model) on every rank and returns it sharded and
holding rank 0's weights. Where nothing is sharded the
cheaper tool runs: one rank keeps the module plain (FSDP2 on a 1-rank mesh only copies through its buffers, ~10%
slower) and no_shard replicates it with DDP (composable `replicate`: bucketed all-reduce overlapped with backward,
instead of FSDP's one collective per block). Unsharded modules compute bf16 under autocast with fp32 weights."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from cpt.config.schema import AccumReduce, ConfigError, FSDPConfig, Precision, RunConfig, Strategy, TrainerConfig
from cpt.model.build import attention_implementation, build_model
from cpt.model.params import decoder_layers
from cpt.model.tokenizer import Tokenizer
from cpt.parallel.distributed import DistEnv

log = logging.getLogger(__name__)

# architectures whose decoder blocks compile to one graph (fullgraph=True; checked with and without activation
# checkpointing); others compile with graph breaks allowed, and the breaks are logged after the first step
FULLGRAPH_MODEL_TYPES = {"qwen2", "llama"}


def compute_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    if precision == Precision.auto:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision == Precision.bf16 and device.type == "cpu":
        warnings.warn("trainer.precision=bf16 on CPU: most CPUs have no bf16 units and run ~30x slower than fp32",
                      stacklevel=2)
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


def log_graph_breaks() -> None:
    """After the first compiled step: graph breaks split a block into several graphs (slower); say how many, and why."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    if breaks:
        log.warning("torch.compile: %d graph breaks in the decoder blocks: %s", sum(breaks.values()),
                    "; ".join(f"{reason[:120]} (x{n})" for reason, n in list(breaks.items())[:5]))
    else:
        log.info("torch.compile: every decoder block is one graph")


def has_dropout(model: nn.Module) -> bool:
    config = model.config
    rates = [getattr(config, key, 0.0) or 0.0 for key in ("attention_dropout", "hidden_dropout", "dropout")]
    rates += [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    return any(rate > 0 for rate in rates)


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


def gradient_sync(model: nn.Module, fsdp: FSDPConfig, accum_reduce: AccumReduce) -> Callable[[bool], None]:
    """What a micro-step of gradient accumulation sets before its backward, called with True on the last one.
    hybrid_shard reduce-scatters within its shard group every micro-step (sharded gradients only) and all-reduces
    across replicas, the slow inter-node part, on the last; full_shard / shard_grad_op do the same with
    accum_reduce=every, or keep unsharded fp32 gradients and reduce once with accum_reduce=last; DDP reduces on the
    last micro-step only; a 1-rank module has nothing to reduce."""
    if not hasattr(model, "set_requires_gradient_sync"):
        return lambda last: None
    if isinstance(model, FSDPModule) and fsdp.strategy == Strategy.hybrid_shard:
        return model.set_requires_all_reduce
    if isinstance(model, FSDPModule) and accum_reduce == AccumReduce.every:
        return lambda last: None
    return model.set_requires_gradient_sync


def build_parallel_model(cfg: RunConfig, env: DistEnv, tokenizer: Optional[Tokenizer] = None) -> nn.Module:
    """The model of every rank, ready to train, in one sequence: rank 0 builds the real model (pretrained or random
    init), the others its structure on the meta device (no memory) -> activation checkpointing and compile per block
    -> shard (FSDP2) -> meta-built ranks allocate their own shards and re-tie the embeddings -> buffers (rotary
    frequencies) go where compute runs, on every rank -> rank 0's weights and buffers are broadcast (DDP: replicate).
    """
    fsdp, trainer = cfg.fsdp, cfg.trainer
    attn = attention_implementation(cfg.model.attn_implementation, env.device.type, trainer.doc_masking)
    if attn == "flex_attention" and env.device.type == "cpu":
        raise ConfigError("model.attn_implementation", "flex_attention cannot train on CPU (torch has no CPU backward "
                          "for it): use sdpa (or null) there; flex_attention is the GPU default")
    model = build_model(cfg.model, on_meta=not env.is_main, tokenizer=tokenizer, attn_implementation=attn)
    full_state = model.state_dict() if env.is_main and env.world_size > 1 else None
    dtype = compute_dtype(trainer.precision, env.device)
    wrap = uses_fsdp(fsdp, env)
    if env.is_main and not wrap:
        model.to(env.device)  # FSDP moves (and shards) each block itself: rank 0 never holds the whole model there
    blocks = wrap_blocks(model, trainer)
    if wrap:
        mesh = shard(model, blocks, fsdp, dtype, env)
    if not env.is_main:
        model.to_empty(device="cpu" if fsdp.cpu_offload else env.device)
        if not wrap:  # to_empty gives every module its own tensor: tie lm_head to the embedding again
            model.tie_weights()
    for module in model.modules():  # offload keeps parameters in host memory, never the buffers
        for name, buf in module.named_buffers(recurse=False):
            module._buffers[name] = buf.to(env.device)
    if wrap:
        how = f"FSDP2 {fsdp.strategy.value} on mesh {tuple(mesh.shape)}"
    elif env.world_size > 1:
        replicate(model, device_id=env.device, broadcast_buffers=False, gradient_as_bucket_view=True)
        how = f"no_shard: DDP over {env.world_size} ranks"
    else:
        how = "1 rank: no FSDP wrap (nothing to shard)"
    if env.world_size > 1:
        load_full_state(model, full_state, env, via=env.device if fsdp.cpu_offload else None)
    log.info("%s, compute %s, attention %s, activation checkpointing %s, compile %s, cpu offload %s", how,
             str(dtype).removeprefix("torch."), attn, trainer.activation_checkpointing, trainer.compile,
             fsdp.cpu_offload)
    return model


def wrap_blocks(model: nn.Module, trainer: TrainerConfig) -> list[nn.Module]:
    """Activation checkpointing and compile, per decoder block, in place; returns the blocks as they now are."""
    blocks = []
    # recomputation must replay the same dropout masks only where there is dropout: saving and restoring the RNG
    # state around every block costs a device sync each
    preserve_rng = has_dropout(model)
    for layer in decoder_layers(model):
        block = layer
        if trainer.activation_checkpointing:
            block = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                       preserve_rng_state=preserve_rng)
        if trainer.compile:  # one graph per block where the architecture is known to allow it
            block.compile(fullgraph=model.config.model_type in FULLGRAPH_MODEL_TYPES)
        if block is not layer:
            _replace(model, layer, block)
        blocks.append(block)
    return blocks


def shard(model: nn.Module, blocks: list[nn.Module], fsdp: FSDPConfig, dtype: torch.dtype, env: DistEnv) -> DeviceMesh:
    """fully_shard each block, then the root; returns the mesh."""
    mesh = build_mesh(fsdp, env)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if fsdp.cpu_offload else OffloadPolicy()
    reshard = fsdp.strategy != Strategy.shard_grad_op
    for i, block in enumerate(blocks):
        # the last block's parameters are the first backward needs: keep them gathered after forward
        last = i == len(blocks) - 1
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard and not last, mp_policy=mp, offload_policy=offload)
    # the root (embeddings, final norm, lm_head) is needed again right away by backward: keep it gathered
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp, offload_policy=offload)
    return mesh


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor] | None, env: DistEnv,
                    via: Optional[torch.device] = None) -> None:
    """Fill a sharded model from rank 0's full state dict: rank 0 sends, every rank keeps its own shard. Buffers
    that are not in a state dict (rotary frequencies) are sent as well, so meta-built ranks get rank 0's values.
    `via`: the device the tensors travel through. torch sends them from where the parameters live, so host-offloaded
    parameters (fsdp.cpu_offload) would go over gloo, many times slower than NCCL: with via=cuda each tensor goes
    over NCCL and every rank copies its own shard back to host memory."""
    if via is None:
        set_model_state_dict(model, state if env.is_main else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        broadcast_into_shards(model, state, env, via)
    for _, buf in sorted(model.named_buffers()):
        dist.broadcast(buf, src=0)


@torch.no_grad()
def broadcast_into_shards(model: nn.Module, state: dict[str, torch.Tensor] | None, env: DistEnv,
                          via: torch.device) -> None:
    """Rank 0's full tensors, one at a time through `via`, into every rank's shards wherever they live."""
    local = get_model_state_dict(model)  # this rank's DTensor shards, named as in the plain model
    sent = set()
    for name in sorted(local):
        target = local[name]
        if id(target) in sent:  # a tied lm_head is the embedding: sent once
            continue
        sent.add(id(target))
        if env.is_main:
            full = state[name].to(via, dtype=target.dtype)
        else:
            full = torch.empty(target.shape, dtype=target.dtype, device=via)
        dist.broadcast(full, src=0)
        if isinstance(target, DTensor):  # this rank's chunk, cut locally (every rank holds the whole tensor)
            shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None).to_local()
            target.to_local().copy_(shard)
        else:
            target.copy_(full)
