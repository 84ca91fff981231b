"""Gradient accumulation reduces when it should (cpt.parallel.parallelize.gradient_sync), counted, not inferred from
losses (every setting gives the same numbers by design, so a sync that did nothing would pass a loss test): one
optimizer step of 2 ranks per setting, the collectives of the step counted by the profiler
(tests/helpers/collectives_probe.py), grad_accum 2 against grad_accum 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, rank_env

pytestmark = pytest.mark.full  # a 2-rank probe of 12 settings (~16 s)

RS, AR = "c10d::_reduce_scatter_base_", "c10d::allreduce_"


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "helpers" / "collectives_probe.py"), str(out)],
                          env=rank_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "collectives.json").read_text())


def n(counts, setting, op):
    return counts[setting].get(op, 0)


def test_full_shard_reduces_once_per_step_or_every_micro_step_as_asked(counts):
    once = n(counts, "full_shard-last-1", RS)
    assert once > 0
    assert n(counts, "full_shard-last-2", RS) == once  # accum_reduce=last: unsharded gradients, one reduction
    assert n(counts, "full_shard-every-2", RS) == 2 * once  # accum_reduce=every: a reduce-scatter per micro-step


@pytest.mark.parametrize("reduce", ["last", "every"])
def test_ddp_all_reduces_on_the_last_micro_step_only(counts, reduce):
    once = n(counts, f"no_shard-{reduce}-1", AR)
    assert once > 0 and n(counts, f"no_shard-{reduce}-2", AR) == once


@pytest.mark.parametrize("reduce", ["last", "every"])
def test_hybrid_shard_all_reduces_across_replicas_on_the_last_micro_step_only(counts, reduce):
    once = n(counts, f"hybrid_shard-{reduce}-1", AR)  # 2 replicas of a 1-rank shard group: no reduce-scatter
    assert once > 0 and n(counts, f"hybrid_shard-{reduce}-2", AR) == once
