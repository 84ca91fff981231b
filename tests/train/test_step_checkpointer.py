"""In-process tests (one rank, a gloo group in the test process) of the train step and the checkpointer: the pieces
the multi-process runs of test_train / test_checkpoint put together, checked directly and in seconds."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from cpt.config.schema import CheckpointConfig, Device, ModelConfig, NonFinite, OptimConfig
from cpt.model.build import build_model
from cpt.parallel import distributed
from cpt.train.checkpoint import Checkpointer, latest_checkpoint
from cpt.train.loop import train_step
from cpt.train.optim import build_optimizer, build_scheduler
from cpt.train.safe_load import UnsafeCheckpointError, load_dcp
from cpt.train.state import NonFiniteGuard, TrainState


@pytest.fixture(scope="module")
def env():
    saved = {k: os.environ.pop(k, None) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env = distributed.setup(Device.cpu, 1)
    yield env
    distributed.teardown()
    os.environ.update({k: v for k, v in saved.items() if v is not None})


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig())
    optimizer = build_optimizer(model, OptimConfig(lr=3e-3))
    return model, optimizer


def batch(rows: int, seed: int = 1, seq: int = 16):
    ids = torch.randint(0, 512, (rows, seq + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def test_train_step_learns_a_repeated_batch(env):
    model, optimizer = tiny()
    inputs, targets = batch(4)
    losses = [train_step(model, optimizer, [(inputs, targets)], 1, 1.0)[0].item() for _ in range(30)]
    assert losses[-1] < losses[0] - 1.0


def test_accumulation_of_two_halves_equals_one_full_batch(env):
    inputs, targets = batch(4)
    results = []
    for micro in ([(inputs, targets)], [(inputs[:2], targets[:2]), (inputs[2:], targets[2:])]):
        model, optimizer = tiny()
        loss, norm, bad = train_step(model, optimizer, micro, len(micro), 1.0)
        # the first moment after one step is (1 - beta1) * gradient: linear in it, unlike the update itself
        results.append((loss.item(), norm.item(), bad.item(), [s["exp_avg"] for s in optimizer.state.values()]))
    (loss1, norm1, bad1, grads1), (loss2, norm2, bad2, grads2) = results
    assert loss1 == pytest.approx(loss2, abs=1e-6) and norm1 == pytest.approx(norm2, rel=1e-5)
    assert bad1 == bad2 == 0.0
    assert all(torch.allclose(a, b, atol=1e-8, rtol=1e-4) for a, b in zip(grads1, grads2))


def test_nonfinite_step_is_flagged_and_leaves_weights_and_moments_untouched(env):
    model, optimizer = tiny()
    inputs, targets = batch(2)
    train_step(model, optimizer, [(inputs, targets)], 1, 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [s["exp_avg"].clone() for s in optimizer.state.values()]
    _, norm, bad = train_step(model, optimizer, [(inputs, targets)], 1, 1.0, inject_nan=True)
    assert bad.item() == 1.0 and not torch.isfinite(norm)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, optimizer.state.values()))


class Counter:
    """A stand-in for the loader: any object with state_dict / load_state_dict can be registered."""

    def __init__(self):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def setup_run(tmp_path, env, seed=0, async_save=False):
    model, optimizer = tiny(seed)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=3e-3), 10)
    state, loader = TrainState(), Counter()
    guard = NonFiniteGuard(NonFinite.skip, env.device, tmp_path)
    ckpt = Checkpointer(CheckpointConfig(keep_last=1, async_save=async_save), tmp_path, env, model, optimizer,
                        states={"train": state, "loader": loader, "scheduler": scheduler, "nonfinite": guard})
    return model, optimizer, scheduler, state, loader, guard, ckpt


def test_checkpointer_restores_every_registered_state(tmp_path, env):
    model, optimizer, scheduler, state, loader, guard, ckpt = setup_run(tmp_path, env)
    for step in range(3):
        _, _, bad = train_step(model, optimizer, [batch(2, seed=step)], 1, 1.0, inject_nan=step == 1)
        guard.record(bad, step + 1)
        scheduler.step()
        state.step, loader.position = step + 1, 10 * (step + 1)
    ckpt.save(state.step)
    expected_draw = torch.rand(3)  # what the saving process draws next
    params = [p.detach().clone() for p in model.parameters()]

    model2, optimizer2, scheduler2, state2, loader2, guard2, ckpt2 = setup_run(tmp_path, env, seed=1)  # reseeds
    ckpt2.load(latest_checkpoint(ckpt2.root))
    assert (state2.step, loader2.position, guard2.check(3)) == (3, 30, 1)
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(params, model2.parameters()))
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues from where it was at save time


def test_async_saves_reuse_their_staging_buffers_and_close_releases_them(tmp_path, env):
    """The staging copies of an async save are kept for the next save (no new allocation: on GPU they are pinned,
    slow to allocate) and released by close() at the end of training (they were kept until the process ended)."""
    model, optimizer, _, _, _, _, ckpt = setup_run(tmp_path, env, async_save=True)
    train_step(model, optimizer, [batch(2)], 1, 1.0)
    ckpt.save(1)
    cache = ckpt.stager._state_dict_stager._cached_storage_mapping
    buffers = {id(v) for v in cache.values()}
    assert len(buffers) >= len(list(model.parameters()))
    train_step(model, optimizer, [batch(2)], 1, 1.0)
    ckpt.save(2)
    assert {id(v) for v in cache.values()} == buffers  # the same buffers again
    ckpt.close()
    assert len(cache) == 0 and ckpt.stager is None and ckpt.group is None
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000002"  # the last save was published


def test_checkpointer_refuses_nonfinite_weights(tmp_path, env):
    model, *_, ckpt = setup_run(tmp_path, env)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="NaN/inf weights"):
        ckpt.save(1)
    assert latest_checkpoint(ckpt.root) is None and not list(ckpt.root.glob(".tmp-*"))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("victim", ["trainer.pt", "rng-0.pt", ".metadata"])
def test_a_checkpoint_with_a_malicious_pickle_is_refused(tmp_path, env, victim, monkeypatch):
    *_, ckpt = setup_run(tmp_path, env)
    ckpt.save(1)
    path = latest_checkpoint(ckpt.root)
    with open(path / victim, "wb") as f:
        pickle.dump({"train": Evil()}, f)
    monkeypatch.chdir(tmp_path)
    *_, ckpt2 = setup_run(tmp_path, env)
    with pytest.raises(UnsafeCheckpointError, match=f"{victim}: refused to load"):
        ckpt2.load(path)
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_missing_a_registered_state_names_it(tmp_path, env):
    *_, ckpt = setup_run(tmp_path, env)
    ckpt.save(1)
    path = latest_checkpoint(ckpt.root)
    saved = torch.load(path / "trainer.pt", weights_only=True)
    del saved["loader"]
    torch.save(saved, path / "trainer.pt")
    *_, ckpt2 = setup_run(tmp_path, env)
    with pytest.raises(ValueError, match=r"no state for \['loader'\]"):
        ckpt2.load(path)


def test_a_checkpoint_from_before_spike_detection_resumes_with_a_fresh_window(tmp_path, env, caplog):
    """A state that may start fresh (the spike guard's window) and is missing: a warning, not a refusal."""
    from cpt.config.schema import OnSpike, SpikeConfig
    from cpt.train.spikes import SpikeGuard

    *_, ckpt = setup_run(tmp_path, env)
    ckpt.save(1)
    path = latest_checkpoint(ckpt.root)
    *_, ckpt2 = setup_run(tmp_path, env)
    guard = SpikeGuard(OnSpike.skip, SpikeConfig(), env.device, 1)
    guard.normal.fill_(7)
    ckpt2.states["spikes"] = guard
    ckpt2.load(path)
    assert "holds no 'spikes' state" in caplog.text and guard.normal.item() == 7


def test_a_malicious_value_inside_the_dcp_shards_is_refused(tmp_path, env, monkeypatch):
    """DCP stores non-tensor values (the optimizer's param groups) as pickles inside the shard files and torch's
    planner loads them with weights_only=False; cpt's planner does not. The same file loaded by plain dcp.load runs
    the payload: proof that the test's checkpoint is really malicious."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ckpt"
    dcp.save({"x": torch.arange(4.0), "groups": [{"lr": 0.1, "evil": Evil()}]}, checkpoint_id=str(path))
    target = {"x": torch.zeros(4), "groups": [{"lr": 0.0, "evil": None}]}
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load: it holds a value 'groups.0.evil'"):
        load_dcp(target, path)
    assert not (tmp_path / "pwned").exists()
    dcp.load(target, checkpoint_id=str(path))
    assert (tmp_path / "pwned").exists()


def test_genuine_values_load_through_the_safe_reader(tmp_path, env):
    state = {"x": torch.arange(6.0).reshape(2, 3), "groups": [{"lr": 0.1, "betas": (0.9, 0.95), "params": ["a"]}]}
    dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"))
    target = {"x": torch.zeros(2, 3), "groups": [{"lr": 0.0, "betas": None, "params": None}]}
    load_dcp(target, tmp_path / "ckpt")
    assert torch.equal(target["x"], state["x"]) and target["groups"] == state["groups"]
