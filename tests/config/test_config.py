"""Every shipped config composes and validates; bad values fail before any model is built, naming the key."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF, compose_cfg, run_cli
from cpt.config.schema import ConfigError, RunConfig, Schedule, Strategy, to_run_config
from cpt.config.validate import validate

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
FSDPS = sorted(p.stem for p in (CONF / "fsdp").glob("*.yaml"))
OPTIMS = sorted(p.stem for p in (CONF / "optim").glob("*.yaml"))


def test_shipped_groups_exist():
    assert {"tiny", "qwen0.5b"} <= set(MODELS)
    assert {"full_shard", "shard_grad_op", "hybrid_shard", "no_shard", "offload"} <= set(FSDPS)
    assert {"cosine", "wsd", "constant"} <= set(OPTIMS)


@pytest.mark.parametrize("model,fsdp,optim", list(itertools.product(MODELS, FSDPS, OPTIMS)))
def test_every_combination_composes_and_validates(model, fsdp, optim):
    cfg = to_run_config(compose_cfg([f"model={model}", f"fsdp={fsdp}", f"optim={optim}"]))
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name == model
    validate(cfg, world_size=2, local_world_size=2)


def test_group_values_are_typed():
    cfg = to_run_config(compose_cfg(["fsdp=offload", "optim=wsd", "model=qwen0.5b"]))
    assert cfg.fsdp.strategy is Strategy.full_shard and cfg.fsdp.cpu_offload is True
    assert cfg.optim.schedule is Schedule.wsd
    assert cfg.model.arch.vocab_size == 151936 and cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B"


@pytest.mark.parametrize("override,key", [
    ("trainer.stepz=3", "stepz"),             # unknown key
    ("model.arch.hidden_sise=8", "hidden_sise"),
    ("trainer.steps=many", "trainer.steps"),  # wrong type
    ("fsdp.strategy=zero9", "fsdp.strategy"), # not one of the strategies
    ("optim.lr=fast", "optim.lr"),
])
def test_composition_rejects_unknown_keys_and_wrong_types(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        to_run_config(compose_cfg([override]))
    message = str(err.value) + str(err.value.__cause__ or "")
    assert key in message


@pytest.mark.parametrize("overrides,world,key", [
    (["trainer.grad_accum=0"], 1, "trainer.grad_accum"),
    (["trainer.micro_batch_size=0"], 1, "trainer.micro_batch_size"),
    (["fsdp=hybrid_shard", "fsdp.shard_size=3"], 4, "fsdp.shard_size"),
    (["fsdp=full_shard", "fsdp.shard_size=2"], 4, "fsdp.shard_size"),
    (["fsdp=shard_grad_op", "fsdp.cpu_offload=true"], 2, "fsdp.cpu_offload"),
    (["optim.warmup_steps=100", "trainer.steps=100"], 1, "optim.warmup_steps"),
    (["optim.min_lr_ratio=1.5"], 1, "optim.min_lr_ratio"),
    (["optim.grad_clip=0"], 1, "optim.grad_clip"),
    (["optim.betas=[0.9]"], 1, "optim.betas"),
    (["data.val_fraction=0"], 1, "data.val_fraction"),
    (["data.sources=[]"], 1, "data.sources"),
    (["data.dedup.threshold=0"], 1, "data.dedup.threshold"),
    (["model.random_init=false"], 1, "model.random_init"),
    (["model.attn_implementation=flash"], 1, "model.attn_implementation"),
    (["model.attn_implementation=flash_attention_2", "trainer.micro_batch_size=2"], 1, "model.attn_implementation"),
])
def test_impossible_combinations_name_the_key(overrides, world, key):
    cfg = to_run_config(compose_cfg(overrides))
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=world, local_world_size=min(world, 2))
    assert err.value.key == key and key in str(err.value)


def test_hybrid_shard_defaults_to_ranks_per_node():
    cfg = to_run_config(compose_cfg(["fsdp=hybrid_shard"]))
    validate(cfg, world_size=8, local_world_size=4)  # 2 nodes x 4
    with pytest.raises(ConfigError, match="fsdp.shard_size"):
        validate(cfg, world_size=6, local_world_size=4)


def test_cli_fails_fast_naming_the_key(tmp_path):
    proc = run_cli(["trainer.grad_accum=0", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "trainer.grad_accum" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no model was built, nothing trained
    proc = run_cli(["trainer.nproc_per_node=3", "fsdp=hybrid_shard", "fsdp.shard_size=2",
                    f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "fsdp.shard_size" in proc.stderr
    proc = run_cli(["trainer.stepz=1"], cwd=tmp_path)
    assert proc.returncode != 0 and "stepz" in proc.stderr
