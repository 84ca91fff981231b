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
