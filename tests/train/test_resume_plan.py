"""A resume notices what changed (cpt.train.resume_plan): every checkpoint records the run's plan (prepared data,
window length, global batch, seed, mixture, steps, optimizer and schedule); a resume that changes any of it stops
with one message naming every change and the fix, unless `resume_allow` names the change; an accepted change of
trainer.steps re-plans the LR schedule from the resume step. The unchanged resume stays bit-exact
(test_checkpoint.py)."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose_cfg, read_metrics, run_cli, run_tiny
from cpt.config.schema import RESUME_PLAN_KEYS, ConfigError, to_run_config
from cpt.config.validate import validate
from cpt.train.optim import build_scheduler, lr_factor
from cpt.train.resume_plan import EFFECTS, ResumeMismatchError, check_resume, replan, run_plan


def cfg(*overrides):
    return to_run_config(compose_cfg([*TINY, *overrides]))


def test_the_plan_records_every_key_and_says_what_each_change_does():
    plan = run_plan(cfg(), 2, "fp")
    assert tuple(plan) == RESUME_PLAN_KEYS and set(EFFECTS) == set(RESUME_PLAN_KEYS)
    # the same global batch split another way over ranks and micro-batches is the same plan
    assert run_plan(cfg("trainer.micro_batch_size=4"), 1, "fp") == run_plan(cfg("trainer.micro_batch_size=2"), 2, "fp")
    assert run_plan(cfg("trainer.grad_accum=3"), 2, "fp")["global_batch"] == 3 * plan["global_batch"]


def test_changes_stop_the_resume_naming_each_one_with_the_fix(tmp_path):
    saved = run_plan(cfg(), 1, "old")
    assert check_resume(saved, dict(saved), [], tmp_path) == {}
    current = run_plan(cfg("trainer.seq_len=16", "trainer.steps=12"), 1, "new")
    with pytest.raises(ResumeMismatchError) as e:
        check_resume(saved, current, ["trainer.steps"], tmp_path)
    message = str(e.value)
    assert "3 setting(s)" in message and "data: old -> new" in message and "trainer.seq_len: 32 -> 16" in message
    assert "trainer.steps: 6 -> 12" in message and "resume=none" in message
    assert "resume_allow=[data,trainer.seq_len,trainer.steps]" in message
    changes = check_resume(saved, current, ["data", "trainer.seq_len", "trainer.steps"], tmp_path)
    assert changes == {"data": ("old", "new"), "trainer.seq_len": (32, 16), "trainer.steps": (6, 12)}


def test_a_checkpoint_without_a_plan_resumes_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert check_resume(None, run_plan(cfg(), 1, "fp"), [], tmp_path) == {}
    assert "records no run plan" in caplog.text


def test_resume_allow_names_only_recorded_settings():
    with pytest.raises(ConfigError, match=r"resume_allow.*\['trainer.log_interval'\].*trainer.steps"):
        validate(cfg("resume_allow=[trainer.log_interval]"), 1, 1)
    validate(cfg("resume_allow=[trainer.steps,data]"), 1, 1)


def test_replan_applies_the_new_schedule_and_optimizer_settings_from_the_resume_step():
    old = cfg("trainer.steps=8", "optim.warmup_steps=2")
    new = cfg("trainer.steps=16", "optim.warmup_steps=2", "optim.lr=1e-3", "optim.betas=[0.8,0.9]",
              "optim.weight_decay=0.2")
    params = [torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))]
    groups = [{"params": [params[0]], "weight_decay": old.optim.weight_decay}, {"params": [params[1]],
                                                                               "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=old.optim.lr)
    scheduler = build_scheduler(optimizer, old.optim, 8)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict(), optimizer.state_dict()
    # the resumed run: built from the new config, then the checkpoint's states restored, then re-planned
    optimizer = torch.optim.AdamW(groups, lr=new.optim.lr)
    scheduler = build_scheduler(optimizer, new.optim, 16)
    scheduler.load_state_dict(state[0])
    optimizer.load_state_dict(state[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(old.optim.lr * lr_factor(4, old.optim, 8))
    changes = {"trainer.steps": (8, 16), "optim.lr": (old.optim.lr, 1e-3)}
    replan(changes, new, optimizer, scheduler, 4)
    for step in (4, 5):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * lr_factor(step, new.optim, 16)] * 2)
        assert scheduler.get_last_lr() == pytest.approx([1e-3 * lr_factor(step, new.optim, 16)] * 2)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9) and optimizer.param_groups[0]["weight_decay"] == 0.2
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


# ---------------------------------------------------------------------------------------------- through cpt.run

@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    return run_tiny(tmp, "run", ["trainer.steps=4", "checkpoint.interval=2", "export.enabled=false"])


def _refused(proc, *keys):
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: resume from") and "resume=none" in last, last
    for key in keys:
        assert f"{key}:" in last, last
    return last


@pytest.mark.full
def test_resume_with_another_seq_len_stops(checkpointed, tmp_path):
    proc = run_cli([*TINY, "trainer.steps=4", "trainer.seq_len=16", f"resume={checkpointed}",
                    f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    last = _refused(proc, "trainer.seq_len")
    assert "trainer.steps" not in last  # only what changed is listed


@pytest.mark.full
def test_resume_on_re_prepared_data_stops(checkpointed, tmp_path):
    from cpt.data.prepare import prepare

    root = tmp_path / "data"
    prepare(to_run_config(compose_cfg(["model=tiny", "data=sample", f"data.root={root}", "data.val_fraction=0.3"])))
    proc = run_cli([*TINY, "trainer.steps=4", f"data.root={root}", f"resume={checkpointed}",
                    f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    _refused(proc, "data")


@pytest.mark.full
def test_training_longer_needs_resume_allow_and_re_plans_the_schedule(checkpointed, tmp_path):
    args = [*TINY, "trainer.steps=8", f"resume={checkpointed / 'checkpoints' / 'step-00000004'}",
            f"hydra.run.dir={tmp_path / 'r'}"]
    _refused(run_cli(args, cwd=tmp_path), "trainer.steps")
    proc = run_cli([*args, "resume_allow=[trainer.steps]"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "r" / "train.log").read_text()
    assert "resume_allow: trainer.steps changed 4 -> 8" in log and "re-planned from step 4" in log
    run_cfg = to_run_config(OmegaConf.load(tmp_path / "r" / "config.yaml"))
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "r") if "lr" in r}
    assert sorted(lrs) == [5, 6, 7, 8]  # resumed after step 4
    for step, lr in lrs.items():  # the update of step s is made at 0-based index s - 1, on the 8-step plan
        assert lr == pytest.approx(run_cfg.optim.lr * lr_factor(step - 1, run_cfg.optim, 8), rel=1e-6)

