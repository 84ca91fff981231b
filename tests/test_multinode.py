"""Multi-node on one machine: launchers/torchrun_multinode.sh started twice, as two "nodes" of 2 ranks each (c10d
rendezvous on localhost, gloo), trains full_shard and hybrid_shard (shard within a node, replicate across) with the
losses of one node of 4 ranks; a checkpoint taken at 2 x 2 ranks resumes at 1 x 2 exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, TINY, assert_resumed, rank_env, read_metrics, run_tiny, train_losses
from cpt.parallel.distributed import free_port

pytestmark = pytest.mark.full

FOUR = ["trainer.micro_batch_size=1", "checkpoint.interval=3"]  # global batch 4 on 4 ranks


def two_nodes(tmp_path, name: str, extra: list[str]):
    env = {**rank_env(), "HEAD": f"127.0.0.1:{free_port()}", "NNODES": "2", "NPROC": "2", "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "launchers" / "torchrun_multinode.sh"), *TINY, *FOUR, *extra,
           f"hydra.run.dir={tmp_path / name}"]
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-4000:]
    return tmp_path / name


@pytest.mark.parametrize("fsdp", [["fsdp=full_shard"], ["fsdp=hybrid_shard", "fsdp.shard_size=2"]],
                         ids=["full_shard", "hybrid_shard"])
def test_two_nodes_of_two_ranks_give_the_losses_of_one_node_of_four(tmp_path, fsdp):
    one = run_tiny(tmp_path, "one", [*FOUR, *fsdp, "trainer.nproc_per_node=4"])
    two = two_nodes(tmp_path, "two", fsdp)
    assert "4 ranks, global batch 4" in (two / "train.log").read_text()
    assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-4)
    if fsdp[0] == "fsdp=full_shard":  # a checkpoint of 2 x 2 ranks resumes on 1 node of 2 ranks, exactly
        resumed = run_tiny(tmp_path, "resumed", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2",
                                                 "checkpoint.interval=3",
                                                 f"resume={two / 'checkpoints' / 'step-00000003'}"])
        assert_resumed(resumed, [3])
        after = {r["step"]: r["loss"] for r in read_metrics(resumed) if "loss" in r}
        before = {r["step"]: r["loss"] for r in read_metrics(two) if "loss" in r}
        assert sorted(after) == [4, 5, 6]
        assert [after[s] for s in (4, 5, 6)] == pytest.approx([before[s] for s in (4, 5, 6)], abs=1e-4)
