"""The rendezvous port of a local submitit job: taken free by rank 0, published in the job folder, read by the
other ranks, kept for a requeued attempt; a rank that never sees it fails with the file named, not a 30-minute wait."""

from __future__ import annotations

import socket
import threading

import pytest

from cpt.parallel.distributed import local_job_port


def test_every_rank_gets_the_port_rank_0_found_free(tmp_path):
    port_file = tmp_path / "123_master_port"
    got = {}
    readers = [threading.Thread(target=lambda r=r: got.__setitem__(r, local_job_port(port_file, r, wait_s=10)))
               for r in (1, 2)]
    for t in readers:  # the other ranks may start first: they wait for rank 0
        t.start()
    got[0] = local_job_port(port_file, 0)
    for t in readers:
        t.join()
    assert got[0] == got[1] == got[2]
    with socket.socket() as s:  # the port was free: the rendezvous store can listen on it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", got[0]))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_requeued_attempt_keeps_the_port(tmp_path):
    port_file = tmp_path / "123_master_port"
    first = local_job_port(port_file, 0)
    assert local_job_port(port_file, 0) == first and local_job_port(port_file, 1) == first


def test_a_rank_without_rank_0_fails_naming_the_file(tmp_path):
    with pytest.raises(RuntimeError, match="123_master_port"):
        local_job_port(tmp_path / "123_master_port", 1, wait_s=0.3)


CLUSTER_EXPORTS = {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "23456", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "8"}


def test_a_submitit_task_on_a_cluster_that_exports_master_and_local_rank_adopts_its_own_rank(tmp_path, monkeypatch):
    """Some clusters export MASTER_ADDR / MASTER_PORT / LOCAL_RANK in every job: submitit's export refused them
    ("already set") and no task started. The task's rank and local rank are submitit's; the cluster's rendezvous
    address and port are kept."""
    from cpt.parallel.launch import adopt_submitit_rank

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**CLUSTER_EXPORTS, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "77",
                       "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                       "SUBMITIT_FOLDER": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    adopt_submitit_rank()
    import os

    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                      "MASTER_PORT")}
    assert got == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "23456"}


@pytest.mark.full  # a whole run
def test_a_lone_run_ignores_the_clusters_rendezvous_exports(tmp_path):
    """One process (no RANK/WORLD_SIZE) on a node whose environment names a rendezvous elsewhere: it trains with a
    private one (it waited to reach 10.1.2.3 until the process group timed out)."""
    import subprocess
    import sys

    from conftest import TINY, rank_env

    env = {**rank_env(), **CLUSTER_EXPORTS, "CPT_FAULT_PG_TIMEOUT": "10"}
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "trainer.steps=1", f"hydra.run.dir={tmp_path}/r"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / "hf" / "model.safetensors").is_file()
