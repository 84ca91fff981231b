"""The GPU path's logic that can be checked without a GPU: device indices, backends, the memory report's keys."""

from __future__ import annotations

import pytest
import torch

from cpt.parallel.distributed import backend_for, cuda_index
from cpt.train.metrics import memory_report


@pytest.mark.parametrize("local_rank,count,expected", [
    (0, 8, 0), (5, 8, 5),  # one node, every GPU visible
    (3, 1, 0),             # a Slurm task bound to its own GPU sees only device 0
    (6, 4, 2),             # 8 tasks on a node with 4 visible GPUs per task group
])
def test_cuda_index_is_the_local_rank_modulo_visible_gpus(local_rank, count, expected):
    assert cuda_index(local_rank, count) == expected


def test_cuda_index_without_a_gpu_says_so():
    with pytest.raises(RuntimeError, match="sees no GPU"):
        cuda_index(0, 0)


def test_backends():
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == "cpu:gloo,cuda:nccl"


def test_cpu_memory_report_is_the_peak_rss():
    report = memory_report(torch.device("cpu"))
    assert set(report) == {"peak_mem_mib"} and report["peak_mem_mib"] > 10
