"""AdamW parameter groups and the LR schedules (stepped per optimizer step)."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, read_metrics, run_tiny
from cpt.config.schema import OptimConfig, Schedule, to_run_config
from cpt.model.build import build_model
from cpt.train.optim import lr_factor, param_groups


def test_no_weight_decay_on_norms_biases_and_embeddings():
    cfg = to_run_config(compose_cfg(["model=tiny"]))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in no_decay_names  # tied with lm_head: counted once, not decayed
    assert all("norm" in n or n.endswith(".bias") or "embed" in n for n in no_decay_names)
    assert any(n.endswith("self_attn.q_proj.bias") for n in no_decay_names)
    assert all(n.endswith(".weight") and "norm" not in n and "embed" not in n for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def _lrs(schedule, steps=100, **kw):
    cfg = OptimConfig(schedule=schedule, **kw)
    return [lr_factor(s, cfg, steps) for s in range(steps)]


def test_cosine_warms_up_then_finishes_at_the_floor():
    f = _lrs(Schedule.cosine, warmup_steps=10, min_lr_ratio=0.1)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1)  # the last optimizer step uses the floor: the cosine completes
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)  # halfway


def test_wsd_is_stable_then_decays_over_the_last_fraction():
    f = _lrs(Schedule.wsd, warmup_steps=5, min_lr_ratio=0.0, decay_fraction=0.2)
    assert f[4] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[5:80])
    assert 0 < f[80] < 1 and f[-1] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(f[80:], f[81:]))


def test_constant_after_warmup():
    f = _lrs(Schedule.constant, warmup_steps=4)
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and set(f[4:]) == {1.0}


@pytest.mark.full  # a whole run; the schedule itself is unit-tested above
def test_training_steps_the_schedule_once_per_optimizer_step(tmp_path):
    """A real run with gradient accumulation (2 micro-steps per optimizer step) logs, at every step s, the LR of
    the update made at optimizer step s - 1 of its schedule: stepping per micro-step, or not at all, shows."""
    from omegaconf import OmegaConf

    run_dir = run_tiny(tmp_path, "r", ["trainer.grad_accum=2", "trainer.micro_batch_size=2", "optim=cosine",
                                       "optim.warmup_steps=2", "optim.min_lr_ratio=0.1"])
    cfg = to_run_config(OmegaConf.load(run_dir / "config.yaml"))
    lrs = [(r["step"], r["lr"]) for r in read_metrics(run_dir) if "lr" in r]
    assert [s for s, _ in lrs] == list(range(1, cfg.trainer.steps + 1))
    for step, lr in lrs:
        assert lr == pytest.approx(cfg.optim.lr * lr_factor(step - 1, cfg.optim, cfg.trainer.steps), rel=1e-6), step
    assert lrs[-1][1] == pytest.approx(cfg.optim.lr * 0.1)  # the last update uses the floor
