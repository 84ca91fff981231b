"""Checkpoints: kill a rank or a save anywhere, rerun the same command, and training goes on bit for bit; keep-last-K;
resharding 2 -> 1 and 1 -> 2 ranks; async == sync; NaN never reaches disk; any checkpoint exports to transformers.

Faults are injected through environment variables (cpt/common/faults.py); the rerun is the same command without them."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import TINY, assert_resumed, rank_env, read_metrics, run_cli

STEPS = 6
TWO = ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2"]  # global batch 4, as ONE below
ONE = ["trainer.micro_batch_size=4"]
FULL = pytest.mark.full  # the full tier (make test-full)


def run(tmp_path, name, extra, fault: dict | None = None, ok=True):
    run_dir = tmp_path / name
    env = {**rank_env(), **(fault or {})}
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "checkpoint.interval=2", *extra,
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-5000:]
    return run_dir, proc


def curve(run_dir):
    """(loss, grad_norm) per step; where a resumed run logged a step twice, the last record wins."""
    by_step = {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r}
    return [by_step[s] for s in sorted(by_step)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir, _ = run(tmp_path_factory.mktemp("ref"), "ref", TWO)  # checkpoints at 2, 4, 6; keeps 4 and 6
    return run_dir


@pytest.fixture(scope="module")
def reference(reference_run):
    return curve(reference_run)


@FULL  # the fast tier resumes after SIGUSR2 (test_sigusr2_...) on the same curve
def test_sigkill_one_rank_then_rerun_is_bit_identical(tmp_path, reference):
    """Also with W&B (offline): the rerun continues the same W&B run id."""
    wandb = ["logger=wandb"]
    run_dir, proc = run(tmp_path, "r", [*TWO, *wandb], {"CPT_FAULT_KILL": "1:3"}, ok=False)
    assert proc.returncode != 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    run(tmp_path, "r", [*TWO, *wandb])  # the same command again
    assert_resumed(run_dir, [2])
    assert curve(run_dir) == reference  # exact float equality, step by step, loss and grad norm
    starts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(starts) == 2 and len({p.name.rsplit("-", 1)[1] for p in starts}) == 1  # two starts, one W&B run


@FULL
def test_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, reference):
    run_dir, proc = run(tmp_path, "r", TWO, {"CPT_FAULT_CRASH_IN_SAVE": "4"}, ok=False)
    ckpts = run_dir / "checkpoints"
    assert proc.returncode != 0 and (ckpts / ".tmp-step-00000004").is_dir()
    assert (ckpts / "latest").read_text() == "step-00000002"
    run(tmp_path, "r", TWO)
    log = (run_dir / "train.log").read_text()
    assert "removing the partial checkpoint" in log and "step-00000002 (step 2)" in log
    assert_resumed(run_dir, [2])
    assert not list(ckpts.glob(".tmp-*"))
    assert curve(run_dir) == reference


@FULL
def test_keep_last_k(tmp_path):
    run_dir, _ = run(tmp_path, "k", [*ONE, "checkpoint.interval=1", "checkpoint.keep_last=2"])
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000005", "step-00000006"]
    assert (ckpts / "latest").read_text() == "step-00000006"
    meta = json.loads((ckpts / "step-00000006" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["world_size"] == 1


@FULL
@pytest.mark.parametrize("first,second", [(TWO, ONE), (ONE, TWO)], ids=["2to1", "1to2"])
def test_resharded_resume_continues_the_curve(tmp_path, reference, first, second):
    run(tmp_path, "r", [*first, "checkpoint.interval=3"], {"CPT_FAULT_KILL": "0:3"}, ok=False)  # dies after saving 3
    run_dir, _ = run(tmp_path, "r", [*second, "checkpoint.interval=3"])
    assert_resumed(run_dir, [3])
    got = curve(run_dir)
    assert len(got) == STEPS
    for (loss, norm), (ref_loss, ref_norm) in zip(got, reference):
        assert abs(loss - ref_loss) < 1e-4 and abs(norm - ref_norm) < 1e-4 * max(1, ref_norm)
    if first is TWO:
        assert "written by 2 ranks, this run has 1" in (run_dir / "train.log").read_text()


@FULL
def test_async_save_is_published_once_written_and_a_kill_after_it_resumes_from_it(tmp_path, reference):
    """Steps take >= 1 s (a slow-step fault), so step 4's background write is complete during step 5: rank 0
    publishes it then, and a SIGKILL after step 5 resumes from step 4 (a save published only at the next save was
    deleted as partial on restart, and the run fell back to step 2). The rerun equals the uninterrupted run."""
    slow = {"CPT_FAULT_SLOW": "1"}
    run_dir, _ = run(tmp_path, "a", [*TWO, "checkpoint.async_save=true"], {**slow, "CPT_FAULT_KILL": "0:5"}, ok=False)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000004"
    run(tmp_path, "a", [*TWO, "checkpoint.async_save=true"])
    assert "removing the partial checkpoint" not in (run_dir / "train.log").read_text()
    assert_resumed(run_dir, [4])
    assert curve(run_dir) == reference


def test_sigusr2_saves_at_the_next_log_step_stops_and_the_rerun_resumes_there(tmp_path, reference):
    """Only rank 1 gets SIGUSR2 (Slurm's warning before a time limit), after step 3, and no checkpoint is due before
    step 5: the ranks agree at the next log step (4), both save step 4 and stop without exporting; the same command
    again resumes from step 4 and ends on the uninterrupted curve."""
    extra = [*TWO, "checkpoint.interval=5", "trainer.log_interval=2"]
    run_dir, _ = run(tmp_path, "p", extra, {"CPT_FAULT_SIGNAL": "1:3"})
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000004"
    records = read_metrics(run_dir)
    assert {"step": 4, "stopped": "SIGUSR2"} in records and max(r["step"] for r in records if "loss" in r) == 4
    assert "stopping on SIGUSR2" in (run_dir / "train.log").read_text() and not (run_dir / "hf").exists()
    run(tmp_path, "p", extra)
    assert_resumed(run_dir, [4])
    assert curve(run_dir) == reference[1::2]  # steps 2, 4, 6


def _checkpoint_tensors(path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(path)).read_metadata()
    state = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in meta.state_dict_metadata.items()
             if isinstance(v, TensorStorageMetadata)}
    dcp.load(state, checkpoint_id=str(path))
    return state


def test_nan_is_skipped_and_never_reaches_disk(tmp_path):
    run_dir, _ = run(tmp_path, "s", [*ONE, "checkpoint.interval=1", "checkpoint.keep_last=10",
                                     "trainer.on_nonfinite=skip"], {"CPT_FAULT_NAN": "3"})
    records = {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}
    assert math.isnan(records[3]["loss"]) and records[3]["skipped_steps"] == 1
    assert all(math.isfinite(records[s]["loss"]) for s in (1, 2, 4, 5, 6))
    ckpts = run_dir / "checkpoints"
    step2, step3 = _checkpoint_tensors(ckpts / "step-00000002"), _checkpoint_tensors(ckpts / "step-00000003")
    for step in range(1, STEPS + 1):
        assert all(torch.isfinite(t).all() for t in _checkpoint_tensors(ckpts / f"step-{step:08d}").values())
    weights = [k for k in step2 if k.startswith("model.")]
    assert weights and all(torch.equal(step2[k], step3[k]) for k in weights)  # the NaN step changed nothing


@FULL  # the fast tier keeps the skip case (test_nan_is_skipped_...)
def test_nan_stops_the_run_by_default_and_keeps_the_last_checkpoint(tmp_path):
    run_dir, proc = run(tmp_path, "n", [*ONE, "checkpoint.interval=1"], {"CPT_FAULT_NAN": "3"}, ok=False)
    assert proc.returncode != 0 and "step 3: non-finite loss" in proc.stderr and "on_nonfinite=skip" in proc.stderr
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000002"


@FULL
def test_resume_none_and_explicit_path(tmp_path, reference, reference_run):
    run_dir, _ = run(tmp_path, "x", [*TWO, f"resume={reference_run / 'checkpoints' / 'step-00000004'}"])
    assert curve(run_dir) == reference[4:]
    again, _ = run(tmp_path, "x", [*TWO, "resume=none"])
    assert "resume=none: starting fresh" in (again / "train.log").read_text()
    by_step = [r for r in read_metrics(again) if "loss" in r]
    assert [(r["loss"], r["grad_norm"]) for r in by_step[-STEPS:]] == reference


@FULL
def test_any_checkpoint_exports_to_transformers(tmp_path):
    """A checkpoint that is not the latest (step 4 of 6) exports to exactly its own weights; the latest exports to
    the same model as the run's end-of-run export."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir, _ = run(tmp_path, "e", TWO)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-00000006"
    for step in (4, 6):
        proc = run_cli([str(ckpts / f"step-{step:08d}"), "--out", str(tmp_path / f"exp{step}")], cwd=tmp_path,
                       module="cpt.export")
        assert proc.returncode == 0, proc.stderr[-3000:]
    exported = load_file(tmp_path / "exp4" / "model.safetensors")
    saved = {k.removeprefix("model."): v for k, v in _checkpoint_tensors(ckpts / "step-00000004").items()
             if k.startswith("model.")}
    assert set(exported) <= set(saved) and len(exported) > 0
    for name, tensor in exported.items():
        assert torch.equal(tensor, saved[name]), name
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "exp6")
    b = AutoModelForCausalLM.from_pretrained(run_dir / "hf")  # the end-of-run export of the same weights
    c = AutoModelForCausalLM.from_pretrained(tmp_path / "exp4")
    x = torch.tensor([[72, 101, 108, 108, 111, 32, 119]])
    with torch.no_grad():
        assert torch.equal(a(input_ids=x).logits, b(input_ids=x).logits)
        assert not torch.equal(c(input_ids=x).logits, b(input_ids=x).logits)  # step 4 is another model
    assert os.path.isfile(tmp_path / "exp4" / "tokenizer.json")
