"""Throughput and MFU of cpt on one GPU: Qwen2.5-0.5B architecture (random init), seq 2048, bf16, fused AdamW,
with torch.compile off/on, activation checkpointing off/full and the chunked or plain loss; optionally the largest
micro-batch that fits the fastest setting.

    python bench/gpu_mfu.py [--batch 4] [--steps 30] [--warmup 10] [--reps 1] [--loss both] [--max-batch]
    python bench/gpu_mfu.py --cpu [--size small]     # the same matrix on CPU at a small size (fp32): checks it runs

Each setting is `python -m cpt.run` in its own process, rotating over the repetitions. On one GPU cpt runs the model
unwrapped, which is its fastest setting for a model that fits one device: FSDP2 on a 1-rank mesh shards nothing and
only adds copies through its buffers. bf16 runs under autocast with fp32 master weights and optimizer state.
The data is the synthetic byte-token corpus of bench/common.py (no download; the GPU machine needs no assets).

MFU = tokens/s x FLOPs/token / peak FLOP/s, FLOPs/token = 6 N + 12 L H d_head T (N = the parameters used in a
matmul: all unique parameters less the input embedding plus the output projection, 494,032,768 for Qwen2.5-0.5B
whose lm_head is tied; L layers, H heads, T = seq_len: 3.493e9 at T = 2048; cpt.train.metrics.flops_per_token), peak =
the device's dense bf16 peak (989 TFLOP/s for an H100 SXM; cpt.train.metrics.PEAK_FLOPS). It is the `mfu` cpt logs.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from common import QWEN05B, SIZES, alternate, cell, cpt_run, data_overrides, header, prepare_data, run_overrides, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run on CPU at --size instead of the 0.5B model on a GPU")
    ap.add_argument("--size", default="small", choices=list(SIZES), help="model and batch size with --cpu")
    ap.add_argument("--batch", type=int, default=4, help="micro-batch on the GPU (sequences of --seq-len tokens)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--compile", default="both", choices=["off", "on", "both"])
    ap.add_argument("--ac", default="both", choices=["off", "full", "both"], help="activation checkpointing")
    ap.add_argument("--loss", default="chunked", choices=["chunked", "plain", "both"], help="trainer.loss")
    ap.add_argument("--max-batch", action="store_true",
                    help="then double the micro-batch of the fastest setting until it no longer fits")
    ap.add_argument("--batch-limit", type=int, default=1024, help="stop doubling at this micro-batch")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10, help="steps excluded from timing (compile happens here)")
    args = ap.parse_args()
    prepare_data()
    if args.cpu:
        base = [*run_overrides(args.size), "trainer.device=cpu"]
    else:
        base = [*QWEN05B, *data_overrides(), f"trainer.seq_len={args.seq_len}",
                f"trainer.micro_batch_size={args.batch}", "trainer.precision=bf16", "trainer.device=cuda"]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    acs = {"off": [False], "full": [True], "both": [False, True]}[args.ac]

    losses = ["chunked", "plain"] if args.loss == "both" else [args.loss]

    def setting(compile: bool, ac: bool, loss: str) -> list[str]:
        return [*base, f"trainer.compile={compile}", f"trainer.activation_checkpointing={ac}", f"trainer.loss={loss}"]

    settings = {f"compile {'on' if c else 'off'}, AC {'full' if a else 'off'}, {loss} loss": setting(c, a, loss)
                for c, a, loss in itertools.product(compiles, acs, losses)}
    sides = {name: (lambda o=overrides: cpt_run(o, args.steps, args.warmup)) for name, overrides in settings.items()}
    med = alternate(sides, args.reps)
    where = (f"{args.size} model on CPU, fp32" if args.cpu
             else f"Qwen2.5-0.5B arch, seq {args.seq_len}, batch {args.batch}, bf16, 1 GPU")
    print(header(f"Throughput and MFU ({where})", sys.argv, args.reps))
    for row in med.values():
        row["mfu"] *= 100  # NaN where the peak is unknown (CPU)
    print(table(med, {"tokens_per_s": "tokens/s", "mfu": "MFU %", "peak_mem_mib": "peak memory MiB"}))
    best = max(med, key=lambda name: med[name]["tokens_per_s"])
    mfu = cell(med[best]["mfu"])
    print(f"\nfastest: **{best}**, {med[best]['tokens_per_s']:,.0f} tokens/s, MFU {mfu}{'' if mfu == 'n/a' else '%'}")
    if args.max_batch:
        batch = args.batch if not args.cpu else SIZES[args.size]["batch"]
        fits = batch
        while batch < args.batch_limit:
            batch *= 2
            probe = cpt_run([*settings[best], f"trainer.micro_batch_size={batch}"], 3, 1, check=False)
            if probe is None:  # out of memory (or any failure: the probe's stderr is not kept)
                break
            fits = batch
        seq = SIZES[args.size]["seq"] if args.cpu else args.seq_len
        print(f"largest micro-batch that fits ({best}): **{fits}** sequences of {seq} tokens"
              + (f" ({batch} did not)" if fits < batch else f" (the --batch-limit {args.batch_limit})"))


if __name__ == "__main__":
    main()
