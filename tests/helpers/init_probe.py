"""Run under torchrun (2 ranks): build the tiny model under each strategy as training does (rank 0 real, rank 1 on
meta) and save, per rank, where every buffer and parameter ended, the buffers' values and the full parameters (their
shards gathered)."""

import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import TINY, compose_cfg  # noqa: E402
from cpt.config.schema import to_run_config  # noqa: E402
from cpt.parallel import distributed  # noqa: E402
from cpt.parallel.parallelize import build_parallel_model  # noqa: E402

out = Path(sys.argv[1])
env = distributed.setup(to_run_config(compose_cfg(TINY)).trainer.device, 1)
found = {}
for fsdp in ("full_shard", "offload", "no_shard"):
    cfg = to_run_config(compose_cfg([*TINY, f"fsdp={fsdp}"]))
    torch.manual_seed(cfg.trainer.seed)
    model = build_parallel_model(cfg, env)
    found[fsdp] = {
        "compute_device": str(env.device),
        "buffers": {name: (str(b.device), b.detach().cpu().clone()) for name, b in model.named_buffers()},
        "param_devices": sorted({str(p.device) for p in model.parameters()}),
        "params": {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
                   for name, p in model.named_parameters()},
    }
torch.save(found, out / f"rank{env.rank}.pt")
del model  # nothing holds a process group when it goes (cpt.train does the same)
distributed.teardown()
