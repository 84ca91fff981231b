"""The bench/ scripts run at a tiny size and print consistent markdown: both sides measured, the ratio line equal to
the ratio of the medians in the table. No timing is asserted. vs_hf_trainer.py stands for the comparisons (it uses
all of bench/common.py: cpt's side, a child side, alternation, tables); vs_bare.py and fsdp_strategies.py are thin
over the same pieces and are left out to keep the suite's time (FSDP memory is tested in test_train.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.full  # the full tier: make test-full

TINY = ["--size", "tiny", "--reps", "1", "--steps", "6", "--warmup", "2"]


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-data")


def bench(script: str, args: list[str], data) -> tuple[dict[str, list[str]], str]:
    env = dict(os.environ, CPT_BENCH_DATA=str(data), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "side":
            rows[cells[0]] = cells[1:]
    return rows, proc.stdout


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def ratio(text: str, label: str) -> float:
    return float(re.search(re.escape(label) + r" = \*\*([0-9.]+)\*\*", text).group(1))


def test_vs_hf_trainer_reports_both_sides(bench_data):
    rows, out = bench("vs_hf_trainer.py", TINY, bench_data)
    assert set(rows) == {"cpt", "hf_trainer"} and all(number(r[0]) > 0 for r in rows.values())
    assert ratio(out, "cpt / HF Trainer tokens/s") == pytest.approx(
        number(rows["cpt"][0]) / number(rows["hf_trainer"][0]), rel=2e-3)
    assert "Command: `python bench/vs_hf_trainer.py --size tiny" in out


def test_gpu_mfu_runs_on_cpu_at_a_small_size(bench_data):
    rows, out = bench("gpu_mfu.py", ["--cpu", *TINY, "--compile", "off", "--ac", "full"], bench_data)
    name = "compile off, AC full, chunked loss"  # activation checkpointing on the unwrapped 1-rank module
    assert set(rows) == {name}
    assert number(rows[name][0]) > 0 and f"fastest: **{name}**" in out


def test_gpu_check_passes_on_two_cpu_ranks(bench_data):
    """The GPU acceptance command, dry-run on CPU: strategies (and accumulation both ways) agree, the resume after a
    kill and the one after SIGUSR2 are exact, the export reloads, the MFU matrix and the micro-batch probe run."""
    _, out = bench("gpu_check.py", ["--cpu", "--steps", "6"], bench_data)
    for strategy in ("full_shard", "shard_grad_op", "offload", "hybrid_shard", "no_shard",
                     "full_shard, grad_accum=2, accum_reduce=every", "full_shard, grad_accum=2, accum_reduce=last"):
        assert re.search(rf"^\| {strategy} \| 6 \| .* \| PASS \|$", out, re.M), out
    assert "SIGUSR2 to rank 1 after step 3 (async saves): stopped and resumed at steps [4]" in out
    assert "max abs loss diff vs the uninterrupted run 0.00e+00" in out and "Export reload: **PASS" in out
    assert "(checkpoint at 3; restarts from steps [3])" in out  # the rerun really resumed
    assert re.search(r"doc_masking=true, eager attention: 6 steps, last loss [0-9.]+, max abs diff vs sdpa's dense "
                     r"document mask [0-9.e+-]+ \(tol [0-9.e-]+\): \*\*PASS", out), out
    assert re.search(r"lora.enabled=true .*: 6 steps, last loss [0-9.]+: \*\*PASS", out), out
    assert "largest micro-batch that fits" in out and out.rstrip().endswith("**GPU check: PASS**")


def test_lora_vs_full_reports_what_lora_saves(bench_data):
    rows, out = bench("lora_vs_full.py", ["--tiny", "--steps", "6", "--r", "4"], bench_data)
    assert set(rows) == {"full", "LoRA r=4"}
    full, lora = rows["full"], rows["LoRA r=4"]
    assert number(lora[0]) < number(full[0]) and full[1] == "100.00%"  # trainable parameters
    assert number(lora[2]) < number(full[2]) and number(lora[5]) < number(full[5])  # optimizer state, checkpoint
    assert re.search(r"LoRA / full: optimizer state \*\*0\.\d+\*\*, checkpoint \*\*0\.\d+\*\*", out), out
