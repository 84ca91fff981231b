"""The base model's step-0 validation once per sweep (cpt.eval.base_validation): the later jobs of a 3-job LR sweep
read the first job's numbers, equal to what it would compute (a run outside any sweep computes the same); the key
changes with everything the numbers depend on and with nothing a sweep usually varies (learning rate, replay)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TINY, compose_cfg, rank_env, read_metrics
from cpt.config.schema import to_run_config
from cpt.eval.base_validation import base_key


def step0(run_dir):
    (record,) = [r for r in read_metrics(run_dir) if r["step"] == 0 and "val_loss" in r]
    return record


@pytest.mark.full
def test_the_later_jobs_reuse_the_first_jobs_step0_validation(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "cpt.run", "-m", *TINY, "trainer.steps=2", "optim.lr=1e-3,2e-3,3e-3",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=rank_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "trainer.steps=2", f"hydra.run.dir={tmp_path}/a"],
                           cwd=tmp_path, env=rank_env(), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    reused = [job for job in "012" if "step-0 validation of this base model on this data taken from" in
              (sweep / job / "train.log").read_text()]
    assert reused == ["1", "2"]  # computed once, by the first job, in a sweep of three
    assert step0(sweep / "2") == step0(sweep / "1") == step0(sweep / "0") == step0(tmp_path / "a")
    assert len(list((sweep / ".base_validation").glob("*.json"))) == 1


def key(*overrides, world=1, fingerprint="f1"):
    return base_key(to_run_config(compose_cfg([*TINY, *overrides])), world, fingerprint, "cpu")


def test_the_key_follows_what_the_numbers_depend_on(tmp_path):
    base = key()
    assert key("optim.lr=1e-2") == base and key("data.replay=0.2") == base and key("trainer.steps=50") == base
    for other in (key("trainer.seq_len=64"), key("trainer.eval_batches=3"), key("trainer.micro_batch_size=2"),
                  key("trainer.doc_masking=false"), key("trainer.loss=plain"), key("trainer.seed=7"),
                  key("model.arch.hidden_size=32"), key("fsdp=no_shard"), key(world=2), key(fingerprint="f2")):
        assert other != base
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"1234")
    pretrained = ["model.random_init=false", f"model.name_or_path={weights}"]
    first = key(*pretrained)
    (weights / "model.safetensors").write_bytes(b"12345")  # new weights at the same path
    assert key(*pretrained) != first
