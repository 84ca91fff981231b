"""Peak memory of training steps where the vocabulary dominates: a 151,936-token vocabulary (Qwen2.5's) on a small
body (hidden 64, 2 layers), seq 1024, micro-batch 4, 1 rank, fp32 on CPU — cpt with the plain loss (full fp32
logits), cpt with the chunked loss (cpt/model/loss.py), and HF Trainer on the same model, windows and optimizer.

    python bench/loss_memory.py [--reps 1] [--steps 3]

Peak RSS of each side's process (CPU) or the CUDA allocator peak (GPU). That the chunked loss and its gradients
equal the plain path's is tested (tests/model/test_loss.py). Goal: chunked <= 0.5x HF Trainer's peak.
"""

from __future__ import annotations

import sys

from common import ROOT, alternate, arg_parser, cpt_run, header, prepare_data, run_child, run_overrides, table

SIZE = "vocab151k"


def main() -> None:
    ap = arg_parser(__doc__, reps=1, steps=3, warmup=1)
    args = ap.parse_args()
    prepare_data()
    base = [*run_overrides(SIZE), "optim.warmup_steps=0"]
    hf = [sys.executable, str(ROOT / "bench" / "vs_hf_trainer.py"), "--child", "--size", SIZE, "--steps",
          str(args.steps), "--warmup", str(args.warmup)]
    med = alternate({"cpt chunked loss": lambda: cpt_run([*base, "trainer.loss=chunked"], args.steps, args.warmup),
                     "cpt plain loss": lambda: cpt_run([*base, "trainer.loss=plain"], args.steps, args.warmup),
                     "hf_trainer": lambda: run_child(hf)}, args.reps)
    print(header("Peak memory of a training step, vocabulary 151,936, seq 1024, micro-batch 4", sys.argv, args.reps))
    print(table(med, {"peak_mem_mib": "peak memory MiB", "tokens_per_s": "tokens/s"}))
    ratio = med["cpt chunked loss"]["peak_mem_mib"] / med["hf_trainer"]["peak_mem_mib"]
    plain = med["cpt plain loss"]["peak_mem_mib"] / med["hf_trainer"]["peak_mem_mib"]
    print(f"\npeak memory / HF Trainer's: chunked **{ratio:.2f}**, plain {plain:.2f} (goal: chunked <= 0.5)")


if __name__ == "__main__":
    main()
