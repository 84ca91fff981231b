"""Sweeps on a real Slurm cluster (launchers/slurm_cluster.sh up; .ci/run starts and stops it) through Hydra's
submitit launcher: every task is one rank; requeue on timeout and on preemption resumes from the job's checkpoint;
a job cancelled from outside fails the sweep promptly. Skipped when no cluster answers, unless CPT_REQUIRE_SLURM=1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, prepared_tree, rank_env, read_metrics, real_corpus, submitit_logs

pytestmark = [pytest.mark.slurm, pytest.mark.full]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    up = shutil.which("sbatch") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0
    if not up:
        message = "no Slurm cluster answers: launchers/slurm_cluster.sh up"
        if os.environ.get("CPT_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


SLURM = ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
         "checkpoint.interval=2", "trainer.micro_batch_size=2"]  # requeueing launchers need periodic checkpoints


def sweep(tmp_path: Path, extra: list[str], env: dict | None = None, wait=True):
    cmd = [sys.executable, "-m", "cpt.run", "-m", *TINY, *SLURM, *extra, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**rank_env(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"sweep still running after 600 s; its tasks' logs:\n{submitit_logs(tmp_path / 'sweep')}")
    assert proc.returncode == 0, f"{err[-3000:]}\n{submitit_logs(tmp_path / 'sweep')}"
    return tmp_path / "sweep"


def final_loss(run_dir: Path) -> float:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}[max(
        r["step"] for r in read_metrics(run_dir) if "loss" in r)]


def job_ids(sweep_dir: Path) -> list[str]:
    return sorted({p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.name[0].isdigit()})


def test_lr_sweep_two_ranks_per_job(tmp_path):
    sweep_dir = sweep(tmp_path, ["optim.lr=1e-3,3e-3"])
    for job in ("0", "1"):
        run_dir = sweep_dir / job
        log = (run_dir / "train.log").read_text()
        assert log.count("2 ranks, global batch 4") == 1  # one log per job, written by rank 0 only
        steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
        assert steps == list(range(1, 7))
        assert (run_dir / "hf" / "model.safetensors").is_file()
    assert final_loss(sweep_dir / "1") != final_loss(sweep_dir / "0")  # the jobs really got their own lr
    (jid,) = job_ids(sweep_dir)
    for _ in range(30):  # accounting records the end a moment after the job's result is in
        states = subprocess.run(["sacct", "-n", "-X", "-j", jid, "-o", "State"], capture_output=True, text=True)
        if states.stdout.split() == ["COMPLETED", "COMPLETED"]:
            break
        time.sleep(1)
    assert states.stdout.split() == ["COMPLETED", "COMPLETED"]


LONG = ["trainer.steps=40", "checkpoint.interval=2", "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same job without SLURM: 2 local ranks give the same numbers as 2 SLURM tasks."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, *LONG, "trainer.micro_batch_size=2",
                           "trainer.nproc_per_node=2", f"hydra.run.dir={tmp / 'run'}"], cwd=tmp, env=rank_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_loss(tmp / "run")


def test_timeout_requeues_and_resumes_to_the_same_loss(tmp_path, uninterrupted):
    """A 2-minute limit on a job of 40 slow steps (>= 2 s each, > 80 s of work): USR2 before the limit, submitit
    requeues, the job resumes from its last checkpoint, as often as it takes.

    Slurm checks limits every 30 s and sends the warning once now + signal_delay + 30 s >= end (its man page: "up to
    60 seconds earlier than specified"). With the earlier 1-minute limit and 30 s delay that was right at the start,
    sometimes before Python had installed submitit's handler, and USR2's default action killed the tasks (a flaky CI
    failure). A 2-minute limit with a 45 s delay sends it 45-75 s into each attempt (15 s at the documented worst):
    the handlers are in place, and the first attempt cannot have finished."""
    sweep_dir = sweep(tmp_path, [*LONG, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=45",
                                 "hydra.launcher.max_num_timeout=6"], env={"CPT_FAULT_SLOW": "2"})
    run_dir = sweep_dir / "0"
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert final_loss(run_dir) == uninterrupted


def _wait_for_step(run_dir: Path, step: int, proc, limit=300) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and any(r.get("step", 0) >= step and "loss" in r for r in read_metrics(run_dir)):
            return
        time.sleep(1)
    raise TimeoutError(f"{run_dir} never reached step {step}")


def resumed_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "resumed_from" in r]


def test_preemption_signal_saves_requeues_and_resumes_to_the_same_loss(tmp_path, uninterrupted):
    """USR2 (a preemption notice) at step >= 5 with no periodic checkpoint before step 20: the ranks save the step
    they are at, stop, and submitit requeues the job, which resumes from that step, not from step 0."""
    proc = sweep(tmp_path, [*LONG, "checkpoint.interval=20", "hydra.launcher.timeout_min=10",
                            "hydra.launcher.max_num_timeout=3"], env={"CPT_FAULT_SLOW": "0.5"}, wait=False)
    run_dir = tmp_path / "sweep" / "0"
    _wait_for_step(run_dir, 5, proc)
    (jid,) = job_ids(tmp_path / "sweep")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-5000:]
    assert "stopping on SIGUSR2" in (run_dir / "train.log").read_text()
    (resumed,) = resumed_steps(run_dir)
    assert 5 <= resumed < 20
    assert final_loss(run_dir) == uninterrupted


def test_sbatch_torchrun_saves_on_usr2_requeues_itself_and_resumes(tmp_path, uninterrupted):
    """launchers/sbatch_torchrun.sh as a user submits it (one torchrun per node, 2 ranks): USR2 to the job's step
    reaches the ranks, not torchrun's agent; they save and stop, rank 0 requeues the job, and the requeued job
    resumes from that step to the uninterrupted run's loss."""
    run_dir = tmp_path / "run"
    script = Path(__file__).resolve().parents[1] / "launchers" / "sbatch_torchrun.sh"
    env = {**rank_env(), "NPROC": "2", "PYTHON": sys.executable, "CPT_FAULT_SLOW": "0.5"}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--open-mode=append", "--cpus-per-task=2", "--time=10", str(script), *TINY, *LONG,
         "checkpoint.interval=20", "trainer.micro_batch_size=2", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    jid = submitted.stdout.strip().split(";")[0]
    out_file = tmp_path / f"cpt-{jid}.out"
    try:
        deadline = time.time() + 300
        while not (run_dir / "metrics.jsonl").is_file() or not any(
                r.get("step", 0) >= 5 and "loss" in r for r in read_metrics(run_dir)):
            assert time.time() < deadline, out_file.read_text()[-3000:] if out_file.is_file() else "no output"
            time.sleep(1)
        subprocess.run(["scancel", "--signal=USR2", jid], check=True)
        deadline = time.time() + 400
        while (state := subprocess.run(["sacct", "-n", "-X", "-j", jid, "-o", "State"], capture_output=True,
                                       text=True).stdout.split()) != ["COMPLETED"]:
            assert time.time() < deadline and not {"FAILED", "CANCELLED", "TIMEOUT"} & set(state), (
                state, out_file.read_text()[-3000:] if out_file.is_file() else "no output")
            time.sleep(2)
    finally:
        subprocess.run(["scancel", jid])
    assert "stopping on SIGUSR2" in (run_dir / "train.log").read_text()
    out = out_file.read_text()  # both attempts (--open-mode=append)
    assert "User defined signal 2" not in out, out[-3000:]  # torchrun's agent did not die of it (the ranks might not
    # have had the time to save had srun's cleanup been quicker)
    (resumed,) = resumed_steps(run_dir)
    assert 5 <= resumed < 20
    assert final_loss(run_dir) == uninterrupted


def test_cancelled_job_fails_the_sweep_promptly(tmp_path):
    proc = sweep(tmp_path, [*LONG, "hydra.launcher.timeout_min=10"], env={"CPT_FAULT_SLOW": "2"}, wait=False)
    _wait_for_step(tmp_path / "sweep" / "0", 2, proc)
    (jid,) = job_ids(tmp_path / "sweep")
    subprocess.run(["scancel", jid], check=True)
    start = time.time()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and time.time() - start < 120
    assert "CANCELLED" in err or "cancel" in err.lower()


def test_a_rank_that_fails_ends_the_whole_job_promptly(tmp_path):
    """Rank 1 raises after step 2 while rank 0 is busy for 5 minutes in no collective (a stall fault): srun ends
    the whole step (cpt.run submits its jobs with SLURM_KILL_BAD_EXIT=1) and the sweep fails within a couple of
    minutes of scheduling, not when rank 0 next reaches a collective (or the process group's 30-minute timeout)."""
    start = time.time()
    proc = sweep(tmp_path, [], env={"CPT_FAULT_RAISE": "1:2", "CPT_FAULT_STALL": "0:2:300"}, wait=False)
    out, err = proc.communicate(timeout=600)
    elapsed = time.time() - start
    logs = submitit_logs(tmp_path / "sweep")
    assert proc.returncode != 0 and "CPT_FAULT_RAISE: rank 1 fails after step 2" in logs, f"{err[-2000:]}\n{logs}"
    assert elapsed < 150, f"the job ended {elapsed:.0f} s after submission: rank 0 was not stopped\n{logs}"


def test_prepare_as_a_job_array_resumes_failed_shards_and_matches_the_local_output(tmp_path):
    """data.executor=slurm on the real cluster: 3 array tasks + the finishing job. Shard 1 fails on purpose: prepare
    names it and stops; the same command again redoes shard 1 only, and the data == a local prepare's."""
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(real_corpus("licenses").glob("*.LICENSE"))[:40]:
        shutil.copy(f, src / f.name)
    shutil.copy(real_corpus("r-manuals", "R-data.pdf"), src / "R-data.pdf")
    common = ["model=tiny", "data=sample", "data.name=mixed", "data.chunk_chars=3000", "data.num_proc=1",
              "data.convert.pdf_pages_per_task=9",
              f"data.sources=[{{name: mixed, paths: ['{src}/*.LICENSE', '{src}/*.pdf']}}]"]

    def prepare(root, *extra, env=None):
        return subprocess.run([sys.executable, "-m", "cpt.prepare", *common, f"data.root={root}", *extra],
                              cwd=tmp_path, env={**rank_env(), **(env or {})}, capture_output=True, text=True,
                              timeout=600)

    local = prepare(tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    on_slurm = ["data.executor=slurm", "data.slurm.shards=3"]
    failed = prepare(tmp_path / "slurm", *on_slurm, env={"CPT_FAULT_FAIL_SHARD": "1"})
    assert failed.returncode == 2
    assert "error: 1 of 3 shards failed (1)" in failed.stderr and "Run the same command again" in failed.stderr
    (work,) = (tmp_path / "slurm").glob(".mixed.work-*")
    assert sorted(p.name for p in work.glob("shard-*.jsonl")) == ["shard-00000.jsonl", "shard-00002.jsonl"]

    again = prepare(tmp_path / "slurm", *on_slurm)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 shards, 2 already done" in again.stderr and "shards 1\n" in again.stderr
    assert not work.exists()  # the work directory goes once the data is published
    assert prepared_tree(tmp_path / "slurm" / "mixed") == prepared_tree(tmp_path / "local" / "mixed")
