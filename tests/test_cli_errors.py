"""A user error ends every command with one `error: <message>` line on stderr and a non-zero exit, no traceback
(with HYDRA_FULL_ERROR set or not); any other error keeps its traceback (cpt.common.errors)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import rank_env
from cpt.common.errors import EXIT_USER_ERROR, UserError, user_errors


def cli(module: str, args: list[str], cwd, full_error: bool = True) -> subprocess.CompletedProcess:
    env = rank_env()
    if not full_error:
        env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error: ` line, after checking the exit status and that no traceback was printed."""
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("full_error", [True, False], ids=["HYDRA_FULL_ERROR=1", "HYDRA_FULL_ERROR-unset"])
def test_run_config_error_names_the_key(tmp_path, full_error):
    proc = cli("cpt.run", ["fsdp=hybrid_shard", "fsdp.shard_size=3", "trainer.nproc_per_node=2",
                           f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, full_error)
    assert "fsdp.shard_size" in error_line(proc)


@pytest.mark.parametrize("nproc", [1, 2])
def test_run_on_unprepared_data_says_to_prepare(tmp_path, nproc):
    """Checked before any rank starts: N local ranks end the same way as one process."""
    (tmp_path / "empty").mkdir()
    proc = cli("cpt.run", [f"data.root={tmp_path / 'empty'}", f"trainer.nproc_per_node={nproc}",
                           f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    line = error_line(proc)
    assert "no prepared data 'sample'" in line and "python -m cpt.prepare data=sample" in line


def test_prepare_strict_stop_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A perfectly ordinary paragraph of English text, long enough."}\n{"text": "broken\n')
    proc = cli("cpt.prepare", [f"data.root={tmp_path / 'data'}", "data.name=bad", "data.strict=true",
                               f"data.sources=[{{name: bad, paths: ['{bad}']}}]"], tmp_path, full_error=False)
    line = error_line(proc)
    assert f"{bad}:2: invalid JSON" in line and "data.strict=true" in line
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".logs"]  # no temporary directory left


def test_generate_with_a_missing_model(tmp_path):
    proc = cli("cpt.generate", [str(tmp_path / "no-model"), "--prompt", "Hello"], tmp_path)
    assert f"cannot load model '{tmp_path / 'no-model'}'" in error_line(proc)


def test_export_with_a_missing_checkpoint(tmp_path):
    proc = cli("cpt.export", [str(tmp_path / "no-run")], tmp_path)
    assert f"{tmp_path / 'no-run'} is not a complete checkpoint" in error_line(proc)


def test_only_user_errors_are_shortened(capsys):
    @user_errors
    def main(error: Exception):
        raise error

    with pytest.raises(SystemExit) as exit_:
        main(UserError("first line\n  second line"))
    assert exit_.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: first line second line\n"
    with pytest.raises(KeyError):  # a bug keeps its traceback
        main(KeyError("x"))


def test_decorated_mains_pickle_for_submitit():
    """Hydra's submitit launcher pickles the task function (cloudpickle): the decorator must not capture anything
    unpicklable (a contextmanager-based one held a generator and broke every sweep)."""
    import cloudpickle

    from cpt import run

    task = run.main.__wrapped__  # what @hydra.main hands to the launcher: the @user_errors-wrapped function
    restored = cloudpickle.loads(cloudpickle.dumps(task))
    assert restored.__name__ == "main" and restored.__wrapped__ is not None


def test_a_requeueing_slurm_sweep_without_periodic_checkpoints_is_refused_before_submission(tmp_path):
    """Checked by the submitting process (no cluster needed: nothing is queued)."""
    proc = cli("cpt.run", ["-m", "hydra/launcher=slurm", "optim.lr=1e-3,3e-3", f"hydra.sweep.dir={tmp_path / 's'}"],
               tmp_path)
    line = error_line(proc)
    assert "checkpoint.interval" in line and "max_num_timeout=3" in line and "start again from step 0" in line
    assert not (tmp_path / "s").exists()


def test_slurm_sweeps_are_submitted_with_kill_on_bad_exit(monkeypatch):
    from omegaconf import OmegaConf

    from cpt.parallel.sweep_checks import SweepChecks

    def config(target, interval=2):
        return OmegaConf.create({"hydra": {"launcher": {"_target_": target, "max_num_timeout": 3}},
                                 "checkpoint": {"interval": interval}})

    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    monkeypatch.setattr("cpt.parallel.sweep_checks.check_every_job", lambda config: None)  # tested below, end to end
    monkeypatch.delenv("SLURM_KILL_BAD_EXIT", raising=False)
    SweepChecks().on_multirun_start(config("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"))
    assert "SLURM_KILL_BAD_EXIT" not in os.environ
    SweepChecks().on_multirun_start(config(slurm))
    assert os.environ["SLURM_KILL_BAD_EXIT"] == "1"
    monkeypatch.setenv("SLURM_KILL_BAD_EXIT", "0")  # the user's explicit choice stays
    SweepChecks().on_multirun_start(config(slurm))
    assert os.environ["SLURM_KILL_BAD_EXIT"] == "0"
    with pytest.raises(SystemExit):
        SweepChecks().on_multirun_start(config(slurm, interval=0))


def test_a_sweep_with_a_bad_job_fails_before_any_job_starts(tmp_path):
    """Job 1 of 3 has a bad value: the sweep stops in seconds naming it (and only it), no job directory exists. It
    used to train job 0 to the end first."""
    from conftest import TINY

    proc = cli("cpt.run", ["-m", *TINY, "optim.lr=1e-3,-1,2e-3", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path)
    line = error_line(proc)
    assert line.startswith("error: 1 of 3 jobs of this sweep cannot run, so none was started: job 1 (")
    assert "optim.lr=-1): config key 'optim.lr': must be > 0" in line and "job 0" not in line
    assert not (tmp_path / "s").exists()
