"""Run under torchrun by bench/spike_cost.py: the time of one spike check (SpikeGuard.flag: the loss all-reduce and
the window's device ops) on this many gloo ranks, alone, over 1,000 calls; rank 0 prints milliseconds per call."""

import sys
import time

import torch
import torch.distributed as dist

from common import ROOT

sys.path.insert(0, str(ROOT))

from cpt.config.schema import OnSpike, SpikeConfig  # noqa: E402
from cpt.train.spikes import SpikeGuard  # noqa: E402

dist.init_process_group("gloo")
torch.set_num_threads(1)
guard = SpikeGuard(OnSpike.skip, SpikeConfig(), torch.device("cpu"), dist.get_world_size())
loss, norm, finite = torch.tensor(3.0), torch.tensor(1.0), torch.tensor(0.0)
for _ in range(50):
    guard.flag(loss, norm, finite)
dist.barrier()
start = time.perf_counter()
for _ in range(1000):
    guard.flag(loss, norm, finite)
if dist.get_rank() == 0:
    print(f"{(time.perf_counter() - start):.4f}")  # seconds per 1,000 calls = ms per call
dist.destroy_process_group()
