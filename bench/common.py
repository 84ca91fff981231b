"""What every comparison in bench/ shares: model sizes, the prepared sample data, running one side in its own
process, alternating the sides over repetitions, and printing medians and ratios as markdown for BENCHMARKS.md.

Every side runs in a fresh process (peak RSS is per process; no warm caches carry over), the sides alternate
(A B, B A, A B, ...) so slow drift of a shared machine hits both, and only ratios measured in one invocation are
claims: absolute tokens/s on shared cores move by 10-20% between runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CPT_BENCH_DATA", Path(tempfile.gettempdir()) / "cpt-bench-data"))

# Qwen2-architecture models over bytes (vocabulary 512), random init. "tiny" only checks that a script runs.
SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, inter=256, seq=64, batch=2),
    "small": dict(hidden=256, layers=4, heads=8, inter=1024, seq=128, batch=4),  # 3.9M parameters
    "medium": dict(hidden=512, layers=8, heads=8, inter=2048, seq=256, batch=4),  # 30.7M parameters
    # Qwen2.5's vocabulary on a small body: where the loss's logits, not the model, decide the memory
    "vocab151k": dict(hidden=64, layers=2, heads=4, inter=256, seq=1024, batch=4, vocab=151_936),
}


# the Qwen2.5-0.5B architecture with fresh weights over the bench's byte tokens (the GPU machine needs no assets)
QWEN05B = ["model=qwen0.5b", "model.random_init=true", "model.tokenizer=byte", "model.tokenizer_fallback=null"]


def data_overrides(data_root: Path = DATA_ROOT) -> list[str]:
    corpus = data_root / "bench.jsonl"
    return ["data=sample", "data.name=bench", f"data.root={data_root}",
            f"data.sources=[{{name: bench, paths: ['{corpus}'], weight: 1.0}}]"]


def run_overrides(size: str, data_root: Path = DATA_ROOT) -> list[str]:
    """cpt overrides for a bench model and batch; cpt.run and the bare/HF sides read the same values. Document
    masking is off: the bare loop and HF Trainer attend across packed documents, so all sides do the same math
    (bench/doc_masking.py measures what masking costs)."""
    s = SIZES[size]
    return [*data_overrides(data_root), "model=tiny", f"model.arch.hidden_size={s['hidden']}",
            f"model.arch.intermediate_size={s['inter']}",
            f"model.arch.num_hidden_layers={s['layers']}", f"model.arch.num_attention_heads={s['heads']}",
            f"trainer.seq_len={s['seq']}", f"trainer.micro_batch_size={s['batch']}",
            f"model.arch.vocab_size={s.get('vocab', 512)}", "optim.lr=1e-3", "trainer.num_threads=1",
            "trainer.doc_masking=false"]


def arg_parser(doc: str, reps: int, steps: int = 40, warmup: int = 10) -> argparse.ArgumentParser:
    """The options every comparison takes: model size, repetitions per side, steps and warm-up steps (untimed)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=list(SIZES))
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=warmup, help="steps excluded from timing")
    return ap


def prepare_data(data_root: Path = DATA_ROOT, docs: int = 400, words: int = 1500) -> None:
    """A synthetic corpus (seeded random word sequences over the packaged sample's vocabulary: no download, no
    near-duplicates; ~4.7M byte tokens, enough validation text for seq 2048), prepared once with the byte
    tokenizer and shared by all sides. Throughput does not depend on what the text says."""
    if (data_root / "bench" / "manifest.json").exists():
        return
    import random

    sample = [json.loads(line)["text"] for line in (ROOT / "cpt" / "assets" / "sample.jsonl").read_text().splitlines()]
    vocab = sorted({w for text in sample for w in text.split()})
    rng = random.Random(0)
    data_root.mkdir(parents=True, exist_ok=True)
    with open(data_root / "bench.jsonl", "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choices(vocab, k=words))}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cpt.prepare", *data_overrides(data_root)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"cpt.prepare failed:\n{proc.stderr[-4000:]}")


def steady_rate(records: list[dict]) -> float:
    """Tokens/s over the log windows after the first (the first holds warm-up), from cpt's metrics.jsonl."""
    logs = [r for r in records if "tokens_per_s" in r]
    if len(logs) < 2:
        raise ValueError("need at least two log windows: steps must exceed the warm-up (log_interval)")
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(logs, logs[1:])]
    seconds = [n / r["tokens_per_s"] for n, r in zip(tokens, logs[1:])]
    return sum(tokens) / sum(seconds)


def cpt_run(overrides: list[str], steps: int, warmup: int, nproc: int = 1, check: bool = True) -> dict | None:
    """`python -m cpt.run` exactly as a user runs it; throughput from its metrics (validation excluded). A failed
    run exits, or returns None with check=False (e.g. probing for the largest micro-batch that fits)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cpt.run", *overrides, f"trainer.nproc_per_node={nproc}",
               f"trainer.steps={steps}", f"trainer.log_interval={warmup}", "trainer.eval_interval=0",
               "trainer.eval_batches=1", "trainer.progress_bar=false", "checkpoint.at_end=false",
               "export.enabled=false", f"hydra.run.dir={tmp}/run"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
        if proc.returncode and not check:
            return None
        if proc.returncode:
            sys.exit(f"cpt.run {' '.join(overrides)} failed:\n{proc.stderr[-4000:]}")
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "tokens_per_s" in r]
    last = logged[-1]
    # on GPU each log window reports its own peak (the counter is reset): the run's peak is the largest
    return {"tokens_per_s": steady_rate(records), "peak_mem_mib": max(r["peak_mem_mib"] for r in logged),
            "state_mib": last["state_mib"], "mfu": last["mfu"] if last["mfu"] is not None else float("nan")}


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_child(cmd: list[str]) -> dict:
    """Run one side in its own process; it prints its result as the last line of stdout, in JSON."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(sides: dict[str, Callable[[], dict]], reps: int) -> dict[str, dict]:
    """Run every side `reps` times, in rotating order; returns {side: {metric: median}} (and logs every run)."""
    names = list(sides)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            runs[name].append(sides[name]())
            print(f"rep {rep} {name}: {json.dumps(runs[name][-1])}", file=sys.stderr, flush=True)
    medians = {}
    for name, rs in runs.items():
        medians[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        medians[name]["runs"] = [r["tokens_per_s"] for r in rs]
    return medians


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def header(title: str, argv: list[str], reps: int | None) -> str:
    """Title with the date, the exact command, the machine and (for comparisons) how many runs each median holds."""
    script = Path(argv[0]).resolve().relative_to(ROOT)
    runs = f" Median of {reps} alternating runs per side." if reps else ""
    return (f"## {title} — {time.strftime('%Y-%m-%d')}\n\nCommand: `python {' '.join([str(script), *argv[1:]])}`\n\n"
            f"Machine: {machine()}.{runs}\n")


def cell(value: float) -> str:
    """A number as a table shows it: n/a for NaN (e.g. MFU where no peak FLOP/s is known), 2 decimals below 100."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.2f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}"


def table(rows: dict[str, dict], columns: dict[str, str]) -> str:
    """Markdown table: one row per side, `columns` maps metric key -> column title."""
    lines = ["| side | " + " | ".join(columns.values()) + " | runs (tokens/s) |",
             "|---" * (len(columns) + 2) + "|"]
    for name, r in rows.items():
        cells = [cell(r[k]) for k in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + ", ".join(f"{v:,.0f}" for v in r["runs"]) + " |")
    return "\n".join(lines)
