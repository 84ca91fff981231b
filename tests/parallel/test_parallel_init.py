"""Meta-device init (cpt.parallel.parallelize.build_parallel_model): a rank that built the model on the meta device ends
with every buffer where compute runs, holding rank 0's values, under every strategy (CPU offload included)."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import ROOT, rank_env


def test_meta_built_rank_buffers_are_rank0s_and_where_compute_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "helpers" / "init_probe.py"), str(tmp_path)],
                          env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for fsdp in ("full_shard", "offload", "no_shard"):
        built, received = rank0[fsdp], rank1[fsdp]
        assert received["buffers"], fsdp  # the rotary frequencies at least
        assert received["buffers"].keys() == built["buffers"].keys()
        for name, (device, value) in received["buffers"].items():
            assert device == received["compute_device"], (fsdp, name, device)
            assert torch.equal(value, built["buffers"][name][1]), (fsdp, name)
        assert "meta" not in received["param_devices"], fsdp
