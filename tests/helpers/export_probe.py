"""Run under torchrun (2 ranks): build the tiny model the way training does (rank 0 real, rank 1 on meta, weights
broadcast after sharding), train a few steps under FSDP2, export, and save the sharded model's logits on a probe
batch so the test can compare them with the exported model's."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import TINY, compose_cfg  # noqa: E402
from cpt.config.schema import to_run_config  # noqa: E402
from cpt.data.loader import MixtureLoader  # noqa: E402
from cpt.data.manifest import load_manifest, open_streams  # noqa: E402
from cpt.model.tokenizer import build_tokenizer  # noqa: E402
from cpt.parallel import distributed  # noqa: E402
from cpt.parallel.parallelize import build_parallel_model  # noqa: E402
from cpt.train.export import gather_export  # noqa: E402
from cpt.train.loop import train_step  # noqa: E402
from cpt.train.optim import build_optimizer  # noqa: E402

out = Path(sys.argv[1])
cfg = to_run_config(compose_cfg(TINY))
env = distributed.setup(cfg.trainer.device, 1)
torch.manual_seed(cfg.trainer.seed)
tokenizer = build_tokenizer(cfg.model)
manifest = load_manifest(cfg.data, tokenizer)
model = build_parallel_model(cfg, env)
optimizer = build_optimizer(model, cfg.optim)
loader = MixtureLoader(open_streams(cfg.data, manifest, "train"), {"sample": 1.0}, 32, 2, 1, env.rank,
                       env.world_size, 0, env.device)
for _ in range(3):
    train_step(model, optimizer, loader.next_batches(), 1, 1.0)
pending = gather_export(model, tokenizer, out / "hf", cfg)  # collective; rank 0 writes (the group stays open)
if pending is not None:
    pending.write()
probe = torch.tensor([tokenizer.encode("Permission is hereby granted, free of charge, to any person")])
with torch.no_grad():
    logits = model(input_ids=probe).logits
if env.is_main:
    torch.save({"probe": probe, "logits": logits}, out / "probe.pt")
distributed.teardown()
