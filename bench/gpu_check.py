"""The GPU acceptance command: run it first on a new machine or cluster (`make gpu-check`). In about 10 minutes on
whatever GPUs the machine has, it checks the path users train on and prints markdown for BENCHMARKS.md:

1. every fsdp strategy — full_shard, shard_grad_op, offload, and with 2 or more GPUs hybrid_shard and no_shard —
   trains the Qwen2.5-0.5B architecture (random init, bf16, seq 2048) for --steps steps on all GPUs; every loss
   curve must stay within --tol of full_shard's (bf16 sums in another order: 0.05 by default);
2. a run killed after a checkpoint and started again gives the uninterrupted run's losses (within --resume-tol;
   bit-identical on CPU, GPU kernels may reduce in another order), and so does one warned by SIGUSR2 (it saves
   asynchronously through pinned buffers, stops, and resumes at the step after the warning); grad_accum=2 with
   either accum_reduce gives full_shard's curve;
3. the run's export reloads in transformers and scores one window as finitely as the run did;
4. the MFU matrix of bench/gpu_mfu.py on one GPU (compile x activation checkpointing, chunked loss, and the plain
   loss once) and the largest micro-batch of the fastest setting.
Exit status 1 if a check fails.

    python bench/gpu_check.py                 # on a GPU machine
    python bench/gpu_check.py --cpu           # the same checks, tiny model, 2 CPU ranks (what the tests run)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import QWEN05B, ROOT, child_env, data_overrides, header, prepare_data, run_overrides


def train(overrides: list[str], run_dir: Path, fault: dict | None = None) -> list[float]:
    """Per-step losses of `python -m cpt.run` (the last record of a step wins, as after a resume); [] if it failed."""
    cmd = [sys.executable, "-m", "cpt.run", *overrides, "trainer.log_interval=1", "trainer.eval_interval=0",
           "trainer.eval_batches=1", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**child_env(), **(fault or {})})
    if proc.returncode and not fault:
        print(f"<!-- {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}\n-->", file=sys.stderr)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return []
    by_step = {r["step"]: r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r}
    return [by_step[s] for s in sorted(by_step)]


def max_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b)), default=float("inf")) if len(a) == len(b) else float("inf")


def agrees(curve: list[float], reference: list[float], steps: int, tol: float) -> tuple[float, bool]:
    """(max abs diff, whether the curve has every step, finite losses and stays within tol of the reference)."""
    diff = max_diff(curve, reference)
    return diff, len(curve) == steps and all(math.isfinite(x) for x in curve) and diff <= tol


def restarts(run_dir: Path) -> list[int]:
    """The steps a run resumed from (its metrics' resumed_from records)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "resumed_from" in r]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny model on 2 CPU ranks (fp32) instead of the GPUs")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4, help="micro-batch per GPU")
    ap.add_argument("--tol", type=float, help="max loss difference between strategies (default 0.05 GPU, 1e-4 CPU)")
    ap.add_argument("--resume-tol", type=float, help="max loss difference after a resume (default 1e-2 GPU, 0 CPU)")
    args = ap.parse_args()
    prepare_data()
    if args.cpu:
        gpus, tol, resume_tol = 2, 1e-4, 0.0
        base = [*run_overrides("tiny"), "trainer.device=cpu", "trainer.nproc_per_node=2"]
    else:
        import torch

        gpus, tol, resume_tol = torch.cuda.device_count(), 0.05, 1e-2
        if gpus == 0:
            sys.exit("no GPU: run with --cpu to check the script itself")
        base = [*QWEN05B, *data_overrides(), "trainer.seq_len=2048", f"trainer.micro_batch_size={args.batch}",
                "trainer.precision=bf16", "trainer.device=cuda", f"trainer.nproc_per_node={gpus}"]
    tol = tol if args.tol is None else args.tol
    resume_tol = resume_tol if args.resume_tol is None else args.resume_tol
    base += [f"trainer.steps={args.steps}", "optim.warmup_steps=2", "checkpoint.at_end=false", "export.enabled=false"]
    strategies = {name: [f"fsdp={name}"] for name in ("full_shard", "shard_grad_op", "offload")}
    # the same global batch in 2 micro-steps: reduce-scatter every micro-step (the default) and once per step
    half_batch = f"trainer.micro_batch_size={(2 if args.cpu else args.batch) // 2}"
    strategies |= {f"full_shard, grad_accum=2, accum_reduce={r}": ["fsdp=full_shard", half_batch,
                                                                   "trainer.grad_accum=2", f"trainer.accum_reduce={r}"]
                   for r in ("every", "last")}
    if gpus >= 2:  # hybrid: two replicas of a half-machine shard group
        strategies |= {"hybrid_shard": ["fsdp=hybrid_shard", f"fsdp.shard_size={gpus // 2}"],
                       "no_shard": ["fsdp=no_shard"]}
    ok = True
    print(header(f"GPU acceptance check ({gpus} {'CPU rank' if args.cpu else 'GPU'}{'s' if gpus > 1 else ''})",
                 sys.argv, None))
    with tempfile.TemporaryDirectory() as tmp:
        curves = {name: train([*base, *extra], Path(tmp) / re.sub(r"\W+", "_", name))  # a directory name
                  for name, extra in strategies.items()}
        ref = curves["full_shard"]
        # the benches train without document masking (same math as HF/bare); the default path masks: run it once
        # (flex_attention's block mask, the GPU default, against sdpa's dense mask from position ids: the same math)
        # (on CPU, where flex_attention has no backward, eager's dense mask stands in for it)
        kernel = "eager" if args.cpu else "flex_attention"
        masking = [*base, "fsdp=full_shard", "trainer.doc_masking=true"]
        masked = train([*masking, f"model.attn_implementation={kernel}"], Path(tmp) / "doc_masking")
        masked_sdpa = train([*masking, "model.attn_implementation=sdpa"], Path(tmp) / "doc_masking_sdpa")
        # flash-attention-2 masks documents through its variable-length path at micro-batch 1 (cpt refuses more):
        # against sdpa's dense mask at the same micro-batch, when the flash_attn package is installed
        fa2 = fa2_sdpa = None
        if not args.cpu and importlib.util.find_spec("flash_attn") is not None:
            one = [*masking, "trainer.micro_batch_size=1"]
            fa2 = train([*one, "model.attn_implementation=flash_attention_2"], Path(tmp) / "doc_masking_fa2")
            fa2_sdpa = train([*one, "model.attn_implementation=sdpa"], Path(tmp) / "doc_masking_fa2_sdpa")
        # LoRA: frozen bf16 base and trainable adapters in one FSDP2 block, adapter-only gradients and optimizer
        lora = train([*base, "fsdp=full_shard", "model.lora.enabled=true"], Path(tmp) / "lora")
        print(f"| strategy | steps | first loss | last loss | max abs diff vs full_shard (tol {tol:g}) | check |")
        print("|---|---|---|---|---|---|")
        for name, curve in curves.items():
            diff = max_diff(curve, ref)
            good = len(curve) == args.steps and diff <= tol
            ok &= good
            first, last = (f"{curve[0]:.4f}", f"{curve[-1]:.4f}") if curve else ("—", "—")
            print(f"| {name} | {len(curve)} | {first} | {last} | {diff:.2e} | {'PASS' if good else 'FAIL'} |")
        masked_diff, good_masked = agrees(masked, masked_sdpa, args.steps, tol)
        ok &= good_masked
        print(f"\nfull_shard with trainer.doc_masking=true, {kernel} attention: {len(masked)} steps, "
              f"last loss {masked[-1] if masked else float('nan'):.4f}, max abs diff vs sdpa's dense document mask "
              f"{masked_diff:.2e} (tol {tol:g}): **{'PASS' if good_masked else 'FAIL'}**.")
        if fa2 is None:
            print("\nflash_attention_2 document masking: not checked (" + ("CPU dry run" if args.cpu else
                  "the flash_attn package is not installed: pip install flash-attn, then run this again") + ").")
        else:
            fa2_diff, good_fa2 = agrees(fa2, fa2_sdpa, args.steps, tol)
            ok &= good_fa2
            print(f"\nfull_shard with trainer.doc_masking=true, flash_attention_2, micro-batch 1: {len(fa2)} steps, "
                  f"max abs diff vs sdpa's dense document mask {fa2_diff:.2e} (tol {tol:g}): "
                  f"**{'PASS' if good_fa2 else 'FAIL'}**.")
        good_lora = len(lora) == args.steps and all(math.isfinite(x) for x in lora)
        ok &= good_lora
        print(f"\nfull_shard with model.lora.enabled=true (frozen base, adapters train): {len(lora)} steps, last loss "
              f"{lora[-1] if lora else float('nan'):.4f}: **{'PASS' if good_lora else 'FAIL'}** (finite losses for "
              "every step).")

        half = args.steps // 2
        resumed_dir = Path(tmp) / "resumed"
        resumed = [*base, "fsdp=full_shard", f"checkpoint.interval={half}", "export.enabled=true"]
        train(resumed, resumed_dir, {"CPT_FAULT_KILL": f"0:{half + 2}"})  # dies 2 steps after its checkpoint
        diff = max_diff(train(resumed, resumed_dir), ref)
        # the rerun must have restarted from step `half`: a rerun that began again would give the same curve
        resumed_at = restarts(resumed_dir)
        good_resume = diff <= resume_tol and resumed_at == [half]
        export_check = check_export(resumed_dir / "hf", args.cpu)
        ok &= good_resume and export_check.startswith("PASS")
        print(f"\nResume after a kill at step {half + 2} (checkpoint at {half}; restarts from steps {resumed_at}): max "
              f"abs loss diff vs the uninterrupted run {diff:.2e} (tol {resume_tol:g}): "
              f"**{'PASS' if good_resume else 'FAIL'}**. "
              f"Export reload: **{export_check}**.\n")
        # SIGUSR2 (Slurm's warning) after step `half`: every rank saves at the next step with an asynchronous save
        # (pinned staging buffers on GPU), stops; the rerun resumes there and ends on the uninterrupted curve
        warned_dir = Path(tmp) / "warned"
        warned = [*base, "fsdp=full_shard", "checkpoint.async_save=true"]
        train(warned, warned_dir, {"CPT_FAULT_SIGNAL": f"{gpus - 1}:{half}"})  # the last rank only
        diff = max_diff(train(warned, warned_dir), ref)
        warned_at = restarts(warned_dir)
        good_warned = diff <= resume_tol and warned_at == [half + 1]
        ok &= good_warned
        print(f"SIGUSR2 to rank {gpus - 1} after step {half} (async saves): stopped and resumed at steps {warned_at} "
              f"(expected [{half + 1}]), max abs loss diff vs the uninterrupted run {diff:.2e} (tol {resume_tol:g}): "
              f"**{'PASS' if good_warned else 'FAIL'}**.\n")
    mfu = [sys.executable, str(ROOT / "bench" / "gpu_mfu.py"), "--max-batch"]
    mfu += (["--cpu", "--size", "tiny", "--steps", "6", "--warmup", "2", "--compile", "off", "--batch-limit", "8"]
            if args.cpu else [])
    for extra in (["--loss", "chunked"], ["--loss", "plain", "--compile", "off", "--ac", "off"]):
        if args.cpu and "--ac" in extra:
            continue  # the CPU dry run keeps to one matrix
        proc = subprocess.run([*mfu, *extra], capture_output=True, text=True, cwd=ROOT, env=child_env())
        ok &= proc.returncode == 0
        table = proc.stdout[proc.stdout.find("\n|"):].strip()  # gpu_mfu's table and findings, without its header
        print(f"\n`{' '.join(['bench/gpu_mfu.py', *mfu[2:], *extra])}`:\n\n{table}" if proc.returncode == 0
              else f"\nMFU matrix failed:\n{proc.stderr[-2000:]}")
    print(f"\n**GPU check: {'PASS' if ok else 'FAIL'}**")
    return 0 if ok else 1


def check_export(hf: Path, cpu: bool) -> str:
    """The exported directory loads in transformers and gives finite logits."""
    import torch
    from transformers import AutoModelForCausalLM

    if not (hf / "config.json").is_file():
        return f"FAIL (no export at {hf})"
    device = "cpu" if cpu else "cuda"
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).to(device)
    ids = torch.arange(64, device=device)[None] % model.config.vocab_size
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        return "FAIL (non-finite logits)"
    params = sum(p.numel() for p in model.parameters())
    return f"PASS ({params:,} parameters, logits {tuple(logits.shape)})"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
