"""Meta-device init (cpt.parallel.parallelize.build_parallel_model): a rank that built the model on the meta device ends
with every buffer where compute runs, holding rank 0's values, and every parameter shard holding rank 0's weights,
under every strategy (CPU offload included: its shards are filled by broadcast_into_shards)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, compose_cfg, rank_env
from cpt.config.schema import to_run_config
from cpt.model.build import build_model


def test_meta_built_rank_buffers_are_rank0s_and_where_compute_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "helpers" / "init_probe.py"), str(tmp_path)],
                          env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(to_run_config(compose_cfg(TINY)).trainer.seed)  # the weights rank 0 built
    reference = {n: p.detach() for n, p in build_model(to_run_config(compose_cfg(TINY)).model).named_parameters()}
    for fsdp in ("full_shard", "offload", "no_shard"):
        for rank in (rank0, rank1):
            params = {n.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""): p
                      for n, p in rank[fsdp]["params"].items()}
            assert params.keys() == reference.keys(), fsdp
            for name, value in params.items():
                assert torch.equal(value, reference[name]), (fsdp, name)
        built, received = rank0[fsdp], rank1[fsdp]
        assert received["buffers"], fsdp  # the rotary frequencies at least
        assert received["buffers"].keys() == built["buffers"].keys()
        for name, (device, value) in received["buffers"].items():
            assert device == received["compute_device"], (fsdp, name, device)
            assert torch.equal(value, built["buffers"][name][1]), (fsdp, name)
        assert "meta" not in received["param_devices"], fsdp


@pytest.mark.full
def test_only_rank_0_reads_pretrained_weights(tmp_path):
    """A pretrained model (the tiny architecture, saved with save_pretrained) built by 2 ranks whose
    from_pretrained raises on rank 1: rank 1 builds on meta and receives rank 0's weights, so both give the
    saved model's logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    build_model(to_run_config(compose_cfg(TINY)).model).save_pretrained(tmp_path / "pretrained")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "helpers" / "rank0_reads_probe.py"), str(tmp_path),
                           str(tmp_path / "pretrained")], env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "pretrained").eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.arange(12).reshape(1, 12)).logits
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"logits{rank}.pt", weights_only=True), expected,
                                   rtol=1e-5, atol=1e-5)
