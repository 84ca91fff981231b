"""Run under torchrun (2 ranks): one optimizer step of the tiny model per setting (strategy x accum_reduce x
grad_accum), built and stepped as training does, with the collectives of the step counted by the profiler (every
c10d op, DDP's C++ reducer included, goes through the dispatcher). Rank 0 saves {setting: {op: count}}."""

import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import TINY, compose_cfg  # noqa: E402
from cpt.config.schema import to_run_config  # noqa: E402
from cpt.parallel import distributed  # noqa: E402
from cpt.parallel.parallelize import build_parallel_model, gradient_sync  # noqa: E402
from cpt.train.loop import train_step  # noqa: E402
from cpt.train.optim import build_optimizer  # noqa: E402

SETTINGS = {f"{fsdp}-{reduce}-{accum}": [f"fsdp={fsdp}", f"trainer.accum_reduce={reduce}",
                                         f"trainer.grad_accum={accum}", "trainer.micro_batch_size=1"]
            for fsdp in ("full_shard", "no_shard", "hybrid_shard") for reduce in ("last", "every")
            for accum in (1, 2)}

out = Path(sys.argv[1])
env = distributed.setup(to_run_config(compose_cfg(TINY)).trainer.device, 1)
counts = {}
for name, overrides in SETTINGS.items():
    extra = ["fsdp.shard_size=1"] if name.startswith("hybrid") else []  # 2 ranks: 2 replicas of 1 shard each
    cfg = to_run_config(compose_cfg([*TINY, *overrides, *extra]))
    torch.manual_seed(cfg.trainer.seed)
    model = build_parallel_model(cfg, env)
    optimizer = build_optimizer(model, cfg.optim)
    sync = gradient_sync(model, cfg.fsdp, cfg.trainer.accum_reduce)
    batches = [(torch.randint(0, 256, (1, 16)), torch.randint(0, 256, (1, 16))) for _ in range(cfg.trainer.grad_accum)]
    train_step(model, optimizer, batches, cfg.trainer.grad_accum, cfg.optim.grad_clip, sync=sync)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, batches, cfg.trainer.grad_accum, cfg.optim.grad_clip, sync=sync)
    counts[name] = dict(Counter(e.name for e in prof.events() if e.name.startswith("c10d::")))
    del model, optimizer
if env.rank == 0:
    (out / "collectives.json").write_text(json.dumps(counts, indent=1))
distributed.teardown()
