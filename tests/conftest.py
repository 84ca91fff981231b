"""Shared helpers: compose configs with Hydra's compose API, run `python -m cpt.run` / torchrun as the user
would, and read a run's metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# tests never reach a model hub: fail fast instead of retrying for a minute
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import cpt.config.schema  # noqa: F401,E402  (registers the schema)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# small, fast, learnable: the tiny model on the sample text, per-step logs, no progress bar
TINY = [
    "model=tiny", "data=sample", "data.root=${oc.env:CPT_TEST_DATA_ROOT}", "trainer.seq_len=32", "trainer.steps=6",
    "trainer.log_interval=1", "trainer.eval_interval=0",
    "trainer.eval_batches=2", "trainer.progress_bar=false", "trainer.num_threads=1", "optim.lr=3e-3",
]


def real_corpus(name: str, *parts: str) -> Path:
    """A file or folder of a real corpus (cpt.corpora); skipped when missing, or failed with CPT_REQUIRE_CORPORA=1."""
    from cpt.assets.corpora import corpus_path

    path = corpus_path(name).joinpath(*parts)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        message = (f"corpus '{name}' not found at {path}: run `python -m cpt.corpora` "
                   "(R manuals: apt-get install r-doc-pdf; PostgreSQL HTML: apt-get install postgresql-doc-15)")
        if os.environ.get("CPT_REQUIRE_CORPORA") == "1":
            pytest.fail(message + " (CPT_REQUIRE_CORPORA=1)")
        pytest.skip(message)
    return path


def offline_source(name: str) -> Path:
    """An offline model source (cpt.sources): built if cached or required (CPT_REQUIRE_CORPORA=1, CI), else the test
    is skipped."""
    from cpt.assets.models import cache_root, source_path

    if not (cache_root() / name).is_dir() and os.environ.get("CPT_REQUIRE_CORPORA") != "1":
        pytest.skip(f"offline source {name} not built: python -m cpt.sources")
    return source_path(name)


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def rank_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CPT_RUN_STAMP",
                "WANDB_MODE", "WANDB_API_KEY"):  # W&B in tests: offline, as with no key configured
        env.pop(key, None)
    return env


def submitit_logs(sweep_dir: Path, chars: int = 3000) -> str:
    """The tail of every task's stderr of a submitit sweep: what a failed or hung job said."""
    tails = [f"--- {p.name}:\n{p.read_text(errors='replace')[-chars:]}"
             for p in sorted(sweep_dir.glob(".submitit/*/*_log.err"))]
    return "\n".join(tails) or f"(no task logs under {sweep_dir}/.submitit)"


def run_sweep(cmd: list[str], cwd: Path, sweep_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a `-m` sweep; a failure or a timeout shows the jobs' own logs, not only the launcher's."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=rank_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sweep still running after {timeout} s; its tasks' logs:\n{submitit_logs(sweep_dir)}")
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{submitit_logs(sweep_dir)}"
    return proc


def prepared_tree(root: Path) -> dict:
    """Every file of prepared data, byte for byte, less the manifest's timing fields."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            for key in ("created", "seconds", "stage_seconds", "cpu_seconds"):
                manifest.pop(key)
            data = json.dumps(manifest, sort_keys=True).encode()
        out[str(path.relative_to(root))] = data
    return out


def run_cli(args: list[str], cwd: Path, torchrun_nproc: int = 0, timeout: int = 600,
            module: str = "cpt.run") -> subprocess.CompletedProcess:
    if torchrun_nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_nproc}",
               "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=rank_env(), capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_wandb_offline(run_dir: Path) -> list[dict]:
    """Every start of a run's offline W&B log, oldest first: {"run": (group, name, id), "job_type",
    "config": {key: value}, "history": [{key: value}]}. wandb ships no reader of its `.wandb` files: a LevelDB-style
    log of 32 KiB blocks, each record <crc32:4><length:2><type:1> (1 full, 2 first, 3 middle, 4 last) of a protobuf
    Record. "summary": the keys the run set in its summary (wandb also writes history keys' last values there)."""
    from wandb.proto import wandb_internal_pb2 as pb

    starts = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, payloads, pending = path.read_bytes(), 7, [], b""  # after the ':W&B' + version header
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 2):
                pending = payload
            elif kind in (3, 4):
                pending += payload
            if kind in (1, 4):
                payloads.append(pending)
        start = {"run": None, "job_type": None, "config": {}, "history": [], "summary": {}}
        for raw in payloads:
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                start["run"] = (record.run.run_group, record.run.display_name, record.run.run_id)
                start["job_type"] = record.run.job_type
                start["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "history":
                start["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                         for i in record.history.item})
            elif kind == "summary":
                start["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                         for i in record.summary.update})
        starts.append(start)
    return starts


def assert_resumed(run_dir: Path, steps: list[int]) -> None:
    """The run restarted from checkpoints of exactly these steps, and no step up to a resume point was trained twice
    (a restart that ignored its checkpoint and began again would log them again)."""
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "resumed_from" in r] == steps, records
    trained = [r["step"] for r in records if "loss" in r]
    for step in steps:
        again = [s for s in trained if s <= step]
        assert len(again) == len(set(again)), f"steps up to {step} were trained twice: {sorted(again)}"


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def run_tiny(tmp_path: Path, name: str, extra: list[str], **kw) -> Path:
    run_dir = tmp_path / name
    proc = run_cli([*TINY, *extra, f"hydra.run.dir={run_dir}"], cwd=tmp_path, **kw)
    assert proc.returncode == 0, f"run {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return run_dir


@pytest.fixture(scope="session", autouse=True)
def sample_data(tmp_path_factory):
    """The sample corpus prepared once per session; runs find it through CPT_TEST_DATA_ROOT."""
    from cpt.config.schema import to_run_config
    from cpt.data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    os.environ["CPT_TEST_DATA_ROOT"] = str(root)
    return prepare(to_run_config(compose_cfg(["model=tiny", "data=sample", f"data.root={root}"])))


@pytest.fixture(scope="session")
def byte_tokenizer_dir(tmp_path_factory) -> Path:
    """cpt's byte tokenizer saved as a transformers tokenizer (byte-level BPE, no merges, EOS 256): a real
    transformers tokenizer that needs no download, for vocabulary extension and bits-per-byte tests."""
    from cpt.model.tokenizer import ByteTokenizer

    out = tmp_path_factory.mktemp("byte_tokenizer")
    ByteTokenizer().save_pretrained(out)
    return out
