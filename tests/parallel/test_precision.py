"""What the README says about precision on GPU, checked on CPU through the objects cpt hands to torch: precision=auto
is bf16 on GPU and fp32 on CPU; FSDP2 gets a policy of bf16 compute with fp32 gradient reduction on every block and
the root (fp32 master weights: the sharded parameters stay fp32); a plain module computes under bf16 autocast; and
fp32 matmuls use TF32 on CUDA."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

import cpt.parallel.parallelize as parallelize
from cpt.config.schema import FSDPConfig, Precision, Strategy
from cpt.parallel.distributed import DistEnv, configure_cuda

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_precision_auto_is_bf16_on_gpu_and_fp32_on_cpu():
    assert parallelize.compute_dtype(Precision.auto, CUDA) == torch.bfloat16
    assert parallelize.compute_dtype(Precision.auto, CPU) == torch.float32
    assert parallelize.compute_dtype(Precision.fp32, CUDA) == torch.float32
    with pytest.warns(UserWarning, match="bf16 on CPU"):
        assert parallelize.compute_dtype(Precision.bf16, CPU) == torch.bfloat16


@pytest.mark.parametrize("strategy,offload", [(Strategy.full_shard, False), (Strategy.shard_grad_op, False),
                                              (Strategy.full_shard, True)])
def test_fsdp_gets_bf16_compute_and_fp32_reduction_on_every_block_and_the_root(monkeypatch, strategy, offload):
    calls = []
    monkeypatch.setattr(parallelize, "fully_shard", lambda module, **kw: calls.append((module, kw)))
    monkeypatch.setattr(parallelize, "build_mesh", lambda fsdp, env: "mesh")
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    blocks = list(model)
    dtype = parallelize.compute_dtype(Precision.auto, CUDA)
    env = DistEnv(0, 0, 8, 8, CUDA)
    parallelize.shard(model, blocks, FSDPConfig(strategy=strategy, cpu_offload=offload), dtype, env)
    assert [module for module, _ in calls] == [*blocks, model]
    for _, kw in calls:
        assert kw["mesh"] == "mesh"
        assert kw["mp_policy"] == MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        assert isinstance(kw["offload_policy"], CPUOffloadPolicy) == offload
    reshard = [kw["reshard_after_forward"] for _, kw in calls]
    # the last block and the root stay gathered for backward; shard_grad_op keeps every block gathered
    assert reshard == ([True, True, False, False] if strategy == Strategy.full_shard else [False] * 4)


def test_a_plain_module_computes_bf16_under_autocast_and_fsdp_casts_itself():
    ctx = parallelize.autocast(nn.Linear(2, 2), Precision.bf16, CPU)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert isinstance(parallelize.autocast(nn.Linear(2, 2), Precision.fp32, CPU), nullcontext)
    with ctx:
        assert nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16  # fp32 weights, bf16 compute


def test_fp32_matmuls_use_tf32_on_cuda():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        configure_cuda()
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def test_flex_attention_is_refused_for_training_on_cpu():
    """torch has no CPU backward for flex_attention: said before any model is built, with the fix."""
    from conftest import TINY, compose_cfg
    from cpt.config.schema import ConfigError, to_run_config

    cfg = to_run_config(compose_cfg([*TINY, "model.attn_implementation=flex_attention"]))
    with pytest.raises(ConfigError, match="flex_attention cannot train on CPU"):
        parallelize.build_parallel_model(cfg, DistEnv(0, 0, 1, 1, CPU))
