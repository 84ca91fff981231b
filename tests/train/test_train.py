"""Training behaviour: the tiny model learns; N ranks under every FSDP strategy reproduce the 1-rank curve for
the same global batch; each launch mode leaves exactly one run directory; failures surface."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from conftest import TINY, rank_env, read_metrics, run_cli, run_tiny, train_losses

TOL = 1e-4
FULL = pytest.mark.full  # the full tier (make test-full); the fast tier keeps one case of each kind


def test_loss_decreases_on_learnable_data(tmp_path):
    run_dir = run_tiny(tmp_path, "learn", ["trainer.steps=40", "trainer.eval_interval=20", "optim.warmup_steps=4"])
    records = read_metrics(run_dir)
    losses = [r["loss"] for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(losses) == 40 and len(vals) == 3  # steps 0, 20, 40
    assert math.isclose(vals[0], math.log(512), rel_tol=0.05)  # random init predicts ~uniformly
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5
    assert vals[-1] < vals[0] - 1.5
    last = records[-2]
    assert last["lr"] == pytest.approx(3e-4, rel=1e-6)  # cosine ends at min_lr_ratio * lr on the last step
    assert last["tokens"] == 40 * 4 * 32 and last["tokens_per_s"] > 0 and last["peak_mem_mib"] > 0
    assert last["mfu"] is None  # CPU with no trainer.peak_flops: unavailable, never guessed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 rank, micro-batch 4: the curve every multi-rank run must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    run_dir = run_tiny(tmp, "ref", ["trainer.micro_batch_size=4"])
    return read_metrics(run_dir)


def _curve(records):
    return [(r["loss"], r["grad_norm"]) for r in records if "loss" in r]


@pytest.mark.parametrize("name,extra", [
    ("accum", ["trainer.micro_batch_size=2", "trainer.grad_accum=2"]),
    ("full_shard", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2", "fsdp=full_shard"]),
    pytest.param("shard_grad_op", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2", "fsdp=shard_grad_op"],
                 marks=FULL),
    # DDP with accumulation: gradients stay local on the first micro-batch (set_requires_gradient_sync)
    pytest.param("no_shard_accum", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=1", "trainer.grad_accum=2",
                                    "fsdp=no_shard"], marks=FULL),
    # offload's initial broadcast and placement: tests/parallel/test_parallel_init.py in the fast tier
    pytest.param("offload", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2", "fsdp=offload"], marks=FULL),
    pytest.param("ac_accum", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=1", "trainer.grad_accum=2",
                              "trainer.activation_checkpointing=true"], marks=FULL),
    # full_shard reducing on the last micro-step only (unsharded gradients between micro-steps), not every one
    pytest.param("accum_last", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=1", "trainer.grad_accum=2",
                                "trainer.accum_reduce=last"], marks=FULL),
    # 2 replicas of 1 shard: reduce-scatter every micro-step, the cross-replica all-reduce on the last one only
    pytest.param("hybrid_accum", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=1", "trainer.grad_accum=2",
                                  "fsdp=hybrid_shard", "fsdp.shard_size=1"], marks=FULL),
    # the plain loss (full logits) against the chunked reference, through FSDP's gathered lm_head
    pytest.param("plain_loss", ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2", "trainer.loss=plain"],
                 marks=FULL),
    pytest.param("compile", ["trainer.compile=true"], marks=FULL),  # ~30 s of inductor compilation
    pytest.param("hybrid_2x2", ["trainer.nproc_per_node=4", "trainer.micro_batch_size=1", "fsdp=hybrid_shard",
                                "fsdp.shard_size=2"], marks=FULL),
])
def test_same_global_batch_same_curve(tmp_path, reference, name, extra):
    run_dir = run_tiny(tmp_path, name, extra)
    records = read_metrics(run_dir)
    if name == "compile":  # Qwen2 blocks compile with fullgraph=True
        assert "every decoder block is one graph" in (run_dir / "train.log").read_text()
    ref, got = _curve(reference), _curve(records)
    assert len(got) == len(ref) == 6
    for (ref_loss, ref_norm), (loss, norm) in zip(ref, got):
        assert abs(loss - ref_loss) <= TOL, (name, ref, got)
        assert abs(norm - ref_norm) <= TOL * max(1.0, ref_norm), (name, ref, got)
    ref_val = [r["val_loss"] for r in reference if "val_loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == len(ref_val) == 2


@FULL
def test_full_shard_holds_half_the_state_of_no_shard(tmp_path):
    common = ["trainer.nproc_per_node=2", "trainer.micro_batch_size=2", "trainer.steps=1"]
    full = read_metrics(run_tiny(tmp_path, "full", [*common, "fsdp=full_shard"]))
    none = read_metrics(run_tiny(tmp_path, "none", [*common, "fsdp=no_shard"]))
    state_full = next(r["state_mib"] for r in full if "state_mib" in r)
    state_none = next(r["state_mib"] for r in none if "state_mib" in r)
    assert state_full <= 0.55 * state_none


def _run_dirs(root):
    return [p for p in (root / "outputs").glob("*/*") if p.is_dir()]


@pytest.mark.parametrize("launcher", [pytest.param("nproc_per_node", marks=FULL), pytest.param("torchrun", marks=FULL)])
def test_one_run_directory_per_run(tmp_path, launcher):
    if launcher == "torchrun":
        proc = run_cli([*TINY, "trainer.micro_batch_size=2"], cwd=tmp_path, torchrun_nproc=2)
    else:
        proc = run_cli([*TINY, "trainer.micro_batch_size=2", "trainer.nproc_per_node=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    dirs = _run_dirs(tmp_path)
    assert len(dirs) == 1, dirs
    run_dir = dirs[0]
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [".hydra", "checkpoints", "config.yaml", "hf", "metrics.jsonl", "summary.json", "train.log"], names
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))  # written once, not once per rank
    log = (run_dir / "train.log").read_text()
    assert log.count("2 ranks, global batch 4") == 1
    assert "micro_batch_size: 2" in (run_dir / "config.yaml").read_text()


@FULL
def test_failing_rank_fails_the_run_with_its_error(tmp_path):
    """A NaN loss under on_nonfinite=stop: every rank raises; the run exits non-zero and shows the error and the fix."""
    env = {**rank_env(), "CPT_FAULT_NAN": "2"}
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "trainer.nproc_per_node=2",
                           "trainer.micro_batch_size=2", "trainer.log_interval=2", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "FloatingPointError: step 2: non-finite loss or gradient norm" in proc.stderr
    assert "trainer.on_nonfinite=skip drops such updates" in proc.stderr


@pytest.mark.full
def test_qwen05b_architecture_random_init_one_step(tmp_path):
    run_dir = tmp_path / "qwen"
    proc = run_cli(["model=qwen0.5b", "model.random_init=true", "model.tokenizer=byte", "trainer.steps=1",
                    "data.root=${oc.env:CPT_TEST_DATA_ROOT}",
                    "trainer.seq_len=16", "trainer.micro_batch_size=1", "trainer.eval_batches=1",
                    "trainer.progress_bar=false", "trainer.num_threads=2", "export.enabled=false",
                    "checkpoint.at_end=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "494,032,768 parameters" in (run_dir / "train.log").read_text()
    records = read_metrics(run_dir)
    (step,) = [r for r in records if "loss" in r]
    assert step["step"] == 1 and math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])
    assert abs(step["loss"] - math.log(151936)) < 1.0  # fresh weights: near-uniform predictions


@FULL
def test_bf16_on_cpu_warns_and_keeps_fp32_master_weights(tmp_path, reference):
    run_dir = run_tiny(tmp_path, "bf16", ["trainer.precision=bf16", "trainer.steps=2"])
    assert "bf16 on CPU" in (run_dir / "train.log").read_text()
    records = read_metrics(run_dir)
    state = next(r["state_mib"] for r in records if "state_mib" in r)
    assert state == next(r["state_mib"] for r in reference if "state_mib" in r)  # fp32 params + fp32 Adam state
    losses, ref = train_losses(run_dir), [r["loss"] for r in reference if "loss" in r]
    assert losses[0] != ref[0] and abs(losses[0] - ref[0]) < 0.05  # bf16 compute: close, not identical


@pytest.mark.full
def test_one_rank_failing_alone_ends_the_run(tmp_path):
    """Rank 1 raises after step 2 while rank 0 goes on into step 3's collectives: the run ends (no rank waits for
    the process-group timeout) with a non-zero status and rank 1's error, and nothing after step 2 is published."""
    run_dir = tmp_path / "r"
    env = {**rank_env(), "CPT_FAULT_RAISE": "1:2"}
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "trainer.nproc_per_node=2",
                           "trainer.micro_batch_size=2", "checkpoint.interval=1", f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "CPT_FAULT_RAISE: rank 1 fails after step 2 on purpose" in proc.stderr, proc.stderr[-3000:]
    assert max(r["step"] for r in read_metrics(run_dir) if "loss" in r) <= 3
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000002" and not (run_dir / "hf").exists()
