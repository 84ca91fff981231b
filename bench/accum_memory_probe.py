"""Run under torchrun (2 ranks) by bench/step_memory.py: one optimizer step of the "medium" bench body (fp32,
full_shard) with grad_accum micro-steps under the given trainer.accum_reduce, built and stepped as training does,
counted by torch's MemTracker. Rank 0 writes its peak, the gradient memory alive when the second micro-step starts
(over the state before the step) and the number of reduce-scatters.

    torchrun --nproc_per_node=2 bench/accum_memory_probe.py <last|every> <grad_accum> <out dir>
"""

import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.profiler import ProfilerActivity, profile

from common import ROOT, SIZES

sys.path.insert(0, str(ROOT))

from cpt.config.schema import to_run_config  # noqa: E402
from cpt.parallel import distributed  # noqa: E402
from cpt.parallel.parallelize import build_parallel_model, gradient_sync  # noqa: E402
from cpt.train.loop import train_step  # noqa: E402
from cpt.train.optim import build_optimizer  # noqa: E402

MIB = 2**20


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_run_config(hydra_compose(config_name="config", overrides=overrides))


def total_mib(tracker: MemTracker, kind: str) -> float:
    return sum(v["Total"] for v in tracker.get_tracker_snapshot(kind).values()) / MIB


reduce, grad_accum, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
s = SIZES["medium"]
cfg = compose(["model=tiny", f"model.arch.hidden_size={s['hidden']}", f"model.arch.intermediate_size={s['inter']}",
               f"model.arch.num_hidden_layers={s['layers']}", f"model.arch.num_attention_heads={s['heads']}",
               "fsdp=full_shard", f"trainer.accum_reduce={reduce}", f"trainer.grad_accum={grad_accum}",
               f"trainer.micro_batch_size={s['batch']}", "trainer.precision=fp32"])
env = distributed.setup(cfg.trainer.device, None)
torch.manual_seed(0)
model = build_parallel_model(cfg, env)
optimizer = build_optimizer(model, cfg.optim)
sync = gradient_sync(model, cfg.fsdp, cfg.trainer.accum_reduce)
batches = [(torch.randint(0, 512, (s["batch"], s["seq"])), torch.randint(0, 512, (s["batch"], s["seq"])))
           for _ in range(grad_accum)]
train_step(model, optimizer, batches, grad_accum, cfg.optim.grad_clip, sync=sync)  # optimizer state exists now
seen = {}
tracker = MemTracker()
tracker.track_external(model, optimizer)


def watched_sync(last: bool, calls=[0]) -> None:  # noqa: B006 (a counter across calls)
    calls[0] += 1
    tracker.reset_mod_stats()  # per-module statistics allow one forward per module; the totals are kept
    if calls[0] == 2:  # the second micro-step starts: the first one's gradients are alive
        seen["between"] = total_mib(tracker, "current")
    sync(last)


with tracker:
    seen["before"] = total_mib(tracker, "current")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, batches, grad_accum, cfg.optim.grad_clip, sync=watched_sync)
    peak = total_mib(tracker, "peak")
collectives = Counter(e.name for e in prof.events() if e.name.startswith("c10d::"))
if env.rank == 0:
    (out / "rank0.json").write_text(json.dumps({
        "peak_mib": peak, "grads_between_mib": seen["between"] - seen["before"],
        "reduce_scatters": collectives.get("c10d::reduce_scatter_tensor_coalesced_", 0)
        + collectives.get("c10d::_reduce_scatter_base_", 0) + collectives.get("c10d::reduce_scatter_", 0)}))
del model, optimizer
distributed.teardown()
