"""LoRA vs full continued pretraining of SmolLM2-135M on the legal corpus, 2 FSDP2 ranks (full_shard): trainable
parameters, optimizer state and parameters+optimizer per rank, peak memory per rank, checkpoint size, tokens/s and
the held-out loss before and after, each side as a user runs it (`python -m cpt.run +experiment=legal_demo ...`).

    python bench/lora_vs_full.py [--steps 8] [--r 16] [--tiny]

Needs the offline assets (`make assets`); the legal data is prepared once for SmolLM2 under $CPT_BENCH_DATA-legal.
--tiny: the tiny random-init model on the bench's synthetic byte data (checks that the script runs).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA_ROOT, ROOT, child_env, header, prepare_data, run_overrides, steady_rate

LEGAL = DATA_ROOT.parent / f"{DATA_ROOT.name}-legal"


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run_side(base: list[str], extra: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cpt.run", *base, *extra, f"trainer.steps={steps}", "trainer.log_interval=2",
               "trainer.eval_interval=0", "trainer.progress_bar=false", "export.enabled=false", f"hydra.run.dir={run}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
        if proc.returncode:
            sys.exit(f"cpt.run {' '.join(extra)} failed:\n{proc.stderr[-4000:]}")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        log = (run / "train.log").read_text()
        ckpt = run / "checkpoints" / f"step-{steps:08d}"
        size = dir_mib(ckpt)
    trainable = int(re.search(r"\(([\d,]+) trainable\)", log).group(1).replace(",", ""))
    total = int(re.search(r": ([\d,]+) parameters \(", log).group(1).replace(",", ""))
    vals = [r for r in records if "val_loss" in r]
    first = next(r for r in records if "state_mib" in r)
    return {"trainable": trainable, "total": total, "state_mib": first["state_mib"], "optim_mib": first["optim_mib"],
            "peak_mem_mib": max(r["peak_mem_mib"] for r in records if "peak_mem_mib" in r),
            "checkpoint_mib": size, "tokens_per_s": steady_rate(records),
            "val_start": vals[0]["val_loss"], "val_end": vals[-1]["val_loss"], "bpb_end": vals[-1]["val_bpb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    ap.add_argument("--lr", type=float, default=2e-4, help="full training's learning rate (LoRA: 10x)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        prepare_data()
        base = [*run_overrides("tiny"), "trainer.nproc_per_node=2", "trainer.micro_batch_size=2"]
        title = "tiny model, synthetic bytes"
    else:
        data = [f"data.root={LEGAL}"]
        proc = subprocess.run([sys.executable, "-m", "cpt.prepare", "data=legal", "model=smollm2_135m", *data,
                               "hydra.run.dir=" + str(LEGAL / "prepare-log")], cwd=ROOT, env=child_env(),
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"cpt.prepare failed:\n{proc.stderr[-4000:]}")
        base = ["+experiment=legal_demo", *data, "trainer.eval_batches=2"]
        title = "SmolLM2-135M on license texts, seq 256, 2 ranks x 2 sequences"
    r = args.r
    sides = {"full": run_side(base, [f"optim.lr={args.lr}"], args.steps),
             f"LoRA r={r}": run_side(base, ["model.lora.enabled=true", f"model.lora.r={r}", f"model.lora.alpha={2 * r}",
                                            f"optim.lr={10 * args.lr}"], args.steps)}
    print(header(f"LoRA vs full training ({title}, FSDP2 full_shard, {args.steps} steps)", sys.argv, None))
    print("| side | trainable params | % of model | optimizer state MiB/rank | params+optimizer MiB/rank | "
          "peak memory MiB/rank | checkpoint MiB | tokens/s | val loss start → end | val bits/byte end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in sides.items():
        print(f"| {name} | {s['trainable']:,} | {100 * s['trainable'] / s['total']:.2f}% | {s['optim_mib']:.2f} | "
              f"{s['state_mib']:.1f} | {s['peak_mem_mib']:,.0f} | {s['checkpoint_mib']:.2f} | "
              f"{s['tokens_per_s']:,.0f} | {s['val_start']:.4f} → {s['val_end']:.4f} | {s['bpb_end']:.4f} |")
    full, lora = sides.values()
    print(f"\nLoRA / full: optimizer state **{lora['optim_mib'] / full['optim_mib']:.4f}**, checkpoint "
          f"**{lora['checkpoint_mib'] / full['checkpoint_mib']:.4f}**, peak memory "
          f"**{lora['peak_mem_mib'] / full['peak_mem_mib']:.3f}**, tokens/s "
          f"**{lora['tokens_per_s'] / full['tokens_per_s']:.3f}**")


if __name__ == "__main__":
    main()
