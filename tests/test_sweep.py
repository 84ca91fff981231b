"""Sweeps with the local submitit launcher (2 ranks per job, one job at a time), W&B offline (one run per job; its
id kept across a resume: tests/train/test_checkpoint.py) and `python -m cpt.report` (numbers = the metrics files;
PNGs)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import TINY, rank_env, read_metrics, read_wandb_offline, run_sweep

pytestmark = pytest.mark.full  # the full tier: make test-full


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "cpt.run", "-m", *TINY, "hydra/launcher=local", "trainer.micro_batch_size=2",
           "trainer.eval_interval=3", "optim.lr=1e-3,3e-3", "logger=wandb", f"hydra.sweep.dir={tmp / 'sweep'}"]
    run_sweep(cmd, cwd=tmp, sweep_dir=tmp / "sweep")
    return tmp / "sweep"


def test_local_sweep_runs_each_job_on_two_ranks_one_after_another(local_sweep):
    from datetime import datetime

    for job in ("0", "1"):
        log = (local_sweep / job / "train.log").read_text()
        assert log.count("2 ranks, global batch 4") == 1
        assert [r["step"] for r in read_metrics(local_sweep / job) if "loss" in r] == list(range(1, 7))
    job0_end = (local_sweep / "0" / "metrics.jsonl").stat().st_mtime
    job1_start = datetime.strptime((local_sweep / "1" / "train.log").read_text()[1:24], "%Y-%m-%d %H:%M:%S,%f")
    assert job1_start.timestamp() >= job0_end - 1  # the second job started after the first one finished


def test_wandb_offline_one_run_per_job(local_sweep):
    for job in ("0", "1"):
        runs = list((local_sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one per job, not one per rank
        assert "logging offline" in (local_sweep / job / "train.log").read_text()
        assert (local_sweep / job / "wandb").is_dir() and list(runs[0].glob("run-*.wandb"))
    ids = {next((local_sweep / j / "wandb").glob("offline-run-*")).name.rsplit("-", 1)[1] for j in ("0", "1")}
    assert len(ids) == 2
    # what each W&B run holds: group = the sweep, name = the job's overrides, the job's resolved config, and the
    # same numbers as its metrics.jsonl
    for job, lr, swept in (("0", 1e-3, "optim.lr=0.001"), ("1", 3e-3, "optim.lr=0.003")):
        (start,) = read_wandb_offline(local_sweep / job)
        group, name, run_id = start["run"]
        assert group == str(local_sweep) and swept in name.split(",") and run_id in ids, start["run"]
        assert start["config"]["optim"]["lr"] == lr and start["config"]["trainer"]["steps"] == 6
        logged = {(row["_step"], row["loss"]) for row in start["history"] if "loss" in row}
        assert logged == {(r["step"], r["loss"]) for r in read_metrics(local_sweep / job) if "loss" in r}


def test_report_matches_the_metrics_and_draws_valid_pngs(local_sweep):
    proc = subprocess.run([sys.executable, "-m", "cpt.report", str(local_sweep)], capture_output=True, text=True,
                          env=rank_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["job"]: r for r in csv.DictReader(open(local_sweep / "report.csv"))}
    assert set(rows) == {"0", "1"}
    for job, row in rows.items():
        records = read_metrics(local_sweep / job)
        train = [r for r in records if "loss" in r]
        vals = [r["val_loss"] for r in records if "val_loss" in r]
        assert float(row["final_loss"]) == train[-1]["loss"]
        assert float(row["min_val_loss"]) == min(vals)
        assert row["status"] == "completed" and int(row["steps"]) == 6
        assert row["overrides"] == ("optim.lr=0.001" if job == "0" else "optim.lr=0.003")
    lowest = min(rows.values(), key=lambda r: float(r["min_val_loss"]))["job"]
    assert f"**{lowest}** (lowest val loss)" in (local_sweep / "report.md").read_text()
    import matplotlib.image

    for name in ("train_loss.png", "val_loss.png"):
        data = (local_sweep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(local_sweep / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # decodes, and is not blank
