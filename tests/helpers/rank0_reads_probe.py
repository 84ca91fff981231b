"""Run under torchrun (2 ranks): build a pretrained model as training does, with transformers' from_pretrained
made to raise on every rank but 0 (only rank 0 may read the weights; the others build on meta and receive them).
Each rank saves the logits of a fixed input (a collective forward under FSDP2)."""

import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import TINY, compose_cfg  # noqa: E402
from cpt.config.schema import to_run_config  # noqa: E402
from cpt.parallel import distributed  # noqa: E402
from cpt.parallel.parallelize import build_parallel_model  # noqa: E402

out, pretrained = Path(sys.argv[1]), sys.argv[2]
env = distributed.setup(to_run_config(compose_cfg(TINY)).trainer.device, 1)
if env.rank != 0:
    def refuse(*args, **kwargs):
        raise RuntimeError(f"rank {env.rank} read the weights with from_pretrained")

    transformers.AutoModelForCausalLM.from_pretrained = refuse
cfg = to_run_config(compose_cfg([*TINY, f"model.name_or_path={pretrained}", "model.random_init=false",
                                 "fsdp=full_shard"]))
model = build_parallel_model(cfg, env)
with torch.no_grad():
    logits = model(input_ids=torch.arange(12).reshape(1, 12)).logits
torch.save(logits, out / f"logits{env.rank}.pt")
del model
distributed.teardown()
