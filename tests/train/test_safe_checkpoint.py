"""Loading a checkpoint never runs code, through every command that opens one: a checkpoint whose DCP `.metadata`
is a pickle calling os.system is refused by `resume=`, `cpt.export` and `cpt.evaluate` with one `error:` line naming
the file, and the payload never runs (its marker file is not created). The in-process checks of every file of a
checkpoint (trainer.pt, rng-*.pt, .metadata, values inside the shards) are in test_step_checkpointer.py."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from conftest import TINY, run_cli, run_tiny

pytestmark = pytest.mark.full


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A genuine checkpoint and a copy whose .metadata would create `marker` if unpickled without limits."""
    tmp = tmp_path_factory.mktemp("safe")
    run_dir = run_tiny(tmp, "run", ["trainer.steps=2", "checkpoint.interval=2", "export.enabled=false"])
    genuine = run_dir / "checkpoints" / "step-00000002"
    tampered = tmp / "tampered" / "step-00000002"
    shutil.copytree(genuine, tampered)
    marker = tmp / "PWNED"
    (tampered / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    return genuine, tampered, marker


def _refused(proc, tampered, marker):
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{tampered / '.metadata'}: refused to load" in last, proc.stderr[-3000:]
    assert "posix.system" in last and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_export_refuses_a_malicious_checkpoint(checkpoints, tmp_path):
    genuine, tampered, marker = checkpoints
    _refused(run_cli([str(tampered), "--out", str(tmp_path / "x")], cwd=tmp_path, module="cpt.export"),
             tampered, marker)
    ok = run_cli([str(genuine), "--out", str(tmp_path / "y")], cwd=tmp_path, module="cpt.export")
    assert ok.returncode == 0 and (tmp_path / "y" / "model.safetensors").is_file(), ok.stderr[-3000:]


def test_resume_refuses_a_malicious_checkpoint(checkpoints, tmp_path):
    _, tampered, marker = checkpoints
    proc = run_cli([*TINY, "trainer.steps=4", "resume_allow=[trainer.steps]", f"resume={tampered}",
                    f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    _refused(proc, tampered, marker)


def test_evaluate_refuses_a_malicious_checkpoint(checkpoints, tmp_path):
    _, tampered, marker = checkpoints
    out = tmp_path / "eval"
    proc = run_cli(["data=sample", "data.root=${oc.env:CPT_TEST_DATA_ROOT}", f"+models.x={tampered}", "seq_len=32",
                    "max_tokens=64", "num_threads=1", f"out={out}", f"hydra.run.dir={out}"], cwd=tmp_path,
                   module="cpt.evaluate")
    _refused(proc, tampered, marker)
