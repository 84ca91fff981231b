"""Finite loss spikes (cpt/train/spikes.py, trainer.on_spike): a spike injected with its batch (CPT_FAULT_SPIKE) is
skipped like an update that never happened, rolled back past its batch exactly as a run told to skip that batch,
decided the same after a SIGKILL and resume, stops the run with the fix, and names the documents it came from;
a normal run raises none at the defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import TINY, assert_resumed, rank_env, read_metrics

FAST = ["trainer.spike.min_steps=4", "trainer.steps=12"]  # detection from step 5 in a short run
FULL = pytest.mark.full  # the full tier (make test-full): the fast tier keeps the skip test


def run(tmp_path, name, extra, fault=None, ok=True):
    run_dir = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, *FAST, *extra, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env={**rank_env(), **(fault or {})}, capture_output=True, text=True,
                          timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-5000:]
    return run_dir, proc


def weights(run_dir):
    return load_file(run_dir / "hf" / "model.safetensors")


def spikes(run_dir):
    return [r for r in read_metrics(run_dir) if "spike_action" in r]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] == wb[key]).all(), key


def test_a_skipped_spike_leaves_the_weights_of_a_run_whose_update_never_happened(tmp_path):
    """The spike's update is dropped on the device: the weights equal those of a run whose update at that step was
    dropped for a NaN (trainer.on_nonfinite=skip), and the spike is logged with its batch and documents."""
    spiked, _ = run(tmp_path, "spiked", [], {"CPT_FAULT_SPIKE": "8"})
    dropped, _ = run(tmp_path, "dropped", ["trainer.on_nonfinite=skip", "trainer.on_spike=off"],
                     {"CPT_FAULT_NAN": "8"})
    (event,) = spikes(spiked)
    assert event["step"] == 8 and event["spike_batch"] == 8 and event["spike_action"] == "skip"
    assert event["spike_loss"] > event["spike_loss_band"] and event["spike_documents"]
    detail = json.loads((spiked / "spikes" / "step-00000008.json").read_text())
    assert len(detail["windows"]) == 4 and all(w["documents"] for w in detail["windows"])  # global batch 4
    assert_same_weights(spiked, dropped)


@FULL
def test_rollback_passes_over_the_batch_and_equals_a_run_told_to_skip_it(tmp_path):
    rolled, proc = run(tmp_path, "rolled", ["trainer.on_spike=rollback", "checkpoint.interval=3"],
                       {"CPT_FAULT_SPIKE": "8"})
    records = read_metrics(rolled)
    assert {"step": 6, "rolled_back_from": 8, "skip_batches": [8]} in records
    assert "rolled back to step-00000006" in (rolled / "train.log").read_text()
    told, _ = run(tmp_path, "told", ["checkpoint.interval=3", "trainer.skip_batches=[8]"])
    assert_same_weights(rolled, told)
    last = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert last[12] == {r["step"]: r["loss"] for r in read_metrics(told) if "loss" in r}[12]


@FULL
def test_detection_state_survives_sigkill_and_resume(tmp_path):
    """Killed after step 7 (checkpoint at 6), rerun: the spike at step 10 gets the same band, hence the same
    decision, as in the uninterrupted run, and the weights end the same."""
    straight, _ = run(tmp_path, "straight", ["checkpoint.interval=3"], {"CPT_FAULT_SPIKE": "10"})
    _, proc = run(tmp_path, "killed", ["checkpoint.interval=3"], {"CPT_FAULT_SPIKE": "10", "CPT_FAULT_KILL": "0:7"},
                  ok=False)
    assert proc.returncode != 0
    killed, _ = run(tmp_path, "killed", ["checkpoint.interval=3"], {"CPT_FAULT_SPIKE": "10"})
    assert_resumed(killed, [6])
    assert spikes(killed) == [{**e, "spike_detail": e["spike_detail"].replace("straight", "killed")}
                              for e in spikes(straight)]
    assert_same_weights(killed, straight)


@FULL
@pytest.mark.parametrize("policy,extra,says", [
    ("stop", [], "trainer.on_spike=stop"),
    ("rollback", ["checkpoint.interval=3", "trainer.spike.max_rollbacks=0"], "trainer.spike.max_rollbacks=0"),
])
def test_stop_and_the_rollback_limit_end_the_run_with_the_fix(tmp_path, policy, extra, says):
    run_dir, proc = run(tmp_path, policy, [f"trainer.on_spike={policy}", *extra], {"CPT_FAULT_SPIKE": "8"}, ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: step 8:") and says in error and "trainer.skip_batches=[8]" in error
    assert max(r["step"] for r in read_metrics(run_dir) if "loss" in r) == 8
    # the fix it names works: the same command passing over that batch ends, and meets no spike
    again, _ = run(tmp_path, policy, [f"trainer.on_spike={policy}", *extra, "trainer.skip_batches=[8]"],
                   {"CPT_FAULT_SPIKE": "8"})
    assert max(r["step"] for r in read_metrics(again) if "loss" in r) == 12 and len(spikes(again)) == 1


@FULL
def test_no_spike_in_a_normal_run_at_the_defaults(tmp_path):
    run_dir, _ = run(tmp_path, "normal", ["trainer.steps=100", "trainer.spike.min_steps=20", "trainer.log_interval=10",
                                          "export.enabled=false"])
    assert len([r for r in read_metrics(run_dir) if "loss" in r]) == 10 and spikes(run_dir) == []
